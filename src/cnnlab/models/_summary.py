"""Stage-by-stage view of a model: the output shape and parameters of each outermost module called, in call order.

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
    """The outermost modules ``forward`` calls, in call order, with their output shapes for one sample of
    ``input_shape`` (C, H, W). Modules not called in eval mode (auxiliary heads) are left out.

    These are the top-level children, unless a child is never called itself: the blocks of a ``ModuleList``
    (``encoders.0``) or the layers of a backbone whose forward the model does not run (``backbone.layer1``) stand
    in its place. Hooks on the top-level children alone showed unet as its shared pooling and classifier, without
    one of the blocks that hold its parameters.
    """
    calls: list[Stage] = []
    running: list[nn.Module] = []  # the modules being called, outermost first
    hooks = []
    for module_name, module in model.named_modules():
        if module is model:
            continue

        def enter(module: nn.Module, _: object) -> None:
            running.append(module)

        def leave(module: nn.Module, _: object, output: object, module_name: str = module_name) -> None:
            if running and running[-1] is module:
                running.pop()
            if not running and isinstance(output, torch.Tensor):  # not inside another module's call
                shape = tuple(output.shape[1:])
                calls.append(
                    Stage(module_name, type(module).__name__, shape, sum(p.numel() for p in module.parameters()))
                )

        hooks.append(module.register_forward_pre_hook(enter))
        hooks.append(module.register_forward_hook(leave))
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
