"""The training engine: one loop for every task (classification, transfer learning, segmentation).

`Trainer(model, config, ...).fit(train_data, val_data)` trains with gradient accumulation over micro-batches,
optional mixed precision, channels_last, torch.compile, EMA, gradient clipping, warm-up + one-cycle/cosine LR,
early stopping, an atomic checkpoint per epoch with exact resume, a progress bar and per-epoch records
(metrics.csv, metrics.json, learning_curves.png, config.yaml) in ``<output>/<task>/<name>/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError, first_line
from cnnlab.files import make_folder
from cnnlab.train.activation_checkpointing import checkpoint_stages
from cnnlab.train.allocator import keep_freed_memory
from cnnlab.train.batch_size import tune_batch_size
from cnnlab.train.batches import Batch, BatchSource, TensorBatches, as_batch_source
from cnnlab.train.callbacks import Callback, EarlyStopping, improves
from cnnlab.train.checkpoint import (
    CHECKPOINT_NAME,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    run_in_the_way,
)
from cnnlab.train.config import (
    OptionError,
    SlowPrecisionWarning,
    TrainConfig,
    check_resumable,
    save_config,
    slow_precision,
    use_threads,
)
from cnnlab.train.device import resolve_device
from cnnlab.train.ema import ModelEma
from cnnlab.train.metrics import Metric, MetricFn, as_metrics, is_classification
from cnnlab.train.oom import OomEvent, distributed_oom_error, free_memory, halve_micro_batch
from cnnlab.train.optim import (
    OptimizerFactory,
    ParamGroupBuilder,
    ParamGroups,
    build_optimizer,
    build_scheduler,
    default_param_groups,
)
from cnnlab.train.progress import ProgressBar
from cnnlab.train.records import write_history
from cnnlab.train.strategy import ResumedRun, Strategy, describe_processes, select_strategy
from cnnlab.train.tensorboard import TensorBoardLogger

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
BatchTransform = Callable[[Any, torch.Tensor], tuple[Any, torch.Tensor]]

_PLOT_EVERY_EPOCH_ABOVE_SECONDS = 30.0
CHECKPOINT_FORMAT = "cnnlab-checkpoint-1"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally ask for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class Trainer:
    """Fits a model; see docs/ARCHITECTURE.md "Training engine" for the contract.

    The trainer owns its loop. It calls its collaborators at fixed points and nothing else changes its state: the
    `Strategy` (one process, or torchrun + DDP) places, wraps, shards and reduces; the batch-size tuner
    (`cnnlab.train.batch_size`) runs before the first epoch through `trial` and `set_batch_size`; callbacks receive
    the hooks of `Callback`; out-of-memory recovery is part of `train_step`.

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
        callbacks: extra `Callback`s (an `EarlyStopping` and a `TensorBoardLogger` are added when the config asks for
            them).
        strategy: how the run is spread over processes; default `select_strategy` (DDP under torchrun, else one
            process).
        notes: print the notes on the results (`note`) to stderr, from the main process; None: with the progress
            (``config.progress``). The CLI's -q and --json turn the progress off and leave the notes on. Not
            a config field: how a run is watched is no option of the run (resume compares none, config.yaml has none).
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
        strategy: Strategy | None = None,
        notes: bool | None = None,
    ) -> None:
        config.validate()
        self.config = config
        requested = resolve_device(config.device)  # an unknown or absent device fails here, before any work
        use_threads(config.num_threads)
        self.strategy = strategy or select_strategy(config.device)
        self.device = self.strategy.device(requested)
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
        if config.tensorboard:
            self.callbacks.append(TensorBoardLogger())
        self.run_dir = config.run_dir
        self.is_main_process = self.strategy.is_main_process  # False on ranks > 0 under torchrun: they write no files
        self.show_progress = config.progress and self.is_main_process  # one progress bar and log, from rank 0
        self.show_notes = (config.progress if notes is None else notes) and self.is_main_process
        # Mutable state, all of it checkpointed.
        self.epoch = 0  # completed epochs
        self.global_step = 0  # completed optimizer steps
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, float]] = []
        self.should_stop = False
        self.micro_batch_size = config.micro_batch_size  # lowered by out-of-memory recovery (`train_step`)
        self.oom_events: list[OomEvent] = []  # each out-of-memory error `train_step` recovered from
        self.train_seconds = 0.0  # wall time spent in training steps only (no evaluation, no callbacks)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.ema: ModelEma | None = None
        self.scaler = self._new_scaler()
        if config.grad_checkpointing and not checkpoint_stages(self.model):
            raise CnnlabError(
                f"--grad-checkpointing: {type(model).__name__} has no stage of several layers to recompute in backward "
                "(a lone layer keeps only its input, as a checkpoint of it would), so it would save no memory; leave "
                "it out"
            )
        self.forward_model: nn.Module = self._compiled(self.model)

    @classmethod
    def for_inference(
        cls,
        model: nn.Module,
        *,
        device: str = "cpu",
        batch_size: int = 256,
        precision: str = "fp32",
        channels_last: bool = False,
        eval_transform: BatchTransform | None = None,
    ) -> Trainer:
        """A trainer that only runs `inference`, `evaluate` and `predict` for a trained model (no run directory).

        Saved models are evaluated through the same path as a training run's test set: eval mode, inference mode,
        the given precision and memory format, batches of `batch_size`.
        """
        config = TrainConfig(
            batch_size=batch_size,
            eval_batch_size=batch_size,
            device=device,
            precision=precision,  # type: ignore[arg-type]
            channels_last=channels_last,
            checkpoint=False,
            progress=False,
        )
        return cls(model, config, eval_transform=eval_transform)

    # ------------------------------------------------------------------ public API
    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluation uses: the EMA when enabled, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def log(self, message: str) -> None:
        """Print a line of progress (to stderr, so stdout stays clean for results); only the main process prints."""
        if self.show_progress:
            print(message, file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        """Print a note on the results, as `log` prints, but also where the progress is off (-q): a batch other than
        the one asked for (the batch-size search, an out-of-memory retry's smaller micro-batch), why training stopped
        before its epochs (early stopping), which epoch's weights were kept (`BestWeights`)."""
        if self.show_notes:
            print(message, file=sys.stderr, flush=True)

    def batch_record(self) -> dict[str, Any]:
        """The batch the run trained with, for a task's results (what --json records beside the notes): the batch
        (global under torchrun) and the micro-batch each process steps in, as a batch-size search or an out-of-memory
        retry left them, the processes, and this session's retries (`OomEvent`s; a resumed run's earlier sessions
        are not recorded, their smaller micro-batch is)."""
        return {
            "batch_size": self.config.batch_size,
            "micro_batch_size": self.micro_batch_size,
            "processes": self.strategy.world_size,
            "oom_events": [dataclasses.asdict(event) for event in self.oom_events],
        }

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
        self.strategy.check_same_options(config.to_dict())  # before the first collective another option could skip
        if (slow := slow_precision(config.precision, self.device.type)) is not None:
            warnings.warn(SlowPrecisionWarning(slow), stacklevel=2)  # named as the field: the caller's word
        train = as_batch_source(train_data, config.batch_size, drop_last=True)
        if config.auto_batch_size or config.auto_accum:
            train = tune_batch_size(self, train)  # before anything is sized by the batch
        # The checkpoint is read once, here: the processes it was saved with are in the refusal of a batch that does
        # not split over this job's, which comes before anything is sized by the batch. (A missing one is refused
        # by prepare_run_dir, saying what to do.)
        checkpoint, resumed = None, None
        if config.resume and (self.run_dir / CHECKPOINT_NAME).is_file():
            checkpoint = load_checkpoint(self.run_dir / CHECKPOINT_NAME, map_location=self.device)
            saved_with = checkpoint.get("world_size")  # absent from checkpoints written before it was recorded
            resumed = ResumedRun(self.run_dir, None if saved_with is None else int(saved_with), config.auto_batch_size)
        self.strategy.check_batch_size(config.batch_size, resumed)
        self.micro_batch_size = self.strategy.micro_batch_size(self.micro_batch_size)
        train_samples = train.num_samples  # of all processes, as the global batch is
        train = self.strategy.shard(train, config.seed, drop_last=True)
        val = None if val_data is None else self.strategy.shard(self._eval_source(val_data), config.seed, False)
        steps_per_epoch = len(train)
        if steps_per_epoch == 0:
            raise _no_training_step(train_samples, config.batch_size, self.strategy.world_size)
        wrapped = self.strategy.wrap_model(self.model, self.device, self._untrained_parameters())
        if wrapped is not self.model:  # DDP: the forward pass of training runs through the wrapper
            self.forward_model = self._compiled(wrapped)
        description = self.strategy.describe(config.batch_size)
        if description:
            self.log(description)
        self.optimizer, self.scheduler, self.ema = self._new_optimization(steps_per_epoch)
        self.prepare_run_dir()
        if config.resume:
            if checkpoint is None:  # it appeared since: prepare_run_dir found it
                checkpoint = load_checkpoint(self.run_dir / CHECKPOINT_NAME, map_location=self.device)
            trained_by = self._restore(checkpoint)
            del checkpoint  # its tensors are the model's and the optimizer's now
            self.log(f"resumed {self.run_dir} after epoch {self.epoch} (step {self.global_step})")
            if trained_by is not None and trained_by != self.strategy.world_size:
                per_process = config.batch_size // self.strategy.world_size
                self.log(
                    f"it ran on {describe_processes(trained_by)}, now on "
                    f"{describe_processes(self.strategy.world_size)}: its global batch stays {config.batch_size} = "
                    f"{per_process} per process in micro-batches of {self.micro_batch_size}"
                )
        else:
            seed_everything(config.seed, config.deterministic)
        if self.is_main_process:
            save_config(config, self.run_dir / "config.yaml")
        for callback in self.callbacks:
            callback.on_fit_start(self)
        while self.epoch < config.epochs and not self.should_stop:
            epoch = self.epoch
            metrics = {"epoch": float(epoch + 1)}
            epoch_metrics = self._train_epoch(train, epoch)
            metrics.update(self.strategy.reduce_metrics(epoch_metrics, train.num_samples, self.device))
            self._check_finite_weights(epoch, metrics)
            if val is not None:
                # every process scores the whole validation set from the shards all of them ran
                ignore = getattr(self.loss_fn, "ignore_index", None)
                whole = self.strategy.gather_batches(self.inference(val), self.device, ignore)
                metrics.update(self._scores(whole, "val_")[0])
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

    def _check_finite_weights(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Stop a run whose weights became NaN or infinite in `epoch`: every later epoch trained nothing, and a
        learning rate of 1e30 ran to the end and was reported as finished, its NaN weights saved and tested.

        Called before the epoch is validated or checkpointed, so the run folder keeps the last sound checkpoint.

        Raises:
            OptionError: naming the learning rate (and the precision, when it is not fp32) to change.
        """
        tensors = [t for t in self.eval_model.state_dict().values() if t.is_floating_point()]
        if not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            return
        config = self.config
        precision = "" if config.precision == "fp32" else f", or use {{precision}} fp32 (now {config.precision}),"
        raise OptionError(
            f"training diverged in epoch {epoch + 1}: its weights became NaN or infinite (train_loss "
            f"{metrics.get('train_loss', float('nan')):.4g}); lower {{lr}} (now {config.lr:g}){precision} and start "
            "again with --overwrite"
        )

    def train_step(self, inputs: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step over a batch, split into micro-batches of `micro_batch_size`.

        When the step runs out of memory, the partial gradients and cached memory are freed, the micro-batch is
        halved (so accumulation doubles and the effective batch stays the same), an `OomEvent` is recorded and the
        same step is run again: nothing is lost (`cnnlab.train.oom`). In a distributed run the step cannot be redone
        in one process alone, so it stops with a message instead.

        Returns:
            The batch's mean loss (detached) and, for classification-shaped outputs, its number of correct
            predictions (tensors on the device: no synchronisation happens here).

        Raises:
            CnnlabError: when even a micro-batch of one sample does not fit, when a process of a distributed run
                runs out of memory, or when structured inputs would need to be split.
        """
        if self.optimizer is None or self.scheduler is None:
            raise CnnlabError("train_step runs inside fit (the optimizer and schedule are built there)")
        batch = len(targets)
        while True:
            try:
                return self._step(inputs, targets, self.optimizer, self.scheduler, self.ema, self.scaler)
            except torch.OutOfMemoryError as error:
                self.optimizer.zero_grad(set_to_none=True)
                error_line = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
                del error  # its traceback holds the frames, and so the activations, of the failed step
                free_memory(self.device)
                if self.strategy.world_size > 1:
                    raise distributed_oom_error(
                        self.global_step + 1, self.strategy.rank, self.strategy.world_size, error_line
                    ) from None
                old = min(self.micro_batch_size, batch)
                if not isinstance(inputs, torch.Tensor):
                    old = 1  # structured inputs cannot be split: report, do not retry
                self.micro_batch_size = halve_micro_batch(old, self.global_step + 1, error_line)
                event = OomEvent(self.global_step + 1, old, self.micro_batch_size, -(-batch // self.micro_batch_size))
                self.oom_events.append(event)
                self.note(
                    f"out of memory at step {event.step} (micro-batch {old}): freed memory, redoing the step with "
                    f"micro-batch {event.new_micro_batch} x {event.accum_steps} accumulation steps (effective batch "
                    f"{batch} unchanged)"
                )

    @torch.inference_mode()
    def inference(self, data: Any, model: nn.Module | None = None) -> Iterator[tuple[Any, torch.Tensor]]:
        """Yield `(outputs, targets)` of `model` (default `eval_model`) for every batch of `data`, in order.

        The one evaluation path of the engine: eval mode (each module's flag restored afterwards), inference mode,
        the run's precision (autocast) and memory format, `eval_transform`, batches of ``eval_batch_size`` (default
        twice the training batch). Outputs are float32 on the device.

        Args:
            data: a float tensor of inputs (targets are then zeros), an `(inputs, targets)` pair, a DataLoader or a
                `BatchSource`.
            model: the module to run; default `eval_model`.
        """
        model = model or self.eval_model
        if isinstance(data, torch.Tensor):
            data = (data, torch.zeros(len(data), dtype=torch.long))
        source = self._eval_source(data)
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            for inputs, targets in source.batches(0, self.config.seed, shuffle=False, device=self.device):
                if self.eval_transform is not None:
                    inputs, targets = self.eval_transform(inputs, targets)
                with self._autocast():
                    outputs = model(self._format(inputs))
                yield outputs.float(), targets
        finally:
            for module, mode in modes.items():
                module.train(mode)

    def evaluate(self, data: Any, prefix: str = "", model: nn.Module | None = None) -> dict[str, float]:
        """Loss and metrics of `model` (default `eval_model`) on `data`, keys prefixed with `prefix`.

        Under torchrun the results are averaged over the processes, weighted by their samples (`fit` scores its
        sharded validation data whole instead, from the outputs of every process).
        """
        results, count = self._scores(self.inference(data, model), prefix)
        return self.strategy.reduce_metrics(results, count, self.device)

    def _scores(self, batches: Iterator[tuple[Any, torch.Tensor]], prefix: str) -> tuple[dict[str, float], int]:
        """Loss and metrics over `(outputs, targets)` batches, and their number of samples."""
        for metric in self.metrics.values():
            metric.reset()
        loss_sum, count, loss_count = 0.0, 0, 0
        with torch.inference_mode():
            for outputs, targets in batches:
                count += len(targets)
                if self._labelled(targets).any():  # a batch with no labelled target has no loss (0/0: NaN), as in fit
                    loss_sum += float(self.loss_fn(outputs, targets)) * len(targets)
                    loss_count += len(targets)
                for metric in self.metrics.values():
                    metric.update(outputs, targets)
        results = {f"{prefix}loss": loss_sum / loss_count if loss_count else (float("nan") if count else 0.0)}
        results.update({f"{prefix}{name}": metric.compute() for name, metric in self.metrics.items()})
        return results, count

    def predict(self, data: Any, model: nn.Module | None = None) -> torch.Tensor:
        """Outputs (float32, on the CPU) of `model` (default `eval_model`) for every sample of `data`, in order.

        Args:
            data: a tensor of inputs, or anything `inference` takes (a DataLoader of an image folder, ...).
        """
        return torch.cat([outputs.cpu() for outputs, _ in self.inference(data, model)])

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the model's weights and buffers, for `trial` to restore."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def trial(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        snapshot: Mapping[str, torch.Tensor],
        steps: int = 2,
        eval_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Run `steps` full optimizer steps on one batch in one micro-batch, then evaluate `eval_batch`, and undo it.

        For the batch-size tuner: whether this raises `torch.OutOfMemoryError` tells whether the batch fits. The
        steps use a throwaway optimizer, schedule, EMA and scaler (the first step allocates the optimizer state, the
        second runs with it); afterwards the model's weights and buffers are restored from `snapshot` (taken with
        `snapshot` before the trials, outside whatever memory they are measured in), so the run starts unchanged.
        """
        optimizer, scheduler, ema = self._new_optimization(steps_per_epoch=steps)
        scaler = self._new_scaler()
        try:
            self.model.train()
            for _ in range(steps):
                step_x, step_y = self.train_transform(inputs, targets) if self.train_transform else (inputs, targets)
                self._step(step_x, step_y, optimizer, scheduler, ema, scaler, len(targets), synchronized=False)
                del step_x, step_y
            if eval_batch is not None:
                batch = TensorBatches(*eval_batch, batch_size=len(eval_batch[1]))
                for _ in self.inference(batch):
                    pass
        finally:
            optimizer.zero_grad(set_to_none=True)
            del optimizer, scheduler, ema, scaler
            self.model.load_state_dict(snapshot)

    def set_batch_size(self, batch_size: int, accum_steps: int, eval_batch_size: int | None = None) -> None:
        """Change the effective batch, its accumulation and the evaluation batch before `fit` starts training."""
        if self.optimizer is not None:
            raise CnnlabError("the batch size can only change before training starts")
        updated = dataclasses.replace(self.config, batch_size=batch_size, accum_steps=accum_steps)  # validates
        self.config.batch_size, self.config.accum_steps = updated.batch_size, updated.accum_steps
        self.config.eval_batch_size = eval_batch_size
        self.micro_batch_size = updated.micro_batch_size

    def prepare_run_dir(self) -> None:
        """Check `resume`/`overwrite` against the run directory and create it (`fit` calls it; a task that does long
        work before `fit`, such as encoder pretraining, calls it first so a clash fails at once)."""
        checkpoint = self.run_dir / CHECKPOINT_NAME
        if self.config.resume and not checkpoint.is_file():
            raise CnnlabError(f"--resume: no checkpoint at {checkpoint}; start the run without --resume")
        if not self.config.resume and checkpoint.is_file() and not self.config.overwrite:
            raise run_in_the_way(self.run_dir)
        # A save killed mid-write (SIGKILL, power) left its temporary file, a checkpoint's size: the next save sweeps
        # it once its process is gone (`atomic_save`), never one that a live process (a second command on this run,
        # another machine sharing the folder) is writing.
        make_folder(self.run_dir, shown=str(self.config.output))  # under a file: one line, exit 2

    # ------------------------------------------------------------------ the loop
    def _train_epoch(self, train: BatchSource, epoch: int) -> dict[str, float]:
        config = self.config
        self.model.train()
        for callback in self.callbacks:
            callback.on_train_epoch_start(self, epoch)
        loss_sum = torch.zeros((), device=self.device)
        loss_samples = torch.zeros((), device=self.device)  # the samples of the batches that have a loss
        correct = torch.zeros((), device=self.device)
        seen, classified = 0, 0
        lr_sum, steps = 0.0, 0
        started = time.perf_counter()
        epoch_train_seconds = 0.0
        batches: Iterator[Batch] = iter(train.batches(epoch, config.seed, shuffle=True, device=self.device))
        with ProgressBar(len(train), f"epoch {epoch + 1}/{config.epochs}", self.show_progress) as progress:
            while True:
                tick = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                inputs, targets = batch
                if self.train_transform is not None:
                    inputs, targets = self.train_transform(inputs, targets)
                # the rate this step trains at (the schedule moves after it)
                lr_sum += self.optimizer.param_groups[0]["lr"]  # type: ignore[union-attr]
                steps += 1
                loss, batch_correct = self.train_step(inputs, targets)
                step_seconds = time.perf_counter() - tick
                epoch_train_seconds += step_seconds
                self.train_seconds += step_seconds  # kept current for callbacks (time-to-accuracy probes)
                n = len(targets)
                seen += n
                # A batch with no labelled target (random crops of scribbled masks) has no loss: its mean is 0/0, NaN,
                # and made the epoch's train_loss NaN. It trains nothing (zero gradients) and is left out of the mean.
                labelled = self._labelled(targets)
                has_loss = labelled.any()
                loss_sum += torch.where(has_loss, loss * n, 0.0)
                loss_samples += has_loss * n
                if batch_correct is not None:
                    correct += batch_correct
                    classified += int(labelled.sum())
                self.global_step += 1
                for callback in self.callbacks:
                    callback.on_train_batch_end(self, self.global_step, loss)
                if self.global_step % config.log_every == 0:
                    status = f"loss {_mean(loss_sum, loss_samples):.4f}  {seen / epoch_train_seconds:.0f} img/s"
                    if classified:
                        status += f"  acc {float(correct) / classified:.4f}"
                    progress.show(status)
                progress.advance()
        metrics = {
            "train_loss": _mean(loss_sum, loss_samples),
            # the mean rate of the epoch's steps: the schedule's value after them (the next epoch's first) read
            # 0.00e+00 at the end of a one-epoch cosine run and one epoch late on every other
            "lr": lr_sum / steps if steps else self.optimizer.param_groups[0]["lr"],  # type: ignore[union-attr]
            "epoch_seconds": time.perf_counter() - started,
            "images_per_second": seen / max(epoch_train_seconds, 1e-9),
        }
        if classified:
            metrics["train_accuracy"] = float(correct) / classified
        return metrics

    def _labelled(self, targets: torch.Tensor) -> torch.Tensor:
        """Which targets count for the training accuracy: all but the loss's ``ignore_index`` (e.g. 255 in masks)."""
        ignore = getattr(self.loss_fn, "ignore_index", None)
        return targets != ignore if isinstance(ignore, int) else torch.ones_like(targets, dtype=torch.bool)

    def _step(
        self,
        inputs: Any,
        targets: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        ema: ModelEma | None,
        scaler: torch.amp.GradScaler,
        micro_batch_size: int | None = None,
        synchronized: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step of `optimizer` over a batch split into micro-batches (default `micro_batch_size`).

        `synchronized`: the step is one of the run's, taken by every process together (the batch-size search's
        trial steps are this process's own).
        """
        config = self.config
        micro = micro_batch_size or self.micro_batch_size
        total = len(targets)
        if isinstance(inputs, torch.Tensor):
            pieces = list(zip(inputs.split(micro), targets.split(micro), strict=True))
        elif micro >= total:
            pieces = [(inputs, targets)]
        else:
            raise CnnlabError("gradient accumulation needs tensor inputs; set accum_steps=1 for structured inputs")
        optimizer.zero_grad(set_to_none=True)
        loss_total = torch.zeros((), device=self.device)
        correct: torch.Tensor | None = None
        shares = self._loss_shares([micro_targets for _, micro_targets in pieces], total, synchronized)
        for (micro_inputs, micro_targets), share in zip(pieces, shares, strict=True):
            with self._autocast():
                outputs = self.forward_model(self._format(micro_inputs))
                loss = self.loss_fn(outputs, micro_targets)
            scaler.scale(loss * share).backward()
            contribution = loss.detach().float() * share
            if isinstance(share, torch.Tensor):  # a micro-batch with no labelled target has a NaN mean and no share
                contribution = torch.where(share > 0, contribution, 0.0)
            loss_total += contribution
            if is_classification(outputs, micro_targets):
                hits = outputs.detach().argmax(1) == micro_targets
                micro_correct = (hits & self._labelled(micro_targets)).sum()
                correct = micro_correct if correct is None else correct + micro_correct
        if config.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(self.model)
        return loss_total, correct

    # ------------------------------------------------------------------ helpers
    def _loss_shares(
        self, targets: list[torch.Tensor], total: int, synchronized: bool
    ) -> list[float] | list[torch.Tensor]:
        """The weight of each micro-batch's mean loss in the mean loss of the batch (the global batch under torchrun,
        whose processes' gradients DDP averages).

        A mean over samples weighs each micro-batch by its samples. A cross-entropy averages over the summed class
        weights of its labelled targets (pixels of segmentation masks, `ignore_index` left out), so each micro-batch
        weighs its share of that sum: then the gradient is the whole batch's, whatever the micro-batches hold.
        """
        world = self.strategy.world_size if synchronized else 1
        by_samples = [len(micro_targets) / total for micro_targets in targets]
        if len(targets) == 1 and world == 1:  # the whole batch in one piece: its own mean, nothing to weigh
            return by_samples
        denominators = [loss_denominator(self.loss_fn, micro_targets) for micro_targets in targets]
        if any(d is None for d in denominators):
            return by_samples
        batch = torch.stack(denominators).sum()  # type: ignore[arg-type]
        if world > 1:
            batch = self.strategy.sum_over_processes(batch)
        batch = batch.clamp_min(torch.finfo(batch.dtype).tiny)  # nothing labelled anywhere: every share is 0
        return [world * d / batch for d in denominators]  # type: ignore[operator]

    def _new_optimization(
        self, steps_per_epoch: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, ModelEma | None]:
        """A fresh optimizer over the param groups, its schedule and the EMA (None when off)."""
        config = self.config
        optimizer = (self.optimizer_factory or build_optimizer)(self._param_groups(), config)
        scheduler = build_scheduler(optimizer, config, steps_per_epoch)
        ema = ModelEma(self.model, config.ema_decay) if config.ema_decay is not None else None
        return optimizer, scheduler, ema

    def _param_groups(self) -> ParamGroups:
        """The optimizer's param groups: the task's builder, else decay on weights and none on norms and biases."""
        return (self.param_groups or (lambda m: default_param_groups(m, self.config.weight_decay)))(self.model)

    def _untrained_parameters(self) -> bool:
        """Whether the model has parameters that require gradients but that no param group trains (a transfer phase
        on cached features holds the whole network, and trains its top blocks)."""
        trained = {id(p) for group in self._param_groups() for p in group["params"]}
        return any(p.requires_grad and id(p) not in trained for p in self.model.parameters())

    def _new_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.config.precision == "fp16")

    def _compiled(self, module: nn.Module) -> nn.Module:
        if not self.config.compile:
            return module
        if self.device.type == "cpu":
            _check_cpu_compiler()
        if self.device.type != "cuda":  # torch's compiler logs a CUDA warning on a CPU, where no CUDA is wanted
            _quiet_cuda_home_warning()
        if module is self.model:  # said once: DDP's wrapper is compiled again at the start of fit
            self.log(
                "--compile: torch.compile builds the model's kernels during its first training steps (minutes on a "
                "CPU, silently; counted in the first epoch's seconds and img/s), then runs them"
            )
        return torch.compile(module)  # type: ignore[return-value]

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
        if value is not None and improves(value, self.best_metric, self.config.monitor_mode):
            self.best_metric, self.best_epoch = value, self.epoch + 1

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
            "micro_batch_size": self.micro_batch_size,  # per process, of `world_size` processes
            "world_size": self.strategy.world_size,
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

    def _restore(self, state: dict[str, Any]) -> int | None:
        """Continue from a checkpoint; returns the number of processes that trained it (None: not recorded)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CnnlabError(f"{self.run_dir / CHECKPOINT_NAME} is not a cnnlab checkpoint")
        check_resumable(state["config"], self.config, self.run_dir)
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
        trained_by = state.get("world_size")  # absent from checkpoints written before it was recorded
        if trained_by is not None:
            # The recorded micro-batch is one process's of `trained_by`: what carries over is the micro-batch over
            # all processes (the run's batch / accumulation, or less after an out-of-memory halving), split over this
            # job's processes as a fresh run's is. Kept per process, a 2-process run resumed in one process took
            # every step in two micro-batches unasked. Where a search sized the batch (--batch-size auto, --accum
            # auto), what it found to fit in one process stays the bound: fewer processes accumulate more.
            over_all = self.micro_batch_size * int(trained_by)
            per_process = self.strategy.micro_batch_size(over_all)
            if self.config.auto_batch_size or self.config.auto_accum:
                per_process = min(per_process, self.micro_batch_size)
            self.micro_batch_size = per_process
        restore_rng_state(state["rng"])
        return None if trained_by is None else int(trained_by)

    def _write_records(self, plot: bool) -> None:
        if self.is_main_process:
            write_history(self.history, self.run_dir, plot=plot)


def loss_denominator(loss_fn: Any, targets: torch.Tensor) -> torch.Tensor | None:
    """What a mean cross-entropy (or NLL) loss divides its summed loss by for class-index `targets`: the summed class
    weights of the targets that are not `ignore_index` (their number when unweighted). None for other losses and
    for class-probability targets, whose mean is over samples."""
    if not isinstance(loss_fn, nn.CrossEntropyLoss | nn.NLLLoss) or loss_fn.reduction != "mean":
        return None
    if targets.is_floating_point():
        return None
    labelled = targets != loss_fn.ignore_index
    if loss_fn.weight is None:
        return labelled.sum().float()
    weight = loss_fn.weight.to(targets.device)
    return (weight[torch.where(labelled, targets, 0)] * labelled).sum().float()


def _no_training_step(samples: int, batch_size: int, world_size: int) -> CnnlabError:
    """The error for training data that makes no optimizer step per epoch.

    Under torchrun a batch smaller than `batch_size` is taken only when it splits evenly over the processes, so 19
    samples give no step with 2 processes where 20 give one (and one process trains on the 19).
    """
    if world_size == 1:
        return CnnlabError(
            f"training data has {samples} samples, fewer than one batch of {batch_size}; lower --batch-size"
        )
    largest = samples - samples % world_size
    remedy = f"lower --batch-size to at most {largest}" if largest else f"run fewer than {world_size} processes"
    return CnnlabError(
        f"training data has {samples} samples, fewer than one batch of {batch_size} that splits evenly over "
        f"{world_size} processes (each process takes its share of every step); {remedy}"
    )


def _mean(total: torch.Tensor, count: torch.Tensor) -> float:
    """``total / count``, NaN when nothing was counted (an epoch none of whose batches had a labelled target)."""
    return float(total) / float(count) if float(count) else float("nan")


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


def _check_cpu_compiler() -> None:
    """torch.compile on a CPU builds C++ kernels: without a compiler the first training step failed with a traceback
    of torch's inductor, after the data was read and the run folder made."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as error:  # noqa: BLE001 - torch raises its own (InvalidCxxCompiler) or a RuntimeError
        raise CnnlabError(
            f"--compile on the CPU needs a C++ compiler (torch.compile builds C++ kernels), and none was found "
            f"({first_line(error)}); install one "
            "(apt install g++, or set CXX) or leave --compile out"
        ) from None


def _drop_cuda_home_warning(record: logging.LogRecord) -> bool:
    return "No CUDA runtime is found" not in record.getMessage()


def _quiet_cuda_home_warning() -> None:
    """Keep "No CUDA runtime is found, using CUDA_HOME=..." (from torch.utils.cpp_extension, which the compiler imports)
    out of a CPU run's output: it reads as a fault, and the run wants no CUDA. Other messages of that logger stay."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if _drop_cuda_home_warning not in logger.filters:
        logger.addFilter(_drop_cuda_home_warning)
