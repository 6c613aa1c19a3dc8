"""`cnnlab answers`: the chapter's answer sheet, every number measured by the run that writes it."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnlab.cli.engine_options import apply_threads, device_option, threads_option


def answers_command(
    full: Annotated[
        bool,
        typer.Option(
            "--full/--quick",
            help="--quick (default): subsets and quick recipes, a few minutes on 2 CPU cores. --full: the full "
            "recipes and experiment sizes, about an hour on a CPU.",
        ),
    ] = False,
    output: Annotated[
        str, typer.Option("--output", "-o", help="Folder for answers.md, answers.json, figures and the runs.")
    ] = "runs/answers",
    runs: Annotated[
        str | None,
        typer.Option(
            help="A runs root (e.g. runs, not runs/mnist) whose finished runs are used instead of training again: "
            "experiment/NAME, mnist/* of the mode's recipe, segment/*, transfer/* (default: none, every answer "
            "measured now)."
        ),
    ] = None,
    exercise: Annotated[
        list[int] | None,
        typer.Option(
            "--exercise",
            "-e",
            help="Only this exercise, 1-10 (repeatable; default: all ten); others measured into OUTPUT earlier, in the "
            "same mode, stay in the sheet.",
        ),
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="MNIST root (default: $CNNLAB_DATA, else ./data).")] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Measure every (chosen) exercise again. Without it, exercises an earlier (interrupted) invocation "
            "finished in OUTPUT, in the same mode, are read back."
        ),
    ] = False,
    threads: int | None = threads_option(),
    device: str | None = device_option(
        "Where the sheet's training runs (MNIST, segmentation, transfer) and experiments train and are tested "
        "(default: each one's own, auto for the runs and cpu for the experiments, whose times the sheet compares). "
        "The sheet's small measurements of its own (one memory-measured step, a few predictions) and the runs it "
        "reads back (--runs, an earlier invocation's) are not run again on it.",
        default=None,
    ),
) -> None:
    """Answer the ten CNN exercises of Géron's chapter 14 with evidence measured now: writes OUTPUT/answers.md."""
    from cnnlab.tasks.answers import run_answers

    apply_threads(threads)

    sheet = run_answers(
        "full" if full else "quick",
        output=output,
        runs=runs,
        data_dir=data_dir,
        exercises=tuple(exercise or ()),
        overwrite=overwrite,
        device=device,
    )
    typer.echo(f"answer sheet: {sheet}")


def register(app: typer.Typer) -> None:
    app.command("answers")(answers_command)
