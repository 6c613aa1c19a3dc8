"""Planning: the largest training batch that fits a memory limit, as configured and with each out-of-memory remedy.

Training memory grows with the batch size: a fixed part (parameters, gradients, optimizer state) plus a per-sample
part (the input, the tensors saved for backward, the transient tensors of backward). Meta-device traces give the peak
of a step at any batch size at no memory cost, so the largest batch is found by bisection. Each remedy then changes
one part:

- **bf16 mixed precision**: saved activations are stored in bfloat16 (the per-sample saved bytes of a bf16 trace)
  and a bf16 copy of the weights is kept; parameters, gradients and optimizer state stay float32.
- **gradient checkpointing** (per top-level stage): only each stage's input is kept during forward; backward
  recomputes one stage at a time, so the saved bytes become the sum of stage inputs plus the largest stage.
- **SGD without momentum**: no optimizer state (Adam keeps two copies of the weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnlab.budget.trace import TraceResult, optimizer_copies, trace


def _checkpointed_saved(result: TraceResult) -> int:
    """Saved bytes with checkpointing: each segment keeps only its input, and backward recomputes one at a time.

    Segments are the top-level children, grouped into about sqrt(n) consecutive runs when there are many (as
    `torch.utils.checkpoint.checkpoint_sequential` does), so a chain of single layers is not checkpointed one by one.
    """
    names = list(result.segment_input_bytes)
    if not names:
        return result.saved_bytes
    size = max(1, round(math.sqrt(len(names)))) if len(names) > 6 else 1
    groups = [names[start : start + size] for start in range(0, len(names), size)]
    kept_inputs = sum(result.segment_input_bytes[group[0]] for group in groups)
    largest = max(sum(result.saved_by_segment.get(name, 0) for name in group) for group in groups)
    return kept_inputs + largest


def _largest_batch(peak: Callable[[int], int], limit_bytes: int, cap: int = 1 << 20) -> int:
    """Largest batch b with peak(b) <= limit, by doubling then bisection (peak grows with b)."""
    if peak(1) > limit_bytes:
        return 0
    low, high = 1, 2
    while high <= cap and peak(high) <= limit_bytes:
        low, high = high, high * 2
    if high > cap:
        return cap
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if peak(middle) <= limit_bytes else (low, middle)
    return low


def plan_batch(
    model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype, optimizer: str, limit_bytes: int
) -> dict[str, Any]:
    """The largest batch that fits `limit_bytes`, and what each remedy allows.

    The peak of a step is traced on the meta device for each candidate batch (a bisection over batch sizes, no
    memory allocated). Remedies that cannot be traced directly adjust that peak by what they save, per sample (saved
    activations, measured by bf16 and per-stage traces) or in total (optimizer state, bf16 weight copies).

    Returns:
        ``{"limit_bytes", "remedies": [{"remedy", "fixed_bytes", "per_sample_bytes", "max_batch"}]}``.
    """
    cache: dict[int, int] = {}

    def peak(batch: int) -> int:
        if batch not in cache:
            cache[batch] = trace(model, input_shape, batch, dtype, "meta", optimizer).peak_live_bytes
        return cache[batch]

    one = trace(model, input_shape, 1, dtype, "meta", optimizer)
    two = trace(model, input_shape, 2, dtype, "meta", optimizer)
    saved_per_sample = two.saved_bytes - one.saved_bytes
    trainable_bytes = sum(p.numel() for p in model.parameters() if p.requires_grad) * dtype.itemsize
    optimizer_bytes = optimizer_copies(optimizer) * trainable_bytes
    if dtype.itemsize > 2:
        half_saved = (
            trace(model, input_shape, 2, torch.bfloat16, "meta", "none").saved_bytes
            - trace(model, input_shape, 1, torch.bfloat16, "meta", "none").saved_bytes
        )
        bf16_delta, bf16_weights = saved_per_sample - half_saved, trainable_bytes // 2
    else:
        half_saved, bf16_delta, bf16_weights = saved_per_sample, 0, 0
    ckpt_delta = max(saved_per_sample - (_checkpointed_saved(two) - _checkpointed_saved(one)), 0)
    ckpt_delta_in_bf16 = ckpt_delta * half_saved / max(saved_per_sample, 1)
    options = [
        ("as configured", 0, 0.0),
        ("bf16 mixed precision", bf16_weights, bf16_delta),
        ("gradient checkpointing", 0, ckpt_delta),
        ("SGD (no optimizer state)", -optimizer_bytes, 0.0),
        ("all three", bf16_weights - optimizer_bytes, bf16_delta + ckpt_delta_in_bf16),
    ]
    remedies = []
    for remedy, fixed_change, saved_per_sample_change in options:

        def remedy_peak(batch: int, fixed_change: int = fixed_change, change: float = saved_per_sample_change) -> int:
            return int(peak(batch) + fixed_change - batch * change)

        best = _largest_batch(remedy_peak, limit_bytes)
        reference = max(best, 2)
        per_sample = (remedy_peak(reference) - remedy_peak(reference // 2)) / (reference - reference // 2)
        remedies.append(
            {
                "remedy": remedy,
                "fixed_bytes": int(remedy_peak(reference) - per_sample * reference),
                "per_sample_bytes": int(per_sample),
                "max_batch": best,
            }
        )
    return {"limit_bytes": limit_bytes, "optimizer": optimizer, "remedies": remedies}
