"""Test-set reports of a classifier: scikit-learn metrics, and a grid of the images the model got most wrong.

`classification_test_report` is what a classification run writes about its test set: the metrics, the confusion
matrix figure (`cnnlab.report.plots.plot_confusion_matrix`, shared with the MNIST task) and the highest-loss images.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.files import readable_name, save_figure_whole

__all__ = ["classification_summary", "classification_test_report", "plot_highest_loss"]


def classification_summary(
    targets: Sequence[int], predictions: Sequence[int], classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean per-class recall), per-class precision/recall/F1/support, confusion matrix.

    Computed by scikit-learn (`accuracy_score`, `balanced_accuracy_score`, `precision_recall_fscore_support`,
    `confusion_matrix`), with every class listed even when absent from the predictions. Balanced accuracy is the mean
    recall of the classes that have images (a class without any, in `cnnlab evaluate --data`, is left out).
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support

    from cnnlab.report.metrics import confusion_matrix

    labels = list(range(len(classes)))
    y_true, y_pred = np.asarray(targets), np.asarray(predictions)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0.0)
    with warnings.catch_warnings():  # images of one class alone (`cnnlab evaluate --data`): the mean of its recall
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(torch.as_tensor(y_pred), torch.as_tensor(y_true), len(classes)).tolist(),
        "count": len(y_true),
    }


def _fit_title(title: str, chars: int, lines_each: int = 2) -> str:
    """Each line of `title` wrapped to `chars` characters, at most `lines_each` lines of it, the rest cut with "…"."""
    import textwrap

    return "\n".join(
        "\n".join(textwrap.wrap(line, chars, max_lines=lines_each, placeholder="…") or [""])
        for line in title.split("\n")
    )


def plot_highest_loss(
    images: Sequence[Any], titles: Sequence[str], path: str | os.PathLike[str], columns: int = 4, heading: str = ""
) -> Path:
    """A PNG grid of images (PIL images or H x W x C arrays) with a title each (e.g. "true / predicted p, loss").

    A title line wider than its column (a 60-character class name ran into the next image's title and off the
    figure) is wrapped onto two lines, cut with "…" past that, and the rows are made tall enough for the titles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column_width, fontsize = 2.4, 7
    chars = int((column_width - 0.2) * 72 / (0.6 * fontsize))  # a DejaVu Sans character is at most about 0.6 em
    # a file name that is not UTF-8 (surrogates) raised TypeError in matplotlib's text layout, ending the run
    titles = [_fit_title(readable_name(title), chars) for title in titles]
    title_lines = max((title.count("\n") + 1 for title in titles), default=1)
    count = len(images)
    rows = max(1, -(-count // columns))
    row_height = 2.2 + title_lines * fontsize * 1.25 / 72
    figure, axes = plt.subplots(rows, columns, figsize=(columns * column_width, rows * row_height + 0.4), squeeze=False)
    for k, axis in enumerate(axes.flat):
        axis.axis("off")
        if k < count:
            axis.imshow(np.asarray(images[k]))
            axis.set_title(titles[k], fontsize=fontsize)
    figure.suptitle(heading or "test images with the highest loss", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    save_figure_whole(figure, path, dpi=100)
    plt.close(figure)
    return path


def classification_test_report(
    logits: torch.Tensor,
    targets: torch.Tensor,
    paths: Sequence[str],
    classes: Sequence[str],
    out_dir: str | os.PathLike[str],
    highest_loss: int = 16,
    title: str = "test set",
) -> dict[str, Any]:
    """Metrics of test-set `logits` against `targets` (`classification_summary` plus the mean loss), and two
    figures in `out_dir`: ``confusion_matrix.png`` and ``highest_loss.png`` (the `highest_loss` test images with
    the largest cross-entropy, with their true and predicted classes), each titled with what was scored (`title`)."""
    from cnnlab.data.folder import load_image
    from cnnlab.report.plots import plot_confusion_matrix

    out_dir = Path(out_dir)
    predictions = logits.argmax(1)
    results = classification_summary(targets.tolist(), predictions.tolist(), classes)
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    results["loss"] = float(losses.mean())
    plot_confusion_matrix(
        torch.tensor(results["confusion_matrix"]), out_dir / "confusion_matrix.png", list(classes), title=title
    )
    probabilities = logits.softmax(1)
    worst = losses.argsort(descending=True)[:highest_loss].tolist()
    thumbnails = []
    for i in worst:
        image = load_image(paths[i])
        image.thumbnail((160, 160))
        thumbnails.append(image)
    titles = [
        # the numbers on a line of their own: a long predicted class name, wrapped and cut, took them with it
        f"{Path(paths[i]).name[:22]}\ntrue {classes[int(targets[i])]}\npred {classes[int(predictions[i])]}\n"
        f"p(pred) {float(probabilities[i].max()):.2f}, loss {float(losses[i]):.2f}"
        for i in worst
    ]
    heading = "" if title == "test set" else f"{title}: the images with the highest loss"
    plot_highest_loss(thumbnails, titles, out_dir / "highest_loss.png", heading=heading)
    return results
