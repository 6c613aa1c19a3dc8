"""Classification metrics from predictions: accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import torch


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [num_classes, num_classes]: row = true class, column = predicted class."""
    index = targets.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(matrix: torch.Tensor) -> list[float]:
    """Recall of each class (diagonal over row sums) from a confusion matrix; NaN for a class with no samples."""
    totals = matrix.sum(1)
    return [int(matrix[i, i]) / int(totals[i]) if totals[i] > 0 else float("nan") for i in range(len(matrix))]


def accuracy_from_matrix(matrix: torch.Tensor) -> float:
    """Overall accuracy from a confusion matrix."""
    return int(matrix.diag().sum()) / max(1, int(matrix.sum()))
