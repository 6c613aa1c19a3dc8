"""Report helpers: confusion matrix against scikit-learn, per-class accuracy, figures."""

from __future__ import annotations

from pathlib import Path

import pytest
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


@pytest.mark.parametrize("epochs", [1, 2, 4, 30])
def test_learning_curves_tick_whole_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
    """Four epochs were ticked 1.0, 1.5, 2.0 ... 4.0, and one epoch 0.945, 0.96 ... 1.05."""
    from matplotlib.figure import Figure

    saved: list[Figure] = []
    savefig = Figure.savefig

    def keep(figure: Figure, *args: object, **kwargs: object) -> None:
        saved.append(figure)
        savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    history = [
        {"epoch": float(e), "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": 0.9} for e in range(1, epochs + 1)
    ]
    plot_learning_curves(history, tmp_path / "curves.png")
    for axis in saved[0].axes:
        low, high = axis.get_xlim()
        shown = [tick for tick in axis.get_xticks() if low <= tick <= high]
        assert shown and all(float(tick).is_integer() for tick in shown), shown
        # A one-epoch curve is a single point: only its marker shows it.
        assert all(line.get_marker() not in ("", "None", None) for line in axis.get_lines())
