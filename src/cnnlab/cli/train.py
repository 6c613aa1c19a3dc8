"""`cnnlab train ...`: one subcommand per task. Other task modules add theirs to `train_app`."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cnnlab.cli.engine_options import ENGINE, with_engine_options

if TYPE_CHECKING:
    from cnnlab.train.config import EngineOptions

train_app = typer.Typer(help="Train a model (one subcommand per task).", no_args_is_help=True)

JSON_HELP = "Print the results as JSON on stdout (warnings and notes go to stderr)."


@contextlib.contextmanager
def notes_on_stderr(as_json: bool) -> Iterator[None]:
    """With --json, what a task prints while it runs goes to stderr, so that stdout holds the JSON alone: its notes
    on the results (each file skipped, a finished run read back), which --json dropped with the progress, are kept
    as --json's help says. Without --json, as it is."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


@train_app.command("mnist")
@with_engine_options
def mnist(
    recipe: str = typer.Option(
        "default",
        "--recipe",
        "-r",
        help="default (the most accurate single model, ~20 min on 2 CPU cores), quick (~1 min; what make demo "
        "runs), baseline (Chollet's textbook CNN, Deep Learning with Python 2017, for comparison).",
    ),
    ensemble: int = typer.Option(
        1, "--ensemble", "-n", min=1, help="Train N members (seeds seed..seed+N-1) and average them."
    ),
    member: int | None = typer.Option(
        None,
        "--member",
        help="Train only member K (0-based; seed + K) of --ensemble N in this process, so members can train side by "
        "side (one --threads 1 process per core) or on several machines sharing --output; needs --name. The last "
        "member to finish evaluates and saves the ensemble; `--ensemble N --name NAME --resume` also does. Default: "
        "every member, one after another.",
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST root (else $CNNLAB_DATA, else ./data)."),
    val_size: int = typer.Option(5000, "--val-size", help="Training images held out for validation."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    engine: EngineOptions = ENGINE,
) -> None:
    """Train a CNN from scratch on MNIST; the test set is evaluated once, at the end."""
    from cnnlab.tasks.mnist import RECIPES, train_mnist
    from cnnlab.train.finished import FINISHED_EARLIER, MEMBER_FINISHED_EARLIER
    from cnnlab.train.strategy import is_main_process

    RECIPES.get(recipe)  # fail fast on a typo, before reading data
    with notes_on_stderr(as_json):  # stdout holds the JSON alone
        summary = train_mnist(
            recipe,
            data_dir=None if data_dir is None else str(data_dir),
            ensemble=ensemble,
            member=member,
            val_size=val_size,
            **engine.task_options(as_json),  # notes too: a run read back, the batch trained, early stopping
        )
    if not is_main_process():  # under torchrun every rank returns the summary; rank 0 alone reports it
        return
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from cnnlab.report.units import score

    for member_summary in summary["members"]:
        typer.echo(  # no validation accuracy with --val-size 0: it was a TypeError after the run had finished
            f"seed {member_summary['seed']}: val {score(member_summary['val_accuracy'])}  "
            f"test {score(member_summary['test_accuracy'])}  ({member_summary['train_seconds']:.0f} s training, "
            f"{member_summary['images_per_second']:.0f} img/s)  {member_summary['run_dir']}"
        )
    if summary.get("finished_before"):  # the times above are those of its sessions, not of this command
        # a --member process reads finished members back without --resume: say which of the two found it finished
        typer.echo(FINISHED_EARLIER if engine.resume else MEMBER_FINISHED_EARLIER)
    if summary.get("missing_members"):  # no ensemble to use yet: "use it with cnnlab predict" failed on it
        typer.echo(f"members still to train (seeds): {summary['missing_members']}; the ensemble is saved once they are")
        typer.echo(f"run: {summary['run_dir']}")
        return
    if "ensemble_test_accuracy" in summary:
        typer.echo(f"ensemble of {ensemble}: test {summary['ensemble_test_accuracy']:.4f}")
    typer.echo(
        f"run: {summary['run_dir']}  (report.md; use it with `cnnlab predict --model {summary['run_dir']} digit.png`, "
        "evaluate, export)"
    )


def register(app: typer.Typer) -> None:
    """Add the `train` command group."""
    app.add_typer(train_app, name="train")
