"""`cnnlab train segment`: semantic segmentation of multi-digit MNIST canvases (FCN-32s/16s/8s, U-Net)."""

from __future__ import annotations

from pathlib import Path

import typer


def segment(
    recipe: str = typer.Option(
        "quick",
        "--recipe",
        "-r",
        help="quick, accurate (19-25 min on 2 cores), unet, fcn8s, fcn32s.",
    ),
    upsample: str | None = typer.Option(None, "--upsample", help="transposed (learned) or bilinear (fixed)."),
    seed: int = typer.Option(0, "--seed", help="Training seed (the canvases are always generated with seed 0)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Override the recipe's batch size."),
    lr: float | None = typer.Option(None, "--lr", help="Override the recipe's peak learning rate."),
    train_canvases: int | None = typer.Option(None, "--train-canvases", help="Training canvases (default: recipe's)."),
    pretrain_epochs: int | None = typer.Option(
        None,
        "--pretrain-epochs",
        help="Epochs pretraining the U-Net's encoder as a digit classifier on the training pool's single digits "
        "before segmentation (default: the recipe's; 0 = none).",
    ),
    precision: str | None = typer.Option(None, "--precision", help="fp32, bf16 or fp16 (autocast)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    name: str | None = typer.Option(None, "--name", help="Run name (default <recipe>-<timestamp>)."),
    output: Path = typer.Option(Path("runs"), "--output", "-o", help="Runs root; the run goes to OUTPUT/segment/NAME."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST root (else $CNNLAB_DATA, else ./data)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run called --name."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run called --name."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or epoch lines."),
) -> None:
    """Train a segmentation network on canvases of 1-5 MNIST digits; test mIoU (digits only) at the end."""
    from cnnlab.errors import CnnlabError
    from cnnlab.tasks.segmentation import get_recipe, train_segmentation
    from cnnlab.train.config import config_overrides

    chosen = get_recipe(recipe)
    if resume and name is None:
        raise CnnlabError("--resume needs the --name of the run to continue")
    overrides = config_overrides(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        precision=precision,
        device=device,
        num_threads=threads,
    )
    sizes = None if train_canvases is None else (train_canvases, *chosen.sizes[1:])
    summary = train_segmentation(
        recipe,
        data_dir=None if data_dir is None else str(data_dir),
        output=str(output),
        name=name,
        seed=seed,
        sizes=sizes,
        overrides=overrides,
        model_kwargs=None if upsample is None else {"upsample": upsample},
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
        pretrain_epochs=pretrain_epochs,
    )
    test = summary["test"]
    typer.echo(
        f"{summary['arch']}: test mIoU (10 digit classes, background excluded) {test['miou']:.4f}, "
        f"with background {test['miou_with_bg']:.4f}, pixel accuracy {test['pixel_accuracy']:.4f}, "
        f"boundary F1 ({test['boundary_tolerance_px']} px) {test['boundary_f1']:.4f}; "
        f"{summary['train_seconds']:.0f} s training"
    )
    typer.echo(f"run: {summary['run_dir']}  (overlays: test_overlays.png; load it with cnnlab.load_model)")


def register(app: typer.Typer) -> None:
    """Add `segment` to the `train` group."""
    from cnnlab.cli.train import train_app

    train_app.command("segment")(segment)
