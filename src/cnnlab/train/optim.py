"""Optimizers, parameter groups and learning-rate schedules built from a `TrainConfig`."""

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


def build_optimizer(param_groups: ParamGroups, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by `config.optimizer`. A group's `lr_scale` multiplies `config.lr` (layer-wise LR)."""
    groups = []
    for group in param_groups:
        group = dict(group)
        group.setdefault("lr", config.lr * group.pop("lr_scale", 1.0))
        group.setdefault("weight_decay", config.weight_decay)
        groups.append(group)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.NAdam(groups, lr=config.lr, decoupled_weight_decay=True)


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
