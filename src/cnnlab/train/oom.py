"""Out-of-memory recovery for training steps, and a simulated memory limit to test it on any device.

When a step raises `torch.OutOfMemoryError`, `train_step_with_recovery` frees what it can (the partial gradients,
Python garbage, the CUDA cache), halves the trainer's micro-batch (so the number of accumulated micro-batches
doubles and the effective batch stays the same) and runs the *same* step again. The optimizer only steps at the end
of a step, so nothing is lost: the run ends with the same number of optimizer steps, and the step's gradient is the
same average over the same samples. The new micro-batch is kept for the rest of the run and saved in checkpoints.

`SimulatedMemoryLimit` raises `torch.OutOfMemoryError` when the tensors created inside it exceed a byte limit, as a
GPU would, on any device (the CPU included): tests and the batch-size search use it to play a small GPU.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cnnlab.budget.trace import LiveTensorTracker
from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.train.trainer import Trainer


@dataclass
class OomEvent:
    """One recovered out-of-memory error."""

    step: int  # the optimizer step that was redone (1-based, as in the logs)
    old_micro_batch: int
    new_micro_batch: int
    accum_steps: int  # micro-batches per optimizer step after the change


def free_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and return cached blocks to the driver, so the next try starts clean."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def train_step_with_recovery(
    trainer: Trainer, inputs: Any, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`trainer._train_step(inputs, targets)`, redone with half the micro-batch after each out-of-memory error.

    Each recovery is logged and recorded in ``trainer.oom_events`` (a list of `OomEvent`).

    Raises:
        CnnlabError: when even a micro-batch of one sample does not fit, or when the inputs cannot be split
            (structured inputs need ``accum_steps=1``).
    """
    batch = len(targets)
    while True:
        try:
            return trainer._train_step(inputs, targets)
        except torch.OutOfMemoryError as error:
            if trainer.optimizer is not None:
                trainer.optimizer.zero_grad(set_to_none=True)
            error_line = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
            del error  # its traceback holds the frames, and so the activations, of the failed step
            free_memory(trainer.device)
            old = min(trainer.micro_batch_size, batch)
            if old <= 1 or not isinstance(inputs, torch.Tensor):
                raise CnnlabError(
                    f"out of memory at step {trainer.global_step + 1} with a micro-batch of {old} ({error_line}); "
                    "try --precision bf16, --grad-checkpointing, smaller images or a smaller model"
                ) from None
            new = old // 2
            trainer.micro_batch_size = new
            event = OomEvent(trainer.global_step + 1, old, new, -(-batch // new))
            events: list[OomEvent] = getattr(trainer, "oom_events", [])
            events.append(event)
            trainer.oom_events = events  # type: ignore[attr-defined]
            trainer.log(
                f"out of memory at step {event.step} (micro-batch {old}): freed memory, redoing the step with "
                f"micro-batch {new} x {event.accum_steps} accumulation steps (effective batch {batch} unchanged)"
            )


class SimulatedMemoryLimit(LiveTensorTracker):
    """A context that raises `torch.OutOfMemoryError` once the tensors created inside it exceed `limit_bytes`.

    It counts, like `cnnlab.budget.trace`, the distinct storages created by every op (forward, backward, optimizer)
    while the context is active, and subtracts them when they are freed; tensors that existed before (parameters,
    the dataset) are not counted unless passed to `add_existing`. Use it to test out-of-memory handling on a CPU.

    Args:
        limit_bytes: the simulated free device memory.
    """

    def __init__(self, limit_bytes: int) -> None:
        super().__init__()
        self.limit_bytes = int(limit_bytes)
        self.errors = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        peak_before = self.peak_bytes
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.live_bytes > self.limit_bytes:
            self.errors += 1
            self.peak_bytes = peak_before  # the allocation is refused, as a device would refuse it
            live = self.live_bytes
            del out
            raise torch.OutOfMemoryError(
                f"simulated out of memory: {live} bytes live > limit {self.limit_bytes} bytes (in {func})"
            )
        return out
