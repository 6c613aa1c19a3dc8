"""Segmentation data: multi-digit MNIST canvases generated from real MNIST digits, and image + mask PNG folders.

Multi-digit MNIST: each canvas (e.g. 64 x 64 to 128 x 128) holds 1 to 5 real MNIST digits at random places; digits
may touch or overlap (a later digit is drawn on top: the brighter ink wins in the image, the later digit in the
mask). The mask is 0 for background and ``digit + 1`` (1..10) for the pixels of a digit whose ink is at least
`INK_THRESHOLD` (of 255). The three splits draw their digits from disjoint MNIST pools: train from the MNIST
training file minus a held-out set, val from that held-out set, test only from the MNIST test file. Every canvas
records the ids of its source digits (`source_ids`: index in the training file, or 60000 + index in the test file),
and generation is a pure function of the seed.

Folder datasets: ``<root>/images/<stem>.png`` with ``<root>/masks/<stem>.png``; a mask is either a single-channel PNG
of class indices or an RGB PNG whose colours are mapped to classes by ``<root>/classes.json``
(``[{"name": "background", "color": [0, 0, 0]}, ...]``, the class index is the position in the list); a
``classes.json`` without colours (``[{"name": "background"}, ...]``) names the classes of index masks. Index
`IGNORE_INDEX` (255) marks unlabelled pixels, as in Pascal VOC: losses and metrics skip them. Training on a folder
holds the decoded pairs in memory as uint8 (`SegmentationSamples`), optionally downscaled as they are read (`max_side`:
the image antialiased by `downscale`, the mask by nearest neighbour, so class indices stay exact), and transforms
image and mask together with torchvision transforms v2 (`joint_train_transform`: the mask is a `tv_tensors.Mask`, so
it is resampled with nearest neighbours and padded with `IGNORE_INDEX`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cnnlab.data.folder import (
    DOWNSCALE_REMEDY,
    IMAGE_EXTENSIONS,
    SkippedFile,
    bytes_digest,
    check_listable,
    decode_image_and_digest,
    to_rgb,
    turned_by_exif,
)
from cnnlab.errors import CnnlabError, listed, why_not_a_folder

if TYPE_CHECKING:
    from collections.abc import Sequence

    import PIL.Image

__all__ = [
    "CLASS_NAMES",
    "DigitCanvases",
    "DigitSegmentation",
    "EdgeOnlyValues",
    "ForegroundAs255",
    "GreyIndexMaskWarning",
    "IGNORE_INDEX",
    "NestedImagesWarning",
    "PaletteColours",
    "SegmentationFolder",
    "SegmentationInput",
    "SegmentationSamples",
    "UnreadableImage",
    "canvases_digest",
    "check_mask_classes",
    "class_colours",
    "downscale",
    "downscale_mask",
    "downscaled_size",
    "edge_only_values",
    "joint_train_transform",
    "make_canvases",
    "make_digit_segmentation",
    "make_test_canvases",
    "pad_collate",
    "same_size_batches",
    "save_segmentation_folder",
]

NUM_CLASSES = 11  # background + 10 digits
CLASS_NAMES = ["background"] + [str(d) for d in range(10)]
INK_THRESHOLD = 64
MAX_DIGITS = 5
IGNORE_INDEX = 255
TEST_ID_OFFSET = 60_000
_INDEX_MODES = ("1", "L", "I", "I;16")  # single-channel PIL modes whose values are class indices (bilevel: 0 and 1)
_MAX_OVERLAP = 0.25  # a new digit may hide at most this fraction of its own ink pixels under earlier ink
_HEAD_BYTES = 4096  # read of an image whose size another shares, before hashing it: a copy has the same first bytes
_FLATTEN = "flatten the mask onto its background colour (no alpha), so that every pixel shows its class"
_READ_AHEAD_BYTES = 256 << 20  # of the images hashed as possible copies, the most bytes kept for `read` to decode


@dataclass
class DigitCanvases:
    """A split of the multi-digit segmentation set.

    Attributes:
        images: uint8 [N, 1, H, W] (0..255, white ink on black like MNIST).
        masks: uint8 [N, H, W], 0 = background, 1..10 = digit + 1.
        source_ids: int64 [N, 5] ids of the MNIST digits drawn (-1 pads); ids >= 60000 come from the test file.
    """

    images: torch.Tensor
    masks: torch.Tensor
    source_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


def class_colours(num_classes: int = NUM_CLASSES) -> np.ndarray:
    """A fixed RGB colour per class (uint8 [num_classes, 3]); class 0 (background) is black."""
    palette = np.array(
        [
            (0, 0, 0),
            (230, 25, 75),
            (60, 180, 75),
            (255, 225, 25),
            (0, 130, 200),
            (245, 130, 48),
            (145, 30, 180),
            (70, 240, 240),
            (240, 50, 230),
            (210, 245, 60),
            (250, 190, 212),
            (0, 128, 128),
            (220, 190, 255),
            (170, 110, 40),
            (128, 0, 0),
            (170, 255, 195),
        ],
        dtype=np.uint8,
    )
    if num_classes <= len(palette):
        return palette[:num_classes].copy()
    rng = np.random.default_rng(0)
    return np.concatenate([palette, rng.integers(0, 256, (num_classes - len(palette), 3), dtype=np.uint8)])


def _place_digits(
    rng: np.random.Generator,
    digits: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    height: int,
    width: int,
    count: int,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Draw `count` digits picked from the pool onto a `height` x `width` canvas."""
    image = np.zeros((height, width), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    used: list[int] = []
    size = digits.shape[-1]
    for _ in range(count):
        pick = int(rng.integers(len(digits)))
        digit = digits[pick]
        ink = digit >= INK_THRESHOLD
        for _attempt in range(20):
            top = int(rng.integers(0, height - size + 1))
            left = int(rng.integers(0, width - size + 1))
            hidden = (mask[top : top + size, left : left + size] > 0) & ink
            if hidden.sum() <= _MAX_OVERLAP * ink.sum():
                break
        else:
            continue  # canvas too crowded for this digit: leave it out
        window = image[top : top + size, left : left + size]
        np.maximum(window, digit, out=window)
        mask[top : top + size, left : left + size][ink] = labels[pick] + 1
        used.append(int(ids[pick]))
    return image, mask, used


def make_canvases(
    digits: torch.Tensor,
    labels: torch.Tensor,
    ids: torch.Tensor,
    count: int,
    size: int | tuple[int, int] = 64,
    digits_per_canvas: tuple[int, int] = (1, MAX_DIGITS),
    seed: int | tuple[int, ...] = 0,
) -> DigitCanvases:
    """Compose `count` canvases from a pool of MNIST digits.

    Args:
        digits: uint8 [P, 1, 28, 28] or [P, 28, 28] pool.
        labels: int [P] digit labels.
        ids: int [P] ids recorded in `source_ids`.
        count: canvases to make.
        size: canvas side, or (height, width); at least 28.
        digits_per_canvas: inclusive (min, max) digits per canvas; max <= 5.
        seed: the generator seed, or a tuple of them (same seed and pool: same canvases).
    """
    height, width = (size, size) if isinstance(size, int) else size
    low, high = digits_per_canvas
    if min(height, width) < 28:
        raise CnnlabError(f"canvas size {height}x{width} is smaller than a 28x28 digit; use at least 28")
    if not 1 <= low <= high <= MAX_DIGITS:
        raise CnnlabError(f"digits per canvas {digits_per_canvas} must satisfy 1 <= min <= max <= {MAX_DIGITS}")
    pool = digits.reshape(len(digits), 28, 28).numpy()
    label_array, id_array = labels.numpy(), ids.numpy()
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 1, height, width), dtype=np.uint8)
    masks = np.zeros((count, height, width), dtype=np.uint8)
    sources = np.full((count, MAX_DIGITS), -1, dtype=np.int64)
    for i in range(count):
        n = int(rng.integers(low, high + 1))
        image, mask, used = _place_digits(rng, pool, label_array, id_array, height, width, n)
        images[i, 0], masks[i] = image, mask
        sources[i, : len(used)] = used
    return DigitCanvases(torch.from_numpy(images), torch.from_numpy(masks), torch.from_numpy(sources))


@dataclass
class DigitSegmentation:
    """The three splits of the multi-digit segmentation set.

    `train_digits` holds the (uint8 [P, 1, 28, 28] digits, labels, ids) of the training pool, the only MNIST digits
    the train canvases use (none of the val or test pools'): encoder pretraining may use them without leaking.
    """

    train: DigitCanvases
    val: DigitCanvases
    test: DigitCanvases
    train_digits: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def _mnist_pools(
    data_dir: str | os.PathLike[str] | None, val_digits: int | None, seed: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(digits, labels, ids) of the disjoint train / val / test pools; `make_digit_segmentation` says how many."""
    from cnnlab.data.mnist import _load_split, find_mnist_dir

    directory = find_mnist_dir(data_dir)
    train_images, train_labels = _load_split(directory, "train")
    test_images, test_labels = _load_split(directory, "test")
    if len(train_labels) < 2 or not len(test_labels):  # a canvas draws from each pool: an empty one cannot
        raise CnnlabError(
            f"{directory} holds {len(train_labels)} MNIST training and {len(test_labels)} test digits; the canvases "
            "need at least 2 training digits (one held out for validation) and 1 test digit"
        )
    if val_digits is None:  # a twelfth: MNIST's 5,000 of 60,000, and a pool of each kind from a smaller MNIST
        val_digits = max(1, len(train_labels) // 12)
    if not 0 < val_digits < len(train_labels):
        raise CnnlabError(
            f"val_digits {val_digits} must be in [1, {len(train_labels)}): {directory} holds {len(train_labels)} "
            "MNIST training digits and each pool needs one"
        )
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:val_digits], order[val_digits:]
    test_ids = torch.arange(len(test_labels)) + TEST_ID_OFFSET
    return {
        "train": (train_images[train_index], train_labels[train_index], train_index),
        "val": (train_images[val_index], train_labels[val_index], val_index),
        "test": (test_images, test_labels, test_ids),
    }


def make_digit_segmentation(
    data_dir: str | os.PathLike[str] | None = None,
    sizes: tuple[int, int, int] = (4000, 500, 1000),
    canvas_size: int | tuple[int, int] = 64,
    digits_per_canvas: tuple[int, int] = (1, MAX_DIGITS),
    val_digits: int | None = None,
    seed: int = 0,
) -> DigitSegmentation:
    """Generate the multi-digit MNIST segmentation set (train, val, test) from the MNIST IDX files.

    Args:
        data_dir: data root holding MNIST (see `cnnlab.data.paths.resolve_data_dir`).
        sizes: canvases in train, val and test.
        canvas_size: side of every canvas, or (height, width).
        digits_per_canvas: inclusive range of digits on one canvas (max 5).
        val_digits: MNIST training digits held out as the validation pool (default: a twelfth, 5,000 of MNIST's
            60,000; an MNIST with fewer than 5,000 training digits left none for the training pool).
        seed: seed of the pool split and of the composition (each split gets its own stream).

    Raises:
        CnnlabError: when MNIST is not found or an option is out of range.
    """
    pools = _mnist_pools(data_dir, val_digits, seed)
    train_count, val_count, test_count = sizes
    digits, labels, ids = pools["train"]
    train = make_canvases(digits, labels, ids, train_count, canvas_size, digits_per_canvas, seed * 3)
    val = make_canvases(*pools["val"], val_count, canvas_size, digits_per_canvas, seed * 3 + 1)
    test = _test_canvases(pools["test"], test_count, canvas_size, digits_per_canvas, seed)
    return DigitSegmentation(train, val, test, train_digits=(digits.reshape(-1, 1, 28, 28), labels, ids))


def _test_canvases(
    pool: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    count: int,
    canvas_size: int | tuple[int, int],
    digits_per_canvas: tuple[int, int],
    seed: int,
) -> DigitCanvases:
    """The test split of `make_digit_segmentation` from its pool of MNIST test digits (their own stream of `seed`)."""
    return make_canvases(*pool, count, canvas_size, digits_per_canvas, seed * 3 + 2)


def make_test_canvases(
    data_dir: str | os.PathLike[str] | None,
    count: int,
    canvas_size: int | tuple[int, int] = 64,
    digits_per_canvas: tuple[int, int] = (1, MAX_DIGITS),
    seed: int = 0,
) -> DigitCanvases:
    """`make_digit_segmentation`'s test canvases alone, made again from the MNIST test file (the training file is not
    read): the same canvases for the same MNIST, `count`, size and seed, whatever the train and val sizes were.

    Raises:
        CnnlabError: when MNIST is not found, holds no test digit, or an option is out of range.
    """
    from cnnlab.data.mnist import _load_split, find_mnist_dir

    directory = find_mnist_dir(data_dir)
    images, labels = _load_split(directory, "test")
    if not len(labels):
        raise CnnlabError(f"{directory} holds no MNIST test digit; the test canvases are made of them")
    pool = (images, labels, torch.arange(len(labels)) + TEST_ID_OFFSET)
    return _test_canvases(pool, count, canvas_size, digits_per_canvas, seed)


def canvases_digest(canvases: DigitCanvases) -> str:
    """SHA-256 of the canvases' pixels and masks: a run records its test canvases' so that those made again from
    another MNIST (or given from Python) are told apart."""
    digest = hashlib.sha256()
    for tensor in (canvases.images, canvases.masks):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_segmentation_folder(
    images: torch.Tensor, masks: torch.Tensor, root: str | os.PathLike[str], class_names: list[str] | None = None
) -> Path:
    """Write images and RGB colour masks as a folder dataset (``images/``, ``masks/``, ``classes.json``)."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    if class_names is not None:
        names = list(class_names)
    else:
        num_classes = max(int(masks.max()) + 1, 2)
        names = CLASS_NAMES[:num_classes] if num_classes <= NUM_CLASSES else [f"class{i}" for i in range(num_classes)]
    colours = class_colours(len(names))
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        array = image.numpy().transpose(1, 2, 0)
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(root / "images" / f"{i:05d}.png")
        Image.fromarray(colours[mask.numpy().astype(np.int64)]).save(root / "masks" / f"{i:05d}.png")
    classes = [{"name": n, "color": [int(c) for c in colour]} for n, colour in zip(names, colours, strict=True)]
    (root / "classes.json").write_text(json.dumps(classes, indent=1))
    return root


def _check_distinct(classes_file: Path, names: list[str], colours: list[tuple[int, ...]]) -> None:
    """Refuse two classes of one name or one colour (a shared colour's pixels all went to the last class listing it)."""
    repeated = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if repeated is not None:
        raise CnnlabError(f"{classes_file} lists the class name {repeated!r} twice; give each class its own name")
    first: dict[tuple[int, ...], str] = {}
    for name, colour in zip(names, colours, strict=False):  # no colours: class-index masks
        if colour in first:
            raise CnnlabError(
                f"{classes_file} gives classes {first[colour]!r} and {name!r} the same colour {colour}; give each "
                "class its own colour"
            )
        first[colour] = name


def downscaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is `max_side`, the aspect ratio kept (each side at least 1 px);
    as it is when it already fits or `max_side` is None."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def downscale(image: PIL.Image.Image, max_side: int | None) -> PIL.Image.Image:
    """`image` with its longer side at most `max_side` (`downscaled_size`), by PIL's bilinear filter, which widens
    with the reduction so that every source pixel counts (antialiased); as it is when it fits."""
    return _resized(image, downscaled_size(*image.size, max_side))


def downscale_mask(labels: np.ndarray, max_side: int | None) -> np.ndarray:
    """A label map [H, W] at `downscale`'s size for its image, by nearest neighbour (class indices and `IGNORE_INDEX`
    stay exact): the mask `SegmentationFolder` reads with `max_side`; as it is when it fits."""
    width, height = downscaled_size(labels.shape[1], labels.shape[0], max_side)
    return labels if (height, width) == labels.shape else _nearest(labels, width, height)


def _resized(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """`image` at `size` by `downscale`'s filter; as it is when it has that size."""
    from PIL import Image

    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


def _nearest(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """A label map [H, W] resized to `height` x `width` by nearest neighbour: each pixel takes the label under its
    centre, so class indices and `IGNORE_INDEX` stay exact (an interpolated mask would invent classes at edges)."""
    rows = ((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64)
    columns = ((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64)
    return labels[rows[:, None], columns]


def _turned(path: Path, shown: tuple[int, int], mask_size: tuple[int, int]) -> str:
    """Why a mask of the image file's stored size does not fit the image as read, or "": its EXIF orientation (a mask
    drawn on the stored pixels was refused as "is 40x30 but its image is 30x40", sizes its files both had)."""
    from PIL import Image

    with Image.open(path) as opened:
        stored = opened.size
    if stored == shown or stored != mask_size:
        return ""
    return (
        f" as shown (stored {stored[0]}x{stored[1]}, turned by its EXIF orientation, as every cnnlab command reads "
        "images; turn the mask the same way)"
    )


def _low_bit_grey_scale(path: Path) -> int:
    """What Pillow multiplied the values of the PNG at `path` by to read them as 8-bit grey: 85 for a 2-bit grey PNG,
    17 for a 4-bit one (its sample values shown as grey levels, as the PNG standard says), else 1. A mask's stored
    values are its classes, as a bilevel PNG's 0 and 1 are read: 4-bit index masks (0, 1, 2) were read as classes 0,
    17 and 34, a head of 35 classes trained without a word."""
    try:
        with path.open("rb") as file:
            header = file.read(26)  # the signature and IHDR: width, height, bit depth, colour type
    except OSError:
        return 1
    if len(header) < 26 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR" or header[25] != 0:
        return 1
    return {2: 85, 4: 17}.get(header[24], 1)


class NestedImagesWarning(UserWarning):
    """A segmentation folder's images/ has sub-folders of images, which are not read: they are left out."""


class GreyIndexMaskWarning(UserWarning):
    """A grey 3-channel mask that the run's class colours do not map is read as class indices."""


def _may_be_copies(paths: list[Path]) -> set[Path]:
    """The files that may be byte-identical copies of one another: those that share their size and first
    `_HEAD_BYTES` bytes with another, and those whose size or first bytes cannot be read (their digest says why)."""
    sizes = {path: _size_or_none(path) for path in paths}
    shared_size = Counter(sizes.values())
    heads = {path: _head_or_none(path) for path, size in sizes.items() if size is not None and shared_size[size] > 1}
    shared_head = Counter((sizes[path], head) for path, head in heads.items())
    return {path for path, size in sizes.items() if size is None or heads.get(path, b"") is None} | {
        path for path, head in heads.items() if shared_head[sizes[path], head] > 1
    }


def _size_or_none(path: Path) -> int | None:
    """The file's size in bytes, or None when it cannot be read."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def _head_or_none(path: Path) -> bytes | None:
    """The file's first `_HEAD_BYTES` bytes, or None when it cannot be read."""
    try:
        with path.open("rb") as file:
            return file.read(_HEAD_BYTES)
    except OSError:
        return None


def _listed_folder(folder: Path) -> list[Path]:
    """`folder`'s entries, sorted; a `CnnlabError` naming it when it cannot be listed (no read permission: it was a
    PermissionError traceback)."""
    check_listable(folder)
    return sorted(folder.iterdir())


def _is_jpeg(name: str) -> bool:
    """Whether the file name `name` has a JPEG suffix."""
    return Path(name).suffix.lower() in (".jpg", ".jpeg", ".jpe", ".jfif")


def _near_miss(image: Path, mask_names: list[str]) -> str:
    """What in masks/ looks meant as `image`'s mask under another name, said in brackets, or "": a mask named after
    the image's whole file name (a.jpg.png, as some labelling tools save them), one in another format (a.tif, a.jpg:
    a lossy JPEG changes class indices at the edges) or one whose stem differs in capitals (A.png), each read as no
    mask at all without a word on why."""
    whole = next((name for name in mask_names if name.lower() == f"{image.name.lower()}.png"), None)
    if whole is not None:
        return f" ({whole} is there: a mask is named after the image's stem, {image.stem}.png; rename it)"
    other = next((name for name in mask_names if Path(name).stem == image.stem), None)
    if other is not None:
        # "PNG, a lossless format" said of a .tif suggested TIFF was lossy: only a JPEG's loss is named
        lossy = ", and a JPEG's lossy compression changes class indices at the edges" if _is_jpeg(other) else ""
        return f" ({other} is there: masks are read from PNG files only{lossy}; save it as {image.stem}.png)"
    # A.png for a.jpg: found on a case-insensitive file system (macOS, Windows), no mask on Linux
    cased = next((name for name in mask_names if name.lower() == f"{image.stem.lower()}.png"), None)
    if cased is not None:
        return f" ({cased} is there: a mask is named after its image's stem, capitals too, {image.stem}.png; rename it)"
    return ""


class UnreadableImage(CnnlabError):
    """A pair's image that does not decode: the message starts with the image's path, ``reason`` is the rest (a list
    of skipped images names the path once, beside the reason)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def _pair_remedy(reason: str, mask: Path) -> str:
    """`decode_image`'s `reason` for a pair's image: an image over Pillow's pixel guard downscaled alone no longer
    matches its mask ("masks must match their images"), so the remedy it names is the pair's."""
    if not reason.endswith(DOWNSCALE_REMEDY):
        return reason
    return (
        f"{reason.removesuffix(DOWNSCALE_REMEDY)}downscale it and its mask {mask.name} to one size first (the mask "
        "by nearest neighbour, so that its values stay classes)"
    )


def _mask_remedy(reason: str) -> str:
    """`decode_image`'s `reason` for a mask: one over Pillow's pixel guard was told "downscale it first", without a
    word that a mask takes nearest neighbour alone (any other filter blends two classes' values into one that is no
    class, or another class) nor that its image must be downscaled to the same size."""
    if not reason.endswith(DOWNSCALE_REMEDY):
        return reason
    return (
        f"{reason.removesuffix(DOWNSCALE_REMEDY)}downscale it and its image to one size first (the mask by nearest "
        "neighbour, so that its values stay classes)"
    )


class SegmentationFolder(Dataset):
    """Image + mask pairs from a folder: ``images/<stem>.<ext>`` and ``masks/<stem>.png``.

    Items are (float image [C, H, W] in [0, 1], int64 mask [H, W]); `read` gives the uint8 pair. With colours in
    ``classes.json``, RGB masks are mapped through them (an unknown colour is an error naming the file); without it, or
    with names only, masks must be single-channel PNGs of class indices (bilevel ones read as 0 and 1, 2- and 4-bit grey
    ones as their stored values, palette ones by their indices, their palettes compared: `PaletteColours`), below the
    number of names if given. `IGNORE_INDEX` stays as is in both. `digests` holds the `file_digest` of each image and
    mask file `read` decoded, by path, taken from the bytes decoded: a run records them (``split_digests.json``) without
    reading a file twice.

    Args:
        root: the dataset folder.
        grayscale: load images as one channel (else RGB).
        skip_bad: list an image without a mask, or one whose stem another image has (a.jpg, a.png: whose is a.png's
            mask?), in `skipped` instead of raising, and a byte-identical copy of an image already listed (kept once:
            a copy on each side of the split would score the model on a trained image);
            `read_all` then also lists the pairs that cannot be read (undecodable files, a mask of another size, an
            unknown colour or class).
        max_side: downscale each pair as it is read so that its longer side is at most this many pixels (the image
            by `downscale`'s filter, from the image decoded at full size, as `cnnlab predict` and `cnnlab explain` read
            it; the mask by nearest neighbour); smaller pairs and None: as they are.
        classes: the class names to read masks by when `root` has no ``classes.json`` (a trained run's record, for
            `cnnlab evaluate`), with `colours` (uint8 [classes, 3]) when the run read colour masks: colour masks are
            then mapped through them and single-channel masks read as class indices.
        colours: see `classes`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        grayscale: bool = False,
        skip_bad: bool = False,
        max_side: int | None = None,
        classes: Sequence[str] | None = None,
        colours: np.ndarray | None = None,
    ) -> None:
        self.root = Path(root)
        self.grayscale = grayscale
        self.max_side = max_side
        # what the masks are read by, as messages name it: the folder's classes.json, or the classes given
        self.classes_source = f"{self.root}/classes.json"
        self._given_colours = False  # colours from `colours`: a single-channel mask is then read as indices
        self._grey_said = False  # a grey 3-channel mask read as indices through the run's colours: said once
        self.skipped: list[SkippedFile] = []
        self.digests: dict[Path, bytes] = {}  # image or mask file -> the digest of the bytes `read` decoded
        self.palettes = PaletteColours()  # of the palette masks read as class indices: `check` them once all are read
        image_dir, mask_dir = self.root / "images", self.root / "masks"
        if not self.root.is_dir():
            raise CnnlabError(
                f"{self.root} {why_not_a_folder(self.root)}; pass a folder with images/ and masks/ subfolders"
            )
        if not image_dir.is_dir() or not mask_dir.is_dir():
            raise CnnlabError(f"{self.root} needs images/ and masks/ subfolders (same file stems, PNG masks)")
        # the extensions every other command reads (a .webp with its mask was left out unsaid); hidden files (macOS's
        # ._name.png) are not images
        entries = _listed_folder(image_dir)
        candidates = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
        nested = [  # images/<folder>/ is not read: its images were left out without a word
            p.name
            for p in entries
            if p.is_dir()
            and not p.name.startswith(".")
            and any(f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") for f in p.rglob("*"))
        ]
        not_read = (
            f"its sub-folder(s) {', '.join(nested[:3])}{' ...' if len(nested) > 3 else ''} hold images, but only "
            f"images directly in {image_dir} are read (masks/<stem>.png beside them)"
        )
        if not candidates:
            why = f"; {not_read}" if nested else ""
            raise CnnlabError(f"{image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}){why}")
        if nested:
            warnings.warn(f"{image_dir}: {not_read}; they are left out", NestedImagesWarning, stacklevel=2)
        self.images: list[Path] = []
        self.masks: list[Path] = []
        # a kept image -> its byte-identical copies set aside, with their masks: one stands in if the first's pair
        # cannot be read (both were lost: the copy as a copy, the first for its mask)
        self._copies: dict[Path, list[tuple[Path, Path, SkippedFile]]] = {}
        first: dict[bytes, Path] = {}  # image digest -> its first file: a copy on both sides of the split would leak
        # a.PNG is the mask of a.* too (capitals from a camera or Windows: only a case-insensitive file system found
        # it); with a.png beside it, the image has two masks (a.png was read, a.PNG never said), and is left out
        mask_entries = _listed_folder(mask_dir)
        masks = {p.stem: p for p in mask_entries if p.suffix.lower() == ".png"}
        mask_stems = Counter(p.stem for p in mask_entries if p.suffix.lower() == ".png" and p.is_file())
        mask_names = [p.name for p in mask_entries if not p.name.startswith(".")]
        stems = Counter(image.stem for image in candidates)
        # only these are hashed here (read whole, their bytes kept for `read`'s decode); the others are read by it
        hashed = _may_be_copies(candidates) if skip_bad else set()
        self._read_ahead: dict[Path, bytes] = {}  # an image's bytes read to hash it, until `read` decodes them
        self._read_ahead_room = _READ_AHEAD_BYTES
        for image in candidates:
            mask = masks.get(image.stem, mask_dir / f"{image.stem}.png")
            if mask.is_file() and stems[image.stem] > 1:  # a.jpg and a.png: both were trained on a.png's mask
                others = ", ".join(p.name for p in candidates if p.stem == image.stem and p != image)
                why = f"{others} in {image_dir} has the same stem, so {mask} may be the mask of either; rename one"
                if not skip_bad:
                    raise CnnlabError(f"{image}: {why}")
                self.skipped.append(SkippedFile(str(image), "", why))
            elif mask_stems[image.stem] > 1:
                both = " and ".join(p.name for p in mask_entries if p.stem == image.stem and p.suffix.lower() == ".png")
                why = f"{mask_dir} holds {both}, two masks for it; remove the wrong one"
                if not skip_bad:
                    raise CnnlabError(f"{image}: {why}")
                self.skipped.append(SkippedFile(str(image), "", why))
            elif (
                mask.is_file()
                and skip_bad
                and image in hashed
                and (digest := self._hash_ahead(image)) is not None
                and (seen := first.setdefault(digest, image)) != image
            ):
                self._read_ahead.pop(image, None)  # a copy set aside is decoded only if the first pair cannot be read
                self.skipped.append(SkippedFile(str(image), "", f"a byte-identical copy of {seen}; the first is kept"))
                self._copies.setdefault(seen, []).append((image, mask, self.skipped[-1]))
            elif mask.is_file():
                self.images.append(image)
                self.masks.append(mask)
            elif skip_bad:
                self.skipped.append(SkippedFile(str(image), "", f"no mask {mask}{_near_miss(image, mask_names)}"))
            else:
                raise CnnlabError(
                    f"{image} has no mask {mask}{_near_miss(image, mask_names)}; every image needs a PNG mask with "
                    "the same stem"
                )
        if not self.images:
            hint = _near_miss(candidates[0], mask_names)
            raise CnnlabError(
                f"no image in {image_dir} has a mask in {mask_dir} (masks/<image stem>.png; for "
                f"{candidates[0].name}, {candidates[0].stem}.png{hint})"
            )
        classes_file = self.root / "classes.json"
        self.class_names: list[str] | None = None
        self.colours: np.ndarray | None = None
        if classes_file.is_file():
            try:
                # utf-8-sig: Windows Notepad's byte-order mark was refused as "Unexpected UTF-8 BOM", the list unread
                classes = json.loads(classes_file.read_text(encoding="utf-8-sig"))
                self.class_names = [str(c["name"]) for c in classes]
                coloured = ["color" in c for c in classes]
                if all(coloured):
                    for c in classes:  # [256, 0, 0] matched no pixel, and three [r, g] pairs read as two colours
                        if len(c["color"]) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in c["color"]):
                            raise ValueError(f"{c['name']!r} has color {c['color']}, not three integers 0-255")
                    self.colours = np.array([c["color"] for c in classes], dtype=np.int64).reshape(-1, 3)
            except UnicodeDecodeError as error:  # a Latin-1 "café": "must be a list of ..." sent users to its shape
                raise CnnlabError(
                    f"{classes_file} is not UTF-8 text (byte {error.start}); save it as UTF-8 (JSON's encoding)"
                ) from None
            except OSError as error:
                raise CnnlabError(f"cannot read {classes_file}: {error.strerror or error}") from None
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise CnnlabError(
                    f"{classes_file} must be a list of {{'name': str, 'color': [r, g, b]}}, the colours left out "
                    f"for class-index masks ({error})"
                ) from None
            if any(coloured) and not all(coloured):
                uncoloured = self.class_names[coloured.index(False)]
                raise CnnlabError(
                    f"{classes_file} gives a colour to some classes but not to {uncoloured!r}; give every class a "
                    "colour (colour masks) or none (class-index masks)"
                )
            if not 2 <= len(self.class_names) < IGNORE_INDEX:
                raise CnnlabError(f"{classes_file} lists {len(self.class_names)} classes; use 2 to {IGNORE_INDEX - 1}")
            colours = [] if self.colours is None else [tuple(colour) for colour in self.colours.tolist()]
            _check_distinct(classes_file, self.class_names, colours)
        elif classes is not None:
            self.class_names = list(classes)
            self.colours = None if colours is None else np.asarray(colours, dtype=np.int64).reshape(-1, 3)
            self._given_colours = colours is not None
            self.classes_source = f"the run's record ({self.root} has no classes.json)"

    def __len__(self) -> int:
        return len(self.images)

    def _hash_ahead(self, image: Path) -> bytes | None:
        """`image`'s `file_digest`, its bytes kept for `read` to decode while `_READ_AHEAD_BYTES` allows (an image
        hashed as a possible copy was read twice: hashed here, decoded there); None when it cannot be read (a link to
        no file, as git-annex leaves one whose content was not fetched, stopped the scan with a traceback): `read`
        then says why."""
        try:
            data = image.read_bytes()
        except OSError:
            return None
        if len(data) <= self._read_ahead_room:
            self._read_ahead[image] = data
            self._read_ahead_room -= len(data)
        return bytes_digest(data)

    def decoded_bytes(self, max_side: int | None = None) -> int:
        """The memory `read_all` holds when the pairs are read downscaled to `max_side` (None: at full size): each
        pair's image and mask as uint8, C + 1 bytes a pixel, at the size the file headers give (read without
        decoding a pixel); a file whose header cannot be read counts nothing, as `read_all` skips it."""
        from PIL import Image

        channels = 1 if self.grayscale else 3
        total = 0
        for path in self.images:
            try:
                with Image.open(path) as opened:
                    width, height = downscaled_size(*opened.size, max_side)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                continue
            total += height * width * (channels + 1)
        return total

    def _read_mask(self, path: Path) -> np.ndarray:
        """The mask's class indices, uint8 [H, W] (`IGNORE_INDEX` kept), decoded once."""
        # a broken PNG raises SyntaxError and a huge one DecompressionBombError, not OSError: decode_image says why
        mask_image, _, reason, digest = decode_image_and_digest(path)
        if reason is not None:
            raise CnnlabError(f"{path} cannot be read as a mask ({_mask_remedy(reason)})")
        assert digest is not None
        self.digests[path] = digest
        assert mask_image is not None
        if mask_image.format in ("JPEG", "MPO"):  # JPEG data under a .png name: read, it invented classes at the edges
            raise CnnlabError(
                f"{path} holds a JPEG image, whose lossy compression changes class indices and colours at the edges "
                "of every region; save the mask as a real PNG from its source"
            )
        single_channel = mask_image.mode in _INDEX_MODES
        if self.colours is None or (single_channel and self._given_colours):
            return self._class_indices(path, mask_image)
        # a palette mask's index 255 is unlabelled, whatever colour its palette gives it (Pascal VOC's (224, 224, 192)),
        # unless classes.json lists that colour: every VOC-style mask was skipped for an "unknown colour"
        palette_ignored = np.asarray(mask_image) == IGNORE_INDEX if mask_image.mode == "P" else None
        if mask_image.mode == "P" and "transparency" in mask_image.info:
            # a palette's transparent indices (tRNS) are alpha, as an RGBA mask's: read by their hidden colours, they
            # were trained as classes that do not show, and Pillow warned per mask, naming none, as it dropped them
            mask_image = mask_image.convert("RGBA")
        alpha = mask_image.getchannel("A").getextrema() if mask_image.mode in ("RGBA", "LA") else (255, 255)
        # pixels that show no colour: read by the colour they hide (an eraser's leftovers, white in some editors)
        transparent = np.asarray(mask_image.getchannel("A")) == 0 if alpha[0] == 0 else None
        rgb = np.asarray(mask_image.convert("RGB"))
        mask_image.close()
        # 24-bit colour keys: int32, not int64 (a 12 MP mask's keys took 96 MB, its RGB as int64 288 MB more)
        keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        del rgb
        colour_keys = (self.colours[:, 0] << 16) | (self.colours[:, 1] << 8) | self.colours[:, 2]
        # every 24-bit colour -> its class, IGNORE_INDEX where none (no class has that index: fewer are allowed), then
        # one lookup per pixel: np.unique over the pixels sorted all of them (0.5 s for 12 MP)
        table = np.full(1 << 24, IGNORE_INDEX, dtype=np.uint8)
        possible = ((self.colours >= 0) & (self.colours <= 255)).all(1)  # a colour out of 0..255 is no pixel's
        table[colour_keys[possible]] = np.arange(len(colour_keys))[possible]
        out = table[keys]
        unmatched = out == IGNORE_INDEX
        if palette_ignored is not None:
            unmatched &= ~palette_ignored
        if unmatched.any() and self._given_colours and not single_channel and alpha == (255, 255):
            grey = keys & 255
            if (keys == grey * 0x010101).all():  # R = G = B: an index mask saved with three channels, read as one
                return self._grey_indices(path, grey.astype(np.uint8))
        if unmatched.any():
            unknown = np.unique(keys[unmatched])
            if single_channel:  # read as the grey (v, v, v): most likely a class index, not a colour
                raise CnnlabError(
                    f"{path} is a single-channel mask (value {int(unknown[0]) & 255}) but {self.classes_source} "
                    "lists colours, so masks must be colour PNGs of them; for class-index masks list the names only "
                    '([{"name": "background"}, ...])'
                )
            colour = ((int(unknown[0]) >> 16) & 255, (int(unknown[0]) >> 8) & 255, int(unknown[0]) & 255)
            if transparent is not None and transparent[unmatched].all():  # white under them: not a colour to add
                raise CnnlabError(
                    f"{path} hides colour {colour}, which {self.classes_source} does not list, under transparent "
                    f"pixels (alpha 0); {_FLATTEN}"
                )
            raise CnnlabError(f"{path} has colour {colour}, which {self.classes_source} does not list")
        if transparent is not None and len(hidden_values := np.unique(out[transparent])) > 1:
            names = self.class_names or []
            read_as = listed(
                [repr(names[v]) if v < len(names) else f"{IGNORE_INDEX} (unlabelled)" for v in hidden_values.tolist()],
                5,
            )
            raise CnnlabError(
                f"{path} has transparent pixels (alpha 0) whose hidden colours read as the classes {read_as}, which "
                f"do not show; {_FLATTEN}"
            )
        return out

    def _grey_indices(self, path: Path, grey: np.ndarray) -> np.ndarray:
        """A grey mask (R = G = B) that the run's colours do not map, read through the run's record: as class indices
        where its levels are, said once (OpenCV's imwrite of a 3-channel index array was skipped as "has colour
        (1, 1, 1)"), else refused saying what it would take."""
        from PIL import Image

        classes = len(self.colours) if self.colours is not None else 0
        levels = np.unique(grey)
        if ((levels < classes) | (levels == IGNORE_INDEX)).all():
            if not self._grey_said:
                self._grey_said = True
                warnings.warn(
                    f"{path} and other grey masks (R = G = B) are read as class indices 0 to {classes - 1}, not as "
                    f"the run's class colours ({self.root} has no classes.json to say which they are)",
                    GreyIndexMaskWarning,
                    stacklevel=2,
                )
            return self._class_indices(path, Image.fromarray(grey, mode="L"))
        level = int(levels[(levels >= classes) & (levels != IGNORE_INDEX)][0])
        raise CnnlabError(
            f"{path} is a grey mask whose level {level} is neither a colour of {self.classes_source} nor a class "
            f"index (0 to {classes - 1}, {IGNORE_INDEX} unlabelled); save masks in the run's class colours, or as "
            "class indices"
        )

    def _class_indices(self, path: Path, mask_image: PIL.Image.Image) -> np.ndarray:
        """A class-index mask (a bilevel one reads as 0 and 1), its indices checked against the classes. An opaque grey
        RGB, RGBA or LA mask (every pixel's channels equal) holds its indices as grey levels: an index mask saved with
        three channels (OpenCV's imwrite of a 3-channel array, an editor's RGB export) was refused as a colour mask."""
        if mask_image.mode in ("RGB", "RGBA", "LA"):
            from PIL import Image

            channels = np.asarray(mask_image)
            colour_count = 1 if mask_image.mode == "LA" else 3
            grey, alpha = channels[..., :colour_count], channels[..., colour_count:]
            if (grey == grey[..., :1]).all() and (alpha == 255).all():
                mask_image = Image.fromarray(np.ascontiguousarray(grey[..., 0]), mode="L")
        if mask_image.mode not in (*_INDEX_MODES, "P"):
            missing = "is missing; add it" if self.class_names is None else "lists no colours; give every class one"
            if self.class_names is not None and not self.classes_source.endswith("/classes.json"):
                missing = "lists no colours (it read class-index masks); add a classes.json giving each class one"
            raise CnnlabError(
                f"{path} is an {mask_image.mode} mask but {self.classes_source} {missing} to map colours to "
                "classes, or save masks as single-channel class-index PNGs"
            )
        labels = np.asarray(mask_image)  # uint8 ("L", "P"), bool ("1"), or wider ("I;16", "I") until checked
        if mask_image.mode == "L" and labels.max(initial=0) >= 17 and not (labels % 17).any():  # 17: 255 / 15
            labels = labels // _low_bit_grey_scale(path)
        limit = IGNORE_INDEX if self.class_names is None else len(self.class_names)
        too_large = labels[(labels >= limit) & (labels != IGNORE_INDEX)]
        if too_large.size and self.class_names is not None:
            raise CnnlabError(
                f"{path} has class index {int(too_large[0])} but {self.classes_source} lists {limit} classes "
                f"(0 to {limit - 1}; {IGNORE_INDEX} means unlabelled)"
            )
        if too_large.size:
            raise CnnlabError(
                f"{path} has class index {int(too_large[0])}; indices must be below {IGNORE_INDEX}, which means "
                "unlabelled"
            )
        if mask_image.mode == "P":
            self.palettes.add(path, mask_image.getpalette() or [], labels)
        return labels.astype(np.uint8)

    def image_bytes(self, index: int) -> bytes | None:
        """Image `index`'s bytes, for a caller that digests them before `read` decodes them (``read(index, data)``: the
        file read once; `cnnlab evaluate --exclude-trained` read each image it scored twice): those the scan kept, else
        read now; None when the file cannot be read (`read` says why)."""
        path = self.images[index]
        if (held := self._read_ahead.pop(path, None)) is not None:
            return held
        try:
            return path.read_bytes()
        except OSError:
            return None

    def read(self, index: int, image_bytes: bytes | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair as uint8 tensors: image [C, H, W] (0..255), mask [H, W] (class indices, `IGNORE_INDEX`), downscaled
        to `max_side`; `image_bytes`: the image file's bytes where the caller has them (`image_bytes`), else read.

        Raises:
            CnnlabError: naming the file, when the image or mask cannot be decoded, the mask's size differs from the
                image's, or the mask holds a colour or index that is not a class.
        """
        path = self.images[index]
        # each file decoded once (a 12 MP photo took 1.3 s and over 1 GB decoded twice), at full size and then
        # downscaled: a JPEG decoded at a reduced scale (PIL's draft) differed from what predict, explain and an
        # export's record feed the model by up to 16 grey levels
        held = self._read_ahead.pop(path, None)
        decoded, stored, reason, digest = decode_image_and_digest(path, held if image_bytes is None else image_bytes)
        if reason is not None:
            raise UnreadableImage(path, _pair_remedy(reason, self.masks[index]))
        assert decoded is not None and digest is not None
        self.digests[path] = digest
        width, height = stored[::-1] if turned_by_exif(decoded) else stored  # the full size, as shown
        image = to_rgb(decoded)
        decoded.close()
        mask = self._read_mask(self.masks[index])
        if mask.shape != (height, width):
            turned = _turned(path, (width, height), (mask.shape[1], mask.shape[0]))
            raise CnnlabError(
                f"{self.masks[index]} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{width}x{height}{turned}; masks must match their images"
            )
        image, mask = downscale(image, self.max_side), downscale_mask(mask, self.max_side)
        array = np.asarray(image.convert("L") if self.grayscale else image, dtype=np.uint8)
        tensor = torch.from_numpy(array[None].copy() if array.ndim == 2 else array.transpose(2, 0, 1).copy())
        return tensor, torch.from_numpy(mask)

    def read_all(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Every readable pair by index (`read`); the others are added to `skipped` with the reason.

        Raises:
            CnnlabError: when the masks read label no pixel, or only pixels of one class: a model trained on them
                learns that class and scores a perfect 1.0 on every metric; when palette masks disagree on the colour
                of an index (`PaletteColours`).
        """
        pairs = {}
        for index in range(len(self)):
            try:
                pairs[index] = self.read(index)
            except CnnlabError as error:
                self.skip_unreadable(index, error)
                if (copy := self._read_copy(index)) is not None:
                    pairs[index] = copy
        self.palettes.check(self.root / "classes.json")
        if pairs:
            self._check_two_classes({index: mask for index, (_, mask) in pairs.items()})
        return pairs

    def skip_unreadable(self, index: int, error: CnnlabError) -> None:
        """List pair `index` in `skipped` with the reason `read` refused it for: the image's path once, as the entry's
        path (a mask's reason names the mask)."""
        reason = error.reason if isinstance(error, UnreadableImage) else str(error)
        self.skipped.append(SkippedFile(str(self.images[index]), "", reason))

    def _read_copy(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The pair of the first byte-identical copy of image `index` that reads, which then takes its place (and
        leaves `skipped`); None when no copy does."""
        image, mask = self.images[index], self.masks[index]
        for copy, copy_mask, entry in self._copies.get(image, []):
            self.images[index], self.masks[index] = copy, copy_mask
            try:
                pair = self.read(index)
            except CnnlabError:
                continue
            self.skipped.remove(entry)
            return pair
        self.images[index], self.masks[index] = image, mask
        return None

    def _check_two_classes(self, masks: dict[int, torch.Tensor]) -> None:
        """Refuse masks that hold fewer than two classes (`check_mask_classes`), or some of them saved 0/255 among
        masks of class indices (`ForegroundAs255`)."""
        mixed = ForegroundAs255()
        counts = torch.zeros(256, dtype=torch.int64)
        for index, mask in masks.items():
            counts += (mask_counts := torch.bincount(mask.flatten().long(), minlength=256))
            mixed.add(self.masks[index], mask_counts)
        check_mask_classes(counts, self.root, self.class_names, "a model would learn one class")
        mixed.check("their objects would be left out of training")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.read(index)
        return image.float() / 255.0, mask.long()


def check_mask_classes(
    counts: torch.Tensor, root: Path, class_names: list[str] | None, consequence: str, one_class: bool = False
) -> None:
    """Refuse masks whose pixels (`counts`: int [256], per value) hold fewer than two classes, naming the likely
    cause: binary masks saved as 0/255, whose foreground is then unlabelled (they trained on background alone and
    reported mIoU 0, every class 1.0; `evaluate` scored the background alone, every score 1.0). `consequence` says
    what would follow ("a model would learn one class"); `one_class`: masks of one class with no unlabelled pixel
    pass (images of the background alone, scored)."""
    present = counts[:IGNORE_INDEX].nonzero().flatten().tolist()
    unlabelled = float(counts[IGNORE_INDEX] / counts.sum())
    foreground_hint = f"if {IGNORE_INDEX} marks the foreground, save it as 1 ({IGNORE_INDEX} means unlabelled)"
    if not present:
        raise CnnlabError(f"every pixel of the masks in {root} is {IGNORE_INDEX} (unlabelled); {foreground_hint}")
    if len(present) > 1 or (one_class and unlabelled == 0):
        return
    only = f"class {present[0]}" + (f" ({class_names[present[0]]!r})" if class_names else "")
    if unlabelled > 0:
        raise CnnlabError(
            f"the masks in {root} label every pixel {only} except {unlabelled:.1%} that are {IGNORE_INDEX} "
            f"(unlabelled), so {consequence}; {foreground_hint}"
        )
    raise CnnlabError(
        f"every pixel of the masks in {root} is {only}, so {consequence}; masks need at least two classes"
    )


class EdgeOnlyValues:
    """The class values of masks added one at a time (by index) that look invented at edges, each with the index of
    the first mask holding it: values found only in thin fringes where other values meet, as a JPEG's compression or
    a smooth (bilinear) resize of a mask invents them at every edge (a 0/255 mask so resized trained a head of 208
    classes, its object unlabelled). Such a value has no pixel inside a region (its 4 neighbours of its own value),
    and most of its pixels either lie between two other values (the values left and right of it, or above and below,
    differ from each other and from it) or touch no pixel of their own value (a speck). A genuine class of lines 1-2
    px wide (digit strokes, cracks, wires) has no region either, but its pixels run on in its own value with one
    class either side (`_line_pixels`), so it is not named; nor is a value with any region. It is said, not refused:
    a class drawn thinner than a few pixels at the masks' size can look the same. One mask at a time: `cnnlab
    evaluate` holds no folder's masks."""

    def __init__(self) -> None:
        self.interior = torch.zeros(256, dtype=torch.bool)
        self.pixels = torch.zeros(256, dtype=torch.int64)
        self.line_pixels = torch.zeros(256, dtype=torch.int64)  # of `_line_pixels`
        self.first: dict[int, int] = {}

    def add(self, index: int, labels: torch.Tensor) -> None:
        """Count the uint8 mask [H, W] `labels`, the folder's mask number `index`."""
        counts = torch.bincount(labels.flatten(), minlength=256)
        for value in counts.nonzero().flatten().tolist():
            self.first.setdefault(value, index)  # uint8 and bincount: torch.unique sorted a 12 MP mask (1.4 s; 0.1 s)
        self.pixels += counts
        inner = labels[1:-1, 1:-1]
        same = (inner == labels[:-2, 1:-1]) & (inner == labels[2:, 1:-1])
        same &= (inner == labels[1:-1, :-2]) & (inner == labels[1:-1, 2:])
        self.interior |= torch.bincount(inner[same], minlength=256) > 0
        if (counts.bool() & ~self.interior).any():  # else every value here has a region: its lines cannot matter
            self.line_pixels += torch.bincount(labels[_line_pixels(labels)], minlength=256)

    def values(self) -> dict[int, int]:
        """Each edge-only value -> the index of the first mask holding it, by value."""
        return {
            value: index
            for value, index in sorted(self.first.items())
            if value != IGNORE_INDEX and not self.interior[value] and 2 * self.line_pixels[value] < self.pixels[value]
        }


def _line_pixels(labels: torch.Tensor) -> torch.Tensor:
    """Where the mask [H, W] `labels` draws lines: pixels with a pixel of their own value among their 8 neighbours
    that do not lie between two other values (left and right of them, or above and below, two values that differ
    from each other and from theirs). A stroke 1-2 px wide has the same class on both sides, or itself on one; a
    fringe a smooth resize leaves runs between the two regions whose edge it smooths."""
    height, width = labels.shape
    padded = torch.nn.functional.pad(labels.to(torch.int16)[None], (1, 1, 1, 1), value=-1)[0]  # -1: off the mask

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    centre = shifted(0, 0)
    linked = torch.zeros(height, width, dtype=torch.bool)
    for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        linked |= shifted(dy, dx) == centre
    between = torch.zeros(height, width, dtype=torch.bool)
    for before, after in ((shifted(0, -1), shifted(0, 1)), (shifted(-1, 0), shifted(1, 0))):
        between |= (before != after) & (before != centre) & (after != centre) & (before >= 0) & (after >= 0)
    return linked & ~between


class ForegroundAs255:
    """Masks saved 0/255 (their object 255, which means unlabelled) among masks of class indices: added one at a
    time, refused by `check` (as `check_mask_classes` refuses a folder of them alone) when some mask's only value
    other than 0 is 255 and others hold classes 1 and up without 255. A folder that uses 255 for unlabelled pixels
    beside its classes (scribbles, Pascal VOC's void bands) passes: there a mask of background and 255 is a mask.
    The refusal names each such mask (up to `NAMED`) and the share of 255 in the first, which tells an object (a
    blob) from a scribble of unlabelled pixels, and says what to do in either case."""

    NAMED = 5  # masks of 0 and 255 named in the refusal beside the first (then "and N more")

    def __init__(self) -> None:
        self.binary: list[tuple[Path, float]] = []  # the masks of 0 and 255 alone, each with its share of 255
        self.indexed: Path | None = None  # the first mask of classes 1 and up without 255
        self.unlabelled_beside_classes = False  # some mask has classes 1 and up and 255: 255 means unlabelled here

    def add(self, path: Path, counts: torch.Tensor) -> None:
        """Count the mask at `path` by its pixels per value (`counts`: int [256])."""
        classes, unlabelled = bool(counts[1:IGNORE_INDEX].any()), bool(counts[IGNORE_INDEX])
        if unlabelled and not classes:
            self.binary.append((path, float(counts[IGNORE_INDEX] / counts.sum())))
        elif classes and not unlabelled:
            self.indexed = self.indexed or path
        elif classes:
            self.unlabelled_beside_classes = True

    def check(self, consequence: str) -> None:
        """Refuse, in one line naming the masks of 0 and 255 and one of classes, masks saved 0/255 among masks of
        class indices; `consequence` says what would follow ("their objects would be left out of training")."""
        if not self.binary or self.indexed is None or self.unlabelled_beside_classes:
            return
        (first, share), others = self.binary[0], [path.name for path, _ in self.binary[1:]]
        also = f", as do {listed(others, self.NAMED)}," if others else ""
        raise CnnlabError(
            f"{first} holds only 0 and {IGNORE_INDEX} ({IGNORE_INDEX} on {share:.1%} of its pixels){also} while other "
            f"masks ({self.indexed.name}) hold class indices 1 and up and no {IGNORE_INDEX}: {IGNORE_INDEX} means "
            f"unlabelled, so {consequence}; if {IGNORE_INDEX} marks the object there, save it as its class index (1 "
            f"for one object class); if it marks pixels left unlabelled (a scribble), label the object's pixels in "
            "that mask too, or leave the pair out"
        )


class PaletteColours:
    """The colour each palette mask read as class indices (as Pascal VOC's are) paints each of its indices, added a
    mask at a time. `add` refuses a mask whose grey palette paints an index in the grey level of another of its
    indices (indices 0, 1, 2 painted grey 2, 1, 0: an index mask re-saved with a palette built from its pixels, by
    Pillow's quantize or pngquant, read with classes 0 and 2 swapped, without a word); `check` refuses masks whose
    palettes paint one colour as two indices (each mask saved with a palette in its own order: one class read as
    another from mask to mask)."""

    def __init__(self) -> None:
        self.index_of: dict[tuple[int, ...], tuple[int, Path]] = {}  # colour -> its index, in the first mask using it
        self.conflict: str | None = None  # the first disagreement, in words

    def add(self, path: Path, palette: list[int], labels: np.ndarray) -> None:
        """Count the palette mask at `path` (its `palette`, flat RGB, as Pillow's getpalette gives it) read as the
        class indices `labels` (uint8 [H, W]).

        Raises:
            CnnlabError: when its grey palette paints an index in the grey level of another of its indices.
        """
        used = [i for i in np.bincount(labels.ravel(), minlength=256).nonzero()[0].tolist() if i != IGNORE_INDEX]
        colours = {i: tuple(palette[3 * i : 3 * i + 3]) for i in used}  # () for an index past the palette's end
        self._compare(path, colours)  # before a refusal: the masks after it are compared with its palette too
        greys = {i: colour[0] for i, colour in colours.items() if len(colour) == 3 and len(set(colour)) == 1}
        if len(greys) == len(used) and any(greys[i] != i and greys[i] in greys for i in used):
            painted = ", ".join(f"{i} grey {grey}" for i, grey in greys.items())
            raise CnnlabError(
                f"{path} is a palette PNG that paints its indices in grey levels that are other indices of it "
                f"({painted}); masks are read by their indices (as Pascal VOC's are), not by the grey levels they "
                "show; if the grey levels are the classes (an index mask re-saved with a palette, as pngquant or "
                "Pillow's quantize save them), save it as a single-channel PNG of them"
            )

    def _compare(self, path: Path, colours: dict[int, tuple[int, ...]]) -> None:
        """Note the first colour that the mask at `path` paints as another index than an earlier mask did (one index
        in two colours is no disagreement: two tools' palettes, or a binary one, can paint one class differently)."""
        if self.conflict is not None or len(set(colours.values())) < len(colours):  # a dummy palette: no colour code
            return
        for index, colour in colours.items():
            first_index, first_path = self.index_of.setdefault(colour, (index, path))
            if first_index != index:
                self.conflict = f"{first_path} paints {colour} as class index {first_index} but {path} as {index}"
                return

    def check(self, classes_file: Path, run_classes: Sequence[str] | None = None) -> None:
        """Refuse, in one line naming two masks, palettes that paint one colour as two indices (`conflict`).

        Args:
            run_classes: the classes of the run the masks score (`cnnlab evaluate`), which a classes.json there must
                name: told to list the colours under "background", a user was then refused for names not the run's.
        """
        if self.conflict is None:
            return
        first = json.dumps(run_classes[0] if run_classes else "background")
        named = f", under the run's class names ({listed(list(run_classes), 6)})" if run_classes else ""
        raise CnnlabError(
            f"{self.conflict}: palette masks are read by their indices (as Pascal VOC's are), so one class would be "
            "read as another from mask to mask (each saved with a palette in its own order, as pngquant or Pillow's "
            f"quantize save them); list each class's colour in {classes_file}{named} "
            f'([{{"name": {first}, "color": [0, 0, 0]}}, ...]) to read the masks by colour, or save them as '
            "single-channel PNGs of class indices"
        )


def edge_only_values(masks: dict[int, torch.Tensor]) -> dict[int, int]:
    """`EdgeOnlyValues` of `masks` (by index): the values found only in thin fringes, each with its first mask."""
    found = EdgeOnlyValues()
    for index, labels in masks.items():
        found.add(index, labels)
    return found.values()


class SegmentationSamples(Dataset):
    """Decoded uint8 pairs held in memory, optionally passed through a joint transform.

    Items are (uint8 image [C, H, W], uint8 mask [H, W]); batches are converted on the device.

    Args:
        pairs: (image, mask) uint8 tensors, as `SegmentationFolder.read` gives them.
        transform: a torchvision v2 transform called as ``transform(tv_tensors.Image, tv_tensors.Mask)``.
    """

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], transform: v2.Transform | None = None) -> None:
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.pairs[index]
        if self.transform is None:
            return image, mask
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


class SegmentationInput:
    """The batch transform of folder segmentation: uint8 images -> float in [0, 1], minus `mean`, over `std` (the
    encoder weights' record, or 0 and 1); uint8 masks -> int64. Runs on the device, per batch."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float().div_(255.0) - mean) / std, masks.long()


def joint_train_transform(crop_size: int, hflip: bool = False) -> v2.Compose:
    """Random `crop_size` crops (smaller images padded: image with 0, mask with `IGNORE_INDEX`), optionally flipped
    left-right; image and mask get the same geometry (torchvision v2 with `tv_tensors.Mask`)."""
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
    steps: list[v2.Transform] = [v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack pairs of different sizes: each padded on the bottom and right to the batch's largest height and width
    (image with 0, mask with `IGNORE_INDEX`, so the padding counts in no loss or metric)."""
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], height, width, dtype=batch[0][0].dtype)
    masks = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=batch[0][1].dtype)
    for i, (image, mask) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
        masks[i, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks


def same_size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """The indices of `sizes` ((height, width) of each pair) in order, cut into batches of at most `batch_size`
    neighbours of one size: for a `DataLoader`'s ``batch_sampler``. A whole-image batch then needs no padding but the
    network's own to its stride, so each image is segmented as `cnnlab predict` and `cnnlab evaluate` segment it
    alone; padded with black to a larger image's size in its batch, the pixels near its bottom and right edges were
    segmented from that padding (a mixed-size test set's scores then differed from predict's masks on the same
    images)."""
    batches: list[list[int]] = []
    for index, size in enumerate(sizes):
        if batches and len(batches[-1]) < batch_size and sizes[batches[-1][0]] == size:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches
