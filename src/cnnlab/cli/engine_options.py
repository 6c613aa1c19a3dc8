"""The engine options of every ``cnnlab train`` subcommand, defined once.

`with_engine_options` adds the same typer options to a command (``--epochs``, ``--lr``, ``--batch-size N|auto``,
``--accum N|auto``, ``--precision``, ``--grad-checkpointing``, ``--channels-last``, ``--compile``, ``--threads``,
``--device``, ``--seed``, ``--resume``, ``--name``, ``--output``, ``--overwrite``, ``--quiet``, ``--tensorboard``)
and hands them to it as one `cnnlab.train.config.EngineOptions` in its ``engine`` argument. A command declares only
its own options. Every engine option defaults to "the recipe's value", so no command retypes a recipe's defaults.

`threads_option` is the same ``--threads`` for the commands outside ``train`` that compute (predict, evaluate,
explain, budget, ensemble, experiment, answers, export, fcn scan, fcn convert): a user who trained with ``--threads
1`` next to other work predicts, sizes, exports and scans that way too. `device_option` is the same ``--device`` for
those whose work runs on torch tensors (predict, evaluate, explain, ensemble, experiment, answers, fcn scan), checked
by `resolve_device` before it (`apply_device`, or the task); not export and fcn convert, which trace or convert on
the CPU so that the file they write holds no device (a traced graph keeps the device it ran on). `quiet_option` is
``--quiet``/``-q`` for those outside ``train`` that show progress (export among them), with the one promise of
`QUIET_HELP`: no progress, but the results, notes on them and errors.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

__all__ = [
    "ENGINE",
    "ENGINE_OPTIONS",
    "QUIET_HELP",
    "apply_device",
    "apply_threads",
    "device_option",
    "quiet_option",
    "threads_option",
    "with_engine_options",
]

# What -q promises, on every command that takes it: no progress (bars, epoch lines, lines saying what it is doing);
# what the results need to be read right (a note on the precision they were computed in, a file skipped) and errors
# are still said. Notes of progress are therefore given only without -q; notes on the results always.
QUIET_HELP = (
    "No progress bars or progress lines; results, notes on them (the precision they were computed in, files "
    "skipped) and errors are still printed."
)

ENGINE: Any = None  # the default of a command's `engine` parameter; `with_engine_options` fills it in

_PANEL = "Engine options (every train command; an option left out takes the recipe's value)"

# name -> (annotation, default, option names, help); a default of None means "the recipe's value".
ENGINE_OPTIONS: dict[str, tuple[Any, Any, tuple[str, ...], str]] = {
    "epochs": (int | None, None, ("--epochs",), "Training epochs (of the main phase, for tasks with several)."),
    "lr": (float | None, None, ("--lr",), "Peak learning rate (of the main phase)."),
    "batch_size": (
        str | None,
        None,
        ("--batch-size", "-b"),
        "Images per optimizer step: N, or auto (the largest batch that fits in memory, found before training by "
        "running real steps; for data held in memory: a folder read through a DataLoader takes N and --accum auto).",
    ),
    "accum": (
        str | None,
        None,
        ("--accum",),
        "Micro-batches per optimizer step (gradient accumulation): N, or auto (as many as memory needs to keep "
        "--batch-size). The update is the whole batch's, but for BatchNorm, which normalises each micro-batch on "
        "its own (most models; not the MNIST baseline, nor transfer's frozen batch norm).",
    ),
    "precision": (str | None, None, ("--precision",), "fp32, bf16 or fp16 (autocast; fp16 with loss scaling)."),
    "grad_checkpointing": (
        bool | None,
        None,
        ("--grad-checkpointing",),
        "Recompute the model stages' activations in backward: less memory for about a third more compute (refused "
        "where there is no stage to recompute: a classifier alone on cached features, transfer --recipe quick).",
    ),
    "channels_last": (
        bool | None,
        None,
        ("--channels-last/--no-channels-last",),
        "NHWC memory format for the model and its inputs (often faster on CPUs and on tensor cores).",
    ),
    "compile": (
        bool | None,
        None,
        ("--compile",),
        "Wrap the model in torch.compile (on a CPU it needs a C++ compiler, and its first steps compile for minutes).",
    ),
    "threads": (
        int | None,
        None,
        ("--threads",),
        "CPU threads for torch, from the start (a transfer run's feature cache too; default: torch's choice).",
    ),
    "device": (
        str | None,
        None,
        ("--device",),
        "auto (a CUDA GPU when there is one), cpu, cuda, cuda:N or mps (Apple GPUs).",
    ),
    "seed": (int, 0, ("--seed",), "Seed of the initial weights, the data order and the augmentation."),
    "resume": (bool, False, ("--resume",), "Continue the interrupted run called --name; finished epochs are kept."),
    "name": (str | None, None, ("--name",), "Run name (default: <recipe>-<date>-<time>)."),
    "output": (Path, Path("runs"), ("--output", "-o"), "Runs root; a run goes to OUTPUT/<task>/<name>."),
    "overwrite": (bool, False, ("--overwrite",), "Replace an existing run called --name."),
    "quiet": (
        bool,
        False,
        ("--quiet", "-q"),
        "No progress bars or epoch lines; results, notes on them (files skipped, a class with no training pixels, "
        "the batch a search chose, early stopping, the epoch whose weights were kept) and errors are still printed.",
    ),
    "tensorboard": (  # the bracket escaped: Typer renders help as Rich markup, which would drop "[lab]"
        bool | None,
        None,
        ("--tensorboard",),
        "Write TensorBoard event files into the run folder (tensorboard --logdir runs); needs cnnlab\\[lab].",
    ),
}


def threads_option() -> Any:
    """``--threads N`` for a command outside ``train``; the command gives it to `apply_threads` before its work."""
    return typer.Option(None, "--threads", help="CPU threads for torch, at least 1 (default: torch's choice).")


def apply_threads(threads: int | None) -> None:
    """Give torch `threads` CPU threads (None: torch's choice); below 1 is refused in the line the train commands
    give (`EngineOptions`), not typer's usage box."""
    from cnnlab.errors import CnnlabError
    from cnnlab.train.config import use_threads

    if threads is not None and threads < 1:
        raise CnnlabError(f"--threads must be >= 1, got {threads}")
    use_threads(threads)


def device_option(help_text: str = "", default: str | None = "cpu") -> Any:
    """``--device`` for a command outside ``train``, by the names every ``--device`` takes; `help_text` adds what the
    device runs in this command (and what None, a `default` of "each part's own", means). The command checks it
    (`apply_device`, or its task) before its work."""
    return typer.Option(
        default,
        "--device",
        help="cpu, cuda, cuda:N, mps (Apple GPUs) or auto (a CUDA GPU when there is one)."
        + (f" {help_text}" if help_text else ""),
    )


def apply_device(device: str) -> str:
    """The device named by `device`, checked on this machine as the train commands check theirs
    (`train.device.resolve_device`: a typo, or cuda without a GPU, is one line), as a name: "auto" becomes the device
    it picks.

    Raises:
        CnnlabError: an unknown name, or a device this machine lacks.
    """
    from cnnlab.train.device import resolve_device

    return str(resolve_device(device))


def quiet_option() -> Any:
    """``--quiet``/``-q`` for a command outside ``train`` that shows progress, as the train commands take it."""
    return typer.Option(False, "--quiet", "-q", help=QUIET_HELP)


def with_engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a typer command the engine options; it receives them as ``engine: EngineOptions``.

    The command's own signature must have an ``engine`` parameter and none named like an engine option.
    """
    signature = inspect.signature(command)
    if "engine" not in signature.parameters:
        raise TypeError(f"{command.__name__} needs an `engine` parameter to receive the engine options")
    clash = set(signature.parameters) & set(ENGINE_OPTIONS)
    if clash:
        raise TypeError(f"{command.__name__} defines engine options itself: {', '.join(sorted(clash))}")
    # The command's own annotations, evaluated (`engine`'s type is imported for type checkers only: --help stays
    # free of torch).
    own = [
        p.replace(annotation=eval(p.annotation, command.__globals__) if isinstance(p.annotation, str) else p.annotation)  # noqa: S307
        for p in signature.parameters.values()
        if p.name != "engine"
    ]
    added = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(default, *names, help=text, rich_help_panel=_PANEL),
            annotation=annotation,
        )
        for name, (annotation, default, names, text) in ENGINE_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        from cnnlab.errors import CnnlabError
        from cnnlab.train.config import ENGINE_FLAGS, EngineOptions, OptionError, SlowPrecisionWarning

        values = {name: kwargs.pop(name) for name in ENGINE_OPTIONS}
        values["output"] = str(values["output"])
        engine = EngineOptions(**values)
        if engine.slow_precision is not None:  # said before any data is read, naming the flag, ...
            warnings.warn(SlowPrecisionWarning(engine.slow_precision, ENGINE_FLAGS), stacklevel=2)
        engine.apply_threads()  # before the task's own work on the data, not from its first Trainer on
        try:
            with warnings.catch_warnings():
                if engine.slow_precision is not None:  # ... so the trainer's same warning is said no more
                    warnings.filterwarnings("ignore", category=SlowPrecisionWarning)
                return command(**kwargs, engine=engine)
        except OptionError as error:  # the recipe's options with the user's: named as flags, not TrainConfig fields
            raise CnnlabError(engine.phrased(error)) from None

    del wrapper.__wrapped__  # typer reads the new signature, not the command's
    wrapper.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
    return wrapper
