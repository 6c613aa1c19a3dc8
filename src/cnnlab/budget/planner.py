"""Planning: the largest training batch that fits a memory limit, as configured and with each out-of-memory remedy.

Training memory grows with the batch size: a fixed part (parameters, gradients, optimizer state) plus a per-sample
part (the input, the tensors saved for backward, the transient tensors of backward). Meta-device traces give the peak
of a step at any batch size at no memory cost, so the largest batch is found by bisection, for each remedy:

- **gradient checkpointing**: traced for real on a copy checkpointed by
  `cnnlab.train.activation_checkpointing.checkpoint_stages` (the engine's own `--grad-checkpointing`), recomputation
  in backward included;
- **SGD without momentum**: traced with that optimizer (Adam keeps two copies of the weights);
- **bf16 mixed precision**: autocast cannot run on the meta device, so the peak is adjusted: saved activations
  take the per-sample saved bytes of a bfloat16 trace, and a bf16 copy of the weights is added; parameters,
  gradients and optimizer state stay float32;
- **all three** combines them the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnlab.budget.trace import trace


def _largest_batch(peak: Callable[[int], int], limit_bytes: int, cap: int = 1 << 20) -> int:
    """Largest batch b with peak(b) <= limit (peak grows with b).

    The peak is nearly a straight line in b, so the search jumps to where the line through the two bracketing
    batches meets the limit (falling back to bisection when that makes no progress): a handful of traces.
    """
    if peak(1) > limit_bytes:
        return 0
    low, high = 1, 2
    while peak(high) <= limit_bytes:
        if high >= cap:
            return cap
        slope = max((peak(high) - peak(low)) / (high - low), 1)
        low, high = high, min(cap, max(high * 2, int(high + (limit_bytes - peak(high)) / slope) + 1))
    while high - low > 1:
        slope = max((peak(high) - peak(low)) / (high - low), 1)
        guess = low + int((limit_bytes - peak(low)) / slope)
        middle = guess if low < guess < high else (low + high) // 2
        if middle in (low, high - 1) and guess not in (low, high - 1):
            middle = (low + high) // 2
        low, high = (middle, high) if peak(middle) <= limit_bytes else (low, middle)
    return low


def _saved_per_sample(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    one = trace(model, input_shape, 1, dtype, "meta", "none").saved_bytes
    return trace(model, input_shape, 2, dtype, "meta", "none").saved_bytes - one


def plan_batch(
    model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype, optimizer: str, limit_bytes: int
) -> dict[str, Any]:
    """The largest batch that fits `limit_bytes`, and what each remedy allows.

    Returns:
        ``{"limit_bytes", "optimizer", "remedies": [{"remedy", "fixed_bytes", "per_sample_bytes", "max_batch"}]}``;
        fixed and per-sample bytes are the straight line through the peaks at the answer and half of it.
    """
    from cnnlab.train.activation_checkpointing import checkpoint_stages

    checkpointed = copy.deepcopy(model).to("meta")
    checkpoint_stages(checkpointed)
    cache: dict[tuple[int, str, int], int] = {}
    variants = {0: model, 1: checkpointed}

    def traced_peak(variant: int, opt: str, batch: int) -> int:
        key = (variant, opt, batch)
        if key not in cache:
            cache[key] = trace(variants[variant], input_shape, batch, dtype, "meta", opt).peak_live_bytes
        return cache[key]

    weights_bytes = sum(p.numel() for p in model.parameters() if p.requires_grad) * dtype.itemsize
    mixed = dtype.itemsize > 2  # bf16 autocast only changes anything for a float32 model
    bf16_weights = weights_bytes // 2 if mixed else 0

    def bf16_saving(variant: int) -> int:
        if not mixed:
            return 0
        float_saved = _saved_per_sample(variants[variant], input_shape, dtype)
        return float_saved - _saved_per_sample(variants[variant], input_shape, torch.bfloat16)

    savings = {variant: bf16_saving(variant) for variant in variants}
    options: list[tuple[str, Callable[[int], int]]] = [
        ("as configured", lambda b: traced_peak(0, optimizer, b)),
        ("bf16 mixed precision", lambda b: traced_peak(0, optimizer, b) + bf16_weights - b * savings[0]),
        ("gradient checkpointing", lambda b: traced_peak(1, optimizer, b)),
        ("SGD (no optimizer state)", lambda b: traced_peak(0, "sgd", b)),
        ("all three", lambda b: traced_peak(1, "sgd", b) + bf16_weights - b * savings[1]),
    ]
    remedies = []
    for remedy, peak in options:
        best = _largest_batch(peak, limit_bytes)
        reference = max(best, 2)
        per_sample = (peak(reference) - peak(reference // 2)) / (reference - reference // 2)
        remedies.append(
            {
                "remedy": remedy,
                "fixed_bytes": int(peak(reference) - per_sample * reference),
                "per_sample_bytes": int(per_sample),
                "max_batch": best,
            }
        )
    return {"limit_bytes": limit_bytes, "optimizer": optimizer, "remedies": remedies}
