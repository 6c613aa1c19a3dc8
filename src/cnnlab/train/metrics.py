"""Validation metrics: objects that accumulate over batches and return one float.

A plain callable `fn(outputs, targets) -> float` is accepted anywhere a metric is and is wrapped in `Accumulate`,
which concatenates every batch's outputs (on the CPU) and calls it once. For large outputs (segmentation maps)
write a streaming `Metric` instead (e.g. a confusion matrix updated per batch, mIoU computed from it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


class Metric:
    """A metric accumulated over batches: `reset()`, `update(outputs, targets)` per batch, then `compute()`."""

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError


class Accumulate(Metric):
    """Concatenates outputs and targets of every batch (on the CPU, as float32) and applies `fn` once."""

    def __init__(self, fn: MetricFn) -> None:
        self.fn = fn
        self.reset()

    def reset(self) -> None:
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self._outputs.append(outputs.detach().float().cpu())
        self._targets.append(targets.detach().cpu())

    def compute(self) -> float:
        return float(self.fn(torch.cat(self._outputs), torch.cat(self._targets)))


class Accuracy(Metric):
    """Top-1 accuracy of class scores [N, C, ...] against integer targets [N, ...] (streaming; pixels count for
    dense outputs). Targets equal to `ignore_index` are skipped."""

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        predictions = outputs.argmax(1)
        if self.ignore_index is None:
            valid = torch.ones_like(targets, dtype=torch.bool)
        else:
            valid = targets != self.ignore_index
        self.correct += int(((predictions == targets) & valid).sum())
        self.total += int(valid.sum())

    def compute(self) -> float:
        return self.correct / max(1, self.total)


class BalancedAccuracy(Metric):
    """The mean over classes of each class's recall (streaming), for data whose classes are skewed: a model that
    never predicts a small class scores low even when its plain accuracy is high. Classes absent from the targets
    are left out of the mean, as scikit-learn's `balanced_accuracy_score` does."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.correct = torch.zeros(self.num_classes, dtype=torch.int64)
        self.total = torch.zeros(self.num_classes, dtype=torch.int64)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        predictions, targets = outputs.argmax(1).reshape(-1).cpu(), targets.reshape(-1).cpu()
        self.total += torch.bincount(targets, minlength=self.num_classes)[: self.num_classes]
        hits = targets[predictions == targets]
        self.correct += torch.bincount(hits, minlength=self.num_classes)[: self.num_classes]

    def compute(self) -> float:
        present = self.total > 0
        return float((self.correct[present].double() / self.total[present].double()).mean()) if present.any() else 0.0


class ViewAveraged(Metric):
    """A metric of predictions averaged over the views of each sample (test-time augmentation), for evaluation data
    laid out view-major: all samples in view 0, then all in view 1, ... (``views`` x ``samples`` rows in order).

    Args:
        metric: the metric of the averaged logits (e.g. `Accuracy()`, `BalancedAccuracy(k)`).
        views: how many views each sample has.
        first_only: score the first view alone instead (the single-view baseline of the same data).
    """

    def __init__(self, metric: Metric, views: int, first_only: bool = False) -> None:
        self.metric = metric
        self.views = views
        self.first_only = first_only
        self.reset()

    def reset(self) -> None:
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self._outputs.append(outputs.detach().float().cpu())
        self._targets.append(targets.detach().cpu())

    def compute(self) -> float:
        outputs, targets = torch.cat(self._outputs), torch.cat(self._targets)
        if len(outputs) % self.views:
            raise ValueError(f"{len(outputs)} rows do not split into {self.views} views")
        per_view = outputs.reshape(self.views, -1, *outputs.shape[1:])
        targets = targets.reshape(self.views, -1, *targets.shape[1:])[0]
        averaged = per_view[0] if self.first_only else per_view.mean(0)
        self.metric.reset()
        self.metric.update(averaged, targets)
        return self.metric.compute()


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of class scores [N, C] against integer labels [N]."""
    return float((outputs.argmax(1) == targets).float().mean())


def as_metrics(metrics: Mapping[str, Metric | MetricFn] | None) -> dict[str, Metric]:
    """Normalise a name -> metric/callable mapping; None gives {"accuracy": Accuracy()}."""
    if metrics is None:
        return {"accuracy": Accuracy()}
    return {name: m if isinstance(m, Metric) else Accumulate(m) for name, m in metrics.items()}


def is_classification(outputs: Any, targets: Any) -> bool:
    """Whether outputs look like class scores for integer targets ([N, C, ...] vs [N, ...])."""
    return (
        isinstance(outputs, torch.Tensor)
        and isinstance(targets, torch.Tensor)
        and outputs.ndim >= 2
        and not targets.is_floating_point()
        and targets.shape == outputs.shape[:1] + outputs.shape[2:]
    )
