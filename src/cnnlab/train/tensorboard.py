"""TensorBoard event files for a run, through `torch.utils.tensorboard` (``--tensorboard``).

The trainer adds a `TensorBoardLogger` when the config's ``tensorboard`` is on. It writes into the run directory, so
``tensorboard --logdir runs`` shows every task's runs side by side, named ``<task>/<name>``:

- per step (every ``log_every`` optimizer steps, where the progress bar already reads the loss): ``step/train_loss``
  and ``step/lr``, so the warm-up and the one-cycle or cosine schedule are visible;
- per epoch: every number of the epoch's metrics (``epoch/epoch``, ``epoch/train_loss``, ``epoch/val_accuracy``,
  ``epoch/lr``, ...), against the step too;
- per epoch, the first convolution's filters as an image grid, when the model starts with a 1- or 3-channel one.

Only the main process writes; a resumed run appends to the same folder from the step it resumed at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from cnnlab.train.callbacks import Callback
from cnnlab.train.config import check_tensorboard

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.tensorboard import SummaryWriter

    from cnnlab.train.trainer import Trainer

__all__ = ["TensorBoardLogger", "first_layer_filter_grid"]


class TensorBoardLogger(Callback):
    """Writes the run's scalars (per step and per epoch) and first-layer filters as TensorBoard events."""

    def __init__(self) -> None:
        # Checked when the trainer is built, so a missing package fails before any training, not after it (and by
        # `EngineOptions`, before a command reads any data).
        check_tensorboard()
        self.writer: SummaryWriter | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.is_main_process:
            return
        from torch.utils.tensorboard import SummaryWriter

        # On resume, purge_step drops what the interrupted run wrote after its last checkpoint: the curves do not fork.
        resumed_at = trainer.global_step + 1 if trainer.config.resume else None
        self.writer = SummaryWriter(str(trainer.run_dir), purge_step=resumed_at)

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:
        if self.writer is None or step % trainer.config.log_every:
            return
        self.writer.add_scalar("step/train_loss", float(loss), step)
        assert trainer.optimizer is not None  # batches only run inside fit
        self.writer.add_scalar("step/lr", trainer.optimizer.param_groups[0]["lr"], step)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        # Against the optimizer step like the per-step curves, so both share one axis (and one purge on resume).
        step = trainer.global_step
        for key, value in metrics.items():
            self.writer.add_scalar(f"epoch/{key}", value, step)
        grid = first_layer_filter_grid(trainer.eval_model)
        if grid is not None:
            self.writer.add_image("first_layer_filters", grid, step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def first_layer_filter_grid(model: nn.Module, padding: int = 1) -> torch.Tensor | None:
    """The first convolution's kernels as one C x H x W image in [0, 1] (each kernel scaled on its own), or None
    when the model's first convolution does not take 1 or 3 channels (nothing to show as a picture)."""
    from torchvision.utils import make_grid

    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.in_channels not in (1, 3):
        return None
    kernels = conv.weight.detach().float().cpu()  # out x in x k x k
    low = kernels.amin(dim=(1, 2, 3), keepdim=True)
    high = kernels.amax(dim=(1, 2, 3), keepdim=True)
    scaled = (kernels - low) / (high - low).clamp_min(1e-12)
    columns = max(1, int(len(scaled) ** 0.5))
    return make_grid(scaled, nrow=columns, padding=padding, pad_value=1.0)
