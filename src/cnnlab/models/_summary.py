"""Stage-by-stage view of a model: the output shape and parameters of each top-level module, in call order.

Runs on the meta device (no memory, no compute), so it works for any model at any resolution in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Stage", "model_stages"]


@dataclass(frozen=True)
class Stage:
    """One top-level module call: its attribute name, class, output shape (one sample) and parameter count."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


def model_stages(model: nn.Module, input_shape: tuple[int, ...]) -> list[Stage]:
    """Top-level modules of ``model`` in the order ``forward`` calls them, with their output shapes for one sample of
    ``input_shape`` (C, H, W). Modules not called in eval mode (auxiliary heads) are left out."""
    calls: list[Stage] = []
    hooks = []
    for child_name, child in model.named_children():

        def record(module: nn.Module, _: object, output: object, child_name: str = child_name) -> None:
            if isinstance(output, torch.Tensor):
                shape = tuple(output.shape[1:])
                calls.append(
                    Stage(child_name, type(module).__name__, shape, sum(p.numel() for p in module.parameters()))
                )

        hooks.append(child.register_forward_hook(record))
    was_training = model.training
    meta_model = model.to("meta").eval() if next(model.parameters()).device.type != "meta" else model.eval()
    try:
        with torch.no_grad():
            meta_model(torch.empty(1, *input_shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return calls
