"""Classification metrics from predictions: the confusion matrix (one implementation, scikit-learn's), and what
follows from it: accuracy and per-class accuracy.

Every confusion matrix in cnnlab comes from `confusion_matrix`: the MNIST and transfer test reports, and the
streaming segmentation metrics (per pixel, updated batch by batch).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["accuracy_from_matrix", "confusion_matrix", "per_class_accuracy"]


def confusion_matrix(
    predictions: torch.Tensor, targets: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """Counts int64 [num_classes, num_classes]: row = true class, column = predicted class.

    Computed by `sklearn.metrics.confusion_matrix` with every class listed, so absent classes keep their row and
    column. Any shape works (pixels of segmentation maps count one by one); targets outside ``0..num_classes-1`` or
    equal to `ignore_index` (e.g. 255, "unlabelled") are left out, and predictions are clamped into range.
    """
    from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

    true = targets.detach().reshape(-1).long().cpu().numpy()
    predicted = predictions.detach().reshape(-1).long().cpu().numpy().clip(0, num_classes - 1)
    valid = (true >= 0) & (true < num_classes)
    if ignore_index is not None:
        valid &= true != ignore_index
    if not valid.any():
        return torch.zeros(num_classes, num_classes, dtype=torch.int64)
    matrix = sklearn_confusion_matrix(true[valid], predicted[valid], labels=np.arange(num_classes))
    return torch.from_numpy(matrix.astype(np.int64))


def per_class_accuracy(matrix: torch.Tensor) -> list[float]:
    """Recall of each class (diagonal over row sums) from a confusion matrix; NaN for a class with no samples."""
    totals = matrix.sum(1)
    return [int(matrix[i, i]) / int(totals[i]) if totals[i] > 0 else float("nan") for i in range(len(matrix))]


def accuracy_from_matrix(matrix: torch.Tensor) -> float:
    """Overall accuracy from a confusion matrix."""
    return int(matrix.diag().sum()) / max(1, int(matrix.sum()))
