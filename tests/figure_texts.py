"""What several figure tests check: that a figure's texts lie apart and inside it."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text


def _text_corners(text: Text, renderer: RendererBase) -> np.ndarray:
    """The four corners, in pixels, of a text's box as drawn: turned about its anchor when it is rotated."""
    angle = text.get_rotation()
    if angle % 360:
        assert text.get_rotation_mode() == "anchor"  # aligned unturned about the anchor, then turned about it
        anchor = np.array(text.get_transform().transform(text.get_position()))
        text.set_rotation(0)
        box = text.get_window_extent(renderer)
        text.set_rotation(angle)
    else:
        anchor, box = np.zeros(2), text.get_window_extent(renderer)
    corners = np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]]) - anchor
    turn = math.radians(angle)
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    return corners @ rotation.T + anchor


def _boxes_overlap(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two convex quadrilaterals overlap: no edge normal of either separates them (separating axis test)."""
    for polygon in (first, second):
        for i in range(4):
            edge = polygon[(i + 1) % 4] - polygon[i]
            normal = np.array([-edge[1], edge[0]])
            a, b = first @ normal, second @ normal
            if a.max() <= b.min() + 1e-6 or b.max() <= a.min() + 1e-6:
                return False
    return True


def assert_labels_apart_and_inside(figure: Figure) -> None:
    """No two of a figure's labels (tick labels, axis labels, titles, figure texts, legends' titles and entries)
    overlap, and all lie inside it."""
    renderer = FigureCanvasAgg(figure).get_renderer()  # closing the figure took its canvas
    figure.draw(renderer)  # the axis labels are placed below the tick labels as the figure is drawn
    texts = [figure._suptitle] if figure._suptitle else []
    texts += [text for text in figure.texts if text is not figure._suptitle]
    for axis in figure.axes:
        texts.append(axis.title)
        if axis.axison:
            texts += [*axis.get_xticklabels(), *axis.get_yticklabels(), axis.xaxis.label, axis.yaxis.label]
    for legend in [*figure.legends, *(axis.get_legend() for axis in figure.axes if axis.get_legend())]:
        texts += [legend.get_title(), *legend.get_texts()]
    boxes = [
        (text.get_text(), _text_corners(text, renderer)) for text in texts if text.get_visible() and text.get_text()
    ]
    width, height = figure.bbox.width, figure.bbox.height
    for name, box in boxes:
        assert box.min() >= 0 and box[:, 0].max() <= width and box[:, 1].max() <= height, f"{name!r} leaves the figure"
    for k, (name, box) in enumerate(boxes):
        for other, other_box in boxes[k + 1 :]:
            assert not _boxes_overlap(box, other_box), f"{name!r} overlaps {other!r}"
