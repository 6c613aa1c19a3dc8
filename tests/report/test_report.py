"""Report helpers: confusion matrix against scikit-learn, per-class accuracy, figures."""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from cnnlab.report.metrics import accuracy_from_matrix, confusion_matrix, per_class_accuracy
from cnnlab.report.plots import plot_misclassified
from cnnlab.train.records import plot_learning_curves

PNG = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_matches_scikit_learn() -> None:
    generator = torch.Generator().manual_seed(0)
    targets, predictions = (
        torch.randint(0, 5, (300,), generator=generator),
        torch.randint(0, 5, (300,), generator=generator),
    )
    matrix = confusion_matrix(predictions, targets, 5)
    assert matrix.tolist() == sklearn_confusion_matrix(targets, predictions, labels=range(5)).tolist()
    assert accuracy_from_matrix(matrix) == (predictions == targets).sum().item() / 300
    recall = per_class_accuracy(matrix)
    assert recall[2] == ((predictions == 2) & (targets == 2)).sum().item() / (targets == 2).sum().item()


def test_figures_are_written(tmp_path: Path) -> None:
    history = [
        {"epoch": 1.0, "train_loss": 1.0, "val_loss": 1.2, "val_accuracy": 0.5},
        {"epoch": 2.0, "train_loss": 0.5, "val_loss": 0.7, "val_accuracy": 0.8},
    ]
    assert plot_learning_curves(history, tmp_path / "curves.png").read_bytes()[:8] == PNG
    images = torch.rand(3, 1, 28, 28)
    path = plot_misclassified(images, torch.tensor([1, 2, 3]), torch.tensor([7, 7, 8]), tmp_path / "wrong.png")
    assert path.read_bytes()[:8] == PNG


def test_learning_curves_tick_whole_epochs() -> None:
    """Four epochs were ticked 1.0, 1.5, 2.0 ... 4.0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnlab.train.records import epoch_axis

    figure, axis = plt.subplots()
    axis.plot([1.0, 2.0, 3.0, 4.0], [0.7, 0.2, 0.1, 0.05])
    epoch_axis(axis, "loss")
    figure.canvas.draw()
    shown = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
    plt.close(figure)
    assert shown and all(float(tick).is_integer() for tick in shown), shown
