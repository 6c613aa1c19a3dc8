"""What every experiment shares: settings, MNIST tensors, training on the engine, seeds, the noise rule, report.md.

The noise rule (`compare`): two conditions measured over several seeds differ *measurably* only when the difference
of their means exceeds twice the larger of their standard deviations (sample std over seeds) AND their per-seed
ranges do not overlap. Anything else is reported as "no measurable difference". With fewer than `MIN_SEEDS` (3)
seeds no difference is claimed: one seed has no spread, and two seeds' spread is too poor an estimate of the noise
(two equal values give a noise of 0, so a one-image gap in test accuracy passes). Between identical conditions
the rule alone calls the difference measurable in 12.9% of comparisons with 2 seeds each, 4.1% with 3 and 0.4% with
5 (`benchmarks/noise_rule.py`): a report of nine comparisons from 2 seeds would often claim a false one.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.data.mnist import find_mnist_dir, load_mnist
from cnnlab.errors import CnnlabError
from cnnlab.files import check_writable, save_figure_whole, write_text_whole, written_then_renamed
from cnnlab.tasks.recipes import note_current_run
from cnnlab.train import Callback, TensorBatches, TrainConfig, Trainer
from cnnlab.train.checkpoint import CHECKPOINT_NAME
from cnnlab.train.config import command_line, environment_record, load_config
from cnnlab.train.records import EXPERIMENT_FINISHED, EXPERIMENT_WEIGHTS

FULL_TRAIN_SIZE = 55_000  # MNIST's 60k training images minus the 5k validation images held out
MIN_SEEDS = 3  # fewest seeds per condition from which the noise rule claims a difference (module docstring)


@dataclass
class ExperimentSettings:
    """Options shared by all experiments (the `cnnlab experiment` flags).

    Attributes:
        epochs: training epochs of each run.
        subset: training images used (None: all 55,000 left after the validation split).
        seeds: repeats; seed i trains with seed i (initialisation and data order).
        output: root of the run directories; the experiment writes ``<output>/experiment/<name>/``.
        data_dir: MNIST location (`--data-dir`, else ``$CNNLAB_DATA``, else ``./data``).
        test_subset: test images evaluated (None: all 10,000); robustness sweeps use the same images.
        val_subset: validation images monitored each epoch (None: all 5,000).
        batch_size: images per optimizer step.
        lr: peak learning rate (AdamW, one-cycle schedule).
        overwrite: replace an existing report in the run directory and train every run again (without it, the
            runs an interrupted invocation finished are read back from their folders).
        progress: print one line per training run.
        device: where every run trains and is measured (cpu, cuda, cuda:N, mps or auto; `run_experiment` resolves it).
            The CPU by default: the report compares the runs' times, which another device changes.
    """

    epochs: int = 2
    subset: int | None = None
    seeds: int = 3
    output: Path = Path("runs")
    data_dir: str | None = None
    test_subset: int | None = None
    val_subset: int | None = None
    batch_size: int = 128
    lr: float = 3e-3
    overwrite: bool = False
    progress: bool = True
    device: str = "cpu"

    def flags(self) -> dict[str, int]:
        """The `cnnlab experiment` options that repeat these settings, every one explicit (results.json records
        them, so that a sheet reading the results back names the command that made them)."""
        return {
            "epochs": self.epochs,
            "subset": self.subset or FULL_TRAIN_SIZE,
            "seeds": self.seeds,
            "test_subset": self.test_subset or 10_000,
            "val_subset": self.val_subset or 5_000,
        }

    def validate(self) -> None:
        """Raise `CnnlabError` on values no experiment can run with."""
        if self.epochs < 1:
            raise CnnlabError(f"--epochs must be at least 1, got {self.epochs}")
        if self.seeds < 1:
            raise CnnlabError(f"--seeds must be at least 1, got {self.seeds}")
        if self.subset is not None and not self.batch_size <= self.subset <= FULL_TRAIN_SIZE:
            raise CnnlabError(
                f"--subset {self.subset} must be between the batch size ({self.batch_size}) and {FULL_TRAIN_SIZE}, "
                f"or 0 for all {FULL_TRAIN_SIZE:,} training images"
            )
        if self.test_subset is not None and not 1 <= self.test_subset <= 10_000:
            raise CnnlabError(f"--test-subset {self.test_subset} must be between 1 and 10000")
        if self.val_subset is not None and not 1 <= self.val_subset <= 5_000:
            raise CnnlabError(f"--val-subset {self.val_subset} must be between 1 and 5000")


@dataclass
class MnistTensors:
    """MNIST as float images in [0, 1] (the experiments' models normalise inside)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def counted(self, settings: ExperimentSettings) -> ExperimentSettings:
        """`settings` with the training, validation and test images these tensors hold: from an MNIST smaller than
        the full one (--data-dir), the report's settings line and results.json's `settings` named the images asked
        for (--subset, --test-subset) or the full MNIST's counts, not those the runs trained on and were tested on."""
        return replace(
            settings,
            subset=len(self.train_labels),
            val_subset=len(self.val_labels),
            test_subset=len(self.test_labels),
        )


def load_data(settings: ExperimentSettings) -> MnistTensors:
    """MNIST with the seeded 5k validation split; `subset`, `val_subset` and `test_subset` keep a seeded selection."""
    splits = load_mnist(settings.data_dir, val_size=5_000, seed=0)
    left = len(splits.train_labels)
    if min(settings.subset or left, left) < settings.batch_size:  # the trainer's remedy, --batch-size, is not ours
        raise CnnlabError(
            f"{find_mnist_dir(settings.data_dir)} holds {left + 5_000:,} MNIST training images: the {left:,} left "
            f"after the 5,000 held out for validation are fewer than one batch of {settings.batch_size} (an "
            "experiment's batch and split are fixed); point --data-dir at the full MNIST (60,000 training images)"
        )
    train_count = settings.subset or left
    test_count = settings.test_subset or len(splits.test_labels)
    test_order = torch.randperm(len(splits.test_labels), generator=torch.Generator().manual_seed(0))[:test_count]
    return MnistTensors(
        train_images=splits.train_images[:train_count].float() / 255,
        train_labels=splits.train_labels[:train_count],
        val_images=splits.val_images[: settings.val_subset].float() / 255,
        val_labels=splits.val_labels[: settings.val_subset],
        test_images=splits.test_images[test_order].float() / 255,
        test_labels=splits.test_labels[test_order],
    )


class StepLossRecorder(Callback):
    """Records the training loss of every optimizer step (for convergence curves)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:  # noqa: D102
        self.losses.append(float(loss))

    def state_dict(self) -> dict[str, Any]:  # checkpointed: a resumed run's curve starts at its first step
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.losses = [float(loss) for loss in state["losses"]]


@dataclass
class TrainedRun:
    """One training run of one condition with one seed (trained now, or read back from an earlier invocation)."""

    model: nn.Module
    history: list[dict[str, float]]
    train_seconds: float
    steps: int
    step_losses: list[float] = field(default_factory=list)
    read_back: bool = False  # finished by an earlier invocation: its times are that invocation's

    @property
    def seconds_per_step(self) -> float:
        return self.train_seconds / max(1, self.steps)


def train_run(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor],
    settings: ExperimentSettings,
    run_dir: Path,
    seed: int,
    epochs: int | None = None,
    **config_overrides: Any,
) -> TrainedRun:
    """Train `model` on the engine (AdamW, one-cycle) and return it with its timings.

    Args:
        model: the network (its initialisation should already be seeded by the caller).
        images: float training images in [0, 1].
        labels: training labels.
        val: validation images and labels (monitored every epoch; never the test set).
        settings: the experiment's settings.
        run_dir: the engine writes config.yaml, metrics.* and learning_curves.png here.
        seed: data-order seed.
        epochs: overrides `settings.epochs`.
        **config_overrides: other `TrainConfig` fields.
    """
    options: dict[str, Any] = dict(
        epochs=epochs or settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        optimizer="adamw",
        weight_decay=5e-4,
        schedule="onecycle",
        seed=seed,
        device=settings.device,
        output=str(run_dir.parent.parent),
        task=run_dir.parent.name,
        name=run_dir.name,
        overwrite=True,
        checkpoint=False,
        progress=False,
    )
    options.update(config_overrides)
    key = _run_key(model, images, labels, val, options)
    where = f"{run_dir.parent.name}/{run_dir.name}"
    if not settings.overwrite:
        if (finished := _read_back(run_dir, key, model)) is not None:
            log(settings, f"{where}: read back (finished by an earlier invocation)")
            finished.model.to(settings.device)  # measured where the runs trained now are
            return finished
        if (run_dir / _FINISHED).exists():  # said, not silent: a changed option trains every run again
            log(settings, f"{where}: trained again (the run finished there had other settings, or was damaged)")
    # A checkpoint each epoch, continued by the next invocation when it holds this run (the same key): a stop
    # mid-run loses at most the epoch it was in, not the run's finished epochs (minutes each at the default sizes).
    resumed = not settings.overwrite and _checkpointed_key(run_dir) == key
    config = TrainConfig(**{**options, "checkpoint": True, "resume": resumed, "overwrite": not resumed,
                            "extra": {_KEY: key}})  # fmt: skip
    recorder = StepLossRecorder()
    trainer = Trainer(model, config, callbacks=[recorder])
    if resumed:
        log(settings, f"{where}: continued from its checkpoint (an earlier invocation's finished epochs)")
    history = trainer.fit(TensorBatches(images, labels, settings.batch_size, drop_last=True), val)
    trained = TrainedRun(
        model=trainer.eval_model,
        history=history,
        train_seconds=trainer.train_seconds,
        steps=trainer.global_step,
        step_losses=recorder.losses,
    )
    _write_finished(run_dir, key, trained)
    (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)  # finished.safetensors holds the weights; the rest is done
    return trained


_KEY = "experiment_run_key"  # in the run's config.yaml (`extra`): which run its checkpoint belongs to


def _checkpointed_key(run_dir: Path) -> str | None:
    """The key of the run whose checkpoint `run_dir` holds; None when there is none (or no record of it)."""
    if not (run_dir / CHECKPOINT_NAME).is_file():
        return None
    try:
        return load_config(run_dir / "config.yaml").extra.get(_KEY)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, CnnlabError):  # missing or damaged: train anew
        return None


_FINISHED = EXPERIMENT_FINISHED  # written last, after the weights: its presence means the run is complete
_FINISHED_WEIGHTS = EXPERIMENT_WEIGHTS


def _run_key(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor],
    options: dict[str, Any],
) -> str:
    """A digest of everything a run's result depends on: the network, its data and its training options."""
    digest = hashlib.sha256()
    digest.update(repr((type(model).__name__, count_params(model), sorted(options.items(), key=str))).encode())
    for tensor in (images, labels, *val):
        flat = tensor.detach().reshape(-1)
        digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(flat[:: max(1, len(flat) // 100_000)].contiguous().cpu().numpy().tobytes())  # a strided sample
    return digest.hexdigest()[:20]


def _write_finished(run_dir: Path, key: str, trained: TrainedRun) -> None:
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in trained.model.state_dict().items()}
    # An earlier run's record goes first: killed between the two files, its key must not vouch for these weights.
    (run_dir / _FINISHED).unlink(missing_ok=True)
    with written_then_renamed(run_dir / _FINISHED_WEIGHTS) as partial:  # a kill never leaves half the weights
        save_file(state, str(partial))
    record = {
        "key": key,
        "history": trained.history,
        "train_seconds": trained.train_seconds,
        "steps": trained.steps,
        "step_losses": trained.step_losses,
    }
    with written_then_renamed(run_dir / _FINISHED) as partial:
        partial.write_text(json.dumps(record))


def _read_back(run_dir: Path, key: str, model: nn.Module) -> TrainedRun | None:
    """The run finished in `run_dir` by an earlier invocation with the same `key`; None when there is none."""
    from cnnlab.train.saved import load_weights

    try:
        record = json.loads((run_dir / _FINISHED).read_text())
        if record.get("key") != key:
            return None
        model.load_state_dict(load_weights(run_dir / _FINISHED_WEIGHTS))
    except (OSError, ValueError, RuntimeError, AttributeError, CnnlabError):  # missing, damaged, another network's
        return None  # not finished: trained again
    return TrainedRun(
        model=model.eval(),
        history=record["history"],
        train_seconds=record["train_seconds"],
        steps=record["steps"],
        step_losses=record["step_losses"],
        read_back=True,
    )


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on float images, through the engine's inference path (eval mode, on the device
    its weights are on: the experiment's)."""
    device = str(model_device(model))
    predictions = Trainer.for_inference(model, device=device, batch_size=batch_size).predict(images).argmax(1)
    return float((predictions == labels).float().mean()) if len(labels) else 0.0


def model_device(model: nn.Module) -> torch.device:
    """The device `model`'s weights are on (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with torch's RNG seeded, so seed i always gives the same initial weights."""
    torch.manual_seed(seed)
    return build()


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Stat:
    """Per-seed values of one measurement."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """``"mean ± std"``, values multiplied by `scale` (100 for percentages)."""
        if len(self.values) == 1:
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def stat(values: Sequence[float]) -> Stat:
    """A `Stat` of the given per-seed values."""
    if not values:
        raise ValueError("a statistic needs at least one value")
    return Stat(tuple(float(v) for v in values))


@dataclass(frozen=True)
class Comparison:
    """The outcome of the noise rule for `a` versus `b`."""

    difference: float  # mean(a) - mean(b)
    noise: float  # 2 x the larger standard deviation
    measurable: bool
    estimable: bool  # False with fewer than MIN_SEEDS seeds: the noise is not known well enough
    seeds: int = 1  # the smaller of the two seed counts


def compare(a: Stat, b: Stat) -> Comparison:
    """Apply the noise rule (module docstring) to two measurements."""
    difference = a.mean - b.mean
    noise = 2.0 * max(a.std, b.std)
    seeds = min(len(a.values), len(b.values))
    estimable = seeds >= MIN_SEEDS
    ranges_overlap = min(a.values) <= max(b.values) and min(b.values) <= max(a.values)
    measurable = estimable and abs(difference) > noise and not ranges_overlap
    return Comparison(difference, noise, measurable, estimable, seeds)


def too_few_seeds(seeds: int, what: str = "difference") -> str:
    """Why no `what` is claimed from `seeds` (fewer than `MIN_SEEDS`) seeds."""
    if seeds == 1:
        return f"one seed, so the noise is unknown and no {what} is claimed"
    return f"{seeds} seeds are too few to claim a {what} ({MIN_SEEDS} are needed to know the noise)"


def describe_difference(
    name_a: str,
    a: Stat,
    name_b: str,
    b: Stat,
    quantity: str,
    scale: float = 100.0,
    unit: str = " points",
    digits: int = 2,
) -> str:
    """A sentence comparing `a` and `b` under the noise rule, e.g. "the CNN is higher than the dense net by 1.2
    points (noise 0.3)" or "no measurable difference between ... (0.1 points apart, noise 0.4)"."""
    comparison = compare(a, b)
    gap = f"{abs(comparison.difference) * scale:.{digits}f}{unit}"
    noise = f"{comparison.noise * scale:.{digits}f}"
    if not comparison.estimable:
        return (
            f"{quantity}: {name_a} {a.format(scale, digits)} vs {name_b} {b.format(scale, digits)} ({gap} apart; "
            f"{too_few_seeds(comparison.seeds)})"
        )
    if not comparison.measurable:
        return f"{quantity}: no measurable difference between {name_a} and {name_b} ({gap} apart, noise {noise})"
    higher, lower = (name_a, name_b) if comparison.difference > 0 else (name_b, name_a)
    return f"{quantity}: {higher} is higher than {lower} by {gap} (noise {noise})"


# ---------------------------------------------------------------------------------------------- report
@dataclass
class Report:
    """Builds a report.md: a header with the command, settings and hardware, sections, then the conclusion."""

    title: str
    claim: str
    settings: ExperimentSettings
    sections: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    runs: list[bool] = field(default_factory=list)  # per training run: read back from an earlier invocation?

    def count(self, trained: TrainedRun) -> None:
        """Note a training run for the header: trained now or read back."""
        self.runs.append(trained.read_back)

    def add(self, heading: str, text: str) -> None:
        """Add a section (markdown body under a ``##`` heading)."""
        self.sections.append(f"## {heading}\n\n{text.strip()}\n")

    def write(self, path: Path, conclusion: str) -> Path:
        """Write the report with `conclusion` (generated from the measurements) as its last section."""
        elapsed = time.perf_counter() - self.started
        s = self.settings
        header = [
            f"# {self.title}",
            "",
            f"Claim under test: {self.claim}",
            "",
            f"- command: `{command_line()}`",
            f"- settings: epochs {s.epochs}, training images {s.subset or FULL_TRAIN_SIZE}, seeds {s.seeds}, "
            f"batch {s.batch_size}, AdamW one-cycle peak lr {s.lr}, test images {s.test_subset or 10_000}, "
            f"validation {s.val_subset or 5_000} held-out training images",
            f"- hardware: {environment_record()['hardware']['cpu']}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__} with "
            f"{torch.get_num_threads()} threads{_on_device(s.device)}; {datetime.now().strftime('%Y-%m-%d %H:%M')}; "
            f"{'this invocation' if any(self.runs) else 'whole experiment'} {elapsed / 60:.1f} min",
            *(
                [
                    f"- runs: {self.runs.count(False)} trained by this invocation, {self.runs.count(True)} read back "
                    "from an earlier invocation (their training times are that invocation's)"
                ]
                if any(self.runs)
                else []
            ),
            "- noise rule: a difference counts only if it exceeds 2 x the larger std over seeds and the per-seed "
            'ranges do not overlap; otherwise it is reported as "no measurable difference"; from fewer than '
            f"{MIN_SEEDS} seeds no difference is claimed",
            "",
        ]
        text = "\n".join(header) + "\n" + "\n".join(self.sections) + f"\n## Conclusion\n\n{conclusion.strip()}\n"
        return write_text_whole(path, text)


def _on_device(device: str) -> str:
    """The report's words for a device other than the CPU, naming the GPU: its times are that device's."""
    if device == "cpu":
        return ""
    gpu = f" ({torch.cuda.get_device_name(torch.device(device))})" if device.startswith("cuda") else ""
    return f", runs trained and measured on {device}{gpu}"


def write_results(path: Path, results: dict[str, Any]) -> Path:
    """Write an experiment's results.json whole or not at all (`cnnlab answers --runs` reads it back), as standard
    JSON: a NaN (a threshold never reached) is written as null, which JSON has and NaN it has not."""
    return write_text_whole(path, json.dumps(_nan_as_null(results), indent=1, allow_nan=False))


def _nan_as_null(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _nan_as_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_as_null(item) for item in value]
    return value


def prepare_run_dir(settings: ExperimentSettings, name: str) -> Path:
    """``<output>/experiment/<name>/``, refusing to replace a finished report unless `overwrite`.

    With `overwrite`, the earlier invocation's report, results and plots and its runs' finished markers are removed
    before anything is trained: the report no longer describes the runs once they are trained again, and an
    interrupted ``--overwrite`` is continued by the same command without ``--overwrite``, which must then read back
    only the runs trained since (not the earlier invocation's, under the removed report).
    """
    run_dir = Path(settings.output) / "experiment" / name
    # an --output that is a file (or under one, or read-only) was an OSError, exit code 1, not a refusal (exit 2)
    check_writable(run_dir / "report.md", shown=str(settings.output))
    if (run_dir / "report.md").exists() and not settings.overwrite:
        raise CnnlabError(
            f"{run_dir} already holds a report; pass --overwrite to replace it or choose another --output"
        )
    if settings.overwrite and run_dir.is_dir():
        earlier = [*run_dir.glob(f"*/*/{_FINISHED}"), *run_dir.glob("*.png"), run_dir / "results.json"]
        for path in [*earlier, run_dir / "report.md"]:  # the report last: while it is there, --overwrite is needed
            path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    note_current_run(
        run_dir,
        again=True,
        again_without="--overwrite" if settings.overwrite else None,
        finished_any=lambda: any(run_dir.glob(f"*/*/{_FINISHED}")),
    )
    return run_dir


def log(settings: ExperimentSettings, message: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    if settings.progress:
        print(message, file=sys.stderr, flush=True)


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(
    path: Path,
    x_values: Sequence[float],
    curves: dict[str, list[Stat]],
    xlabel: str,
    ylabel: str,
    title: str,
    scale: float = 100.0,
) -> Path:
    """Line plot of mean ± std (shaded) per condition against a swept variable; the title says what is shaded."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for name, stats in curves.items():
        means = [st.mean * scale for st in stats]
        stds = [st.std * scale for st in stats]
        axis.plot(x_values, means, marker="o", label=name)
        low = [m - s for m, s in zip(means, stds, strict=True)]
        high = [m + s for m, s in zip(means, stds, strict=True)]
        axis.fill_between(x_values, low, high, alpha=0.2)
    seeds = len(next(iter(curves.values()))[0].values)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(f"{title}: mean, shaded ± std over {seeds} seed{'' if seeds == 1 else 's'}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=100)
    plt.close(figure)
    return path
