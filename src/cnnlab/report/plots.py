"""Evaluation figures: confusion-matrix heatmap and a grid of misclassified images with their labels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cnnlab.files import save_figure_whole

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.text import Text


def _pyplot():  # noqa: ANN202 - matplotlib's module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Tick labels longer than this are shortened, with their index, and the full names listed in a key below the matrix:
# a 100-character class name turned 45 degrees made a figure of mostly label, and pushed "true" out of it.
TICK_LABEL_CHARS = 28


def tick_labels(names: Sequence[str], limit: int = TICK_LABEL_CHARS) -> tuple[list[str], list[str]]:
    """Labels for the ticks, and the key lines that name in full what they shorten (none when all fit `limit`).

    When any name is longer than `limit`, every tick is its index and the name cut to fit (``"3: class 03 very…"``),
    so that two names that start alike stay apart, and the key holds ``"3: <the full name>"`` for each shortened one.
    """
    if all(len(name) <= limit for name in names):
        return list(names), []
    labels, key = [], []
    for index, name in enumerate(names):
        head = f"{index}: "
        room = max(1, limit - len(head))
        labels.append(head + (name if len(name) <= room else name[: room - 1].rstrip() + "…"))
        if len(name) > room:
            key.append(head + name)
    return labels, key


def _add_key(figure: Figure, lines: Sequence[str], width: float, fontsize: float = 8) -> tuple[Text, float]:
    """A text of `lines`, each wrapped to fit `width` inches, at the figure's bottom left; returns it and its height."""
    import textwrap

    renderer = figure.canvas.get_renderer()
    chars = max(20, int(width * 72 / (0.55 * fontsize)))  # a DejaVu Sans character is about 0.55 em wide
    while True:
        wrapped = "\n".join(textwrap.fill(line, chars, subsequent_indent="    ") for line in lines)
        text = figure.text(0, 0, wrapped, fontsize=fontsize, ha="left", va="bottom")
        box = text.get_window_extent(renderer)
        if box.width / figure.dpi <= width - 0.3 or chars <= 20:
            return text, box.height / figure.dpi
        text.remove()
        chars = int(chars * 0.9)


def plot_confusion_matrix(
    matrix: torch.Tensor, path: str | os.PathLike[str], class_names: Sequence[str] | None = None, title: str = ""
) -> Path:
    """Heatmap of counts (true class down, predicted across), each cell annotated; returns `path`.

    Class names wider than a cell (a transfer run's "astronaut", "chelsea", "coffee" ran together) are turned 45
    degrees, and the figure is sized for the longest name, so that the cells keep their size and no label overlaps
    another or leaves the figure. Names longer than `TICK_LABEL_CHARS` are shortened on the ticks, with their index,
    and written in full, wrapped, in a key below the matrix (`tick_labels`).
    """
    plt = _pyplot()
    n = len(matrix)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    names, key = tick_labels(names)
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
    left_of_first_tick = 0.0  # how far the turned labels reach left of the first column's centre
    if widest > 0.85 * cell:  # side by side, neighbours would touch
        # Turned 45 degrees the labels are parallel strips a cell * sin(45) = 0.42 in apart, wider than a line of text.
        axis.tick_params(axis="x", labelrotation=45)
        plt.setp(axis.get_xticklabels(), ha="right", rotation_mode="anchor")
        label_height = (widest + text_height) * 0.71
        left_of_first_tick = widest * 0.71
    # Margins: the y labels and "true" on the left (or the first turned x label, if it reaches further); the x labels
    # and "predicted" below; the title above.
    left = max(widest + 0.6, left_of_first_tick - cell / 2 + 0.3)
    width = max(left + cell * n + 0.3, 3.0)
    height = 0.45 + label_height + 0.5 + cell * n
    key_height = 0.0
    if key:
        key_text, key_height = _add_key(figure, key, width)
        key_height += 0.25
        key_text.set_position((0.15 / width, 0.1 / (height + key_height)))
    figure.set_size_inches(width, height + key_height)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title or "confusion matrix")
    figure.tight_layout(rect=(0, key_height / (height + key_height), 1, 1))
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
    """Grid of (up to `max_images`) images [N, 1 or 3, H, W] labelled "true → predicted"; returns `path`.

    The grid is one mosaic image (each tile scaled to its own range, as `imshow` scales one image) on one Axes at fixed
    margins, with each tile's label a figure text in the band above it: 100 subplots laid out by `tight_layout` cost
    about 3 CPU s, a third of an MNIST test pass (benchmarks/plot_misclassified.py).
    """
    plt = _pyplot()
    count = min(len(images), max_images)
    rows = max(1, -(-count // columns))
    height, width = images.shape[-2:]
    gap = max(2, round(width / 7))  # pixels between tiles, across and below
    inch = 1.1 / (width + gap)  # per pixel: a tile with its gap is 1.1 inches wide, as the subplots were
    band = max(1, round(0.2 / inch))  # pixels above each tile for its label (9 pt)
    cell_height = height + band + gap
    colour = images.shape[1] != 1
    mosaic = torch.full(
        (rows * cell_height, columns * (width + gap), 3) if colour else (rows * cell_height, columns * (width + gap)),
        1.0 if colour else 0.0,  # white: gray_r draws 0 white
    )
    for k in range(count):
        row, column = divmod(k, columns)
        top, left = row * cell_height + band, column * (width + gap) + gap // 2
        image = images[k].float().cpu()
        if colour:
            tile = image.permute(1, 2, 0).clamp(0, 1)
        else:
            low, high = image.min(), image.max()
            tile = (image[0] - low) / (high - low) if high > low else torch.zeros_like(image[0])
        mosaic[top : top + height, left : left + width] = tile
    title_height = 0.45  # inches above the grid for the title
    grid_width, grid_height = mosaic.shape[1] * inch, mosaic.shape[0] * inch
    figure = plt.figure(figsize=(grid_width, grid_height + title_height))
    axis = figure.add_axes((0, 0, 1, grid_height / (grid_height + title_height)))
    axis.imshow(mosaic.numpy(), cmap=None if colour else "gray_r", vmin=0, vmax=1, interpolation="nearest")
    axis.set_aspect("auto")
    axis.axis("off")
    figure_height = grid_height + title_height
    for k in range(count):
        row, column = divmod(k, columns)
        x = (column + 0.5) / columns
        y = (grid_height - (row * cell_height + band / 2) * inch) / figure_height
        label = f"{int(true_labels[k])}→{int(predicted_labels[k])}"
        figure.text(x, y, label, fontsize=9, color="crimson", ha="center", va="center")
    figure.suptitle(
        f"misclassified: true → predicted ({len(images)} in total, {count} shown)",
        fontsize=10,
        y=1 - (title_height / 2) / figure_height,
        va="center",
    )
    save_figure_whole(figure, path, dpi=100)
    plt.close(figure)
    return Path(path)
