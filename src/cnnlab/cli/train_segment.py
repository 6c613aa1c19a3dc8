"""`cnnlab train segment`: semantic segmentation of multi-digit MNIST canvases (FCN-32s/16s/8s, U-Net)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cnnlab.cli.engine_options import ENGINE, with_engine_options

if TYPE_CHECKING:
    from cnnlab.train.config import EngineOptions


@with_engine_options
def segment(
    recipe: str = typer.Option(
        "quick",
        "--recipe",
        "-r",
        help="quick (U-Net, a few minutes; the demo), accurate (U-Net, about 20 min on 2 cores), unet (a smaller "
        "U-Net, for comparison), fcn8s, fcn32s (FCN on a ResNet-18 trunk).",
    ),
    upsample: str | None = typer.Option(None, "--upsample", help="transposed (learned) or bilinear (fixed)."),
    train_canvases: int | None = typer.Option(
        None, "--train-canvases", min=1, help="Training canvases (default: the recipe's)."
    ),
    pretrain_epochs: int | None = typer.Option(
        None,
        "--pretrain-epochs",
        min=0,
        help="Epochs pretraining the U-Net's encoder as a digit classifier on the training pool's single digits "
        "before segmentation (default: the recipe's; 0 = none).",
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST root (else $CNNLAB_DATA, else ./data)."),
    engine: EngineOptions = ENGINE,
) -> None:
    """Train a segmentation network on canvases of 1-5 MNIST digits; test mIoU (digits only) at the end.

    The canvases are always generated with seed 0, so every run sees the same data; --seed seeds the training.
    """
    from cnnlab.tasks.segmentation import RECIPES, train_segmentation

    RECIPES.get(recipe)  # fail fast on a typo, before generating canvases
    summary = train_segmentation(
        recipe,
        data_dir=None if data_dir is None else str(data_dir),
        output=engine.output,
        name=engine.name,
        seed=engine.seed,
        train_canvases=train_canvases,
        overrides=engine.overrides(),
        model_kwargs=None if upsample is None else {"upsample": upsample},
        resume=engine.resume,
        overwrite=engine.overwrite,
        progress=not engine.quiet,
        pretrain_epochs=pretrain_epochs,
    )
    test = summary["test"]
    typer.echo(
        f"{summary['arch']}: test mIoU (10 digit classes, background excluded) {test['miou']:.4f}, "
        f"with background {test['miou_with_bg']:.4f}, pixel accuracy {test['pixel_accuracy']:.4f}, "
        f"boundary F1 ({test['boundary_tolerance_px']} px) {test['boundary_f1']:.4f}; "
        f"{summary['train_seconds']:.0f} s training"
    )
    typer.echo(f"run: {summary['run_dir']}  (report.md, test_overlays.png; load it with cnnlab.load_model)")


def register(app: typer.Typer) -> None:
    """Add `segment` to the `train` group."""
    from cnnlab.cli.train import train_app

    train_app.command("segment")(segment)
