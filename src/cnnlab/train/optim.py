"""Optimizers, parameter groups and learning-rate schedules built from a `TrainConfig`.

Parameter groups: `default_param_groups` (weights decayed, biases and norms not, frozen parameters left out) and
`layerwise_param_groups` for fine-tuning (the top blocks unfrozen, learning rates decaying layer by layer going down
from the classifier, as timm's ``param_groups_layer_decay``); `depth_units` lists a model's blocks from input to
output for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cnnlab.train.config import TrainConfig

ParamGroups = list[dict[str, Any]]
ParamGroupBuilder = Callable[[nn.Module], ParamGroups]
OptimizerFactory = Callable[[ParamGroups, TrainConfig], torch.optim.Optimizer]


def default_param_groups(model: nn.Module, weight_decay: float) -> ParamGroups:
    """Two groups: weights (>= 2-D) with decay, biases and norm parameters without. Frozen parameters are left out."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    param_groups: ParamGroups, config: TrainConfig, foreach: bool | None = None
) -> torch.optim.Optimizer:
    """The optimizer named by `config.optimizer`. A group's `lr_scale` multiplies `config.lr` (layer-wise LR).

    Args:
        param_groups: the groups to optimize (`default_param_groups`, `layerwise_param_groups`, ...).
        config: the optimizer, learning rate, momentum and weight decay.
        foreach: step with torch's multi-tensor kernels; None (what the engine passes) leaves it to torch, which uses
            them for parameters on CUDA and not on the CPU (`default_foreach`). `cnnlab.budget` traces on the meta
            device, so it passes the choice torch makes on the device it sizes for.
    """
    groups = []
    for group in param_groups:
        group = dict(group)
        group.setdefault("lr", config.lr * group.pop("lr_scale", 1.0))
        group.setdefault("weight_decay", config.weight_decay)
        groups.append(group)
    if config.optimizer == "sgd":
        momentum = config.momentum
        return torch.optim.SGD(groups, lr=config.lr, momentum=momentum, nesterov=momentum > 0, foreach=foreach)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, foreach=foreach)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, foreach=foreach)
    return torch.optim.NAdam(groups, lr=config.lr, decoupled_weight_decay=True, foreach=foreach)


def default_foreach(device: str | torch.device) -> bool:
    """Whether torch steps parameters on `device` with its multi-tensor (foreach) kernels when not told: on CUDA yes,
    on the CPU no. They hold the temporaries of a whole param group at once (resnet50 with Adam: 102 MB against 19 MB
    one tensor at a time), so a memory estimate must step as the engine will on the device it sizes for."""
    try:  # what torch's optimizers consult; a private name, so a torch that moves it gets CUDA's answer
        from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

        supported = _get_foreach_kernels_supported_devices()
    except ImportError:
        supported = ["cuda"]
    return torch.device(device).type in supported


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of each group's base LR at optimizer step `step` (0-based) of `total_steps`."""
    if schedule == "onecycle":
        start, end = 1.0 / 25.0, 1.0 / 1e4  # torch OneCycleLR's div_factor and final_div_factor
    else:
        start, end = 0.0, 0.0
    if warmup_steps > 0 and step < warmup_steps:
        return start + (1.0 - start) * (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step `LambdaLR` following `config.schedule` with `config.warmup_epochs` of linear warm-up."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        return lr_factor(config.schedule, step, total, warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters that require a gradient."""
    return [p for p in params if p.requires_grad]


def depth_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's parameterised blocks from input to output, the classifier excluded.

    Top-level children in definition order, with `nn.Sequential`/`nn.ModuleList` children expanded one level (so
    EfficientNet's 16 MBConv blocks, or a ResNet stage's blocks, count one by one).
    """
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    units = []
    for name, child in model.named_children():
        if child is classifier:
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            units += [(f"{name}.{sub_name}", sub) for sub_name, sub in child.named_children()]
        else:
            units.append((name, child))
    return [(name, unit) for name, unit in units if any(True for _ in unit.parameters())]


def top_param_groups(
    model: nn.Module, top_blocks: int, layer_decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Train the classifier and the top ``top_blocks`` blocks, freezing the rest: 0 is the classifier alone (weights
    decayed, biases not), more is `layerwise_param_groups`. What a cached transfer run trains."""
    if top_blocks > 0:
        return layerwise_param_groups(model, top_blocks, layer_decay, weight_decay)
    for param in model.parameters():
        param.requires_grad_(False)
    classifier = model.get_classifier()
    for param in classifier.parameters():
        param.requires_grad_(True)
    weights = [p for p in classifier.parameters() if p.ndim >= 2]
    biases = [p for p in classifier.parameters() if p.ndim < 2]
    return [{"params": weights, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}]


def layerwise_param_groups(
    model: nn.Module, top_blocks: int, layer_decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Unfreeze the classifier and the top ``top_blocks`` blocks (0: all) and give each its own learning rate.

    The classifier gets ``lr_scale`` 1, the block under it ``layer_decay``, the next ``layer_decay**2``, and so on.
    Weights are decayed, biases and norm parameters are not. Blocks left frozen get ``requires_grad=False``.
    """
    units = depth_units(model)
    trainable = units if top_blocks <= 0 else units[-top_blocks:]
    for param in model.parameters():
        param.requires_grad_(False)
    groups: list[dict[str, Any]] = []

    def add(module: nn.Module, scale: float) -> None:
        decay = [p for p in module.parameters() if p.ndim >= 2]
        no_decay = [p for p in module.parameters() if p.ndim < 2]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            for p in params:
                p.requires_grad_(True)
            if params:
                groups.append({"params": params, "weight_decay": wd, "lr_scale": scale})

    add(model.get_classifier(), 1.0)
    for depth, (_, unit) in enumerate(reversed(trainable), start=1):
        add(unit, layer_decay**depth)
    return groups
