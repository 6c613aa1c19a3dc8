"""Gradient (activation) checkpointing of a model's stages, for any zoo model, without editing model code.

Checkpointing trades compute for memory: a checkpointed segment keeps only its input during the forward pass and
recomputes its inner activations during backward (`torch.utils.checkpoint`, non-reentrant). The segments are found
from the module tree, so no model file knows about it:

- every top-level `nn.Sequential` (ResNet's ``layer1..4``, EfficientNet's ``blocks``, the ``features`` of AlexNet
  or the MNIST nets, or the model itself when it is one) is cut into runs of about sqrt(n) consecutive children,
  each run checkpointed (what `torch.utils.checkpoint.checkpoint_sequential` does);
- every other top-level child that holds parameters and submodules (an Inception module, an Xception block, a
  conv-bn-act stem) is checkpointed as a whole;
- single layers (a lone conv, the classifier) are left alone: checkpointing them saves nothing.

The wrapped modules get an instance-level ``forward``, so parameter names, ``state_dict`` keys and checkpoints are
unchanged, and `copy.deepcopy` (EMA) still works. Checkpointing is active only in training mode with gradients
enabled; evaluation runs the plain forward. BatchNorm running statistics are restored after each recomputation, so a
checkpointed step updates them exactly once, as an ordinary step does, and gives the same gradients.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_MARK = "_cnnlab_grad_checkpointed"


def _is_composite(module: nn.Module) -> bool:
    """A module with submodules and parameters: worth checkpointing as a unit."""
    return any(True for _ in module.children()) and any(True for _ in module.parameters())


def _segments(length: int) -> list[tuple[int, int]]:
    """About sqrt(length) runs of consecutive indices covering range(length)."""
    size = max(1, round(math.sqrt(length)))
    return [(start, min(start + size, length)) for start in range(0, length, size)]


@contextlib.contextmanager
def _restore_norm_buffers(modules: list[nn.Module]) -> Iterator[None]:
    """Undo the running-statistics update that a recomputed forward makes (it already happened once)."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    saved = [{name: buffer.clone() for name, buffer in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in zip(norms, saved, strict=True):
                for name, value in buffers.items():
                    getattr(module, name).copy_(value)


def _context_fn(modules: list[nn.Module]) -> Any:
    return lambda: (contextlib.nullcontext(), _restore_norm_buffers(modules))


def _active(module: nn.Module) -> bool:
    return module.training and torch.is_grad_enabled()


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = type(self).forward
    if not _active(self):
        return forward(self, *args, **kwargs)
    return checkpoint(forward, self, *args, use_reentrant=False, context_fn=_context_fn([self]), **kwargs)


def _run_children(children: list[nn.Module], x: Any) -> Any:
    for child in children:
        x = child(x)
    return x


def _checkpointed_sequential_forward(self: nn.Sequential, x: Any) -> Any:
    children = list(self)
    if not _active(self):
        return _run_children(children, x)
    for start, stop in _segments(len(children)):
        run = children[start:stop]
        if not any(True for module in run for _ in module.parameters()):
            x = _run_children(run, x)  # a run of parameter-free layers (pool, flatten) is cheap to keep
            continue
        x = checkpoint(_run_children, run, x, use_reentrant=False, context_fn=_context_fn(run))
    return x


def checkpoint_stages(model: nn.Module) -> list[str]:
    """Turn on gradient checkpointing for the stages of `model` (in place); see the module docstring.

    Args:
        model: any module; zoo models (ResNet, EfficientNet, GoogLeNet, Inception, Xception, AlexNet, MNIST nets)
            are split as described above.

    Returns:
        The names of the checkpointed modules (``""`` for the model itself), e.g. ``["layer1", ..., "layer4"]``.
    """
    targets: list[tuple[str, nn.Module]] = []
    if isinstance(model, nn.Sequential):
        targets.append(("", model))
    else:
        targets += [(name, child) for name, child in model.named_children() if _is_composite(child)]
    for _, module in targets:
        function = _checkpointed_sequential_forward if isinstance(module, nn.Sequential) else _checkpointed_forward
        module.forward = types.MethodType(function, module)  # type: ignore[method-assign]
        setattr(module, _MARK, True)
    return [name for name, _ in targets]


def remove_checkpointing(model: nn.Module) -> None:
    """Undo `checkpoint_stages`: every module gets its class's forward back."""
    for module in model.modules():
        if getattr(module, _MARK, False):
            del module.forward
            delattr(module, _MARK)


def checkpointed_modules(model: nn.Module) -> list[str]:
    """Names of the modules of `model` that run checkpointed (``""`` is the model itself)."""
    return [name for name, module in model.named_modules() if getattr(module, _MARK, False)]
