"""The Scan page: an MNIST classifier run, converted to a fully convolutional network, scans a large image.

`cnnlab.fcn.scan` does the work (conversion, shift-and-stitch scan, the heatmap figure); the page returns the figure
``cnnlab fcn scan RUN IMAGE`` writes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

__all__ = ["scan_view"]


def scan_view(run_folder: str | os.PathLike[str], image_path: str | os.PathLike[str], refine: int = 4) -> Any:
    """The heatmap of `image_path` scanned by the classifier run in `run_folder`, as an RGB PIL image.

    Raises:
        CnnlabError: the run holds no single classifier, or the image is unreadable or smaller than its input.
    """
    from PIL import Image

    from cnnlab.data.folder import check_image
    from cnnlab.fcn.scan import load_converted_or_run, load_scan_image, save_heatmap, scan

    reason = check_image(image_path)
    if reason is not None:
        raise CnnlabError(f"cannot use this file: {reason}; upload a PNG or JPEG image")
    converted, source = load_converted_or_run(run_folder)
    picture = load_scan_image(image_path, channels=converted.input_size[0])
    result = scan(converted, picture, refine=refine)
    classes = _class_names(Path(run_folder), result.probabilities.shape[0])
    with tempfile.TemporaryDirectory() as scratch:
        path = save_heatmap(picture, result, Path(scratch) / "heatmap.png", classes, title=f"{source['arch']} scan")
        with Image.open(path) as heatmap:
            return heatmap.convert("RGB")


def _class_names(run_folder: Path, count: int) -> list[str] | None:
    try:
        meta = json.loads((run_folder / "model.json").read_text()).get("meta", {})
    except (OSError, ValueError):
        meta = {}
    classes = meta.get("classes")
    if isinstance(classes, list) and len(classes) == count:
        return [str(name) for name in classes]
    return None
