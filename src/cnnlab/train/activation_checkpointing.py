"""Gradient (activation) checkpointing of a model's stages, for any zoo model, without editing model code.

Checkpointing trades compute for memory: a checkpointed segment keeps only its input during the forward pass and
recomputes its inner activations during backward (`torch.utils.checkpoint`, non-reentrant). The segments are found
from the module tree, so no model file knows about it:

- every top-level `nn.Sequential` (ResNet's ``layer1..4``, EfficientNet's ``blocks``, the ``features`` of AlexNet
  or the MNIST nets, or the model itself when it is one) is cut into runs of about sqrt(n) consecutive children,
  each run checkpointed (what `torch.utils.checkpoint.checkpoint_sequential` does);
- every other top-level child that holds parameters and submodules (an Inception module, an Xception block, a
  conv-bn-act stem) is checkpointed as a whole;
- an `nn.ModuleList` (a U-Net's ``encoders`` and ``decoders``) has no forward of its own: its elements are the
  stages, each checkpointed as a whole;
- a zoo classifier used as a trunk (an FCN's or encoder U-Net's ``backbone``, called through ``forward_features``,
  never through ``forward``) is split by these same rules, its own stages checkpointed;
- single layers (a lone conv, the classifier) are left alone: checkpointing them saves nothing (a checkpoint keeps
  the layer's input, which is all the layer keeps itself), and so is a run of one such layer in a Sequential.

A model with nothing worth checkpointing (a linear classifier on cached features) gets an empty list of stages.

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
        if not _worth_checkpointing(run):
            x = _run_children(run, x)  # parameter-free layers (pool, flatten), or one layer alone: nothing to save
            continue
        x = checkpoint(_run_children, run, x, use_reentrant=False, context_fn=_context_fn(run))
    return x


def _worth_checkpointing(run: list[nn.Module]) -> bool:
    """Whether checkpointing these consecutive layers saves memory: they hold parameters, and are more than one
    layer (a lone layer saves its input, which its checkpoint would keep anyway)."""
    has_parameters = any(True for module in run for _ in module.parameters())
    return has_parameters and (len(run) > 1 or _is_composite(run[0]))


def _stages(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module, bool]]:
    """The modules to checkpoint in `model` (named from the model the search started at), each with whether it is
    checkpointed whole (else a Sequential, in runs of consecutive children)."""
    if isinstance(model, nn.Sequential):
        children = list(model)
        worth = any(_worth_checkpointing(children[a:b]) for a, b in _segments(len(children)))
        return [(prefix.rstrip("."), model, False)] if worth else []
    targets: list[tuple[str, nn.Module, bool]] = []
    for name, child in model.named_children():
        if checkpointed_modules(child):
            continue  # checkpointed already (a U-Net whose encoder a second trainer pretrains): once is enough
        if isinstance(child, nn.ModuleList):  # no forward of its own: its elements run one by one
            targets += [(f"{prefix}{name}.{index}", m, True) for index, m in enumerate(child) if _is_composite(m)]
        elif hasattr(child, "forward_features"):  # a trunk: called through forward_features, not forward
            targets += _stages(child, f"{prefix}{name}.")
        elif _is_composite(child):
            targets.append((f"{prefix}{name}", child, not isinstance(child, nn.Sequential)))
    return targets


def checkpoint_stages(model: nn.Module) -> list[str]:
    """Turn on gradient checkpointing for the stages of `model` (in place); see the module docstring.

    Args:
        model: any module; zoo models (ResNet, EfficientNet, GoogLeNet, Inception, Xception, AlexNet, MNIST nets,
            U-Nets and FCNs) are split as described above.

    Returns:
        The names of the checkpointed modules (``""`` for the model itself), e.g. ``["layer1", ..., "layer4"]``,
        those checkpointed before included (a second call, or one on a module holding a checkpointed model, leaves
        them as they are); empty when the model has nothing worth checkpointing.
    """
    if getattr(model, _MARK, False):
        return checkpointed_modules(model)
    targets = _stages(model)
    for _, module, whole in targets:
        function = _checkpointed_forward if whole else _checkpointed_sequential_forward
        module.forward = types.MethodType(function, module)  # type: ignore[method-assign]
        setattr(module, _MARK, True)
    return checkpointed_modules(model)


def remove_checkpointing(model: nn.Module) -> None:
    """Undo `checkpoint_stages`: every module gets its class's forward back."""
    for module in model.modules():
        if getattr(module, _MARK, False):
            del module.forward
            delattr(module, _MARK)


def checkpointed_modules(model: nn.Module) -> list[str]:
    """Names of the modules of `model` that run checkpointed (``""`` is the model itself)."""
    return [name for name, module in model.named_modules() if getattr(module, _MARK, False)]
