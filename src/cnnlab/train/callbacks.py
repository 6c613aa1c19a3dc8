"""Callbacks: hooks into the training loop. Subclass `Callback` and override what you need.

A callback with state (early stopping) returns it from `state_dict()`; it is saved in every checkpoint and restored
on resume, keyed by `state_key`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

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

    def improved(self, value: float) -> bool:
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            from cnnlab.errors import CnnlabError

            raise CnnlabError(
                f"early stopping monitors {self.monitor!r}, which is not among the epoch metrics "
                f"({', '.join(metrics)}); pass validation data or choose another monitor"
            )
        value = metrics[self.monitor]
        if self.improved(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.should_stop = True
                trainer.log(f"early stopping: {self.monitor} has not improved for {self.bad_epochs} epochs")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
