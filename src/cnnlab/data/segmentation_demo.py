"""Offline segmentation folders to try `cnnlab train segment --data` on (`cnnlab data segmentation-demo`).

- ``digits``: multi-digit MNIST canvases (`cnnlab.data.segmentation.make_canvases`), grey, 64x64, 1-5 digits each.
- ``rgb``: MNIST-M style. Crops of real photographs (scikit-learn's two sample images, plus scikit-image's sample
  photos when it is installed) of mixed sizes, with 1-4 MNIST digits scaled to 20-48 px and blended in random colours.
  Texture and colour clutter the background, so low-level features learnt from ImageNet help: the case for a
  pretrained encoder.

Both are written in the documented folder format (``images/``, ``masks/`` colour PNGs, ``classes.json``: background
and the digits 0-9), from a seed, using only MNIST's training file. ``classes.json`` comes first and each pair is
written whole (mask, then image, each under a temporary name then renamed), so an interrupted folder trains on the
pairs it holds; `PROGRESS` records the options until the last pair, and the same options continue it.
"""

from __future__ import annotations

import difflib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.segmentation import CLASS_NAMES, INK_THRESHOLD, class_colours, make_canvases
from cnnlab.errors import CnnlabError

__all__ = ["DEMO_VARIANTS", "PROGRESS", "interrupted_demo", "sample_photos", "write_segmentation_demo"]

DEMO_VARIANTS = ("digits", "rgb")
PROGRESS = ".segmentation-demo.json"  # the options of a demo still being written; removed after its last pair
_SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "coins", "immunohistochemistry", "hubble_deep_field")


def sample_photos() -> list[np.ndarray]:
    """uint8 RGB photographs that ship with scikit-learn (and scikit-image, when installed): no download."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(image, dtype=np.uint8) for image in load_sample_images().images]
    try:
        import skimage.data
    except ModuleNotFoundError:
        return photos
    for name in _SKIMAGE_PHOTOS:
        array = np.asarray(getattr(skimage.data, name)())
        photos.append(np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array[..., :3])
    return photos


def _rgb_sample(
    rng: np.random.Generator, photos: list[np.ndarray], digits: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One photo crop of a random size with 1-4 digits blended in at random scales and colours."""
    from PIL import Image

    height, width = (int(v) for v in rng.integers(64, 113, 2))
    photo = photos[int(rng.integers(len(photos)))]
    scale = float(rng.uniform(0.3, 1.0))  # zoomed out photos give finer texture
    photo_h, photo_w = max(height, int(photo.shape[0] * scale)), max(width, int(photo.shape[1] * scale))
    resized = np.asarray(Image.fromarray(photo).resize((photo_w, photo_h), Image.BILINEAR))
    top, left = int(rng.integers(photo_h - height + 1)), int(rng.integers(photo_w - width + 1))
    image = resized[top : top + height, left : left + width].astype(np.float32)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        pick = int(rng.integers(len(digits)))
        side = int(rng.integers(20, min(49, height, width)))
        digit = np.asarray(Image.fromarray(digits[pick]).resize((side, side), Image.BILINEAR), dtype=np.float32)
        y, x = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
        colour = rng.integers(0, 256, 3).astype(np.float32)
        alpha = (digit / 255.0)[..., None]
        window = image[y : y + side, x : x + side]
        image[y : y + side, x : x + side] = (1 - alpha) * window + alpha * colour
        mask[y : y + side, x : x + side][digit >= INK_THRESHOLD] = labels[pick] + 1
    return image.round().clip(0, 255).astype(np.uint8), mask


def write_segmentation_demo(
    root: str | os.PathLike[str],
    variant: str = "digits",
    count: int = 1000,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    advance: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Write a segmentation folder of `count` image + mask pairs to `root`.

    Args:
        root: the folder to create (``images/``, ``masks/``, ``classes.json``); must not hold images already, unless
            they are an interrupted demo of the same options, which is then continued.
        variant: ``digits`` or ``rgb`` (see the module docstring).
        count: pairs to write.
        data_dir: MNIST root (see `cnnlab.data.paths`).
        seed: the generator's seed.
        advance: called after each pair is written (or found written), for a progress bar.

    Returns:
        ``{"root", "variant", "images", "classes", "kept" (pairs an interrupted run had written, kept), "sizes":
        [[least height, least width], [greatest height, greatest width]]}``.

    Raises:
        CnnlabError: when an option is out of range, or `root` holds images that are not an interrupted demo of the
            same options.
    """
    from cnnlab.data.mnist import _load_split, find_mnist_dir

    if variant not in DEMO_VARIANTS:  # "RGB" or "digit" was told the list alone
        close = difflib.get_close_matches(variant.lower(), DEMO_VARIANTS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise CnnlabError(f"--variant {variant!r} is not one of {', '.join(DEMO_VARIANTS)}{hint}")
    if count < 3:
        raise CnnlabError(f"--count must be at least 3 (train, validation and test need one each), got {count}")
    if seed < 0:  # numpy's generator takes no negative seed: it failed with a traceback after the folders were made
        raise CnnlabError(f"--seed must be 0 or more, got {seed}")
    root = Path(root)
    options = {"variant": variant, "count": count, "seed": seed}
    resuming = (root / PROGRESS).is_file()
    recorded = _recorded_options(root) if resuming else {}
    if resuming and {key: value for key, value in recorded.items() if key != "photos"} != options:
        raise CnnlabError(
            f"{root} holds an interrupted demo of other options ({_as_flags(recorded)}); run with those to finish it, "
            "or choose a new folder"
        )
    if not resuming and (root / "images").is_dir() and any((root / "images").iterdir()):
        raise CnnlabError(f"{root / 'images'} already holds files; choose a new folder")
    photos = sample_photos() if variant == "rgb" else []
    # the rgb pairs are crops of these photographs, scikit-image's among them where it is installed: a demo continued
    # with another set mixed pairs of two generators' streams under one seed, and differed from an uninterrupted run
    if resuming and variant == "rgb" and recorded.get("photos", len(photos)) != len(photos):
        raise CnnlabError(
            f"{root} holds an interrupted rgb demo cut from {recorded['photos']} sample photographs, where this "
            f"setup has {len(photos)} (scikit-image's are among them where it is installed); finish it where "
            "scikit-image is installed as it was then, or choose a new folder"
        )
    if photos:
        options["photos"] = len(photos)
    digits, labels = _load_split(find_mnist_dir(data_dir), "train")
    colours = class_colours(len(CLASS_NAMES))
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    # written again by each run that continues the demo: renamed into place, as a cut-short one refused the folder
    _write_atomically(root / PROGRESS, json.dumps(options).encode())
    # classes.json before the pairs: the folder trains on whatever pairs an interruption leaves
    classes = [{"name": n, "color": [int(c) for c in colour]} for n, colour in zip(CLASS_NAMES, colours, strict=True)]
    _write_atomically(root / "classes.json", json.dumps(classes, indent=1).encode())
    if variant == "digits":
        canvases = make_canvases(digits, labels, torch.arange(len(labels)), count, size=64, seed=seed)
        pairs = ((image[0].numpy(), mask.numpy()) for image, mask in zip(canvases.images, canvases.masks, strict=True))
    else:
        rng = np.random.default_rng(seed)
        pool, pool_labels = digits.reshape(-1, 28, 28).numpy(), labels.numpy()
        pairs = (_rgb_sample(rng, photos, pool, pool_labels) for _ in range(count))
    shapes = set()
    kept = 0
    # every pair is generated, also those already written: the generator's stream makes pair i what an uninterrupted
    # run makes it
    for index, (image, mask) in enumerate(pairs):
        shapes.add(mask.shape)
        image_path, mask_path = root / "images" / f"{index:05d}.png", root / "masks" / f"{index:05d}.png"
        if resuming and image_path.is_file() and mask_path.is_file():
            kept += 1
        else:  # the mask first: an image without its mask would stop a folder read without skip_bad
            _write_atomically(mask_path, _png(colours[mask]))
            _write_atomically(image_path, _png(image))
        if advance is not None:
            advance()
    (root / PROGRESS).unlink()
    return {
        "root": str(root),
        "variant": variant,
        "images": count,
        "classes": len(CLASS_NAMES),
        "kept": kept,
        "sizes": [
            [min(h for h, _ in shapes), min(w for _, w in shapes)],
            [max(h for h, _ in shapes), max(w for _, w in shapes)],
        ],
    }


def interrupted_demo(root: str | os.PathLike[str]) -> int | None:
    """The pairs an interrupted demo in `root` holds (each whole); None when `root` holds no interrupted demo."""
    root = Path(root)
    if not (root / PROGRESS).is_file():
        return None
    return sum(1 for image in (root / "images").glob("*.png") if (root / "masks" / image.name).is_file())


def _recorded_options(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / PROGRESS).read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # unreadable: matches no options, so the folder is not continued blindly


def _as_flags(options: dict[str, Any]) -> str:
    flags = " ".join(f"--{key} {value}" for key, value in options.items() if key != "photos")  # not an option
    return flags or f"unreadable {PROGRESS}"


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    """`data` to a temporary file, renamed to `path`: an interruption leaves the whole file or none (the temporary
    name ends in .part, not an image suffix, so a folder read never lists it)."""
    temporary = path.with_name(path.name + ".part")
    temporary.write_bytes(data)
    temporary.replace(path)
