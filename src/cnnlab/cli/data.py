"""`cnnlab data`: write datasets in the formats the train commands read."""

from __future__ import annotations

from pathlib import Path

import typer

from cnnlab.cli.engine_options import quiet_option
from cnnlab.cli.help_text import paragraphs

data_app = typer.Typer(help="Write example datasets in the formats the train commands read.", no_args_is_help=True)


def segmentation_demo(
    directory: Path = typer.Argument(..., help="The folder to write (images/, masks/, classes.json)."),
    variant: str = typer.Option(
        "digits",
        "--variant",
        help="digits (grey 64x64 canvases of 1-5 MNIST digits) or rgb (MNIST digits in random colours and sizes on "
        "crops of real photographs, 64-112 px: scikit-learn's, and scikit-image's where it is installed, so a seed "
        "gives other pairs without it).",
    ),
    count: int = typer.Option(1000, "--count", help="Image + mask pairs to write."),
    seed: int = typer.Option(0, "--seed", help="The generator's seed."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST root (else $CNNLAB_DATA, else ./data)."),
    quiet: bool = quiet_option(),
) -> None:
    """Write a segmentation folder to train on with `cnnlab train segment --data DIR`.

    After Ctrl+C the folder trains on the pairs written so far (classes.json comes first, each pair whole), and the
    same command again writes the rest (an rgb folder with the photographs it began with: scikit-image installed or
    not, as then).
    """
    from cnnlab.data.segmentation_demo import interrupted_demo, write_segmentation_demo
    from cnnlab.train.progress import ProgressBar

    try:
        with ProgressBar(count, f"writing {count} image + mask pairs", enabled=not quiet) as bar:
            summary = write_segmentation_demo(
                directory, variant, count, None if data_dir is None else str(data_dir), seed, advance=bar.advance
            )
    except KeyboardInterrupt:
        written = interrupted_demo(directory)
        if written == 0:
            typer.echo(f"stopped before the first pair; the same command writes {directory}", err=True)
        elif written is not None:
            typer.echo(
                f"stopped after {written} of {count} pairs: {directory} trains on them as it is; the same command "
                "writes the rest",
                err=True,
            )
        raise
    if summary["kept"]:
        typer.echo(f"continued: kept the {summary['kept']} pairs an interrupted run had written", err=True)
    (low_h, low_w), (high_h, high_w) = summary["sizes"]
    typer.echo(
        f"wrote {summary['images']} image + mask pairs ({variant}) to {summary['root']} (images/, masks/, "
        f"classes.json: {summary['classes']} classes; sizes {low_w}x{low_h} to {high_w}x{high_h})"
    )
    typer.echo(f"train: cnnlab train segment --data {summary['root']}")


data_app.command("segmentation-demo", help=paragraphs(segmentation_demo.__doc__ or ""))(segmentation_demo)


def register(app: typer.Typer) -> None:
    """Add the `data` command group."""
    app.add_typer(data_app, name="data")
