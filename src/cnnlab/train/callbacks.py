"""Callbacks: hooks into the training loop. Subclass `Callback` and override what you need.

A callback with state (early stopping, the best weights) returns it from `state_dict()`; it is saved in every
checkpoint and restored on resume, keyed by `state_key`. Whether an epoch is better than the best so far is decided
in one place, `improves`, for the trainer's best epoch and for early stopping alike; `BestWeights` follows the
trainer's best epoch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from cnnlab.train.records import RunSessions
    from cnnlab.train.trainer import Trainer


class Callback:
    """Base class; every hook is a no-op."""

    @property
    def state_key(self) -> str:
        """Name under which `state_dict()` is checkpointed."""
        return type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch (after a resume has been restored)."""

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """After `model.train()` at the start of each epoch: the place to put frozen BN layers back in eval mode."""

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:
        """After each optimizer step; `step` is the global step (1-based), `loss` the batch loss (detached)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """After validation, before the checkpoint; `metrics` may be extended in place."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch (or early stop)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `value` of a monitored metric beats `best` (None: nothing yet) by more than `min_delta`.

    Args:
        mode: "max" (accuracy, mIoU) or "min" (a loss).
    """
    if best is None or math.isinf(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved for `patience` epochs (sets `trainer.should_stop`).

    Args:
        monitor: a key of the epoch metrics, e.g. "val_accuracy".
        mode: "max" or "min".
        patience: epochs without improvement tolerated.
        min_delta: the smallest change that counts as an improvement.
    """

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf if mode == "max" else math.inf
        self.bad_epochs = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.bad_epochs >= self.patience:  # a resumed run that had stopped: one more epoch was trained
            trainer.should_stop = True
            trainer.note(f"early stopping had stopped this run after epoch {trainer.epoch}: nothing left to train")

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            from cnnlab.errors import CnnlabError

            raise CnnlabError(
                f"early stopping monitors {self.monitor!r}, which is not among the epoch metrics "
                f"({', '.join(metrics)}); pass validation data or choose another monitor"
            )
        value = metrics[self.monitor]
        if improves(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.should_stop = True
                trainer.note(f"early stopping: {self.monitor} has not improved for {self.bad_epochs} epochs")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])


class BestWeights(Callback):
    """Keep the weights (the EMA's when it is on) of the trainer's best epoch and load them back when fitting ends.

    The best epoch is the trainer's (`Trainer.best_epoch`, on the config's ``monitor``), so a run has one notion of
    "best". The state (weights and epoch) is checkpointed by the engine, so a resumed run still ends on the best
    epoch's weights.
    """

    def __init__(self) -> None:
        self.best_epoch: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if trainer.best_epoch == epoch + 1 and trainer.best_epoch != self.best_epoch:
            self.best_epoch = trainer.best_epoch
            self.weights = {k: v.detach().cpu().clone() for k, v in trainer.eval_model.state_dict().items()}

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.weights is not None:
            # back where they were copied from: the weights evaluation uses, which the tasks save and test (loaded
            # into `model` with EMA on, they left the EMA of the last epoch in `eval_model`)
            trainer.eval_model.load_state_dict(self.weights)
            trainer.note(
                f"restored the weights of epoch {self.best_epoch} ({trainer.config.monitor} {trainer.best_metric:.4f})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch, self.weights = state["best_epoch"], state["weights"]


class SessionEpochs(Callback):
    """Tells a run's `cnnlab.train.records.RunSessions` when this session's training begins (after the epochs its
    checkpoint holds) and each epoch it finishes, so that ``sessions.json`` says which epochs each session trained,
    a killed one's too.

    Args:
        sessions: the run's sessions.
        epochs_before: the run's epochs in its earlier phases, each trained by a trainer of its own (transfer's head
            phase before its fine-tuning), so that a session counts the run's epochs across them.
    """

    def __init__(self, sessions: RunSessions, epochs_before: int = 0) -> None:
        self.sessions = sessions
        self.epochs_before = epochs_before

    def on_fit_start(self, trainer: Trainer) -> None:
        self.sessions.begin(self.epochs_before + trainer.epoch)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.sessions.epoch_done(self.epochs_before + epoch + 1)
