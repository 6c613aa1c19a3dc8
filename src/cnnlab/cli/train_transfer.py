"""`cnnlab train transfer`: fine-tune a pretrained CNN on a folder of photos, a CSV or a built-in dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cnnlab.cli.engine_options import ENGINE, with_engine_options

if TYPE_CHECKING:
    from cnnlab.train.config import EngineOptions


@with_engine_options
def transfer(
    data: str = typer.Option(
        ...,
        "--data",
        help="Image folder (one sub-folder per class), CSV of path,label, "
        "split folder (train/ val/ test/), or a built-in dataset: elpv.",
    ),
    model: str = typer.Option("efficientnet_lite0", "--model", "-m", help="Zoo model with pretrained weights."),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained", help="Start from the pretrained weights."),
    head_epochs: int = typer.Option(15, "--head-epochs", min=0, help="Phase 1 (frozen backbone, new head) epochs."),
    head_lr: float = typer.Option(3e-3, "--head-lr", help="Phase 1 peak learning rate."),
    cache_features: bool = typer.Option(
        True,
        "--cache-features/--no-cache-features",
        help="Phase 1 on backbone features computed once (seconds on a CPU).",
    ),
    finetune_epochs: int = typer.Option(
        0, "--finetune-epochs", min=0, help="Phase 2 (unfrozen) epochs; 0: features only. --epochs sets the last phase."
    ),
    finetune_lr: float = typer.Option(3e-4, "--finetune-lr", help="Phase 2 peak learning rate of the top layer."),
    unfreeze: int = typer.Option(0, "--unfreeze", min=0, help="Phase 2 trains the top N blocks; 0: all of them."),
    layer_decay: float = typer.Option(0.85, "--layer-decay", help="LR factor per block going down from the top."),
    bn_train: bool = typer.Option(
        False, "--bn-train/--no-bn-train", help="Let unfrozen batch norms update their statistics in phase 2."
    ),
    bn_adapt: bool = typer.Option(
        False,
        "--bn-adapt/--no-bn-adapt",
        help="Before training, recompute every batch norm's statistics on the training images (AdaBN): for data "
        "unlike the pretraining photos (grayscale cells, X-rays).",
    ),
    image_size: int | None = typer.Option(None, "--image-size", help="Square input size (default: the weights')."),
    crop_pct: float | None = typer.Option(
        None,
        "--crop-pct",
        help="Evaluate on the centre crop keeping this fraction of the resized side (default: the weights', "
        "0.875 for most); 1.0 keeps the whole image, for labels that may sit at the border (defects).",
    ),
    min_per_class: int = typer.Option(100, "--min-per-class", help="Fewest usable images a class may have."),
    max_per_class: int | None = typer.Option(None, "--max-per-class", help="Keep at most N images per class."),
    val_fraction: float = typer.Option(0.15, "--val-fraction", help="Validation share (from the non-test part)."),
    test_fraction: float = typer.Option(0.15, "--test-fraction", help="Test share."),
    split_manifest: Path | None = typer.Option(None, "--split", help="Reuse a split manifest CSV (path,label,split)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Training augmentation (training set only)."),
    vertical_flip: bool = typer.Option(False, "--vertical-flip", help="Also flip vertically (no up/down images)."),
    crop_scale: float = typer.Option(
        0.5,
        "--crop-scale",
        help="Smallest image area a random training crop keeps (1.0: no cropping); raise it when a crop could cut "
        "the labelled detail out (defects).",
    ),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing", help="Cross-entropy label smoothing."),
    class_weight: str = typer.Option(
        "none",
        "--class-weight",
        help="none, or balanced: weigh each class's loss by n / (k * n_c) over the training split, for imbalanced "
        "data whose small classes are never predicted.",
    ),
    patience: int = typer.Option(5, "--patience", min=0, help="Early stopping on val accuracy; 0 turns it off."),
    workers: int = typer.Option(2, "--workers", min=0, help="DataLoader worker processes."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    engine: EngineOptions = ENGINE,
) -> None:
    """Fine-tune a pretrained model: stratified split, frozen-backbone head, optional unfrozen phase, test once.

    Defaults: batch 32, channels_last, fp32; --epochs and --lr set the last phase that runs.
    """
    from cnnlab.tasks.transfer import TransferConfig, train_transfer

    config = TransferConfig.from_options(
        engine,
        data=data,
        arch=model,
        pretrained=pretrained,
        head_epochs=head_epochs,
        head_lr=head_lr,
        cache_features=cache_features,
        finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr,
        unfreeze=unfreeze,
        layer_decay=layer_decay,
        bn_train=bn_train,
        bn_adapt=bn_adapt,
        image_size=image_size,
        crop_pct=crop_pct,
        min_per_class=min_per_class,
        max_per_class=max_per_class,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_manifest=None if split_manifest is None else str(split_manifest),
        augment=augment,
        vertical_flip=vertical_flip,
        crop_scale=crop_scale,
        label_smoothing=label_smoothing,
        class_weight=None if class_weight == "none" else class_weight,
        patience=patience or None,
        workers=workers,
        progress=not as_json,
    )
    summary = train_transfer(config)
    if as_json:
        typer.echo(json.dumps({k: summary[k] for k in ("run_dir", "classes", "counts", "split", "phases", "test")}))
        return
    test = summary["test"]
    typer.echo(
        f"test accuracy {test['accuracy']:.4f}, balanced accuracy {test['balanced_accuracy']:.4f} "
        f"on {test['count']} images; {len(summary['skipped'])} bad files skipped"
    )
    typer.echo(f"run: {summary['run_dir']} (report.md; predict with `cnnlab predict --model {summary['run_dir']}`)")


def register(app: typer.Typer) -> None:
    """Add `transfer` to the `train` group of cli/train.py."""
    from cnnlab.cli.train import train_app

    train_app.command("transfer")(transfer)
