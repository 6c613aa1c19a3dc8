"""Out-of-memory recovery for training steps, and a simulated memory limit to test it on any device.

When a step raises `torch.OutOfMemoryError`, `Trainer.train_step` frees what it can (the partial gradients,
Python garbage, the CUDA cache; `free_memory`), halves its micro-batch (`halve_micro_batch`: the number of
accumulated micro-batches doubles and the effective batch stays the same), records an `OomEvent` and runs the *same*
step again. The optimizer only steps at the end of a step, so nothing is lost: the run ends with the same number of
optimizer steps, and the step's gradient is the same average over the same samples. The new micro-batch is kept
for the rest of the run and saved in checkpoints.

`SimulatedMemoryLimit` raises `torch.OutOfMemoryError` when the tensors created inside it exceed a byte limit, as a
GPU would, on any device (the CPU included): tests and the batch-size search use it to play a small GPU.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.train.live_memory import LiveTensorTracker


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


def halve_micro_batch(micro_batch_size: int, step: int, error_line: str) -> int:
    """The micro-batch to retry a step with after an out-of-memory error at `micro_batch_size`.

    Raises:
        CnnlabError: when the micro-batch is already one sample: nothing smaller can be tried.
    """
    if micro_batch_size <= 1:
        raise CnnlabError(
            f"out of memory at step {step} with a micro-batch of {micro_batch_size} ({error_line}); "
            "try --precision bf16, --grad-checkpointing, smaller images or a smaller model"
        )
    return micro_batch_size // 2


def distributed_oom_error(step: int, rank: int, world_size: int, error_line: str) -> CnnlabError:
    """The error for an out-of-memory step in one process of a distributed job, which cannot be redone alone.

    Redoing the step in smaller micro-batches would run more backward passes, and so more gradient all-reduces, in
    this process than in the others: the job would hang, or average gradients of different steps.
    """
    return CnnlabError(
        f"out of memory at step {step} in process {rank} of {world_size} ({error_line}); a distributed run cannot "
        "recover alone (the other processes wait for its gradients): restart it with --batch-size auto or "
        "--accum auto, which all processes agree on, or a smaller --batch-size"
    )


class SimulatedMemoryLimit(LiveTensorTracker):
    """A context that raises `torch.OutOfMemoryError` once the tensors created inside it exceed `limit_bytes`.

    It counts, like `cnnlab.budget.trace` (whose counter it extends), the distinct storages created by every op
    (forward, backward, optimizer) while the context is active, and subtracts them when they are freed; tensors that
    existed before (parameters, the dataset) are not counted unless passed to `add_existing`. Use it to test
    out-of-memory handling on a CPU.

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
