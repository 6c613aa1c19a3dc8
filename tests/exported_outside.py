"""Use a `cnnlab export` file as a deployment would, without cnnlab: the model loaded with torch.jit.load, ONNX Runtime
or torch.export.load, and each image prepared from its ``<file>.preprocessing.json`` alone (for the tests that compare
the result with `cnnlab predict`, `cnnlab fcn scan` or a canvas run's test pass), for every kind an export writes.
Nothing here imports cnnlab, and only the keys README's "What an export's record holds" documents are read: what the
record leaves out shows up as a difference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.transforms import v2

__all__ = [
    "canvas_mask",
    "decoded",
    "digit_input",
    "exported_runner",
    "grey_digits_input",
    "photo_input",
    "read_record",
    "scanner_probabilities",
    "segment_mask",
]

LAYOUT = "cnnlab-export-2"
KINDS = ("digit-classifier", "image-classifier", "segmenter", "digit-scanner", "digit-segmenter")


def read_record(model_file: str | Path) -> dict[str, Any]:
    """The preprocessing record written beside `model_file`, of the documented layout; its keys common to every kind
    checked present."""
    record = json.loads(Path(f"{model_file}.preprocessing.json").read_text())
    assert record["layout"] == LAYOUT, record.get("layout")
    assert record["kind"] in KINDS, record["kind"]
    common = ("format", "load", "decode", "input", "output", "classes", "views", "normalisation")
    assert all(key in record for key in common), [key for key in common if key not in record]
    return record


def exported_runner(model_file: str | Path, record: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """float32 images -> the exported file's output, loaded as the record's ``load`` says."""
    if record["format"] == "torchscript":
        assert record["load"] == "torch.jit.load(path)"
        module = torch.jit.load(str(model_file))
        return lambda images: module(images).detach()
    if record["format"] == "pt2":
        assert record["load"] == "torch.export.load(path).module()"
        program = torch.export.load(str(model_file)).module()
        return lambda images: program(images).detach()
    assert record["format"] == "onnx" and "input name 'images'" in record["load"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def decoded(path: str | Path) -> Image.Image:
    """The file decoded as the record's ``decode`` says: EXIF orientation, transparency on white, 16- and 32-bit grey
    stretched to 8 bits, then RGB."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I") or image.mode == "F":  # I;16*, I and F: rint((v - low) / (high - low) * 255)
            values = np.asarray(image, dtype=np.float64)
            finite = values[np.isfinite(values)]
            low, high = (
                (0.0, 65535.0)
                if image.mode.startswith("I;16") and values.max() > 4095
                else (finite.min(), finite.max())
                if finite.size
                else (0.0, 0.0)
            )
            values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)  # NaN, -inf the smallest; +inf the largest
            scaled = np.clip(np.rint((values - low) / max(high - low, 1e-12) * 255.0), 0, 255).astype(np.uint8)
            return Image.fromarray(scaled).convert("RGB")
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")


def photo_input(record: dict[str, Any], path: str | Path) -> torch.Tensor:
    """[3, H, W] in [0, 1]: the record's resize (its filter and antialiasing) and centre crop; mean/std are inside."""
    assert record["kind"] == "image-classifier"
    height, width = record["center_crop"]
    assert record["input_shape"] == ["N", 3, height, width] and "normalisation is inside" in record["input"]
    interpolation = v2.InterpolationMode(record["interpolation"])
    resize = v2.Resize(record["resize_shorter_side_to"], interpolation=interpolation, antialias=record["antialias"])
    prepare = v2.Compose([v2.ToImage(), resize, v2.CenterCrop(record["center_crop"]), v2.ToDtype(torch.float32, True)])
    return prepare(decoded(path))


def _paper_and_ink(
    steps: dict[str, Any], levels: np.ndarray, paper_mads: float
) -> tuple[np.ndarray, float, float, tuple[bool, float, float, np.ndarray | None]]:
    """The record's ``threshold``, ``paper``, ``paper_level`` and ``ink_level`` steps on 8-bit grey `levels`: grey
    (float32 / 255, inverted when the paper is light), the paper's level at `paper_mads` deviations, the ink's level,
    and (paper light, the paper's median, its robust deviation, the table around a page or None)."""
    assert "Otsu's threshold" in steps["threshold"] and "outermost rows and columns" in steps["paper"]
    assert "scipy.ndimage.label's default structure" in steps["paper"]
    from scipy import ndimage

    grey = levels.astype(np.float32) / 255.0
    t = _otsu(levels)
    edge = np.zeros(levels.shape, dtype=bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    border_light = bool(np.median(levels[edge]) > t)
    border_class = levels > t if border_light else levels <= t
    table = None
    if border_class[edge].mean() >= steps["table_border"] and (~border_class).mean() >= steps["table_paper"]:
        regions, _ = ndimage.label(border_class)
        table = np.isin(regions, [label for label in np.unique(regions[edge]) if label > 0])
        light, paper, ink = not border_light, ~border_class, border_class & ~table
    else:
        light, paper, ink = border_light, border_class, ~border_class
        paper = paper & edge
    if light:
        grey = 1.0 - grey
    paper_grey = grey[paper]
    median, spread = float(np.median(paper_grey)), float(1.4826 * np.median(np.abs(paper_grey - np.median(paper_grey))))
    ink_level = float(np.percentile(grey[ink], steps["ink_percentile"])) if ink.any() else median
    return grey, median + paper_mads * spread, ink_level, (light, median, spread, table)


def _otsu(levels: np.ndarray) -> int:
    """The record's ``threshold``: Otsu's t of 8-bit grey `levels`."""
    histogram = np.bincount(levels.ravel(), minlength=256)
    scores = []
    for t in range(255):
        low, high = histogram[: t + 1], histogram[t + 1 :]
        if low.sum() == 0 or high.sum() == 0:
            scores.append(-1.0)
            continue
        mu0, mu1 = (low * np.arange(t + 1)).sum() / low.sum(), (high * np.arange(t + 1, 256)).sum() / high.sum()
        scores.append(float(low.sum()) * float(high.sum()) * (mu0 - mu1) ** 2)
    return int(np.argmax(scores))


def _flattened(
    steps: dict[str, Any], levels: np.ndarray, size: int, found: tuple[bool, float, float, Any]
) -> np.ndarray | None:
    """The record's ``flatten`` step: `levels` with the paper's light (a grey closing `size` px square) divided out,
    or None where it does not apply (`found`: `_paper_and_ink`'s last value) or the light's darkest is not under
    ``flatten_below`` of its brightest."""
    from scipy import ndimage

    light, median, _, table = found
    assert "median(b) is above 0 and scipy.ndimage.grey_opening(levels, size=(s, s)).max() > t" in steps["flatten"]
    if table is not None:
        return None
    if not light and not (median > 0 and ndimage.grey_opening(levels, size=(size, size)).max() > _otsu(levels)):
        return None
    assert "median_filter(levels, size=3, mode='nearest'), s // 2, mode='edge'), size=(s, s), " in steps["flatten"]
    margin = size // 2
    padded = np.pad(ndimage.median_filter(levels, size=3, mode="nearest"), margin, mode="edge")
    lit = ndimage.grey_closing(padded, size=(size, size), mode="nearest")[margin : margin + levels.shape[0]]
    lit = lit[:, margin : margin + levels.shape[1]]
    if not lit.min() < steps["flatten_below"] * lit.max():
        return None
    scale = lit.max() / np.maximum(lit, 1).astype(np.float64)
    return np.clip(np.rint(levels * scale), 0, 255).astype(np.uint8)


def digit_input(record: dict[str, Any], path: str | Path) -> torch.Tensor:
    """[1, 28, 28] in [0, 1]: the digit prepared by the record's ``prepare_steps``, step by step."""
    assert record["kind"] == "digit-classifier"
    steps = record["prepare_steps"]
    assert "Image.convert('L')" in steps["grey"]
    levels = np.asarray(decoded(path).convert("L"), dtype=np.uint8)
    grey, paper_level, ink_level, found = _paper_and_ink(steps, levels, steps["paper_mads"])
    table = found[-1]
    assert "s = max(3, round(min(h, w) * flatten_share)) | 1" in steps["flatten"]
    size = max(3, round(min(levels.shape) * steps["flatten_share"])) | 1
    if (flat := _flattened(steps, levels, size, found)) is not None:
        grey, paper_level, ink_level, (*_, table) = _paper_and_ink(steps, flat, steps["paper_mads"])
    grey = np.clip((grey - paper_level) / (ink_level - paper_level), 0, 1).astype(np.float32)
    assert "then 0 on the table" in steps["stretch"]
    if table is not None:
        grey[table] = 0.0
    rows, cols = np.nonzero(grey > steps["ink_above"])
    grey = grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = grey.shape
    fit, side = steps["fit"], steps["canvas"]
    size = (max(1, round(width * fit / max(height, width))), max(1, round(height * fit / max(height, width))))
    assert "Image.BILINEAR" in steps["fit_resize"] and "mode 'F'" in steps["fit_resize"]
    small = np.clip(np.asarray(Image.fromarray(grey, mode="F").resize(size, Image.BILINEAR), np.float32), 0, 1)
    height, width = small.shape
    top, left = (side - height) // 2, (side - width) // 2
    if (mass := float(small.sum())) > 0:
        row_index, col_index = np.indices(small.shape)
        top = min(max(round(side // 2 - float((row_index * small).sum()) / mass), 0), side - height)
        left = min(max(round(side // 2 - float((col_index * small).sum()) / mass), 0), side - width)
    canvas = np.zeros((side, side), dtype=np.float32)
    canvas[top : top + height, left : left + width] = small
    return torch.from_numpy(canvas)[None]


def segment_mask(record: dict[str, Any], run: Callable[[torch.Tensor], torch.Tensor], path: str | Path) -> np.ndarray:
    """The uint8 mask [H, W] at the image's size: downscaled to ``max_side`` as the record's ``resize`` says, the
    logits upsampled bilinearly back and the argmax taken."""
    assert record["kind"] == "segmenter"
    image = decoded(path)
    width, height = image.size
    seen = image
    if record["max_side"] is not None and max(width, height) > record["max_side"]:
        assert "Image.resize, BILINEAR" in record["resize"]
        scale = record["max_side"] / max(width, height)
        seen = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(seen, dtype=np.float32).transpose(2, 0, 1) / 255.0)[None]
    logits = run(pixels)
    if seen is not image:
        assert "upsample the logits bilinearly (align_corners=False)" in record["resize"]
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def grey_digits_input(record: dict[str, Any], path: str | Path) -> torch.Tensor:
    """[1, H, W] in [0, 1] at the image's own size, as a digit scanner's or a canvas segmenter's ``prepare_steps``
    say: light digits on black, dark ink on light paper inverted and the paper stretched to 0, the ink to 1."""
    assert record["kind"] in ("digit-scanner", "digit-segmenter")
    assert "grey (PIL Image.convert('L')), divided by 255" in record["prepare"] and "not resized" in record["prepare"]
    assert record["input_shape"] == ["N", 1, "H", "W"] and record["views"] == ["identity"]
    steps = record["prepare_steps"]
    assert "Image.convert('L')" in steps["grey"] and "not resized" in steps["grey"]
    levels = np.asarray(decoded(path).convert("L"), dtype=np.uint8)
    if levels.max() == levels.min():  # one_grey
        grey = levels.astype(np.float32) / 255.0
        return torch.from_numpy(1.0 - grey if grey.mean() > steps["invert_above_mean"] else grey)[None]
    grey, paper_level, ink_level, (light, median, spread, table) = _paper_and_ink(steps, levels, steps["paper_mads"])
    assert "s = flatten_size" in steps["flatten"]
    if (flat := _flattened(steps, levels, steps["flatten_size"], (light, median, spread, table))) is not None:
        levels = flat
        grey, paper_level, ink_level, (light, median, spread, table) = _paper_and_ink(
            steps, levels, steps["paper_mads"]
        )
    if not light and table is None and paper_level <= 0.0:  # as_read
        return torch.from_numpy(levels.astype(np.float32) / 255.0)[None]
    grey = grey - paper_level
    if ink_level - (median + steps["blank_paper_mads"] * spread) > steps["ink_above"]:  # stretch: not a blank page
        grey = grey / (ink_level - paper_level)
    assert "then 0 on the table, if any" in steps["stretch"]
    if table is not None:
        grey[table] = 0.0
    return torch.from_numpy(np.clip(grey, 0, 1).astype(np.float32))[None]


def scanner_probabilities(
    record: dict[str, Any], run: Callable[[torch.Tensor], torch.Tensor], path: str | Path
) -> torch.Tensor:
    """[10, rows, cols] the digits' probabilities of each window inside the image, as the record's ``output`` places
    them: (H - window) // stride + 1 rows and as many columns, softmax taken of logits or log-probabilities."""
    assert record["kind"] == "digit-scanner"
    grey = grey_digits_input(record, path)
    (window_height, window_width), (down, across) = record["window"], record["stride"]
    assert f"first (H - {window_height}) // {down} + 1 rows" in record["output"]
    scores = run(grey[None])[0]
    rows, cols = (grey.shape[1] - window_height) // down + 1, (grey.shape[2] - window_width) // across + 1
    scores = scores[:, :rows, :cols]
    if "classifier's probabilities" in record["output"]:
        return scores
    assert "classifier's logits" in record["output"] or "classifier's log-probabilities" in record["output"]
    return scores.softmax(0)


def canvas_mask(record: dict[str, Any], run: Callable[[torch.Tensor], torch.Tensor], path: str | Path) -> np.ndarray:
    """The uint8 mask [H, W] of a canvas segmenter at the image's own size: the argmax of its logits (0 background,
    1 + d for digit d)."""
    assert record["kind"] == "digit-segmenter" and record["normalisation"] is None
    assert "argmax over classes gives the mask" in record["output"] and record["background"] == 0
    logits = run(grey_digits_input(record, path)[None])
    return logits.argmax(1)[0].numpy().astype(np.uint8)
