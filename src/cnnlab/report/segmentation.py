"""Segmentation metrics and pictures.

Metrics are streaming engine `Metric`s (a confusion matrix or counts updated per batch), so a validation pass never
holds every score map in memory:

- `PixelAccuracy`: correct pixels / labelled pixels.
- `MeanIoU`: mean over classes of IoU = TP / (TP + FP + FN), from the confusion matrix. Whether the background class
  is averaged in is explicit (`include_background`); the name it reports under should say so (cnnlab uses
  ``miou`` for the digit classes only and ``miou_with_bg`` with background). A class absent from both the targets and
  the predictions is left out of the mean (its IoU is undefined).
- `BoundaryF1`: the boundary F1 score (Csurka et al., BMVC 2013): pixels where the label changes are boundary pixels;
  a predicted boundary pixel is correct when a true boundary pixel lies within `tolerance` pixels (and vice versa for
  recall); F1 of the two, over all images. With an `ignore_index`, unlabelled pixels draw no boundary: bands of them up
  to `VOID_BAND_PX` wide (Pascal VOC's 5 px around each object) are filled from their sides first, so the boundary
  they hide is scored where the sides meet, and a predicted boundary within the tolerance of a wider unlabelled area
  (scribbles, points) is counted only when it matches a true one. With no true boundary among the labelled pixels and
  no predicted one scored (scribbles or points that never meet another class), it is not measurable: None, not 1.0.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from cnnlab.files import readable_name, save_figure_whole
from cnnlab.report.metrics import confusion_matrix
from cnnlab.train.metrics import Metric

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "BoundaryF1",
    "MaskScores",
    "MeanIoU",
    "PixelAccuracy",
    "boundary_f1_text",
    "boundary_map",
    "colourise",
    "iou_per_class",
    "save_overlays",
    "segmentation_report",
]


def _labels(outputs: torch.Tensor) -> torch.Tensor:
    """Predicted labels from [N, C, H, W] scores, or labels passed through when already [N, H, W]."""
    return outputs.argmax(1) if outputs.ndim == 4 else outputs


def iou_per_class(matrix: torch.Tensor) -> torch.Tensor:
    """IoU of each class (float64; NaN for a class that appears in neither targets nor predictions)."""
    matrix = matrix.double()
    true_positive = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp_min(1), torch.full_like(union, float("nan")))


class _ConfusionMetric(Metric):
    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.matrix += confusion_matrix(_labels(outputs.detach()), targets, self.num_classes, self.ignore_index)


class PixelAccuracy(_ConfusionMetric):
    """Fraction of labelled pixels predicted correctly."""

    def compute(self) -> float:
        return float(self.matrix.diag().sum() / self.matrix.sum().clamp_min(1))


class MeanIoU(_ConfusionMetric):
    """Mean intersection-over-union over classes.

    Args:
        num_classes: classes including background.
        include_background: average the background class in too; False leaves it out.
        ignore_index: target value to skip.
        background: the background class's index.
    """

    def __init__(
        self, num_classes: int, include_background: bool = False, ignore_index: int | None = None, background: int = 0
    ) -> None:
        self.include_background, self.background = include_background, background
        super().__init__(num_classes, ignore_index)

    def compute(self) -> float:
        ious = iou_per_class(self.matrix)
        if not self.include_background:
            ious = ious[torch.arange(len(ious)) != self.background]
        ious = ious[~ious.isnan()]
        return float(ious.mean()) if len(ious) else 0.0


VOID_BAND_PX = 6  # unlabelled bands up to this wide are filled from their sides before boundaries are found


def boundary_map(labels: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [N, H, W]: pixels whose label differs from their right or lower neighbour (or the pixel they border); with
    `labelled` (bool, like `labels`), only where both pixels are labelled."""
    labels = labels.long()
    edges = torch.zeros_like(labels, dtype=torch.bool)
    horizontal = labels[..., :, 1:] != labels[..., :, :-1]
    vertical = labels[..., 1:, :] != labels[..., :-1, :]
    if labelled is not None:
        horizontal &= labelled[..., :, 1:] & labelled[..., :, :-1]
        vertical &= labelled[..., 1:, :] & labelled[..., :-1, :]
    edges[..., :, 1:] |= horizontal
    edges[..., :, :-1] |= horizontal
    edges[..., 1:, :] |= vertical
    edges[..., :-1, :] |= vertical
    return edges


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def _fill_unlabelled(labels: torch.Tensor, labelled: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`labels` [N, H, W] with each unlabelled pixel within `steps` px (Chebyshev) of a labelled one given the label
    that reaches it first (of a tie, the largest), and the new labelled map: a band 2 * `steps` px wide is filled, its
    sides meeting in the middle."""
    labels, labelled = labels.clone(), labelled.clone()
    for _ in range(steps):
        known = torch.where(labelled, labels, -1).float()[:, None]  # class indices (< 256) are exact in float32
        reached = F.max_pool2d(known, 3, stride=1, padding=1)[:, 0].long()
        new = ~labelled & (reached >= 0)
        if not new.any():
            break
        labels[new], labelled = reached[new], labelled | new
    return labels, labelled


class BoundaryF1(Metric):
    """Boundary F1 with a pixel tolerance (class-agnostic label boundaries).

    Args:
        tolerance: how far (in pixels, Chebyshev distance) a predicted boundary pixel may be from a true one.
        ignore_index: the target value of unlabelled pixels (None: every pixel is labelled). They draw no boundary,
            bands of them up to `VOID_BAND_PX` wide are filled from their sides, and a predicted boundary within
            `tolerance` of the rest counts only when it matches a true one: its own truth is unknown. (Copied into
            the prediction, each unlabelled pixel's edge was a boundary matched exactly: a model predicting
            background everywhere scored 1.0 on Pascal VOC-style and scribble masks.)
    """

    def __init__(self, tolerance: int = 2, ignore_index: int | None = None) -> None:
        self.tolerance = tolerance
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.matched_pred = self.total_pred = self.matched_true = self.total_true = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        predicted = boundary_map(_labels(outputs.detach()))
        labelled = None if self.ignore_index is None else targets != self.ignore_index
        if labelled is None or bool(labelled.all()):  # every pixel labelled: nothing to fill (12 MP: 3 s, not 10)
            true = boundary_map(targets)
            near_true = _dilate(true, self.tolerance)
            scored = predicted
        else:
            filled, labelled = _fill_unlabelled(targets.long(), labelled, VOID_BAND_PX // 2)
            true = boundary_map(filled, labelled)
            near_true = _dilate(true, self.tolerance)
            scored = predicted & (near_true | ~_dilate(~labelled, self.tolerance))
        self.matched_pred += int((predicted & near_true).sum())
        self.total_pred += int(scored.sum())
        self.matched_true += int((true & _dilate(predicted, self.tolerance)).sum())
        self.total_true += int(true.sum())

    def compute(self) -> float | None:
        """The F1, or None when there was nothing to score: no true boundary and no predicted one counted (0/0)."""
        if self.total_true == 0 and self.total_pred == 0:
            return None
        precision = self.matched_pred / self.total_pred if self.total_pred else float(self.total_true == 0)
        recall = self.matched_true / self.total_true if self.total_true else float(self.total_pred == 0)
        return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


BOUNDARY_F1_NOT_MEASURABLE = "- (not measurable: no class boundary among the labelled mask pixels, none predicted)"


def boundary_f1_text(value: float | None) -> str:
    """A boundary F1 as reports print it: four places, or "-" with the reason when it was not measurable (None)."""
    return BOUNDARY_F1_NOT_MEASURABLE if value is None else f"{value:.4f}"


def segmentation_report(matrix: torch.Tensor, class_names: list[str], background: int | None = 0) -> dict[str, object]:
    """Pixel accuracy, mIoU with and without background, and per-class IoU, from a confusion matrix.

    ``miou`` leaves out the class `background` (every class when None, and ``miou_includes_background`` says so);
    ``miou_with_bg`` averages every class. Classes absent from targets and predictions are left out of both.
    """
    ious = iou_per_class(matrix)
    foreground = ious if background is None else ious[torch.arange(len(ious)) != background]
    foreground = foreground[~foreground.isnan()]
    every = ious[~ious.isnan()]
    return {
        "pixel_accuracy": float(matrix.diag().sum() / matrix.sum().clamp_min(1)),
        "miou": float(foreground.mean()) if len(foreground) else 0.0,
        "miou_includes_background": background is None,
        "miou_with_bg": float(every.mean()) if len(every) else 0.0,
        "iou_per_class": {name: (None if v.isnan() else float(v)) for name, v in zip(class_names, ious, strict=True)},
    }


class MaskScores:
    """The scores of predicted masks against true ones, one image at a time, as a segmentation run's test pass gives
    them and `cnnlab evaluate RUN --data DIR` does: the confusion matrix of the labelled pixels, each image's share of
    wrong pixels and the boundary F1, then `segmentation_report` of the matrix.

    Args:
        num_classes: the model's classes.
        ignore_index: the mask value of unlabelled pixels (left out of every score).
        tolerance: the boundary F1's tolerance, in pixels.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, tolerance: int = 2) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.errors: list[float] = []
        self.boundary = BoundaryF1(tolerance, ignore_index)

    def add(self, predicted: torch.Tensor, target: torch.Tensor) -> float:
        """Score one image's predicted classes against its mask (both [H, W]); returns its share of wrong pixels."""
        image_matrix = confusion_matrix(predicted, target, self.num_classes, self.ignore_index)
        self.matrix += image_matrix
        self.errors.append(1.0 - float(image_matrix.diag().sum()) / max(1, int(image_matrix.sum())))
        self.boundary.update(predicted[None], target[None])
        return self.errors[-1]

    def report(self, class_names: list[str], background: int | None) -> dict[str, object]:
        """`segmentation_report` of the pixels so far, with the boundary F1 and the confusion matrix."""
        scores = segmentation_report(self.matrix, class_names, background)
        scores["boundary_f1"] = self.boundary.compute()
        scores["boundary_tolerance_px"] = self.boundary.tolerance
        scores["confusion_matrix"] = self.matrix.tolist()
        return scores


_IGNORED_COLOUR = (255, 255, 255)  # unlabelled pixels (index 255) in overlays
_LEGEND_NAME_CHARS = 36  # a longer class name is wrapped onto more lines in an overlay's legend
_PANEL_INCHES = 2.5  # an overlay's row height and column width, before titles of several lines add to the height
_TITLE_POINTS = 9


def _wrapped_to_width(text: str, inches: float, figure: Figure) -> str:
    """`text` wrapped (at spaces where it can, else inside words: file names have none) onto the fewest lines
    that are each at most `inches` wide as drawn in `figure` at the titles' font size."""
    renderer = figure.canvas.get_renderer()
    probe = figure.text(0, 0, "", fontsize=_TITLE_POINTS)
    try:
        probe.set_text(text)
        whole = probe.get_window_extent(renderer).width
        chars = min(len(text), int(len(text) * inches * figure.dpi / max(whole, 1.0)) + 1)  # about where it fits
        lines = text
        while chars >= 1:
            lines = textwrap.fill(text, chars, break_on_hyphens=False)
            probe.set_text(lines)
            if probe.get_window_extent(renderer).width <= inches * figure.dpi:
                break
            chars -= 1
        return lines
    finally:
        probe.remove()


def colourise(
    image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.55, background: int | None = 0
) -> np.ndarray:
    """The image (uint8 [H, W] or [H, W, 3]) with each non-background pixel blended with its class colour; unlabelled
    pixels (255) white. Returns uint8 [H, W, 3]."""
    rgb = (np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image).astype(np.float32)
    table = np.zeros((256, 3), dtype=np.float32)
    table[: len(colours)] = colours
    table[255] = _IGNORED_COLOUR
    colour = table[labels]
    painted = labels != background if background is not None else np.ones(labels.shape, dtype=bool)
    blended = np.where(painted[..., None], (1 - alpha) * rgb + alpha * colour, rgb)
    return blended.clip(0, 255).astype(np.uint8)


def save_overlays(
    images: torch.Tensor,
    targets: torch.Tensor,
    predictions: torch.Tensor,
    path: str | os.PathLike[str],
    class_names: list[str],
    max_images: int = 8,
    titles: list[str] | None = None,
    background: int | None = 0,
    colours: np.ndarray | None = None,
) -> Path:
    """A PNG with one row per image: the image, the ground truth over it, the prediction over it, the errors.

    Args:
        images: [N, C, H, W] with 1 or 3 channels (uint8 0..255 or float 0..1), or a list of [C, H, W] images of
            different sizes.
        targets: [N, H, W] labels (255: unlabelled), or a list of [H, W].
        predictions: [N, H, W] labels (or [N, C, H, W] scores), or a list of [H, W].
        path: the PNG to write.
        class_names: names for the legend (index = label).
        max_images: rows to draw.
        titles: a title per row (e.g. the file and its score), shown above the image, wrapped to its column.
        background: the background class (not painted over the image).
        colours: uint8 [classes, 3], each class's colour (a folder's ``classes.json``, as `cnnlab predict` paints
            them); None: `cnnlab.data.segmentation.class_colours`.

    Raises:
        ValueError: no image to draw (`images` empty or `max_images` below 1): a figure of no rows cannot be made.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from cnnlab.data.segmentation import class_colours

    if isinstance(predictions, torch.Tensor):
        predictions = _labels(predictions)
    colours = class_colours(len(class_names)) if colours is None else np.asarray(colours, dtype=np.uint8)
    count = min(max_images, len(images))
    if count < 1:  # plt.subplots(0, 4) fails with "Number of rows must be a positive integer"
        raise ValueError(f"save_overlays draws no figure of {len(images)} images with max_images={max_images}")
    figure, axes = plt.subplots(count, 4, figsize=(4 * _PANEL_INCHES, _PANEL_INCHES * count), squeeze=False)
    # A long file name and its score ran into the next panel's title and off the figure: every title is wrapped to
    # its column, and each row grows by its extra title lines so that its images keep their size.
    title_inches = 0.95 * _PANEL_INCHES
    line_inches = 1.25 * _TITLE_POINTS / 72
    row_inches = []
    for row in range(count):
        image = images[row].float()
        image = (image * 255 if image.max() <= 1.0 else image).numpy().astype(np.uint8)
        image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        target, predicted = targets[row].long().numpy(), predictions[row].long().numpy()
        labelled = target != 255
        wrong = ((target != predicted) & labelled).astype(np.uint8)
        error_share = wrong.sum() / max(1, labelled.sum())
        panels = [
            (image, readable_name(titles[row]) if titles else "image", "gray"),  # matplotlib cannot draw surrogates
            (colourise(image, target, colours, background=background), "ground truth", None),
            (colourise(image, predicted, colours, background=background), "prediction", None),
            (wrong * 255, f"errors ({error_share:.1%} of labelled pixels)", "gray"),
        ]
        titles_wrapped = [_wrapped_to_width(title, title_inches, figure) for _, title, _ in panels]
        for axis, (picture, _, cmap), title in zip(axes[row], panels, titles_wrapped, strict=True):
            axis.imshow(picture, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
            axis.set_title(title, fontsize=_TITLE_POINTS)
            axis.axis("off")
        row_inches.append(_PANEL_INCHES + line_inches * max(title.count("\n") for title in titles_wrapped))
    axes[0, 0].get_gridspec().set_height_ratios(row_inches)
    panels_inches = sum(row_inches)
    figure.set_size_inches(4 * _PANEL_INCHES, panels_inches)
    handles = [
        Patch(color=colours[i] / 255, label=textwrap.fill(name, _LEGEND_NAME_CHARS, break_on_hyphens=False))
        for i, name in enumerate(class_names)
        if i != background
    ]
    # Ten columns of 100-character names ran off both sides of the figure, and the rows of 20 classes covered the
    # last panels: names are wrapped, the columns are as many as fit the width, and the figure grows by the legend
    # below the panels as laid out without it.
    figure.tight_layout()
    renderer, legend_inches = figure.canvas.get_renderer(), 0.1
    for columns in range(min(10, len(handles)), 0, -1):
        legend = figure.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False)
        box = legend.get_window_extent(renderer)
        if box.width <= 0.98 * figure.bbox.width or columns == 1:
            legend_inches += box.height / figure.dpi
            break
        legend.remove()
    figure.set_size_inches(4 * _PANEL_INCHES, panels_inches + legend_inches)
    for axis in figure.axes:
        left, bottom, width, height = axis.get_position(original=True).bounds
        axis.set_position(
            (left, (bottom * panels_inches + legend_inches) / (panels_inches + legend_inches), width,
             height * panels_inches / (panels_inches + legend_inches))
        )  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure_whole(figure, path, dpi=80)
    plt.close(figure)
    return path
