"""`cnnlab train segment`: semantic segmentation of an image + mask folder (--data), or of multi-digit MNIST
canvases (FCN-32s/16s/8s, U-Net)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cnnlab.cli.engine_options import ENGINE, with_engine_options
from cnnlab.cli.help_text import paragraphs
from cnnlab.cli.train import JSON_HELP, notes_on_stderr
from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.train.config import EngineOptions


# Options that only one kind of run reads: the other kind ignored them without a word. A canvas option's refusal says
# what it does and what a folder run has in its place (all of them ended "chooses its network with --model").
_CANVAS_ONLY = {
    "recipe": "picks a canvas network and schedule, where a folder run picks its network with --model",
    "upsample": "how a canvas FCN upsamples, where a folder run's network is the one --model names",
    "train_canvases": "how many canvases are made to train on, where a folder run trains on the images in --data",
    "pretrain_epochs": "pretrains the canvas U-Net's encoder on MNIST digits, where a folder run starts from a "
    "pretrained encoder with --model unet-lite0 or fcn8s-lite0",
    "data_dir": "the MNIST root the canvases are made from, where a folder run reads --data",
}
_FOLDER_ONLY = (
    "model",
    "class_weight",
    "background",
    "crop_size",
    "max_side",
    "hflip",
    "val_fraction",
    "test_fraction",
    "split_seed",
)


def _check_run_kind(context: typer.Context, folder: bool) -> None:
    """Refuse an option typed on the command line that the other kind of run reads (canvases or a folder)."""
    given = [
        name
        for name in (_CANVAS_ONLY if folder else _FOLDER_ONLY)
        if (source := context.get_parameter_source(name)) is not None and source.name == "COMMANDLINE"
    ]
    if not given:
        return
    flags = ", ".join("--" + name.replace("_", "-") for name in given)
    if folder:
        why = "; ".join(f"--{name.replace('_', '-')}: {_CANVAS_ONLY[name]}" for name in given)
        raise CnnlabError(f"{flags}: for the MNIST canvases only, not with --data ({why}); leave {flags} out")
    raise CnnlabError(f"{flags}: for a folder run only; add --data DIR (images/ and masks/), or leave {flags} out")


@with_engine_options
def segment(
    context: typer.Context,
    recipe: str = typer.Option(
        "quick",
        "--recipe",
        "-r",
        help="quick (U-Net, a few minutes), accurate (U-Net, about 20 min on 2 cores), unet (a smaller "
        "U-Net, for comparison), fcn8s, fcn32s (FCN on a ResNet-18 trunk). Canvas runs only (no --data).",
    ),
    upsample: str | None = typer.Option(
        None, "--upsample", help="Without --data: transposed (learned; the default) or bilinear (fixed)."
    ),
    train_canvases: int | None = typer.Option(
        None, "--train-canvases", min=1, help="Without --data: training canvases (default: the recipe's)."
    ),
    pretrain_epochs: int | None = typer.Option(
        None,
        "--pretrain-epochs",
        min=0,
        help="Without --data: epochs pretraining the U-Net's encoder as a digit classifier on the training pool's "
        "single digits before segmentation (default: the recipe's; 0 = none).",
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Without --data: MNIST root (else $CNNLAB_DATA, else ./data)."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Train on this folder instead of the canvases: images/ and masks/ with the same file stems, colour masks "
        "with classes.json or class-index PNGs, 255 = unlabelled (cnnlab data segmentation-demo writes one). Default: "
        "the canvases.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="With --data: unet (from scratch; the default), unet-lite0 or fcn8s-lite0 (on the pretrained "
        "EfficientNet-Lite0).",
    ),
    class_weight: str = typer.Option(
        "none", "--class-weight", help="With --data: none, or balanced (loss weights n / (k * pixels of the class))."
    ),
    background: int = typer.Option(
        0, "--background", help="With --data: the background class index (left out of mIoU); -1 for none."
    ),
    background_weight: float | None = typer.Option(
        None,
        "--background-weight",
        help="Cross-entropy weight of the background class, the others weighing 1 (most pixels are background). "
        "Default: the canvas recipe's 0.2; unweighted with --data.",
    ),
    crop_size: int | None = typer.Option(
        None, "--crop-size", help="With --data: training crop side in px (default 64)."
    ),
    max_side: int | None = typer.Option(
        None,
        "--max-side",
        min=1,
        help="With --data: downscale each image and mask as they are read so that the longer side is at most N px "
        "(image antialiased, mask by nearest neighbour; smaller pairs as they are), for folders of large photos; "
        "saved with the model, so predict downscales the same way and still returns masks at the image's size. "
        "Default: full size.",
    ),
    hflip: bool = typer.Option(False, "--hflip", help="With --data: random left-right flips of the training crops."),
    val_fraction: float = typer.Option(0.15, "--val-fraction", help="With --data: validation share."),
    test_fraction: float = typer.Option(0.15, "--test-fraction", help="With --data: test share."),
    split_seed: int = typer.Option(0, "--split-seed", help="With --data: the split's seed (saved in split.csv)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    engine: EngineOptions = ENGINE,
) -> None:
    """Train a segmentation network on your image + mask folder (--data), or on canvases of 1-5 MNIST digits.

    A folder run splits the pairs (split.csv), trains on random crops, tests whole images once and saves a model for
    `cnnlab predict` and `cnnlab export` (a canvas run's, for `cnnlab export`). The canvases are always generated with
    seed 0; --seed seeds the training.
    """
    _check_run_kind(context, folder=data is not None)
    if data is not None:
        _segment_folder(
            data,
            model,
            class_weight,
            background,
            background_weight,
            crop_size,
            max_side,
            hflip,
            val_fraction,
            test_fraction,
            split_seed,
            engine,
            as_json,
        )
        return
    from cnnlab.tasks.segmentation import RECIPES, train_segmentation
    from cnnlab.train.finished import FINISHED_EARLIER
    from cnnlab.train.strategy import is_main_process

    RECIPES.get(recipe)  # fail fast on a typo, before generating canvases
    with notes_on_stderr(as_json):  # stdout holds the JSON alone
        summary = train_segmentation(
            recipe,
            data_dir=None if data_dir is None else str(data_dir),
            train_canvases=train_canvases,
            model_kwargs=None if upsample is None else {"upsample": upsample},
            pretrain_epochs=pretrain_epochs,
            background_weight=background_weight,
            **engine.task_options(as_json),  # notes too: a run read back, the batch trained with, the weights kept
        )
    if not is_main_process():  # under torchrun every rank returns the summary; rank 0 alone reports it
        return
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from cnnlab.report.segmentation import boundary_f1_text

    test = summary["test"]
    typer.echo(
        f"{summary['arch']}: test mIoU (10 digit classes, background excluded) {test['miou']:.4f}, "
        f"with background {test['miou_with_bg']:.4f}, pixel accuracy {test['pixel_accuracy']:.4f}, "
        f"boundary F1 ({test['boundary_tolerance_px']} px) {boundary_f1_text(test['boundary_f1'])}; "
        f"{summary['train_seconds']:.0f} s training{f'; {FINISHED_EARLIER}' if summary.get('finished_before') else ''}"
    )
    typer.echo(
        f"run: {summary['run_dir']}  (report.md, test_overlays.png; use it with "
        f"`cnnlab explain {summary['run_dir']} IMAGE`, evaluate, export)"
    )


def _segment_folder(
    data: Path,
    model: str | None,
    class_weight: str,
    background: int,
    background_weight: float | None,
    crop_size: int | None,
    max_side: int | None,
    hflip: bool,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    engine: EngineOptions,
    as_json: bool,
) -> None:
    from cnnlab.report.units import counted
    from cnnlab.tasks.segment_folder import train_segmentation_folder
    from cnnlab.train.finished import FINISHED_EARLIER
    from cnnlab.train.strategy import is_main_process

    with notes_on_stderr(as_json):  # stdout holds the JSON alone
        summary = train_segmentation_folder(
            str(data),
            model or "unet",
            class_weight=None if class_weight == "none" else class_weight,
            background=None if background < 0 else background,
            background_weight=background_weight,
            crop_size=crop_size,
            max_side=max_side,
            hflip=hflip,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            **engine.task_options(as_json),  # notes too: what the data holds that the results depend on, a read-back
        )
    if not is_main_process():  # under torchrun every rank returns the summary; rank 0 alone reports it
        return
    if as_json:
        typer.echo(json.dumps(summary))
        return
    test = summary["test"]
    # without a background class the two means are one figure, said once
    scope = "every class" if test["miou_includes_background"] else "background excluded"
    every = "" if test["miou_includes_background"] else f", every class {test['miou_with_bg']:.4f}"
    tests = counted(summary["images"]["test"], "test image", "test images")
    typer.echo(
        f"{summary['model']}: test mIoU ({scope}) {test['miou']:.4f}{every}, pixel "
        f"accuracy {test['pixel_accuracy']:.4f}; {tests}, {summary['skipped']} skipped; "
        f"{summary['train_seconds']:.0f} s training{f'; {FINISHED_EARLIER}' if summary.get('finished_before') else ''}"
    )
    typer.echo(
        f"run: {summary['run_dir']}  (report.md; `cnnlab predict --model {summary['run_dir']} IMAGE... --output DIR`)"
    )


def register(app: typer.Typer) -> None:
    """Add `segment` to the `train` group."""
    from cnnlab.cli.train import train_app

    train_app.command("segment", help=paragraphs(segment.__doc__ or ""))(segment)
