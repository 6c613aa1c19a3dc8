"""Evaluation figures: confusion-matrix heatmap and a grid of misclassified images with their labels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from cnnlab.files import save_figure_whole


def _pyplot():  # noqa: ANN202 - matplotlib's module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    matrix: torch.Tensor, path: str | os.PathLike[str], class_names: Sequence[str] | None = None, title: str = ""
) -> Path:
    """Heatmap of counts (true class down, predicted across), each cell annotated; returns `path`.

    Class names wider than a cell (a transfer run's "astronaut", "chelsea", "coffee" ran together) are turned 45
    degrees, and the figure is sized for the longest name, so that the cells keep their size and no label overlaps
    another or leaves the figure.
    """
    plt = _pyplot()
    n = len(matrix)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    cell = 0.6  # inches per class
    figure, axis = plt.subplots(figsize=(1 + cell * n, 0.8 + cell * n))
    # Log scale so that the few errors stay visible next to the large diagonal.
    shade = (matrix.float() + 1).log()
    axis.imshow(shade.numpy(), cmap="Blues")
    darkest = float(shade.max()) or 1.0
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            if value:
                # white on the dark cells only: a light diagonal cell (a class the model rarely gets right) had white
                # text on pale blue
                color = "white" if float(shade[i, j]) > 0.6 * darkest else "black"
                axis.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    axis.set_xticks(range(n), names)
    axis.set_yticks(range(n), names)
    renderer = figure.canvas.get_renderer()
    extents = [label.get_window_extent(renderer) for label in axis.get_xticklabels()]
    widest = max(extent.width for extent in extents) / figure.dpi
    text_height = max(extent.height for extent in extents) / figure.dpi
    label_height = text_height
    if widest > 0.85 * cell:  # side by side, neighbours would touch
        # Turned 45 degrees the labels are parallel strips a cell * sin(45) = 0.42 in apart, wider than a line of text.
        axis.tick_params(axis="x", labelrotation=45)
        plt.setp(axis.get_xticklabels(), ha="right", rotation_mode="anchor")
        label_height = (widest + text_height) * 0.71
    # Margins: the y labels and "true" on the left; the x labels and "predicted" below; the title above.
    figure.set_size_inches(widest + 0.6 + cell * n + 0.3, 0.45 + label_height + 0.5 + cell * n)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title or "confusion matrix")
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_misclassified(
    images: torch.Tensor,
    true_labels: torch.Tensor,
    predicted_labels: torch.Tensor,
    path: str | os.PathLike[str],
    max_images: int = 100,
    columns: int = 10,
) -> Path:
    """Grid of (up to `max_images`) images [N, 1 or 3, H, W] titled "true → predicted"; returns `path`."""
    plt = _pyplot()
    count = min(len(images), max_images)
    rows = max(1, -(-count // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.3), squeeze=False)
    for k, axis in enumerate(axes.flat):
        axis.axis("off")
        if k >= count:
            continue
        image = images[k].float().cpu()
        if image.shape[0] == 1:
            axis.imshow(image[0].numpy(), cmap="gray_r")
        else:
            axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        axis.set_title(f"{int(true_labels[k])}→{int(predicted_labels[k])}", fontsize=9, color="crimson")
    figure.suptitle(f"misclassified: true → predicted ({len(images)} in total, {count} shown)", fontsize=10)
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=100)
    plt.close(figure)
    return Path(path)
