"""Segmentation metrics against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from cnnlab.report.metrics import confusion_matrix
from cnnlab.report.segmentation import (
    BoundaryF1,
    MaskScores,
    MeanIoU,
    PixelAccuracy,
    boundary_f1_text,
    boundary_map,
    save_overlays,
    segmentation_report,
)
from figure_texts import assert_labels_apart_and_inside

# 3 classes (0 = background). Target / prediction on a 2x4 image:
TARGET = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1]]])
PREDICTION = torch.tensor([[[0, 1, 1, 1], [0, 2, 0, 0]]])
# class 0: TP 2 (0,0),(1,0); FP 1 (1,2); FN 1 (0,1)           -> IoU 2/4
# class 1: TP 2 (0,2),(0,3); FP 1 (0,1); FN 1 (1,3)           -> IoU 2/4
# class 2: TP 1 (1,1); FP 0; FN 1 (1,2)                       -> IoU 1/2  ... (1,3) predicted 0: FP for class 0 too
# recount class 0: predicted 0 at (0,0),(1,0),(1,2),(1,3); true 0 at (0,0),(0,1),(1,0) -> TP 2, FP 2, FN 1 -> 2/5


def _scores(labels: torch.Tensor, classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def test_miou_matches_the_hand_computation_with_and_without_background():
    without_bg, with_bg = MeanIoU(3, include_background=False), MeanIoU(3, include_background=True)
    for metric in (without_bg, with_bg):
        metric.update(_scores(PREDICTION), TARGET)
    assert math.isclose(without_bg.compute(), (2 / 4 + 1 / 2) / 2)
    assert math.isclose(with_bg.compute(), (2 / 5 + 2 / 4 + 1 / 2) / 3)


def test_streaming_over_batches_equals_one_pass():
    metric, accuracy = MeanIoU(3), PixelAccuracy(3)
    for half in (slice(0, 1), slice(1, 2)):
        metric.update(_scores(PREDICTION)[..., half, :], TARGET[:, half])
        accuracy.update(_scores(PREDICTION)[..., half, :], TARGET[:, half])
    assert math.isclose(metric.compute(), 0.5)
    assert math.isclose(accuracy.compute(), 5 / 8)
    metric.reset()
    metric.update(_scores(TARGET), TARGET)
    assert metric.compute() == 1.0


def test_absent_classes_are_left_out_and_background_only_scores_zero():
    matrix = confusion_matrix(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 0], [0, 2]]]), 4)
    report = segmentation_report(matrix, ["bg", "a", "b", "c"])
    assert report["iou_per_class"]["a"] is None and report["iou_per_class"]["b"] == 0.0
    assert report["miou"] == 0.0 and report["miou_includes_background"] is False


def test_boundary_f1():
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[:, 2:8, 2:8] = 1
    exact = BoundaryF1(tolerance=0)
    exact.update(target, target)
    assert exact.compute() == 1.0
    shifted = torch.roll(target, shifts=1, dims=2)
    strict, tolerant = BoundaryF1(tolerance=0), BoundaryF1(tolerance=1)
    strict.update(shifted, target)
    tolerant.update(shifted, target)
    assert strict.compute() < 0.8 and tolerant.compute() == 1.0
    assert boundary_map(target).sum() == 20 + 24  # the square's 20 edge pixels and their 24 outside 4-neighbours


def test_unlabelled_pixels_draw_no_boundary_a_voc_void_band_hides_one_and_scribbles_score_nothing_away():
    """Copied into the prediction, every edge of an unlabelled (255) region was a boundary matched exactly: a model
    predicting background everywhere scored boundary F1 1.0 on Pascal VOC-style masks (void bands round objects)."""
    target = torch.zeros(40, 40, dtype=torch.long)
    target[10:22, 10:22] = 255  # a 3 px void band round a 6x6 object, as VOC draws one
    target[13:19, 13:19] = 1
    perfect, too_small = torch.zeros(40, 40, dtype=torch.long), torch.zeros(40, 40, dtype=torch.long)
    perfect[11:21, 11:21] = 1  # the object's edge in the middle of the band
    too_small[14:18, 14:18] = 1
    f1 = {}
    for name, predicted in [("background", torch.zeros_like(target)), ("perfect", perfect), ("small", too_small)]:
        metric = BoundaryF1(2, ignore_index=255)
        metric.update(predicted[None], target[None])
        f1[name] = metric.compute()
    assert f1["background"] == 0.0 and f1["perfect"] == 1.0 and 0.3 < f1["small"] < 0.7  # was 1.0 all three
    scribbles = torch.full((40, 40), 255)
    scribbles[5, 5:15], scribbles[30, 20:30] = 0, 1
    spurious = torch.zeros(40, 40, dtype=torch.long)
    spurious[18:22, 0:4] = 1  # a predicted edge far from every labelled pixel: nothing says it is wrong
    metric = BoundaryF1(2, ignore_index=255)
    metric.update(spurious[None], scribbles[None])
    assert metric.total_pred == metric.total_true == 0
    assert metric.compute() is None  # 0/0: not measurable (was 1.0)
    assert boundary_map(scribbles[None], scribbles[None] != 255).sum() == 0
    scores = MaskScores(2, ignore_index=255)  # the test pass's and evaluate's scores
    assert scores.boundary.ignore_index == 255
    scores.add(spurious, scribbles)
    report = scores.report(["bg", "object"], background=0)
    assert report["boundary_f1"] is None and report["miou"] == 0.0 and report["pixel_accuracy"] == 0.5
    assert boundary_f1_text(report["boundary_f1"]).startswith("- (not measurable")
    assert boundary_f1_text(0.98765) == "0.9877"


def test_overlays_png(tmp_path):
    images = torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8)
    masks = torch.randint(0, 3, (2, 8, 8))
    path = save_overlays(images, masks, _scores(masks), tmp_path / "o.png", ["bg", "a", "b"])
    assert path.stat().st_size > 1000


@pytest.mark.parametrize(
    "names",
    [
        ["background"] + [f"class {i} " + "a very long descriptive name of a kind of thing " * 2 for i in range(5)],
        ["background", "x" * 100, "y" * 60],  # no space to wrap at
        [f"category number {i} of twenty, named" for i in range(20)],
    ],
)
def test_overlay_legends_with_long_or_many_class_names_stay_apart_inside_and_below_the_panels(
    tmp_path, monkeypatch, names
):
    """The legend of ten columns ran off both sides of the figure with 100-character names, and its rows covered the
    last row of panels with 20 classes."""
    saved = []  # drawn below, not written: faster
    monkeypatch.setattr("cnnlab.report.segmentation.save_figure_whole", lambda figure, *_, **__: saved.append(figure))
    masks = (torch.arange(2 * 8 * 8) % len(names)).reshape(2, 8, 8)
    images = torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8)
    save_overlays(images, masks, _scores(masks, len(names)), tmp_path / "o.png", names)
    figure = saved[0]
    (legend,) = figure.legends
    assert ["".join(text.get_text().split()) for text in legend.get_texts()] == [
        name.replace(" ", "")
        for name in names[1:]  # every name whole, wrapped at most
    ]
    assert_labels_apart_and_inside(figure)
    top = legend.get_window_extent().y1
    assert all(axis.get_window_extent().y0 >= top for axis in figure.axes), top  # the panels are not covered


def test_overlay_titles_of_long_file_names_are_wrapped_inside_their_column_and_no_images_is_an_error(
    tmp_path, monkeypatch
):
    """A long file name and its score ran off the figure and into the next panel's title; no image at all failed
    inside matplotlib ("Number of rows must be a positive integer")."""
    saved = []
    monkeypatch.setattr("cnnlab.report.segmentation.save_figure_whole", lambda figure, *_, **__: saved.append(figure))
    masks = (torch.arange(2 * 8 * 8) % 3).reshape(2, 8, 8)
    images = torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8)
    titles = ["camera_2024-05-17_12-33-45_" * 4 + "IMG_0042.png: 12.5% wrong", "a long name with spaces " * 5]
    save_overlays(images, masks, _scores(masks), tmp_path / "o.png", ["bg", "a", "b"], titles=titles)
    figure = saved[0]
    assert_labels_apart_and_inside(figure)
    drawn = [axis.get_title() for axis in figure.axes[::4]]
    assert ["".join(title.split()) for title in drawn] == ["".join(title.split()) for title in titles]  # whole
    assert all(title.count("\n") >= 2 for title in drawn)
    assert figure.get_size_inches()[1] > 2 * 2.5  # the rows grew by their title lines
    with pytest.raises(ValueError, match="no figure of 0 images"):
        save_overlays(images[:0], masks[:0], _scores(masks)[:0], tmp_path / "none.png", ["bg", "a", "b"])
    assert not (tmp_path / "none.png").exists()
