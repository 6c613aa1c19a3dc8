"""`TrainConfig`: every hyperparameter and engine option of a run, in one typed dataclass.

It is saved as ``config.yaml`` in the run directory together with the exact command line, the package versions and
the hardware, so a run can always be told apart and repeated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import warnings
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cnnlab.errors import CnnlabError, listed
from cnnlab.files import written_then_renamed
from cnnlab.train.device import resolve_device

Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["onecycle", "cosine", "constant"]
OptimizerName = Literal["sgd", "adamw", "adam", "nadam"]
_CHOICES = {
    "precision": ("fp32", "bf16", "fp16"),
    "schedule": ("onecycle", "cosine", "constant"),
    "optimizer": ("sgd", "adamw", "adam", "nadam"),
    "monitor_mode": ("max", "min"),
}


class OptionError(CnnlabError):
    """A `TrainConfig` option out of range. The message names the fields (``batch_size 10 is not divisible by
    accum_steps 3...``); `phrased` words it with other names, such as the flags the user typed.

    Args:
        template: the message, each option it is about as ``{field}`` (once each), its value written out.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.phrased({}))

    def phrased(self, names: Mapping[str, str]) -> str:
        """The message with each field called by its name in `names` (a field not in it: by its own name)."""
        return self.template.format_map(_NamedOr(names))


class _NamedOr(dict[str, str]):
    def __missing__(self, field_name: str) -> str:
        return field_name


def check_options(values: Mapping[str, Any]) -> None:
    """Check the `TrainConfig` options in `values` (any subset of its fields; the batch and its accumulation are
    checked together when both are there).

    Raises:
        OptionError: an option out of range, with its value and what is allowed.
    """
    for option, allowed in _CHOICES.items():
        if option in values and values[option] not in allowed:
            typed = repr(values[option]).replace("{", "{{").replace("}", "}}")  # a template: braces are its own
            raise OptionError(f"{{{option}}} {typed} is not one of {', '.join(allowed)}")
    for option in ("epochs", "batch_size", "accum_steps", "log_every"):
        if option in values and values[option] < 1:
            raise OptionError(f"{{{option}}} must be >= 1, got {values[option]}")
    if "batch_size" in values and "accum_steps" in values and values["batch_size"] % values["accum_steps"]:
        batch, accum = values["batch_size"], values["accum_steps"]
        divisors = [str(steps) for steps in range(1, batch + 1) if batch % steps == 0]
        raise OptionError(
            f"{{batch_size}} {batch} is not divisible by {{accum_steps}} {accum}: the accumulation steps that divide "
            f"it are {listed(divisors, 12)}"
        )
    if values.get("num_threads") is not None and values["num_threads"] < 1:
        raise OptionError(f"{{num_threads}} must be >= 1 or None (torch's choice), got {values['num_threads']}")
    # Written so that NaN fails too (every comparison with NaN is False): `--lr nan` trained ten epochs of NaN.
    ranges = {
        "lr": (lambda x: 0.0 < x < math.inf, "must be > 0 and finite"),
        "momentum": (lambda x: 0.0 <= x < 1.0, "must be in [0, 1)"),
        "weight_decay": (lambda x: 0.0 <= x < math.inf, "must be >= 0 and finite"),
        "warmup_epochs": (lambda x: 0.0 <= x < math.inf, "must be >= 0 and finite"),
        "label_smoothing": (lambda x: 0.0 <= x < 1.0, "must be in [0, 1)"),
        "grad_clip": (lambda x: x is None or 0.0 < x < math.inf, "must be > 0 and finite, or None"),
        "ema_decay": (lambda x: x is None or 0.0 < x < 1.0, "must be in (0, 1) or None"),
    }
    for option, (valid, allowed) in ranges.items():
        if option in values and not valid(values[option]):
            raise OptionError(f"{{{option}}} {allowed}, got {values[option]}")


@dataclass
class TrainConfig:
    """Options of one training run. Task recipes fill it; the engine reads nothing else.

    Attributes:
        epochs: passes over the training data.
        batch_size: samples per optimizer step (the effective batch).
        accum_steps: micro-batches per optimizer step (gradient accumulation); `batch_size` must divide evenly.
        lr: peak learning rate (per param group, multiplied by the group's `lr_scale` if it sets one).
        optimizer: sgd (Nesterov momentum), adamw, adam or nadam.
        momentum: SGD momentum (beta1 for the Adam family is kept at its default).
        weight_decay: decoupled (AdamW) or L2 (SGD) decay, applied to weights only, never to biases/norm params.
        schedule: onecycle (warm-up from lr/25, cosine down to lr/1e4), cosine (warm-up from 0, cosine to 0) or
            constant (warm-up, then flat).
        warmup_epochs: length of the linear warm-up, in epochs (fractions allowed).
        label_smoothing: passed to the default cross-entropy loss.
        ema_decay: decay of the exponential moving average of the weights, or None for no EMA. Evaluation and the
            final weights use the EMA when it is on.
        grad_clip: max global gradient norm, or None.
        precision: fp32, or bf16/fp16 autocast (fp16 uses a GradScaler).
        channels_last: model and 4-D inputs in channels_last memory format.
        compile: wrap the model in `torch.compile`.
        grad_checkpointing: checkpoint the model's stages (recompute activations in backward to save memory;
            see `cnnlab.train.activation_checkpointing`).
        auto_batch_size: before training, search the largest batch that fits in memory, up to `batch_size`
            (tested over full steps and an evaluation batch; see `cnnlab.train.batch_size`).
        auto_accum: before training, keep `batch_size` as the effective batch and raise `accum_steps` until a
            micro-batch fits in memory.
        seed: seeds python, numpy and torch, and the data order of every epoch.
        deterministic: ask torch for deterministic algorithms (slower on GPU).
        device: "auto" (cuda if available, else cpu), or a torch device string.
        num_threads: CPU threads for torch (`torch.set_num_threads`), or None to keep torch's default.
        monitor: the validation metric early stopping and "best" follow (e.g. "val_accuracy", "val_loss").
        monitor_mode: "max" or "min" for `monitor`.
        early_stopping_patience: stop after this many epochs without improvement of `monitor`, or None.
        output: root directory of runs; a run lives in ``<output>/<task>/<name>/``.
        task: task name (first level under `output`).
        name: run name (second level under `output`).
        resume: continue from ``<run dir>/checkpoint.pt`` if present.
        overwrite: allow starting a fresh run in a directory that already holds a checkpoint.
        checkpoint: write a checkpoint at every epoch end.
        progress: show a progress bar.
        log_every: progress-bar refresh period in optimizer steps (and of the per-step TensorBoard scalars).
        tensorboard: write TensorBoard event files into the run directory (`cnnlab.train.tensorboard`).
        eval_batch_size: batch size for evaluation (defaults to 2 x batch_size).
        extra: free-form task options, saved with the config (e.g. recipe name, architecture).
    """

    epochs: int = 10
    batch_size: int = 128
    accum_steps: int = 1
    lr: float = 1e-3
    optimizer: OptimizerName = "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Schedule = "onecycle"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float | None = None
    grad_clip: float | None = None
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    grad_checkpointing: bool = False
    auto_batch_size: bool = False
    auto_accum: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_threads: int | None = None
    monitor: str = "val_accuracy"
    monitor_mode: Literal["max", "min"] = "max"
    early_stopping_patience: int | None = None
    output: str = "runs"
    task: str = "default"
    name: str = "run"
    resume: bool = False
    overwrite: bool = False
    checkpoint: bool = True
    progress: bool = True
    log_every: int = 10
    tensorboard: bool = False
    eval_batch_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check option values; raises `OptionError` naming the bad option, its value and what is allowed."""
        check_options({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @property
    def run_dir(self) -> Path:
        """``<output>/<task>/<name>``."""
        return Path(self.output) / self.task / self.name

    @property
    def micro_batch_size(self) -> int:
        """Samples per forward/backward pass."""
        return self.batch_size // self.accum_steps

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (YAML/JSON/`torch.load(weights_only=True)` friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CnnlabError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


def command_line() -> str:
    """The command this process runs, as it would be typed again: ``python -m cnnlab ...`` is ``cnnlab ...`` (its
    argv[0] is cnnlab/__main__.py, which the records printed as ``__main__.py``, a command no shell runs), and under
    torchrun the torchrun command (``cnnlab ...`` would run one process, with other BatchNorm statistics and timings):
    as torchrun was given it where its command line can be read (Linux: the parent's /proc/PID/cmdline), else rebuilt
    from its environment as ``torchrun [--nnodes M] --nproc_per_node N -m cnnlab ...`` with a shell comment saying
    that its other options (--standalone, --rdzv-*) are not known."""
    program = Path(sys.argv[0])
    module = program.name == "__main__.py" and program.parent.name == "cnnlab"
    words = ["cnnlab" if module else program.name, *sys.argv[1:]]
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not (module and world_size > 1):
        return shlex.join(words)
    launcher = _launcher_options(_parent_command(), sys.argv[1:])
    if launcher is not None:
        return shlex.join(["torchrun", *launcher, "-m", *words])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    nodes = ["--nnodes", str(world_size // per_node)] if world_size > per_node else []
    rebuilt = shlex.join(["torchrun", *nodes, "--nproc_per_node", str(per_node), "-m", *words])
    return f"{rebuilt}  # rebuilt: torchrun's other options (--standalone, --rdzv-*, ...) are not known"


def _parent_command() -> list[str] | None:
    """The parent process's argv (torchrun's, for one of its workers), or None where it cannot be read."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return [word.decode(errors="replace") for word in raw.split(b"\0")[:-1]] or None


def _launcher_options(parent: list[str] | None, arguments: list[str]) -> list[str] | None:
    """torchrun's own options in `parent` (``torchrun OPTIONS -m cnnlab ARGUMENTS`` or ``python -m
    torch.distributed.run ...``), or None when `parent` is not the launcher of ``-m cnnlab ARGUMENTS``."""
    if not parent:
        return None
    for index, word in enumerate(parent):
        if Path(word).name == "torchrun":
            rest = parent[index + 1 :]
            break
        if word == "-m" and parent[index + 1 : index + 2] in (["torch.distributed.run"], ["torch.distributed.launch"]):
            rest = parent[index + 2 :]
            break
    else:
        return None
    tail = ["-m", "cnnlab", *arguments]
    if len(rest) < len(tail) or rest[len(rest) - len(tail) :] != tail:
        return None
    return rest[: len(rest) - len(tail)]


def environment_record() -> dict[str, Any]:
    """Command line, package versions and hardware, saved next to every config."""
    import numpy
    import torch

    record: dict[str, Any] = {
        "command": command_line(),
        "cwd": os.getcwd(),
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "numpy": numpy.__version__,
        },
        "hardware": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    try:
        from importlib.metadata import version

        record["versions"]["cnnlab"] = version("cnnlab")
        record["versions"]["torchvision"] = version("torchvision")
    except Exception:  # noqa: BLE001 - a missing optional package is not an error here
        pass
    return record


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def recorded_environment(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The environment (command, versions, hardware) a run's ``config.yaml`` records, None where it records none.

    A task writes its config.yaml as a session starts, so a report written later from a finished run's saved results
    (`--resume` of a run stopped before its report.md) names the session that finished it, not this machine.
    """
    import yaml

    try:
        document = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return None
    environment = document.get("environment") if isinstance(document, dict) else None
    return environment if isinstance(environment, dict) else None


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write ``config.yaml``: the config under ``config:``, then ``environment:``."""
    save_record(config.to_dict(), path)


def save_record(config: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a run's ``config.yaml`` from any plain-data config (a task's, or `TrainConfig.to_dict()`): the config
    under ``config:``, then ``environment:`` (command line, versions, hardware).

    The file is renamed into place once written: a task writes its config.yaml again on every --resume and the next
    --resume compares its options with it, so one cut short by a stop refused that run for ever ("cannot resume ...
    with different options", every option "not given").
    """
    import yaml

    document = {"config": dict(config), "environment": environment_record()}
    document = json.loads(json.dumps(document, default=str))  # tuples -> lists, anything exotic -> str
    with written_then_renamed(path) as partial:
        partial.write_text(yaml.safe_dump(document, sort_keys=False))


# Options that may differ between a run and its resumption; any other difference is refused. Where the run is
# (output, task, name: its folder) may change: a run folder moved or renamed resumes where it is now.
RESUME_FREE_OPTIONS = frozenset(
    {
        "resume",
        "overwrite",
        "progress",
        "log_every",
        "output",
        "name",
        "task",
        "eval_batch_size",
        "device",
        "num_threads",
        "tensorboard",
    }
)


def check_resumable(
    saved: Mapping[str, Any],
    current: TrainConfig | Mapping[str, Any],
    run_dir: str | os.PathLike[str],
    free: Collection[str] = RESUME_FREE_OPTIONS,
    refusal: str = "cannot resume {run_dir} with different options ({changes}); use the same ones",
) -> None:
    """Refuse to continue the run in `run_dir`, started with the options `saved`, under `current`'s other options.

    Only `current`'s keys are compared (a record may hold derived facts beside its options), except those in `free`;
    a name in `free` may be a nested one (``extra.classes``). `refusal` is the message, over ``{run_dir}`` and
    ``{changes}``.

    Raises:
        CnnlabError: an option outside `free` differs; the message names each.
    """
    values = current.to_dict() if isinstance(current, TrainConfig) else current
    # compared as JSON-able data: a checkpoint keeps tuples, a config.yaml gives lists
    saved, now = (json.loads(json.dumps(dict(record), default=str)) for record in (saved, values))
    # What a batch search chose is a result, not an option: a finished run's config.yaml holds the batch it found
    # (300), a command with --batch-size auto the search's cap (1024), so the same command refused to read back a
    # finished run, an ensemble's finished member or a fellow --member. (A resumed engine takes its checkpoint's.)
    for searched, results in _SEARCHED_OPTIONS.items():
        if saved.get(searched) is True and now.get(searched) is True:
            saved, now = ({k: v for k, v in record.items() if k not in results} for record in (saved, now))
    changed = sorted(
        difference
        for difference in _differences(
            {k: v for k, v in saved.items() if k not in free}, {k: v for k, v in now.items() if k not in free}
        )
        if difference[0] not in free
    )
    if changed:
        raise CnnlabError(refusal.format(run_dir=run_dir, changes=_changes(changed)))


# A search's switch -> the options it chooses when on in both records (`check_resumable` leaves them out)
_SEARCHED_OPTIONS: dict[str, tuple[str, ...]] = {
    "auto_batch_size": ("batch_size", "accum_steps"),
    "auto_accum": ("accum_steps",),
}


# Options derived from another one: derived option -> (the option it follows, the value that option must now have
# for it to be derived; None: any). A refused resume names the option the user changed and shows the derived one as
# its consequence: `tasks.recipes.with_overrides` shortens the warm-up of a run shortened by --epochs, and
# --batch-size auto sets the batch to its cap. "epochs: 1 -> 2, warmup_epochs: 0.5 -> 1.0" read as two changes, where
# the user had changed --epochs alone.
DERIVED_OPTIONS: dict[str, tuple[str, Any]] = {
    "warmup_epochs": ("epochs", None),
    "batch_size": ("auto_batch_size", True),
}


def _changes(changed: list[tuple[str, Any, Any]]) -> str:
    """The differences of a refused resume, each derived option (`DERIVED_OPTIONS`) after the option it follows when
    that one changed too (a nested name follows the option of its own record: ``train.epochs``)."""
    now = {key: after for key, _, after in changed}

    def source(key: str) -> str | None:
        prefix, _, name = key.rpartition(".")
        if name not in DERIVED_OPTIONS:
            return None
        follows, when = DERIVED_OPTIONS[name]
        full = f"{prefix}.{follows}" if prefix else follows
        return full if full in now and (when is None or now[full] == when) else None

    parts = []
    for key, before, after in changed:
        if source(key) is not None:
            continue
        text = f"{key}: {_shown(before)} -> {_shown(after)}"
        for derived, derived_before, derived_after in (change for change in changed if source(change[0]) == key):
            text += f" and so {derived}, derived from it: {_shown(derived_before)} -> {_shown(derived_after)}"
        parts.append(text)
    return ", ".join(parts)


def _shown(value: Any) -> str:
    """An option's value in a resume refusal: None is an option left out ("not given", the default), not a value."""
    return "not given" if value is None else repr(value)


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for each of `now`'s keys whose value differs; nested records are compared
    key by key, both records' keys (one given at the start and left out now differs too), so the message names
    ``extra.val_size`` rather than two whole ``extra`` records."""
    found = []
    keys = list(now) + ([key for key in saved if key not in now] if prefix else [])
    for key in keys:
        before, value = saved.get(key), now.get(key)
        if isinstance(before, dict) and isinstance(value, dict):
            found += _differences(before, value, f"{prefix}{key}.")
        elif before != value:
            found.append((f"{prefix}{key}", before, value))
    return found


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read the config part of a ``config.yaml`` written by `save_config`."""
    import yaml

    document = yaml.safe_load(Path(path).read_text())
    return TrainConfig.from_dict(document["config"])


class SlowPrecisionWarning(UserWarning):
    """A precision that runs much slower than float32 where it was asked for (fp16 on the CPU).

    Its message is a template over `TrainConfig` fields, as `OptionError`'s: the option is called by the name the
    caller used, the flag on the command line (``--precision``), the field from Python (``precision``).

    Args:
        template: the message (`slow_precision`), the option it is about as ``{precision}``.
        names: what to call each field (a field not in it: by its own name).
    """

    def __init__(self, template: str, names: Mapping[str, str] | None = None) -> None:
        self.template = template
        super().__init__(template.format_map(_NamedOr(names or {})))


def slow_precision(precision: str | None, device_type: str) -> str | None:
    """The template of the `SlowPrecisionWarning` that training at `precision` on a device of `device_type` earns;
    None: nothing.

    `Trainer.fit` warns with it (every caller, Python's included, naming the field); ``cnnlab train`` says it once,
    earlier, before any data is read, naming the flag (``cli.engine_options``).
    """
    if precision != "fp16" or device_type != "cpu":
        return None
    # A quick MNIST epoch on 2 AMD EPYC cores: fp16 trained in 8 s, fp32 in 0.7-1.8 s, bf16 in 0.9-1.0 s.
    return (
        "{precision} fp16 on the CPU trains several times slower than fp32 (torch's float16 CPU kernels are slow); "
        "use {precision} bf16 (about as fast as fp32 on a CPU with bfloat16 instructions) or fp32"
    )


@contextlib.contextmanager
def slow_precision_said_once(
    precision: str | None, device: str, names: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Around a run of several trainings (a transfer run's phases): says the `SlowPrecisionWarning` that `precision`
    on `device` earns once, on entering, calling the option as `names` call it, and keeps the trainer of each
    training inside from saying it again."""
    template = slow_precision(precision, resolve_device(device).type)
    if template is not None:
        warnings.warn(SlowPrecisionWarning(template, names), stacklevel=3)
    with warnings.catch_warnings():
        if template is not None:
            warnings.filterwarnings("ignore", category=SlowPrecisionWarning)
        yield


def check_tensorboard() -> None:
    """``--tensorboard`` needs the tensorboard package.

    Raises:
        CnnlabError: it is not installed, with the command that installs it.
    """
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise CnnlabError(
            '--tensorboard needs the tensorboard package: pip install "cnnlab[lab]" (or pip install tensorboard)'
        )


def use_threads(threads: int | None) -> None:
    """`torch.set_num_threads(threads)`; None keeps torch's choice."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


AUTO_BATCH_CAP = 1024  # `--batch-size auto` never goes above this (nor above the number of training samples)


@dataclass
class EngineOptions:
    """The engine options every ``cnnlab train`` command takes, as typed on the command line.

    None means "the recipe's value". `overrides` turns them into `TrainConfig` fields; the run's seed, name, output
    and resume flag are the task's to place (an ensemble's members, a transfer run's phases).

    Attributes:
        epochs: training epochs (of the main phase, for tasks with several).
        lr: peak learning rate (of the main phase).
        batch_size: a whole number, or "auto": the largest batch that fits in memory, up to `AUTO_BATCH_CAP`.
        accum: micro-batches per optimizer step, or "auto": as many as memory needs to keep the batch size.
        precision: fp32, bf16 or fp16.
        grad_checkpointing: recompute activations in backward (model stages) to save memory.
        channels_last: NHWC memory format for the model and its inputs.
        compile: wrap the model in `torch.compile`.
        threads: CPU threads for torch.
        device: auto, cpu, cuda, cuda:N or mps.
        seed: the run's seed.
        resume: continue the interrupted run called `name`.
        name: the run's name (default: ``<recipe>-<timestamp>``).
        output: the runs root.
        overwrite: replace an existing run of the same name.
        quiet: no progress bars or epoch lines.
        tensorboard: write TensorBoard event files into the run directory.
    """

    epochs: int | None = None
    lr: float | None = None
    batch_size: str | None = None
    accum: str | None = None
    precision: str | None = None
    grad_checkpointing: bool | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    threads: int | None = None
    device: str | None = None
    seed: int = 0
    resume: bool = False
    name: str | None = None
    output: str = "runs"
    overwrite: bool = False
    quiet: bool = False
    tensorboard: bool | None = None

    def __post_init__(self) -> None:
        if self.resume and self.name is None:
            raise CnnlabError("--resume needs the --name of the run to continue")
        if self.name is not None:
            check_run_name(self.name)
        if self.threads is not None and self.threads < 1:
            raise CnnlabError(f"--threads must be >= 1, got {self.threads}")
        if not -(2**63) <= self.seed < 2**63:  # torch.manual_seed's overflow was a traceback once the data was read
            raise CnnlabError(f"--seed {self.seed} is outside torch's seed range, -2**63 to 2**63 - 1")
        if self.device is not None:
            resolve_device(self.device)  # checked before any data is read: a typo or a missing GPU is one line
        if self.tensorboard:  # the trainer's own check came after a transfer run's feature cache was built
            check_tensorboard()

    def apply_threads(self) -> None:
        """Give torch ``--threads`` CPU threads now, before the task prepares anything: a transfer run's feature
        cache, a segmentation run's canvases and the images' decoding come before its first `Trainer` (which sets
        them too), and ran on every core under ``--threads 1``."""
        use_threads(self.threads)

    @property
    def slow_precision(self) -> str | None:
        """The template of the `SlowPrecisionWarning` these options earn (`slow_precision`), None when they earn none.
        The CLI says it, naming the flag, before any data is read; from Python the trainer says it, naming the
        field."""
        return slow_precision(self.precision, resolve_device(self.device or "auto").type)

    def task_options(self, as_json: bool = False) -> dict[str, Any]:
        """What a train task takes of these options by name, as each `cnnlab train` command passes them: the runs
        root, the run's name and seed, the `TrainConfig` overrides, resume or overwrite, progress (none under
        ``--quiet`` or ``--json``) and the notes on the results, always (``--quiet`` keeps them; under ``--json`` the
        command sends them to stderr)."""
        return {
            "output": self.output,
            "name": self.name,
            "seed": self.seed,
            "overrides": self.overrides(),
            "resume": self.resume,
            "overwrite": self.overwrite,
            "progress": not (self.quiet or as_json),
            "notes": True,
        }

    def overrides(self) -> dict[str, Any]:
        """The `TrainConfig` fields these options set (the recipe keeps every other one).

        Raises:
            CnnlabError: for a batch size or accumulation that is neither a positive whole number nor "auto", or
                "auto" for both.
        """
        fields: dict[str, Any] = {
            "epochs": self.epochs,
            "lr": self.lr,
            "precision": self.precision,
            "grad_checkpointing": self.grad_checkpointing,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "num_threads": self.threads,
            "device": self.device,
            "tensorboard": self.tensorboard,
        }
        overrides = {key: value for key, value in fields.items() if value is not None}
        if self.batch_size is not None:
            if self.batch_size.strip().lower() == "auto":
                overrides.update(batch_size=AUTO_BATCH_CAP, auto_batch_size=True)
            else:
                overrides["batch_size"] = _positive_int(self.batch_size, "--batch-size")
        if self.accum is not None:
            if self.accum.strip().lower() == "auto":
                overrides["auto_accum"] = True
            else:
                overrides["accum_steps"] = _positive_int(self.accum, "--accum")
        if overrides.get("auto_batch_size") and (overrides.get("auto_accum") or overrides.get("accum_steps", 1) > 1):
            raise CnnlabError("--batch-size auto picks a batch that fits without accumulation; drop --accum")
        try:  # what the flags alone get wrong is refused here, before the task reads any data
            check_options(overrides)
        except OptionError as error:
            raise CnnlabError(error.phrased(ENGINE_FLAGS)) from None
        return overrides

    def phrased(self, error: OptionError) -> str:
        """`error`'s message in the words of the command line: a field these options set is called by the flag the
        user typed (``--accum``), one the recipe set by ``the recipe's --batch-size``."""
        typed = self.overrides()
        names = {field: flag if field in typed else f"the recipe's {flag}" for field, flag in ENGINE_FLAGS.items()}
        return error.phrased(names)


# The `TrainConfig` field each engine flag sets (`EngineOptions.overrides`), to name the flag in a message.
ENGINE_FLAGS = {
    "epochs": "--epochs",
    "lr": "--lr",
    "batch_size": "--batch-size",
    "accum_steps": "--accum",
    "precision": "--precision",
    "num_threads": "--threads",
}


def check_run_name(name: str, option: str = "--name") -> str:
    """A run name is one folder name: the run goes to ``<output>/<task>/<name>`` and nowhere else.

    Raises:
        CnnlabError: an empty name, ".", "..", or one holding a path separator (``../x`` would write outside the
            task's folder, ``a/b`` would nest a run inside another's folder).
    """
    separators = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}
    if not name.strip() or name in (".", "..") or any(sep in name for sep in separators) or "\0" in name:
        raise CnnlabError(
            f"{option} {name!r} is not a run name: use one folder name without '/' or '\\' (such as lenet-adam-2); "
            "--output chooses where runs go"
        )
    return name


def _positive_int(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CnnlabError(f"{option} {text!r} is not a whole number or 'auto'") from None
    if value < 1:
        raise CnnlabError(f"{option} must be >= 1 or 'auto', got {value}")
    return value
