"""`cnnlab train transfer`: fine-tune a pretrained CNN on a folder of photos, a CSV or a built-in dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cnnlab.cli.engine_options import ENGINE, with_engine_options
from cnnlab.cli.train import JSON_HELP, notes_on_stderr

if TYPE_CHECKING:
    from cnnlab.train.config import EngineOptions


@with_engine_options
def transfer(
    data: str = typer.Option(
        ...,
        "--data",
        help="Image folder (one sub-folder per class), CSV of path,label, split folder (train/, val/ and test/, so "
        "named, each holding images of every class of train/; without val/, --val-fraction takes it from train/), or "
        "a built-in dataset: elpv (4 defect probabilities), elpv:binary (defective when >= 0.5).",
    ),
    recipe: str = typer.Option(
        "default",
        "--recipe",
        "-r",
        help="default (cached partial fine-tuning: the top blocks trained on cached maps of every view; the best a "
        "CPU does), quick (the classifier alone on cached features; minutes), full (the whole network on augmented "
        "images; for a GPU).",
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Zoo model with pretrained weights (default: the recipe's)."
    ),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained", help="Start from the pretrained weights."),
    unfreeze: int | None = typer.Option(
        None,
        "--unfreeze",
        min=0,
        help="Backbone blocks trained, from the top (0: the classifier alone; default: the recipe's).",
    ),
    views: str | None = typer.Option(
        None,
        "--views",
        help="Label-preserving views for training and test-time averaging: hflip (photos), dihedral (the 8 flips and "
        "rotations, for images with no up or down), none, or a list such as identity,hflip,vflip (default: "
        "dihedral for elpv, else hflip).",
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="Square input side in px (default: the recipe's: 192 for default, the weights' own for quick and full).",
    ),
    crop_pct: float | None = typer.Option(
        None,
        "--crop-pct",
        help="Centre crop keeping this fraction of the resized side, for the cached features, validation, test and "
        "predict (default: the recipe's, 1.0 in each: the whole image, for labels that may sit at the border).",
    ),
    class_weight: str = typer.Option(
        "none", "--class-weight", help="none, or balanced: each class's loss weighted n / (k * n_c) (skewed classes)."
    ),
    sampling: str = typer.Option(
        "uniform", "--sampling", help="uniform, or balanced: training batches drawn with every class equally likely."
    ),
    monitor: str = typer.Option(
        "val_accuracy",
        "--monitor",
        help="The validation metric that chooses the checkpoint: val_accuracy, or val_balanced_accuracy when the "
        "classes are skewed.",
    ),
    min_per_class: int = typer.Option(100, "--min-per-class", help="Fewest usable images a class may have."),
    max_per_class: int | None = typer.Option(
        None, "--max-per-class", help="Keep at most N images per class, N >= 3 (default: all)."
    ),
    val_fraction: float | None = typer.Option(
        None,
        "--val-fraction",
        help="Validation share of all images, above 0 and below 1, taken from the non-test part (default 0.15); for a "
        "split folder without val/, the share of train/ taken as validation.",
    ),
    test_fraction: float | None = typer.Option(
        None, "--test-fraction", help="Test share (default 0.15; 0.25 for elpv, as its papers)."
    ),
    split_manifest: Path | None = typer.Option(
        None,
        "--split",
        help="Reuse a split manifest CSV (path,label,split) (default: a new split, seeded by --split-seed).",
    ),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the split (kept apart from --seed)."),
    workers: int = typer.Option(2, "--workers", min=0, help="DataLoader worker processes decoding images."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    engine: EngineOptions = ENGINE,
) -> None:
    """Adapt a pretrained model to a folder of labelled images: split, train, test once, report.

    --epochs and --lr set the recipe's main phase.

    The frozen part's outputs are cached in OUTPUT/transfer/feature-cache for runs on the same data, split, settings.

    A cache build says what that folder holds, a reuse which entry it reads; an unused entry may be deleted.
    """
    from cnnlab.data.folder import describe_skipped
    from cnnlab.tasks.transfer import TransferConfig, train_transfer
    from cnnlab.train.finished import FINISHED_EARLIER
    from cnnlab.train.strategy import is_main_process

    config = TransferConfig.from_options(
        engine,
        data=data,
        recipe=recipe,
        arch=model,
        pretrained=pretrained,
        unfreeze=unfreeze,
        views=views,
        image_size=image_size,
        crop_pct=crop_pct,
        class_weight=None if class_weight == "none" else class_weight,
        sampling=None if sampling == "uniform" else sampling,
        monitor=monitor,
        min_per_class=min_per_class,
        max_per_class=max_per_class,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_manifest=None if split_manifest is None else str(split_manifest),
        split_seed=split_seed,
        workers=workers,
        progress=not as_json,
    )
    with notes_on_stderr(as_json):  # files skipped, the batch trained with: kept under -q, on stderr with --json
        summary = train_transfer(config, notes=True)
    if not is_main_process():  # under torchrun every rank returns the summary; rank 0 alone reports it
        return
    if as_json:
        keys = ("run_dir", "classes", "counts", "skipped", "split", "views", "phases", "test", "costs", "wall_seconds")
        keys += ("finished_before",) if summary.get("finished_before") else ()  # as the other tasks' --json say it
        typer.echo(json.dumps({k: summary[k] for k in keys}))
        return
    test = summary["test"]
    averaged = f" (one view: {test['single_view']['accuracy']:.4f})" if len(summary["views"]) > 1 else ""
    typer.echo(
        f"test accuracy {test['accuracy']:.4f}{averaged}, balanced accuracy {test['balanced_accuracy']:.4f} "
        f"on {test['count']} images; {describe_skipped([s['reason'] for s in summary['skipped']])}; "
        + (
            FINISHED_EARLIER
            if summary.get("finished_before")
            else f"{summary['wall_seconds']:.0f} s" + (" this session (resumed)" if summary["config"]["resume"] else "")
        )
    )
    typer.echo(f"run: {summary['run_dir']} (report.md; predict with `cnnlab predict --model {summary['run_dir']}`)")


def register(app: typer.Typer) -> None:
    """Add `transfer` to the `train` group of cli/train.py."""
    from cnnlab.cli.train import train_app

    train_app.command("transfer")(transfer)
