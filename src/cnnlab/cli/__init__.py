"""The `cnnlab` command line: a thin layer that parses options, calls library functions and prints.

Each command group lives in its own module here and registers itself on `app`; no command holds logic that the
library lacks. Errors in user input (`CnnlabError`) are printed on one line with exit code 2, never a traceback;
so are errors of the file system (`OSError`: a folder that cannot be made, no permission, a full disk), with exit
code 1.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

import typer

from cnnlab.errors import CnnlabError

app = typer.Typer(
    name="cnnlab",
    help="Understand, size, build, train, transfer and convert convolutional neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(
    context: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the cnnlab version and exit."),
) -> None:
    """Understand, size, build, train, transfer and convert convolutional neural networks."""
    if version:
        from cnnlab import __version__

        typer.echo(f"cnnlab {__version__}")
        raise typer.Exit()
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())
        raise typer.Exit()


# Command modules, in the order their commands appear in --help. Each defines `register(app)`.
# `train_*` modules add subcommands to the `train` group defined in cli/train.py (`train_app`).
_COMMAND_MODULES = [
    "answers",
    "budget",
    "zoo",
    "train",
    "train_transfer",
    "train_segment",
    "ensemble",
    "evaluate",
    "predict",
    "export",
    "fcn",
    "experiment",
    "explain",
    "lab",
    "data",
]


def _register_commands() -> None:
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cnnlab.cli.{module_name}")
        except ModuleNotFoundError as error:
            if error.name == f"cnnlab.cli.{module_name}":
                continue  # a command group not built yet
            raise
        module.register(app)


def _one_line_summaries(group: typer.Typer) -> None:
    """Give every command of `group` (and of its sub-groups) a summary on one line for the group's command list.

    Typer lists a command by the first paragraph of its docstring, and in Rich markup mode it keeps that paragraph's
    line breaks, so a docstring wrapped at 120 columns showed as ragged rows in `cnnlab --help`.
    """
    for info in group.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if info.short_help is None and doc:
            info.short_help = " ".join(doc.strip().split("\n\n")[0].split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _one_line_summaries(sub.typer_instance)


_register_commands()
_one_line_summaries(app)


def main() -> None:
    """Entry point of the `cnnlab` console script and of `python -m cnnlab`."""
    warnings.formatwarning = _format_warning
    try:
        app()
    except SystemExit as done:
        if not done.code:  # click ends a successful command with SystemExit(0)
            _leave_distributed_job()
        if _interrupted(done) and (line := _interrupted_line()):  # typer turns Ctrl+C into an exit with code 130
            print(line, file=sys.stderr)
        raise
    except CnnlabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # a folder that cannot be made, a full disk, no permission: no traceback
        print(f"error: {_describe(error)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if line := _interrupted_line():
            print(line, file=sys.stderr)
        sys.exit(130)


_DEFAULT_FORMAT = warnings.formatwarning


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """cnnlab's own warnings as a line a user reads, ``warning: ...`` (they came with the source file and line that
    raised them, and that line's code); other libraries' as Python formats them."""
    if category.__module__.split(".")[0] == "cnnlab":
        return f"warning: {message}\n"
    return _DEFAULT_FORMAT(message, category, filename, lineno, line)


def _interrupted(done: SystemExit) -> bool:
    """Whether `done` ends a command that Ctrl+C interrupted (a KeyboardInterrupt in its chain of causes)."""
    error: BaseException | None = done
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


def _interrupted_line() -> str:
    """The line an interruption prints: how to continue the run it stopped, if a task had started one ("" in the
    processes of a torchrun job other than rank 0: Ctrl+C reaches them all, and each printed the same line)."""
    if os.environ.get("RANK", "0") != "0":
        return ""
    recipes = sys.modules.get("cnnlab.tasks.recipes")  # not imported (nor torch) when nothing had started
    hint = recipes.interrupted_hint() if recipes is not None else None
    return f"interrupted: {hint}" if hint else "interrupted"


def _describe(error: OSError) -> str:
    """The system's reason and the path; where a folder was needed but a file stands, that file named."""
    if error.filename is None:
        return str(error.strerror or error)
    path = Path(error.filename)
    if isinstance(error, FileExistsError | NotADirectoryError):  # mkdir on, or under, a file
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            return f"{blocking} is a file, where a folder is needed" + ("" if blocking == path else f" (for {path})")
    return f"{error.strerror or error}: {path}"


def _leave_distributed_job() -> None:
    """Destroy the torchrun job's process group after a successful command (a no-op outside torchrun).

    A gloo process that exits with its group alive can abort in the backend's threads during interpreter shutdown
    ("terminate called without an active exception", pytorch/pytorch#190489), which torchrun reports as a failed
    job after the work is done. Not after an error: a peer may still be inside a collective, and torchrun stops the
    job anyway. torch.distributed is looked up, not imported, so commands that never load torch stay fast.
    """
    if "torch.distributed" in sys.modules:
        from cnnlab.train.strategy import cleanup

        cleanup()
