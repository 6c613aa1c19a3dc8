"""A run whose last epoch is its worst: for tests that a task saves and tests the best epoch's weights."""

from __future__ import annotations

from typing import Any

import torch

from cnnlab.train import Callback, Trainer


class WorseLastEpoch(Callback):
    """Zeroes every parameter after each step of the run's last epoch (its validation then predicts class 0, the
    background, everywhere: an mIoU without background of 0, never better than an earlier epoch), keeps a copy of
    each epoch's weights, and with `stop_before` raises KeyboardInterrupt as that epoch (0-based) starts."""

    def __init__(self, stop_before: int | None = None) -> None:
        self.stop_before = stop_before
        self.weights: dict[int, dict[str, torch.Tensor]] = {}  # 1-based epoch -> its weights

    @property
    def state_key(self) -> str:  # not checkpointed: the test's record of every session
        return "WorseLastEpochTestRecord"

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if epoch == self.stop_before:
            self.stop_before = None
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:
        if trainer.epoch == trainer.config.epochs - 1:
            with torch.no_grad():
                for parameter in trainer.model.parameters():
                    parameter.zero_()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        self.weights[epoch + 1] = {k: v.detach().clone() for k, v in trainer.eval_model.state_dict().items()}
