"""`cnnlab demo`: the main job on embedded defaults (what `make demo` runs)."""

from __future__ import annotations

from typing import Annotated

import typer


def demo_command(
    output: Annotated[str, typer.Option(help="Folder for the demo's report and runs.")] = "runs/demo",
    data_dir: Annotated[str | None, typer.Option(help="Dataset root (default: $CNNLAB_DATA, else ./data).")] = None,
    stage: Annotated[
        list[str] | None, typer.Option(help="Run only this stage (repeatable): budget, train, fcn, photos.")
    ] = None,
) -> None:
    """Budget the exercise CNN, train a quick MNIST CNN, convert it to an FCN and scan digits, classify photos."""
    from cnnlab.tasks.demo import run_demo

    run_demo(output, data_dir=data_dir, stages=tuple(stage or ()))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
