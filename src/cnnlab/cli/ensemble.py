"""`cnnlab ensemble RUN... --name NAME`: one ensemble from saved MNIST runs of any recipes."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cnnlab.cli.engine_options import apply_threads, device_option, threads_option


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
    val_size: int | None = typer.Option(
        None,
        "--val-size",
        min=0,
        help="Validation images to score the members on (default: the fewest any member held out, as each run "
        "records; more is refused, since that member trained on them; 0: no validation, --select all only).",
    ),
    device: str = device_option(),
    threads: int | None = threads_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run called --name."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the results as JSON on stdout (warnings and notes go to stderr)."
    ),
) -> None:
    """Average saved MNIST models from several runs (e.g. recipes that err differently) into one loadable ensemble.

    Each member is scored on the validation images that every member held out; the ensemble is then tested once.
    """
    from cnnlab.tasks.mnist_ensemble import combine_mnist_ensemble

    apply_threads(threads)

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
    if as_json:  # its results.json
        typer.echo(json.dumps(summary))
        return

    def validation(scores: dict, log_loss: bool) -> str:
        if scores["val_accuracy"] is None:
            return "val - (no validation images)"
        loss = f", log loss {scores['val_log_loss']:.4f}" if log_loss else ""
        return f"val {scores['val_accuracy']:.4f} ({scores['val_errors']} errors{loss})"

    for member in summary["candidates"]:
        test = f"  test {member['test_accuracy']:.4f}" if member["chosen"] else "  (not chosen)"
        typer.echo(f"{validation(member, True)}{test}  {member['run_dir']}")
    typer.echo(
        f"ensemble of {len(summary['chosen'])}: {validation(summary, False)}  "
        f"test {summary['test_accuracy']:.4f} ({summary['test_errors']} errors)"
    )
    typer.echo(
        f"run: {summary['run_dir']}  (report.md; use it with `cnnlab predict --model {summary['run_dir']} digit.png`, "
        "evaluate, export)"
    )


def register(app: typer.Typer) -> None:
    """Add the `ensemble` command."""
    app.command("ensemble")(ensemble)
