"""The training engine: one loop for every task (classification, transfer learning, segmentation).

`Trainer(model, config, ...).fit(train_data, val_data)` trains with gradient accumulation over micro-batches,
optional mixed precision, channels_last, torch.compile, EMA, gradient clipping, warm-up + one-cycle/cosine LR,
early stopping, an atomic checkpoint per epoch with exact resume, a progress bar and per-epoch records
(metrics.csv, metrics.json, learning_curves.png, config.yaml) in ``<output>/<task>/<name>/``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train.activation_checkpointing import checkpoint_stages
from cnnlab.train.allocator import keep_freed_memory
from cnnlab.train.batches import Batch, BatchSource, TensorBatches, as_batch_source
from cnnlab.train.callbacks import Callback, EarlyStopping
from cnnlab.train.checkpoint import atomic_save, capture_rng_state, load_checkpoint, restore_rng_state
from cnnlab.train.config import TrainConfig, save_config
from cnnlab.train.distributed import is_main_process, prepare_fit
from cnnlab.train.ema import ModelEma
from cnnlab.train.metrics import Metric, MetricFn, as_metrics, is_classification
from cnnlab.train.oom import train_step_with_recovery
from cnnlab.train.optim import (
    OptimizerFactory,
    ParamGroupBuilder,
    build_optimizer,
    build_scheduler,
    default_param_groups,
)

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
BatchTransform = Callable[[Any, torch.Tensor], tuple[Any, torch.Tensor]]

CHECKPOINT_NAME = "checkpoint.pt"
_PLOT_EVERY_EPOCH_ABOVE_SECONDS = 30.0
CHECKPOINT_FORMAT = "cnnlab-checkpoint-1"
# Options that may differ between a run and its resumption; any other difference is refused.
_RESUME_FREE_OPTIONS = {
    "resume",
    "overwrite",
    "progress",
    "log_every",
    "output",
    "eval_batch_size",
    "device",
    "num_threads",
}


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally ask for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda if available, else cpu; anything else is passed to `torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CnnlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


class Trainer:
    """Fits a model; see docs/ARCHITECTURE.md "Training engine" for the contract.

    Args:
        model: any `nn.Module`; moved to the config's device.
        config: the run's options.
        loss_fn: `loss_fn(outputs, targets) -> scalar mean loss`; default cross-entropy with the config's label
            smoothing.
        metrics: validation metrics, name -> `Metric` or `fn(outputs, targets) -> float` (default: accuracy). Each
            is reported as ``val_<name>``, next to ``val_loss``.
        train_transform: `(inputs, targets) -> (inputs, targets)` applied on the device to every training batch
            (augmentation); runs before the micro-batch split.
        eval_transform: the same for evaluation batches (e.g. a dtype conversion); defaults to none.
        param_groups: `model -> list of param-group dicts` (keys of torch optimizers, plus `lr_scale`); default:
            weights with decay, biases/norms without, frozen parameters left out.
        optimizer_factory: `(param_groups, config) -> Optimizer` to replace the built-in optimizers.
        callbacks: extra `Callback`s (an `EarlyStopping` is added when the config asks for one).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        *,
        loss_fn: LossFn | None = None,
        metrics: Mapping[str, Metric | MetricFn] | None = None,
        train_transform: BatchTransform | None = None,
        eval_transform: BatchTransform | None = None,
        param_groups: ParamGroupBuilder | None = None,
        optimizer_factory: OptimizerFactory | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        config.validate()
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # glibc: no page-fault churn on every step's activations (train/allocator.py)
        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn: LossFn = loss_fn or nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.metrics = as_metrics(metrics)
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.param_groups = param_groups
        self.optimizer_factory = optimizer_factory
        self.callbacks: list[Callback] = list(callbacks)
        if config.early_stopping_patience is not None:
            self.callbacks.append(EarlyStopping(config.monitor, config.monitor_mode, config.early_stopping_patience))
        self.run_dir = config.run_dir
        # Mutable state, all of it checkpointed.
        self.epoch = 0  # completed epochs
        self.global_step = 0  # completed optimizer steps
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, float]] = []
        self.should_stop = False
        self.micro_batch_size = config.micro_batch_size  # issue 7 (OOM remedies) may lower it mid-run
        self.train_seconds = 0.0  # wall time spent in training steps only (no evaluation, no callbacks)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.ema: ModelEma | None = None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.is_main_process = is_main_process()  # False on ranks > 0 under torchrun: they write no files
        if config.grad_checkpointing:
            checkpoint_stages(self.model)
        self.forward_model: nn.Module = torch.compile(self.model) if config.compile else self.model  # type: ignore[assignment]

    # ------------------------------------------------------------------ public API
    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluation uses: the EMA when enabled, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def log(self, message: str) -> None:
        """Print a line (to stderr, so stdout stays clean for results)."""
        if self.config.progress:
            print(message, file=sys.stderr, flush=True)

    def fit(self, train_data: Any, val_data: Any = None) -> list[dict[str, float]]:
        """Train for `config.epochs` epochs (or until early stopping), resuming if asked.

        Args:
            train_data: a `BatchSource`, a DataLoader, or an `(inputs, targets)` tensor pair (batched by the engine
                with `config.batch_size`, last incomplete batch dropped).
            val_data: the same kinds, or None for no validation.

        Returns:
            The per-epoch metrics (also in ``metrics.json`` / ``metrics.csv``).
        """
        config = self.config
        train = as_batch_source(train_data, config.batch_size, drop_last=True)
        val = None if val_data is None else self._eval_source(val_data)
        train, val = prepare_fit(self, train, val)  # batch-size search, torchrun/DDP; no-ops by default
        steps_per_epoch = len(train)
        if steps_per_epoch == 0:
            raise CnnlabError(
                f"training data has {train.num_samples} samples, fewer than one batch of {config.batch_size}; "
                "lower --batch-size"
            )
        groups = (self.param_groups or (lambda m: default_param_groups(m, config.weight_decay)))(self.model)
        self.optimizer = (self.optimizer_factory or build_optimizer)(groups, config)
        self.scheduler = build_scheduler(self.optimizer, config, steps_per_epoch)
        self.ema = ModelEma(self.model, config.ema_decay) if config.ema_decay is not None else None
        self.prepare_run_dir()
        if config.resume:
            self._restore(load_checkpoint(self.run_dir / CHECKPOINT_NAME, map_location=self.device))
            self.log(f"resumed {self.run_dir} after epoch {self.epoch} (step {self.global_step})")
        else:
            seed_everything(config.seed, config.deterministic)
        if self.is_main_process:
            save_config(config, self.run_dir / "config.yaml")
        for callback in self.callbacks:
            callback.on_fit_start(self)
        while self.epoch < config.epochs and not self.should_stop:
            epoch = self.epoch
            metrics = {"epoch": float(epoch + 1)}
            metrics.update(self._train_epoch(train, epoch))
            if val is not None:
                metrics.update(self.evaluate(val, prefix="val_"))
            self._update_best(metrics)
            for callback in self.callbacks:
                callback.on_epoch_end(self, epoch, metrics)
            self.epoch += 1
            self.history.append(metrics)
            if config.checkpoint and self.is_main_process:
                atomic_save(self._state(), self.run_dir / CHECKPOINT_NAME)
            # The plot costs ~0.5 s: redraw it each epoch only when that is small next to the epoch itself.
            self._write_records(plot=metrics["epoch_seconds"] >= _PLOT_EVERY_EPOCH_ABOVE_SECONDS)
            self.log(_epoch_line(metrics, config.epochs))
        if self.history:
            self._write_records(plot=True)
        for callback in self.callbacks:
            callback.on_fit_end(self)
        return self.history

    @torch.inference_mode()
    def evaluate(self, data: Any, prefix: str = "", model: nn.Module | None = None) -> dict[str, float]:
        """Loss and metrics of `model` (default `eval_model`) on `data`, keys prefixed with `prefix`."""
        model = model or self.eval_model
        source = self._eval_source(data)
        modes = {m: m.training for m in model.modules()}
        model.eval()
        for metric in self.metrics.values():
            metric.reset()
        loss_sum, count = 0.0, 0
        try:
            for inputs, targets in source.batches(0, self.config.seed, shuffle=False, device=self.device):
                if self.eval_transform is not None:
                    inputs, targets = self.eval_transform(inputs, targets)
                with self._autocast():
                    outputs = model(self._format(inputs))
                outputs = outputs.float()
                loss_sum += float(self.loss_fn(outputs, targets)) * len(targets)
                count += len(targets)
                for metric in self.metrics.values():
                    metric.update(outputs, targets)
        finally:
            for module, mode in modes.items():
                module.train(mode)
        results = {f"{prefix}loss": loss_sum / max(1, count)}
        results.update({f"{prefix}{name}": metric.compute() for name, metric in self.metrics.items()})
        return results

    @torch.inference_mode()
    def predict(self, inputs: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Outputs (float32, on the CPU) of `model` (default `eval_model`) for every row of `inputs`."""
        model = model or self.eval_model
        source = self._eval_source((inputs, torch.zeros(len(inputs), dtype=torch.long)))
        modes = {m: m.training for m in model.modules()}
        model.eval()
        outputs = []
        try:
            for batch_inputs, batch_targets in source.batches(0, 0, shuffle=False, device=self.device):
                if self.eval_transform is not None:
                    batch_inputs, batch_targets = self.eval_transform(batch_inputs, batch_targets)
                with self._autocast():
                    outputs.append(model(self._format(batch_inputs)).float().cpu())
        finally:
            for module, mode in modes.items():
                module.train(mode)
        return torch.cat(outputs)

    # ------------------------------------------------------------------ the loop
    def _train_epoch(self, train: BatchSource, epoch: int) -> dict[str, float]:
        config = self.config
        self.model.train()
        for callback in self.callbacks:
            callback.on_train_epoch_start(self, epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen, classified = 0, 0
        started = time.perf_counter()
        epoch_train_seconds = 0.0
        progress = _progress(len(train), f"epoch {epoch + 1}/{config.epochs}", config.progress)
        batches: Iterator[Batch] = iter(train.batches(epoch, config.seed, shuffle=True, device=self.device))
        while True:
            tick = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            inputs, targets = batch
            if self.train_transform is not None:
                inputs, targets = self.train_transform(inputs, targets)
            loss, batch_correct = train_step_with_recovery(self, inputs, targets)  # OOM: halve micro-batch, redo
            step_seconds = time.perf_counter() - tick
            epoch_train_seconds += step_seconds
            self.train_seconds += step_seconds  # kept current for callbacks (time-to-accuracy probes)
            n = len(targets)
            seen += n
            loss_sum += loss * n
            if batch_correct is not None:
                correct += batch_correct
                classified += batch_correct_count(targets)
            self.global_step += 1
            for callback in self.callbacks:
                callback.on_train_batch_end(self, self.global_step, loss)
            if progress is not None:
                progress.update(1)
                if self.global_step % config.log_every == 0:
                    postfix = {"loss": f"{float(loss_sum) / seen:.4f}", "img/s": f"{seen / epoch_train_seconds:.0f}"}
                    if classified:
                        postfix["acc"] = f"{float(correct) / classified:.4f}"
                    progress.set_postfix(postfix, refresh=False)
        if progress is not None:
            progress.close()
        metrics = {
            "train_loss": float(loss_sum) / max(1, seen),
            "lr": self.optimizer.param_groups[0]["lr"],  # type: ignore[union-attr]
            "epoch_seconds": time.perf_counter() - started,
            "images_per_second": seen / max(epoch_train_seconds, 1e-9),
        }
        if classified:
            metrics["train_accuracy"] = float(correct) / classified
        return metrics

    def _train_step(self, inputs: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step over a batch split into micro-batches of `self.micro_batch_size`.

        Returns the batch's mean loss (detached) and, for classification-shaped outputs, its number of correct
        predictions (both as tensors on the device, so no synchronisation happens here).
        """
        config = self.config
        optimizer = self.optimizer
        assert optimizer is not None and self.scheduler is not None
        total = len(targets)
        if isinstance(inputs, torch.Tensor):
            pieces = list(zip(inputs.split(self.micro_batch_size), targets.split(self.micro_batch_size), strict=True))
        elif self.micro_batch_size >= total:
            pieces = [(inputs, targets)]
        else:
            raise CnnlabError("gradient accumulation needs tensor inputs; set accum_steps=1 for structured inputs")
        optimizer.zero_grad(set_to_none=True)
        loss_total = torch.zeros((), device=self.device)
        correct: torch.Tensor | None = None
        for micro_inputs, micro_targets in pieces:
            with self._autocast():
                outputs = self.forward_model(self._format(micro_inputs))
                loss = self.loss_fn(outputs, micro_targets)
            weight = len(micro_targets) / total
            self.scaler.scale(loss * weight).backward()
            loss_total += loss.detach().float() * weight
            if is_classification(outputs, micro_targets):
                micro_correct = (outputs.detach().argmax(1) == micro_targets).sum()
                correct = micro_correct if correct is None else correct + micro_correct
        if config.grad_clip is not None:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss_total, correct

    # ------------------------------------------------------------------ helpers
    def _format(self, inputs: Any) -> Any:
        if self.config.channels_last and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _eval_source(self, data: Any) -> BatchSource:
        batch_size = self.config.eval_batch_size or 2 * self.config.batch_size
        if isinstance(data, TensorBatches):
            return data.with_batch_size(batch_size, drop_last=False)
        return as_batch_source(data, batch_size, drop_last=False)

    def _update_best(self, metrics: dict[str, float]) -> None:
        value = metrics.get(self.config.monitor)
        if value is None or math.isnan(value):
            return
        better = self.best_metric is None or (
            value > self.best_metric if self.config.monitor_mode == "max" else value < self.best_metric
        )
        if better:
            self.best_metric, self.best_epoch = value, self.epoch + 1

    def prepare_run_dir(self) -> None:
        """Check `resume`/`overwrite` against the run directory and create it (`fit` calls it; a task that does long
        work before `fit`, such as encoder pretraining, calls it first so a clash fails at once)."""
        checkpoint = self.run_dir / CHECKPOINT_NAME
        if self.config.resume and not checkpoint.is_file():
            raise CnnlabError(f"--resume: no checkpoint at {checkpoint}; start the run without --resume")
        if not self.config.resume and checkpoint.is_file() and not self.config.overwrite:
            raise CnnlabError(
                f"{self.run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --name"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _state(self) -> dict[str, Any]:
        assert self.optimizer is not None and self.scheduler is not None
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "micro_batch_size": self.micro_batch_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict(),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            # The data order of epoch e is a function of (seed, epoch) (see batches.epoch_generator), so the
            # epoch counter and the seed in "config" are the data-order generator's state.
            "rng": capture_rng_state(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CnnlabError(f"{self.run_dir / CHECKPOINT_NAME} is not a cnnlab checkpoint")
        saved, current = state["config"], self.config.to_dict()
        changed = sorted(k for k in current if k not in _RESUME_FREE_OPTIONS and saved.get(k) != current[k])
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
            raise CnnlabError(f"cannot resume {self.run_dir} with different options ({details}); use the same ones")
        assert self.optimizer is not None and self.scheduler is not None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        for callback in self.callbacks:
            if callback.state_key in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][callback.state_key])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        self.micro_batch_size = int(state["micro_batch_size"])
        restore_rng_state(state["rng"])

    def _write_records(self, plot: bool) -> None:
        if not self.is_main_process:
            return
        (self.run_dir / "metrics.json").write_text(json.dumps(self.history, indent=1))
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        with open(self.run_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        if plot:
            from cnnlab.report.curves import plot_learning_curves

            plot_learning_curves(self.history, self.run_dir / "learning_curves.png")


def batch_correct_count(targets: torch.Tensor) -> int:
    """How many predictions a batch of integer targets holds (pixels for dense targets)."""
    return targets.numel()


def _progress(total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, file=sys.stderr)


def _epoch_line(metrics: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {int(metrics['epoch'])}/{epochs}"]
    for key, value in metrics.items():
        if key == "epoch":
            continue
        if key == "lr":
            parts.append(f"lr {value:.2e}")
        elif key == "images_per_second":
            parts.append(f"{value:.0f} img/s")
        elif key == "epoch_seconds":
            parts.append(f"{value:.1f}s")
        else:
            parts.append(f"{key} {value:.4f}")
    return "  ".join(parts)


def fit(
    model: nn.Module, train_data: Any, val_data: Any = None, config: TrainConfig | None = None, **kwargs: Any
) -> Trainer:
    """Shortcut: build a `Trainer(model, config or TrainConfig(), **kwargs)`, fit it and return it."""
    trainer = Trainer(model, config or TrainConfig(), **kwargs)
    trainer.fit(train_data, val_data)
    return trainer


def checkpoint_path(run_dir: str | Path) -> Path:
    """Where a run's checkpoint lives."""
    return Path(run_dir) / CHECKPOINT_NAME
