"""`cnnlab ensemble RUN... --name NAME`: one ensemble from saved MNIST runs of any recipes."""

from __future__ import annotations

from pathlib import Path

import typer


def ensemble(
    runs: list[Path] = typer.Argument(
        ..., help="Finished MNIST runs (single models or ensembles, any recipes); an ensemble counts as its members."
    ),
    name: str = typer.Option(..., "--name", help="Name of the new run (OUTPUT/mnist/NAME)."),
    select: str = typer.Option(
        "all",
        "--select",
        help="all: keep every member. greedy: keep the members that greedy forward selection finds best on the "
        "validation split (fewest errors of the averaged probabilities, ties to the lower log loss); the test set "
        "is read after the choice.",
    ),
    output: Path = typer.Option(Path("runs"), "--output", "-o", help="Runs root."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST root (else $CNNLAB_DATA, else ./data)."),
    val_size: int = typer.Option(5000, "--val-size", help="Validation images the members held out when trained."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run called --name."),
) -> None:
    """Average saved MNIST models from several runs (e.g. recipes that err differently) into one loadable ensemble.

    Each member is scored on the validation split every run held out; the ensemble is then tested once.
    """
    from cnnlab.tasks.mnist_ensemble import combine_mnist_ensemble

    summary = combine_mnist_ensemble(
        list(runs),
        name,
        select=select,
        output=output,
        data_dir=None if data_dir is None else str(data_dir),
        val_size=val_size,
        device=device,
        overwrite=overwrite,
    )
    for member in summary["candidates"]:
        test = f"  test {member['test_accuracy']:.4f}" if member["chosen"] else "  (not chosen)"
        typer.echo(
            f"val {member['val_accuracy']:.4f} ({member['val_errors']} errors, log loss {member['val_log_loss']:.4f})"
            f"{test}  {member['run_dir']}"
        )
    typer.echo(
        f"ensemble of {len(summary['chosen'])}: val {summary['val_accuracy']:.4f} ({summary['val_errors']} errors)  "
        f"test {summary['test_accuracy']:.4f} ({summary['test_errors']} errors)"
    )
    typer.echo(
        f"run: {summary['run_dir']}  (use it with `cnnlab predict --model {summary['run_dir']} digit.png`, "
        "evaluate, export)"
    )


def register(app: typer.Typer) -> None:
    """Add the `ensemble` command."""
    app.command("ensemble")(ensemble)
