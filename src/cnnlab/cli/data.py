"""`cnnlab data`: write datasets in the formats the train commands read."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(help="Write example datasets in the formats the train commands read.", no_args_is_help=True)


@data_app.command("segmentation-demo")
def segmentation_demo(
    directory: Path = typer.Argument(..., help="The folder to write (images/, masks/, classes.json)."),
    variant: str = typer.Option(
        "digits",
        "--variant",
        help="digits (grey 64x64 canvases of 1-5 MNIST digits) or rgb (MNIST digits in random colours and sizes on "
        "crops of real photographs, 64-112 px).",
    ),
    count: int = typer.Option(1000, "--count", help="Image + mask pairs to write."),
    seed: int = typer.Option(0, "--seed", help="The generator's seed."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST root (else $CNNLAB_DATA, else ./data)."),
) -> None:
    """Write a segmentation folder to train on with `cnnlab train segment --data DIR`."""
    from cnnlab.data.segmentation_demo import write_segmentation_demo

    summary = write_segmentation_demo(directory, variant, count, None if data_dir is None else str(data_dir), seed)
    (low_h, low_w), (high_h, high_w) = summary["sizes"]
    typer.echo(
        f"wrote {summary['images']} image + mask pairs ({variant}) to {summary['root']} (images/, masks/, "
        f"classes.json: {summary['classes']} classes; sizes {low_w}x{low_h} to {high_w}x{high_h})"
    )
    typer.echo(f"train: cnnlab train segment --data {summary['root']}")


def register(app: typer.Typer) -> None:
    """Add the `data` command group."""
    app.add_typer(data_app, name="data")
