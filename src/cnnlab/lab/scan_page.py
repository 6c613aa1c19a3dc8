"""The Scan and segment page: a large image scanned by an MNIST run, or segmented by a segmentation run.

An MNIST classifier run is converted to a fully convolutional network by `cnnlab.fcn.scan`, which also draws the
heatmap: the page returns the figure ``cnnlab fcn scan RUN IMAGE`` writes. A segmentation run
(``cnnlab train segment --data``) predicts the masks as `cnnlab.tasks.segment_predict` does: the page returns the
overlay and colour mask ``cnnlab predict IMAGE --model RUN`` writes, at the size the page shows them, and each class's
share of the pixels.
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
    """The masks of one image, at the size the page shows it (`cnnlab.lab.classify.display_size`).

    Attributes:
        overlay: the image with every class but the background painted over it.
        colour: the mask, one colour per class.
        share: class name -> fraction of the pixels of the mask at the image's own size, as predict counts them.
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

    from cnnlab.fcn.scan import load_converted_or_run, save_heatmap, scan, scan_tensor

    # refused from its header first: a 12 MP photo was decoded whole to be told it is too large
    _refuse_large(image_path, "crop it to the part to scan, or scan it whole with `cnnlab fcn scan RUN IMAGE`")
    image = _decoded(image_path)  # once: the check, then the reading, decoded it twice more
    converted, source = load_converted_or_run(run_folder)
    picture = scan_tensor(image, channels=converted.input_size[0])  # as `cnnlab fcn scan` reads the file
    result = scan(converted, picture, refine=refine)
    classes = _class_names(Path(run_folder), result.probabilities.shape[0])
    with tempfile.TemporaryDirectory() as scratch:
        path = save_heatmap(picture, result, Path(scratch) / "heatmap.png", classes, title=f"{source['arch']} scan")
        with Image.open(path) as heatmap:
            return heatmap.convert("RGB")


def segment_view(run_folder: str | os.PathLike[str], image_path: str | os.PathLike[str]) -> SegmentView:
    """The masks that the segmentation run in `run_folder` predicts for `image_path`, as ``cnnlab predict`` makes
    them (at the image's own size, from which the shares are counted), shown at the page's size (`display_size`).

    The image is decoded once and nothing is written: a 12 MP photo took 8 s through predict's files (decoded twice,
    three 12 MP PNGs written and two read back), and Gradio then encoded two 12 MP images for a page that shows them
    a few hundred pixels wide.

    Raises:
        CnnlabError: the folder holds no segmentation run, or the image is unreadable or over `MAX_PIXELS` (a run
            trained with ``--max-side``: over `MAX_DOWNSCALED_PIXELS`, or over `MAX_PIXELS` once downscaled).
    """
    import numpy as np
    from PIL import Image

    from cnnlab.lab.classify import display_size
    from cnnlab.report.segmentation import colourise
    from cnnlab.tasks.segment_predict import class_shares, load_segmenter, segment_image

    segmenter = load_segmenter(run_folder)
    remedy = "crop or downscale it, or segment it whole with `cnnlab predict IMAGE --model RUN`"
    _refuse_large(image_path, remedy, segmenter.max_side)
    image = _decoded(image_path)
    labels = segment_image(segmenter, image)  # predict's masks, at the image's own size
    share = class_shares(segmenter, labels)  # counted at the image's own size, as predict counts them
    size = display_size(image.width, image.height)
    shown = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
    if max(size) < max(image.size):  # the photo antialiased, its classes by nearest neighbour
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    else:
        image = image.resize(size, Image.Resampling.NEAREST)
    overlay = colourise(np.asarray(image), shown, segmenter.colours, background=segmenter.background)
    return SegmentView(Image.fromarray(overlay), Image.fromarray(segmenter.colours[shown]), share)


def _decoded(image_path: str | os.PathLike[str]) -> Any:
    """The image at `image_path` decoded once, as every command reads one (`data.folder.load_image`).

    Raises:
        CnnlabError: it cannot be read as an image, saying why.
    """
    from cnnlab.data.folder import decode_image, to_rgb, with_remedy
    from cnnlab.lab.classify import without_bomb_warning

    with without_bomb_warning():
        image, _, reason = decode_image(image_path)
    if image is None:
        raise CnnlabError(f"cannot use this file: {with_remedy(reason, 'upload a PNG or JPEG image')}")
    return to_rgb(image)


def _refuse_large(image_path: str | os.PathLike[str], remedy: str, max_side: int | None = None) -> None:
    """Refuse an image over `MAX_PIXELS`, or, for a segmenter that downscales it to `max_side` first, over
    `MAX_DOWNSCALED_PIXELS` (or `MAX_PIXELS` once downscaled), saying what to do instead; its size is given as it is
    shown, EXIF orientation applied. An unreadable one is left to the reader that follows, which says why in the
    words every command uses."""
    from PIL import Image

    from cnnlab.data.folder import turned_by_exif
    from cnnlab.data.segmentation import downscaled_size
    from cnnlab.lab.classify import without_bomb_warning

    try:
        with without_bomb_warning(), Image.open(image_path) as image:
            width, height = image.size
            # A PNG's getexif() decodes every pixel to look for an EXIF chunk after them: only the header's is read
            # (a turn leaves the pixel count, and so the verdict, as it is; only the size in the message would differ).
            header_only = image.format == "PNG" and "exif" not in image.info
            if not header_only and turned_by_exif(image):
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
