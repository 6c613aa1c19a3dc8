"""What every task's recipes share: the recipe base, the registry of a task's recipes, and the run-name rule.

A recipe is a named, frozen choice of model and training options that a user picks with ``--recipe``; each task
extends `Recipe` with its own fields (MNIST: augmentation; segmentation: canvases and loss weights; transfer: phases)
and keeps its recipes in a `RecipeBook`. Command-line engine options override a recipe's `train` fields, never the
other way round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cnnlab.errors import CnnlabError, first_line

if TYPE_CHECKING:
    from cnnlab.train.config import TrainConfig

__all__ = [
    "Recipe",
    "RecipeBook",
    "check_resume_or_overwrite",
    "check_start",
    "check_not_training",
    "describe_overrides",
    "interrupted_hint",
    "note_current_run",
    "run_name",
    "with_overrides",
]

# The run this process is writing, for the line `cnnlab` prints when Ctrl+C interrupts it (`interrupted_hint`).
_CURRENT_RUN: dict[str, Any] = {}


def note_current_run(
    run_dir: str | Path,
    again: bool = False,
    again_without: str | None = None,
    finished_any: Callable[[], bool] | None = None,
) -> None:
    """Remember the run this process writes: a train run continues with ``--resume --name NAME``; with `again`
    (an experiment, whose finished runs are read back) the same command continues it, less the option
    `again_without` where one was given that would start it over (``--overwrite``). `finished_any` tells, when it is
    interrupted, whether any of its runs had finished (None: not known, so not said)."""
    _CURRENT_RUN.update(run_dir=Path(run_dir), again=again, again_without=again_without, finished_any=finished_any)


def interrupted_hint() -> str | None:
    """How to continue the run that an interruption stopped; None before a task has started one."""
    if not _CURRENT_RUN:
        return None
    run_dir = _CURRENT_RUN["run_dir"]
    if _CURRENT_RUN["again"]:
        without = f", without {_CURRENT_RUN['again_without']}," if _CURRENT_RUN.get("again_without") else ""
        finished_any = _CURRENT_RUN.get("finished_any")
        if finished_any is not None and not finished_any():  # "keeps what it finished" when nothing had finished
            return (
                f"no run in {run_dir} had finished yet (it keeps the epochs it checkpointed); the same command "
                f"again{without} goes on from there"
            )
        return f"{run_dir} keeps what it finished; the same command again{without} reads it back and goes on"
    return f"{run_dir} keeps its finished epochs; continue with the same command and --resume --name {run_dir.name}"


@dataclass(frozen=True)
class Recipe:
    """A named way to train a model for a task.

    Attributes:
        name: the recipe's name (``--recipe``).
        summary: one line for ``--help``, the run record and report.md.
        arch: registered model name (`cnnlab.models.create_model`).
        model_kwargs: constructor options of the model.
        train: `cnnlab.train.TrainConfig` fields (the engine options the recipe chooses).
    """

    name: str
    summary: str
    arch: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (for config.yaml, results.json and ``--help``)."""
        return json_ready(dataclasses.asdict(self))


R = TypeVar("R", bound=Recipe)


class RecipeBook(Generic[R]):
    """A task's recipes by name; the first one given is the default.

    Args:
        task: the task's name as messages show it (``MNIST``, ``segmentation``, ``transfer``).
        recipes: the recipes, default first; names must be unique.
    """

    def __init__(self, task: str, recipes: Iterable[R]) -> None:
        self.task = task
        self._recipes: dict[str, R] = {}
        for recipe in recipes:
            if recipe.name in self._recipes:
                raise ValueError(f"{task} recipe {recipe.name!r} is defined twice")
            self._recipes[recipe.name] = recipe

    def get(self, name: str) -> R:
        """The recipe called `name`; a `CnnlabError` that lists the known ones otherwise."""
        if name not in self._recipes:
            raise CnnlabError(f"unknown {self.task} recipe {name!r}; choose one of {', '.join(self._recipes)}")
        return self._recipes[name]

    @property
    def default(self) -> R:
        return next(iter(self._recipes.values()))

    def names(self) -> list[str]:
        return list(self._recipes)

    def table(self) -> list[dict[str, str]]:
        """Name and summary of every recipe."""
        return [{"name": r.name, "summary": r.summary} for r in self._recipes.values()]

    def help(self) -> str:
        """One line per recipe for a ``--recipe`` option's help."""
        return "; ".join(f"{r.name}: {r.summary}" for r in self._recipes.values())

    def __contains__(self, name: object) -> bool:
        return name in self._recipes

    def __iter__(self) -> Iterator[R]:
        return iter(self._recipes.values())

    def __len__(self) -> int:
        return len(self._recipes)


def with_overrides(recipe: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A recipe's engine options with the user's on top. When ``--epochs`` shortens the run, the recipe's warm-up
    takes at most half of it: 2 warm-up epochs of 10, run for 2, warmed up for the whole run and ended at the peak
    learning rate, never annealed. Half, not the recipe's share: the warm-up keeps the first steps stable, and a
    1-epoch quick MNIST run on 3,072 images warmed up for 6 of its 24 steps rather than 12 fell from 0.83 to 0.52
    validation accuracy (2 steps: 0.16)."""
    options = {**recipe, **(overrides or {})}
    epochs, planned, warmup = options.get("epochs"), recipe.get("epochs"), recipe.get("warmup_epochs")
    if "warmup_epochs" not in (overrides or {}) and warmup and planned and epochs and 0 < epochs < planned:
        options["warmup_epochs"] = min(warmup, epochs / 2)
    return options


def describe_overrides(recipe: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> str:
    """The options given on top of a recipe, as a report's summary line says them: ``"; given: epochs 1 (the
    recipe's 2), device cpu"``, or "" when none changes the recipe.

    A recipe's summary names its own numbers ("2 epochs"); a run given ``--epochs 1`` whose report repeated the
    summary alone said it had trained for 2.
    """
    changed = []
    for key, value in (overrides or {}).items():
        if value is None or (key in recipe and recipe[key] == value):
            continue
        changed.append(f"{key} {value}" + (f" (the recipe's {recipe[key]})" if key in recipe else ""))
    return "; given: " + ", ".join(changed) if changed else ""


def run_name(recipe: str) -> str:
    """The default run name of every task: ``<recipe>-<YYYYmmdd-HHMMSS>`` (unique per start, sorts by time)."""
    return f"{recipe}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_start(
    run_dir: Path,
    manifest: str,
    resume: bool,
    overwrite: bool,
    options: Mapping[str, Any] | None = None,
    free: Collection[str] = (),
) -> None:
    """Check ``--resume`` and ``--overwrite`` against what ``run_dir`` holds, before the task reads its data or
    writes its split there (a run reads its folder's split ``manifest`` back only when resumed).

    Without either flag, a folder holding a finished run (``model.json``) or an interrupted one (a ``checkpoint.pt``
    in it or in a phase folder) is refused: the new split would be written over the one its checkpoints were
    trained on. A folder a failed start left (a split, no checkpoint) is started again. With `resume`, see
    `check_resume` (`options` and `free`).
    """
    check_resume_or_overwrite(resume, overwrite)
    check_not_training(run_dir)
    if resume:
        check_resume(run_dir, manifest, options, free)
        return
    if overwrite:
        return
    from cnnlab.train.checkpoint import CHECKPOINT_NAME
    from cnnlab.train.saved import MODEL_SPEC

    if (run_dir / MODEL_SPEC).is_file():
        raise CnnlabError(f"{run_dir} already holds a finished run; pass --overwrite, --resume or another --name")
    if (run_dir / CHECKPOINT_NAME).is_file() or any(run_dir.glob(f"*/{CHECKPOINT_NAME}")):
        raise CnnlabError(
            f"{run_dir} holds an interrupted run; pass --resume to continue it, --overwrite to start again, "
            "or choose another --name"
        )


def engine_resumes(run_dir: Path, resume: bool) -> bool:
    """Whether the engine continues the run in `run_dir` from its checkpoint: `resume` was asked, and a checkpoint is
    there. A run interrupted before its first epoch ended has none, and trains again from the start (a resume of it
    failed with "no checkpoint", where the Ctrl+C line had said to pass --resume)."""
    from cnnlab.train.checkpoint import CHECKPOINT_NAME

    return resume and (run_dir / CHECKPOINT_NAME).is_file()


def check_not_training(*run_dirs: Path) -> None:
    """Refuse to start, continue (--resume) or replace (--overwrite) a run that another process of this machine trains
    now (`cnnlab.train.records.live_session`), before anything is written or removed: both went ahead, and the folder
    ended up mixed (one command's config.yaml, the other's model and results). Each of `run_dirs` is checked."""
    from cnnlab.train.records import live_session

    for run_dir in run_dirs:
        live = live_session(run_dir)
        if live is not None:
            raise CnnlabError(
                f"{run_dir} is being trained now by {live}; wait for it to finish, or stop that process, then run this "
                "command again"
            )


def check_resume_or_overwrite(resume: bool, overwrite: bool) -> None:
    """Refuse ``--resume`` with ``--overwrite``: they ask for opposite things, and the resume went ahead unsaid."""
    if resume and overwrite:
        raise CnnlabError("--resume continues a run and --overwrite starts it again; pass one of them")


def check_resume(
    run_dir: Path, manifest: str, options: Mapping[str, Any] | None = None, free: Collection[str] = ()
) -> None:
    """Refuse ``--resume`` of a run that never started (no split ``manifest`` in ``run_dir``), before anything is
    written: a task would otherwise start a new run under that name, or leave a folder behind.

    With `options` (the task's config as a mapping), also refuse to resume under options other than those its
    ``config.yaml`` records, except those that only say where and how to run (`RESUMABLE_TASK_OPTIONS`, and in
    ``train`` the engine's `RESUME_FREE_OPTIONS`): a task whose phases each check their engine options still let
    another recipe, other views or another image size retrain inside the run. `free` names more options left out,
    nested ones as ``extra.classes`` (those the task learns only from its data, which the engine compares later).
    """
    from cnnlab.train.finished import is_finished

    # a finished run is read back without its split (deleted since): it lists nothing the read-back needs
    if not (run_dir / manifest).is_file() and not is_finished(run_dir):
        raise CnnlabError(f"--resume: there is no run at {run_dir} to continue; start it without --resume")
    recorded = run_dir / "config.yaml"
    if options is None:
        return
    if not recorded.is_file():
        if is_finished(run_dir):  # it wrote one: read back, it would stand for this command's options unchecked
            raise config_missing(run_dir)
        return  # stopped before its first phase wrote it: nothing trained to compare
    import yaml

    from cnnlab.train.config import RESUME_FREE_OPTIONS, check_resumable

    def engine_free(values: Any) -> dict[str, Any]:  # the engine options in "train" that may change, left out
        values = dict(json_ready(values or {}))
        if isinstance(values.get("train"), dict):
            values["train"] = {k: v for k, v in values["train"].items() if k not in RESUME_FREE_OPTIONS}
        return values

    try:
        document = yaml.safe_load(recorded.read_text())
        if not isinstance(document, dict | None):
            raise ValueError(f"a YAML {type(document).__name__}, not a run's record")
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        raise config_unreadable(run_dir, error) from None
    saved = engine_free((document or {}).get("config"))
    check_resumable(saved, engine_free(options), run_dir, free=RESUMABLE_TASK_OPTIONS | set(free))


def load_run_config(run_dir: Path) -> TrainConfig:
    """The engine config the finished run in `run_dir` recorded in its config.yaml, for --resume to compare.

    Raises:
        CnnlabError: config.yaml is missing (`config_missing`), or cannot be read as a run's (`config_unreadable`).
    """
    import yaml

    from cnnlab.train.config import load_config

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise config_missing(run_dir)
    try:
        return load_config(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as error:
        raise config_unreadable(run_dir, error) from None


def config_unreadable(run_dir: Path, error: BaseException) -> CnnlabError:
    """The refusal of --resume of the run in `run_dir` whose config.yaml cannot be read as a run's (`error`)."""
    return CnnlabError(
        f"{run_dir / 'config.yaml'} cannot be read as a run's config ({first_line(error)}); it records the options "
        f"{run_dir} was trained with, which --resume compares with this command's: put it back (copy the run again), "
        "or train it again (--overwrite)"
    )


def config_missing(run_dir: Path) -> CnnlabError:
    """The refusal of --resume of the finished run in `run_dir` whose config.yaml, which it wrote, is gone: there is
    nothing to compare this command's options with."""
    return CnnlabError(
        f"{run_dir / 'config.yaml'} is missing; it records how the finished run {run_dir} was trained, which --resume "
        "compares with this command's options: put it back (copy the run again), or train it again (--overwrite)"
    )


# A task's options that may differ between a run and its resumption: where it is, how it reports, how many workers.
RESUMABLE_TASK_OPTIONS = frozenset({"resume", "overwrite", "progress", "workers", "output", "name"})


def json_ready(value: Any) -> Any:
    """Plain JSON/YAML data: tuples as lists, dataclasses as dicts, anything else unknown as its string."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_ready(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
