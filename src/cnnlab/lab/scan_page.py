"""The Scan and segment page: a large image scanned by an MNIST run, or segmented by a segmentation run.

An MNIST classifier run is converted to a fully convolutional network by `cnnlab.fcn.scan`, which also draws the
heatmap: the page returns the figure ``cnnlab fcn scan RUN IMAGE`` writes. A segmentation run
(``cnnlab train segment --data``) predicts the masks through `cnnlab.tasks.segment_predict`: the page returns the
overlay and colour mask ``cnnlab predict IMAGE --model RUN`` writes, and each class's share of the pixels.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

__all__ = ["MAX_DOWNSCALED_PIXELS", "MAX_PIXELS", "SegmentView", "scan_view", "segment_view"]

# The page answers while one waits: a 24 MP photo took 2.5 min of CPU to scan. At 4 MP (the Classify page's limit for
# a segmenter) a scan takes about 25 s; the command line takes any size.
MAX_PIXELS = 4 * 2**20
# A segmentation run trained with --max-side segments an image downscaled to it: only the masks and the overlay are
# made at the image's own size, about 0.6 s a megapixel (a 24 MP photo: 14 s on 2 cores), so larger photos are taken.
MAX_DOWNSCALED_PIXELS = 24 * 2**20


@dataclass
class SegmentView:
    """The masks of one image.

    Attributes:
        overlay: the image with every class but the background painted over it.
        colour: the mask, one colour per class.
        share: class name -> fraction of the pixels.
    """

    overlay: Any
    colour: Any
    share: dict[str, float]


def scan_view(run_folder: str | os.PathLike[str], image_path: str | os.PathLike[str], refine: int | None = None) -> Any:
    """The heatmap of `image_path` scanned by the classifier run in `run_folder`, as an RGB PIL image.

    Raises:
        CnnlabError: the run holds no single classifier, or the image is unreadable, smaller than its input or over
            `MAX_PIXELS`.
    """
    from PIL import Image

    from cnnlab.data.folder import check_image
    from cnnlab.fcn.scan import load_converted_or_run, load_scan_image, save_heatmap, scan

    reason = check_image(image_path)
    if reason is not None:
        raise CnnlabError(f"cannot use this file: {reason}; upload a PNG or JPEG image")
    _refuse_large(image_path, "crop it to the part to scan, or scan it whole with `cnnlab fcn scan RUN IMAGE`")
    converted, source = load_converted_or_run(run_folder)
    picture = load_scan_image(image_path, channels=converted.input_size[0])
    result = scan(converted, picture, refine=refine)
    classes = _class_names(Path(run_folder), result.probabilities.shape[0])
    with tempfile.TemporaryDirectory() as scratch:
        path = save_heatmap(picture, result, Path(scratch) / "heatmap.png", classes, title=f"{source['arch']} scan")
        with Image.open(path) as heatmap:
            return heatmap.convert("RGB")


def segment_view(run_folder: str | os.PathLike[str], image_path: str | os.PathLike[str]) -> SegmentView:
    """The masks that the segmentation run in `run_folder` predicts for `image_path`, at the image's own size.

    Raises:
        CnnlabError: the folder holds no segmentation run, or the image is unreadable or over `MAX_PIXELS` (a run
            trained with ``--max-side``: over `MAX_DOWNSCALED_PIXELS`, or over `MAX_PIXELS` once downscaled).
    """
    from PIL import Image

    from cnnlab.tasks.segment_predict import load_segmenter, predict_masks

    segmenter = load_segmenter(run_folder)
    remedy = "crop or downscale it, or segment it whole with `cnnlab predict IMAGE --model RUN`"
    _refuse_large(image_path, remedy, segmenter.max_side)
    with tempfile.TemporaryDirectory() as scratch:
        (result,) = predict_masks(segmenter, [image_path], scratch)
        if "error" in result:
            raise CnnlabError(f"cannot use this file: {result['error']}; upload a PNG or JPEG image")
        with Image.open(result["overlay"]) as overlay, Image.open(result["colour"]) as colour:
            return SegmentView(overlay.convert("RGB"), colour.convert("RGB"), result["share"])


def _refuse_large(image_path: str | os.PathLike[str], remedy: str, max_side: int | None = None) -> None:
    """Refuse an image over `MAX_PIXELS`, or, for a segmenter that downscales it to `max_side` first, over
    `MAX_DOWNSCALED_PIXELS` (or `MAX_PIXELS` once downscaled), saying what to do instead; its size is given as it is
    shown, EXIF orientation applied. An unreadable one is left to the reader that follows, which says why in the
    words every command uses."""
    from PIL import Image

    from cnnlab.data.folder import turned_by_exif
    from cnnlab.data.segmentation import downscaled_size

    try:
        with Image.open(image_path) as image:
            width, height = image.size
            if turned_by_exif(image):
                width, height = height, width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return
    seen_width, seen_height = downscaled_size(width, height, max_side)
    downscaled = max_side is not None and seen_width * seen_height <= MAX_PIXELS
    limit = MAX_DOWNSCALED_PIXELS if downscaled else MAX_PIXELS
    if width * height > limit:
        raise CnnlabError(
            f"the image is {width}x{height}, {width * height:,} pixels; the lab takes up to {limit:,} "
            f"({limit / 2**20:.0f} MP), a larger image takes minutes: {remedy}"
        )


def _class_names(run_folder: Path, count: int) -> list[str] | None:
    from cnnlab.train.saved import saved_meta

    try:
        meta = saved_meta(run_folder)
    except (OSError, CnnlabError):
        meta = {}
    classes = meta.get("classes")
    if isinstance(classes, list) and len(classes) == count:
        return [str(name) for name in classes]
    return None
