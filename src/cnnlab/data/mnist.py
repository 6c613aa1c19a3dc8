"""MNIST from the original IDX files, read by our own validating parser into in-memory tensors.

Layout accepted under the data root (the first one that exists wins): ``<root>/MNIST/raw/`` (torchvision's),
``<root>/mnist/`` and ``<root>/`` itself, holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (optionally ``.gz``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from cnnlab.data.paths import data_dir_source, resolve_data_dir
from cnnlab.errors import CnnlabError

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_SUBDIRS = ("MNIST/raw", "mnist", "")


@dataclass
class MnistSplits:
    """MNIST as uint8 tensors: images [N, 1, 28, 28] in 0..255, labels [N] int64.

    `train` and `val` are a seeded partition of the 60k training set; `test` is the 10k test set. `source_sha256`
    identifies the training set they were cut from (`training_set_digest`; None when not read by `load_mnist`): the
    same split of other images holds out other digits, so a run records it beside its validation size.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source_sha256: str | None = None


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def read_idx(path: str | os.PathLike[str], expected_magic: int) -> np.ndarray:
    """Parse one IDX file (big-endian header: magic, then one uint32 per dimension, then uint8 data).

    Raises:
        CnnlabError: on a wrong magic number or a file shorter/longer than its header says.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise CnnlabError(f"{path} is truncated ({len(raw)} bytes, not even an IDX header); re-download MNIST")
    magic = int.from_bytes(raw[0:4], "big")
    if magic != expected_magic:
        raise CnnlabError(
            f"{path} has IDX magic number {magic:#010x}, expected {expected_magic:#010x}; "
            "the file is corrupt or not the MNIST file of that name: re-download it"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CnnlabError(f"{path} is truncated ({len(raw)} bytes, header needs {header}); re-download MNIST")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise CnnlabError(f"{path} is {state}: {len(raw)} bytes, header {shape} needs {expected}; re-download MNIST")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_mnist_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding the four MNIST IDX files.

    Raises:
        CnnlabError: saying where it looked and how to point at the data.
    """
    root = resolve_data_dir(data_dir)
    candidates = [root / sub if sub else root for sub in _SUBDIRS]
    for candidate in candidates:
        name = _FILES["train"][0]
        if (candidate / name).is_file() or (candidate / f"{name}.gz").is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise CnnlabError(
        f"MNIST IDX files not found under {root} (from {data_dir_source(data_dir)}; looked in {looked}); "
        f"pass --data-dir DIR or set $CNNLAB_DATA to a directory holding MNIST/raw/train-images-idx3-ubyte"
    )


def _load_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_name, labels_name, count = _FILES[split]
    paths = []
    for name in (images_name, labels_name):
        plain, gz = directory / name, directory / f"{name}.gz"
        if not plain.is_file() and not gz.is_file():
            raise CnnlabError(f"{plain} is missing (the other MNIST files are in {directory}); re-download MNIST")
        paths.append(plain if plain.is_file() else gz)
    images = read_idx(paths[0], _IMAGES_MAGIC)
    labels = read_idx(paths[1], _LABELS_MAGIC)
    # The official files hold `count` images; smaller but consistent files (subsets, test fixtures) are accepted.
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise CnnlabError(
            f"MNIST {split} files in {directory} hold images {images.shape} and labels {labels.shape}, "
            f"expected ({count}, 28, 28) and ({count},); re-download MNIST"
        )
    if labels.max() > 9:
        raise CnnlabError(f"{paths[1]} holds label {int(labels.max())}; MNIST labels are 0..9: re-download it")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int = 5_000,
    seed: int = 0,
    val_option: str | None = None,
) -> MnistSplits:
    """Load MNIST and hold `val_size` training images out for validation (a seeded random split).

    Args:
        data_dir: the data root (see `cnnlab.data.paths.resolve_data_dir`).
        val_size: how many training images to hold out; 0 gives an empty validation set.
        seed: seed of the validation split.
        val_option: the option of the calling command that sets `val_size` ("--val-size"), named when the training
            set cannot hold it; None where the command holds out a fixed number (`experiment`, `answers`), which
            the user cannot change: the error then asks for the full MNIST.
    """
    directory = find_mnist_dir(data_dir)
    train_images, train_labels = _load_split(directory, "train")
    test_images, test_labels = _load_split(directory, "test")
    if not 0 <= val_size < len(train_labels):
        if val_option is None:  # `experiment` and `answers` were told to pass a smaller --val-size, which they lack
            raise CnnlabError(
                f"{directory} holds {len(train_labels):,} MNIST training images, too few for the {val_size:,} this "
                "command holds out for validation (a fixed split); point --data-dir at the full MNIST (60,000 "
                "training images)"
            )
        raise CnnlabError(  # the default 5,000 on a smaller MNIST (a subset) said only "must be in [0, 1000)"
            f"{val_option} {val_size} must be below the {len(train_labels):,} MNIST training images in {directory} "
            f"(and at least 0); pass a smaller {val_option}"
        )
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))
    source = training_set_digest(train_images, train_labels)
    val_index, train_index = order[:val_size], order[val_size:]
    return MnistSplits(
        train_images=train_images[train_index],
        train_labels=train_labels[train_index],
        val_images=train_images[val_index],
        val_labels=train_labels[val_index],
        test_images=test_images,
        test_labels=test_labels,
        source_sha256=source,
    )


def read_training_set_digest(data_dir: str | os.PathLike[str] | None = None) -> str:
    """`training_set_digest` of the MNIST training set under `data_dir` (as `load_mnist` records it), read without
    the test set or a split: what a finished run read back compares with the digest it recorded."""
    return training_set_digest(*_load_split(find_mnist_dir(data_dir), "train"))


def load_test_set(data_dir: str | os.PathLike[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST test set under `data_dir` (uint8 images [N, 1, 28, 28], labels [N]), as `load_mnist` reads it, read
    without the training set: what a finished run read back draws its misclassified digits from again."""
    return _load_split(find_mnist_dir(data_dir), "test")


def training_set_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """The SHA-256 of a training set's images and labels as read (the same for plain and ``.gz`` files), in order: the
    images a seeded split holds out depend on both. About 0.1 s for MNIST's 60,000."""
    digest = hashlib.sha256(memoryview(images.contiguous().numpy()).cast("B"))
    digest.update(memoryview(labels.contiguous().numpy()).cast("B"))
    return digest.hexdigest()


MNIST_CLASSES = [str(digit) for digit in range(10)]
# `mnist_preprocess`'s numbers, which `mnist_preparation_record` writes beside an export
INVERT_ABOVE_MEAN = 0.5  # `cnnlab fcn scan`'s polarity (its images hold many digits), and the blank check's below
INK_ABOVE = 0.2  # a pixel brighter than this (inverted, stretched) is ink: the bounding box's and the blank checks'
PAPER_MADS = 3  # the paper's level: its border pixels' median + this many robust deviations (grain, shading) ...
INK_PERCENTILE = 99  # ... is stretched to 0, and this percentile of the ink pixels (its darkest strokes) to 1
MAD_TO_SIGMA = 1.4826  # the median absolute deviation times this estimates a normal distribution's sigma
TABLE_BORDER = 0.95  # a border this much of one Otsu class is a table around a page (`paper_and_ink`) when ...
TABLE_PAPER = 0.45  # ... the other class holds this share of the image at least (MNIST's digits: 0.33 at most)
FLATTEN_BELOW = 2 / 3  # light paper whose light (`flattened_light`) falls below this share of its brightest is ...
FLATTEN_SHARE = 0.3  # ... flattened; one digit's light is a closing this share of the photo's shorter side square
INK_BOX = 20  # the ink's bounding box is scaled to fit a square of this side ...
CANVAS = 28  # ... on a black canvas of this side, its centre of mass at CANVAS / 2


def otsu_level(levels: np.ndarray) -> int:
    """Otsu's threshold of 8-bit grey levels: the level t for which splitting the pixels into those at or below t and
    those above it maximises the between-class variance w0 * w1 * (mu0 - mu1) ** 2 (the first such t on a tie)."""
    counts = np.bincount(levels.ravel(), minlength=256).astype(np.float64)
    below = np.cumsum(counts)[:-1]  # pixels at or below t, for t = 0..254
    above = counts.sum() - below
    level_sum_below = np.cumsum(counts * np.arange(256))[:-1]
    level_sum_above = float((counts * np.arange(256)).sum()) - level_sum_below
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty class: no split there (NaN, never the maximum)
        between = below * above * (level_sum_below / below - level_sum_above / above) ** 2
    return int(np.argmax(np.nan_to_num(between, nan=-1.0)))


def _border(values: np.ndarray) -> np.ndarray:
    """An image's `values` on its outermost rows and columns (each pixel once): where the paper shows."""
    if min(values.shape) <= 2:
        return values.ravel()
    return np.concatenate([values[0], values[-1], values[1:-1, 0], values[1:-1, -1]])


class PaperAndInk(NamedTuple):
    """Where the paper and the ink of a picture of digits lie (`paper_and_ink`), in grey [0, 1] after the inversion
    that `paper_is_light` calls for (dark ink on light paper)."""

    paper_is_light: bool
    paper_median: float  # the median of the paper pixels on the border (on a table: of all the paper's pixels)
    paper_spread: float  # their robust standard deviation (1.4826 median absolute deviations): grain, noise, shading
    ink_level: float  # the `INK_PERCENTILE`th percentile of the ink pixels: the darkest strokes
    surroundings: np.ndarray | None = None  # bool [H, W]: the table around a page (`paper_and_ink`), else None

    def paper_level(self, mads: float = PAPER_MADS) -> float:
        """The paper's median + `mads` robust deviations: what `fitted_ink` stretches to 0 (with `PAPER_MADS`)."""
        return float(self.paper_median + mads * self.paper_spread)


def _touching_border(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` joined to the image's border through `mask` (4-connected)."""
    from scipy import ndimage

    regions, _ = ndimage.label(mask)  # 4-connectivity: scipy's default structure
    on_border = np.unique(_border(regions))
    return np.isin(regions, on_border[on_border > 0])


def flattened_light(levels: np.ndarray, size: int) -> np.ndarray | None:
    """8-bit grey `levels` of light paper with its uneven light divided out, or None where the light is even enough.

    The paper's light is a grey closing `size` px square (scipy.ndimage.grey_closing: dark strokes narrower than it
    removed, a shadow's edge kept) of the levels padded with their edge, so that a shadow which meets the photo's
    border at a slant keeps its corner (closed unpadded, or reflected, its corner was lit: a dark wedge was left
    there, read as ink on a blank page); the levels are median-filtered (3 px) first, so that one noisy corner pixel,
    which the padding spreads over a square of its own, is not taken for a shadow (it flattened 4 of 300 evenly lit
    photos on 0.5 paper); when its darkest is under `FLATTEN_BELOW` of its brightest, each pixel is scaled by the
    light's brightest over the light there, so the paper lies at its best-lit level and the ink keeps its contrast with
    the paper round it (the light's median left a page mostly in shadow at the shadow's level, where ink on 0.5 paper
    stood out by less than `INK_ABOVE` and was refused) (`cnnlab fcn scan`, 41 px: a page of MNIST-sized digits; one
    digit, `fitted_ink`: `FLATTEN_SHARE` of its photo's shorter side). Evenly lit paper is told cheaply
    (`_lit_evenly`), its closing skipped and its median filter taken without scipy's: a 12 MP photo was
    prepared 5x slower."""
    from scipy import ndimage

    median = _median_filter3(levels)
    if size % 2 and _lit_evenly(median, size):
        return None
    margin = size // 2
    padded = np.pad(median, margin, mode="edge")
    light = ndimage.grey_closing(padded, size=(size, size), mode="nearest")[margin:-margin, margin:-margin]
    if int(light.min()) >= FLATTEN_BELOW * int(light.max()):
        return None
    scale = float(light.max()) / np.maximum(light, 1).astype(np.float64)
    return np.clip(np.rint(levels * scale), 0, 255).astype(np.uint8)


def _median_filter3(levels: np.ndarray) -> np.ndarray:
    """scipy.ndimage.median_filter(levels, size=3, mode="nearest") of 2-D uint8 `levels`, the same bytes 20x faster
    (0.08 s against scipy's 1.7 s on a 12 MP photo, one thread): each row's three neighbours sorted, the median of
    nine is the median of the lows' maximum, the middles' median and the highs' minimum (min/max alone: exact on any
    levels once exact on the 512 of 0 and 1)."""
    padded = np.pad(levels, 1, mode="edge")
    left, centre, right = padded[:, :-2], padded[:, 1:-1], padded[:, 2:]
    low, high = np.minimum(left, centre), np.maximum(left, centre)
    middle = np.maximum(low, np.minimum(high, right))
    low, high = np.minimum(low, right), np.maximum(high, right)
    lows = np.maximum(np.maximum(low[:-2], low[1:-1]), low[2:])
    highs = np.minimum(np.minimum(high[:-2], high[1:-1]), high[2:])
    middles = _median3(middle[:-2], middle[1:-1], middle[2:])
    return _median3(lows, middles, highs)


def _median3(first: np.ndarray, second: np.ndarray, third: np.ndarray) -> np.ndarray:
    """The elementwise median of three arrays."""
    return np.maximum(np.minimum(first, second), np.minimum(np.maximum(first, second), third))


def _lit_evenly(median: np.ndarray, size: int) -> bool:
    """Whether `flattened_light`'s light of the median-filtered levels `median` (odd `size`) cannot fall below
    `FLATTEN_BELOW` of its brightest, told without its closing (0.01 s against 0.33 s on a 12 MP photo).

    A closing is at least the levels it closes and at most their brightest, so the light's brightest is
    `median.max()`. Its darkest is the least, over the squares `size` px side centred on the padded levels, of their
    brightest (a dilation then an erosion); read back in the levels' own rows, each square spans, along each axis,
    the first or the last row (column), or `size` rows clear of both, so it holds one of these blocks: the corner
    pixels, the edges cut into runs of `size // 2 + 1` pixels, the inside into squares of that side (the last ones
    shorter). The least of the blocks' brightest thus bounds the light's darkest from below; when that is not under
    `FLATTEN_BELOW` of the brightest, nothing would be flattened (an evenly lit photo; otherwise the closing is
    taken)."""
    step = size // 2 + 1
    blocks = median
    for axis in (0, 1):
        length = median.shape[axis]
        starts = sorted({0, *range(1, length - 1, step), length - 1})
        blocks = np.maximum.reduceat(blocks, starts, axis=axis)
    return int(blocks.min()) >= FLATTEN_BELOW * int(median.max())


def flatten_step(size: str) -> str:
    """`flattened_paper_and_ink` as the export records give it, `size` saying how its square's side s is chosen."""
    return (
        "when no table was found and either the paper is light (the pixels > t) or, read as dark, median(b) is "
        "above 0 and scipy.ndimage.grey_opening(levels, size=(s, s)).max() > t (light too wide for strokes: a "
        f"shadow over most of the border), {size}: light = scipy.ndimage.grey_closing(numpy.pad("
        "scipy.ndimage.median_filter(levels, size=3, mode='nearest'), s // 2, mode='edge'), size=(s, s), "
        "mode='nearest') of the uint8 levels, cut back to the levels' own rows and columns ([s // 2 : s // 2 + h, "
        "s // 2 : s // 2 + w]); when light.min() < flatten_below * light.max(), levels = uint8(clip(rint(levels * "
        "(light.max() / maximum(light, 1))), 0, 255)) in float64, grey = levels / 255 (float32), and "
        "threshold, paper, paper_level and ink_level are taken again on these levels"
    )


def paper_and_ink(levels: np.ndarray) -> PaperAndInk:
    """Tell the paper of a picture of digits from its ink, as `fitted_ink` and `cnnlab fcn scan`
    (`cnnlab.fcn.scan.scan_tensor`) do before stretching the paper to 0 and the ink to 1.

    Ink and paper are told apart by Otsu's threshold of the 8-bit `levels`; the paper is the class that holds the
    median of the image's border (light paper: dark ink, inverted). A page photographed on a table is the exception:
    when at least `TABLE_BORDER` (95%) of the border lies in one class and the other class holds at least
    `TABLE_PAPER` (45%) of the image, the border is the table and the other class the paper: its pixels give the
    paper's level, and the border's class joined to the border (4-connected) is returned as `surroundings`, neither
    paper nor ink (before, a light page on a dark table was read as dark paper with the page as its ink). MNIST's
    digits, light on black with a 4 px margin, hold 33% of their image at most; a bold digit cropped to within a
    pixel or two of its ink may hold more, and is then read as a page on a table. `levels` must hold two levels at
    least (an image of one level has no ink class)."""
    threshold = otsu_level(levels)
    border = _border(levels)
    border_is_light = float(np.median(border)) > threshold  # the class that holds most of the border
    light = levels > threshold
    border_class = light if border_is_light else ~light
    if _border(border_class).mean() >= TABLE_BORDER and (~border_class).mean() >= TABLE_PAPER:  # a page on a table
        surroundings = _touching_border(border_class)
        paper_is_light = not border_is_light
        ink = border_class & ~surroundings
        paper = levels[~border_class].astype(np.float32) / 255.0
    else:
        surroundings = None
        paper_is_light = border_is_light
        ink = ~border_class
        paper = border[border > threshold if paper_is_light else border <= threshold].astype(np.float32) / 255.0
    ink_grey = levels[ink].astype(np.float32) / 255.0
    if paper_is_light:
        paper, ink_grey = 1.0 - paper, 1.0 - ink_grey
    median = np.median(paper)
    spread = np.median(np.abs(paper - median)) * MAD_TO_SIGMA
    ink_level = float(np.percentile(ink_grey, INK_PERCENTILE)) if ink_grey.size else float(median)  # a blank page
    return PaperAndInk(paper_is_light, median, spread, ink_level, surroundings)


def flattened_paper_and_ink(levels: np.ndarray, size: int) -> tuple[np.ndarray, PaperAndInk]:
    """`paper_and_ink` of 8-bit grey `levels`, taken again on `flattened_light(levels, size)` where the paper is light
    (no table round it; or read as dark with light wider than strokes, `_lit_beyond_strokes`: a shadow over most of
    the border) and lit unevenly: those levels (else `levels` itself) and their paper and ink."""
    found = paper_and_ink(levels)
    if found.surroundings is not None or not (found.paper_is_light or _lit_beyond_strokes(levels, size, found)):
        return levels, found
    flat = flattened_light(levels, size)
    return (levels, found) if flat is None else (flat, paper_and_ink(flat))


def _lit_beyond_strokes(levels: np.ndarray, size: int, found: PaperAndInk) -> bool:
    """Whether grey paper read as dark (its border's median at or below Otsu's threshold) has light too wide for
    strokes: a square `size` px side of it (a grey opening of the levels above the threshold), as light paper has
    where a shadow covers most of its border. Light on exact black (the paper's median 0: MNIST's digits, the
    canvases) is never so."""
    from scipy import ndimage

    if found.paper_median <= 0.0:
        return False
    opened = ndimage.grey_opening(levels, size=(size, size))
    return int(opened.max()) > otsu_level(levels)


def fitted_ink(image: Any) -> np.ndarray:
    """The ink of a picture of one digit as `mnist_preprocess` places it: light on black, the paper at 0 and the ink at
    1, its bounding box cut out and scaled to fit 20x20 (antialiased, floats in [0, 1]).

    Ink and paper are told apart by Otsu's threshold; the paper is the class that holds the median of the image's
    border (a table round a photographed page goes to 0: `paper_and_ink`), so dark ink on light paper is inverted
    whatever the paper's grey. The paper's level (its border pixels'
    median + 3 robust standard deviations: grain, noise and gentle shading) is stretched to 0 and the ink's (the 99th
    percentile of its pixels) to 1, as MNIST's digits are light strokes on exact black. Before, a mean above 0.5
    inverted and nothing was stretched: a digit on grey paper (0.7) kept its paper as a 0.3 grey frame that filled
    the canvas (28% of MNIST test digits photographed so were read right), and on darker paper (0.5) its ink was
    taken for the paper (13%).

    Raises:
        CnnlabError: no ink at all (a blank image), one shade alone (a blank page photographed grey), or nothing
            that stands out from the paper's grain, noise or shading.
    """
    from PIL import Image

    levels = np.asarray(image.convert("L"), dtype=np.uint8)
    grey = levels.astype(np.float32) / 255.0
    inverted = 1.0 - grey if grey.mean() > INVERT_ABOVE_MEAN else grey
    if not (inverted > INK_ABOVE).any():  # a blank page was classified (a "1" at 73%), and so was light ink on a
        raise CnnlabError(  # transparent background
            "no digit found: no pixel stands out from the background (a blank image, or light ink on a transparent "
            "background, which is composited on white; save the digit dark on light or light on dark)"
        )
    # a photographed blank page (grey 0.7) was classified, a "1" at 49%, as was a single pixel (a digit on such a page
    # stands out, and is classified)
    if float(grey.max() - grey.min()) <= INK_ABOVE:
        raise CnnlabError(
            f"no digit found: the image is one shade of grey (within {INK_ABOVE:g}), nothing stands out from it (a "
            "blank page photographed grey, an image of one colour, or a single pixel); photograph the digit on its page"
        )
    # a shadow or a lamp's fall across the page is divided out first
    flat, found = flattened_paper_and_ink(levels, max(3, round(min(levels.shape) * FLATTEN_SHARE)) | 1)
    if flat is not levels:
        grey = flat.astype(np.float32) / 255.0
    paper_is_light, ink_level = found.paper_is_light, found.ink_level
    paper_level = found.paper_level()
    if paper_is_light:  # dark ink on light paper: MNIST's digits are the opposite
        grey = 1.0 - grey
    if ink_level - paper_level <= INK_ABOVE:
        raise CnnlabError(
            f"no digit found: nothing stands out from the paper by more than {INK_ABOVE:g} (the darkest strokes by "
            f"{max(ink_level - paper_level, 0.0):.2f}: a blank page's grain, noise or shading); photograph the digit "
            "on its page, dark on light or light on dark"
        )
    grey = np.clip((grey - paper_level) / (ink_level - paper_level), 0.0, 1.0).astype(np.float32)
    if found.surroundings is not None:  # the table around the page goes to the paper's black
        grey[found.surroundings] = 0.0
    rows, cols = np.nonzero(grey > INK_ABOVE)
    grey = grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = grey.shape
    ratio = INK_BOX / max(height, width)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    return np.clip(np.asarray(Image.fromarray(grey).resize(size, Image.BILINEAR), np.float32), 0.0, 1.0)


def mnist_preprocess(image: Any) -> torch.Tensor:
    """A PIL image -> [1, 28, 28] float in [0, 1], light digit on black, fitted in 20x20 and placed as MNIST's are.

    What an MNIST model expects of a photo or scan of one handwritten digit: dark ink on light paper is inverted
    (whatever the paper's grey) and stretched, paper to 0 and ink to 1 (`fitted_ink`), the ink's bounding box is
    scaled to fit 20x20 pixels (antialiased, in floats) and pasted on a 28x28 black canvas with its centre of mass at
    pixel (14, 14), which is where MNIST put every digit's (LeCun et al.: "centered in a 28x28 image by computing the
    center of mass of the pixels"; the test set's mean is (13.99, 14.00)). Centring the bounding box instead moved a
    "7" or a "4" two pixels off where the network saw such digits: the MNIST test digits themselves, saved as PNG and
    prepared that way, lost 3 points of accuracy (96.1% against 99.1%, benchmarks/mnist_png_preparation.py).

    Raises:
        CnnlabError: no ink at all (a blank image), one shade alone (a blank page photographed grey), or nothing
            above the paper's grain or shading, rather than a confident class for an empty canvas.
    """
    small = fitted_ink(image)
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    top, left = (CANVAS - small.shape[0]) // 2, (CANVAS - small.shape[1]) // 2
    if (mass := float(small.sum())) > 0:  # a digit thinner than a pixel can vanish in the resize
        row_index, col_index = np.indices(small.shape)
        top = round(CANVAS / 2 - float((row_index * small).sum()) / mass)
        left = round(CANVAS / 2 - float((col_index * small).sum()) / mass)
        # within the canvas: a digit whose ink is all on one side keeps its 20x20 box whole
        top, left = min(max(top, 0), CANVAS - small.shape[0]), min(max(left, 0), CANVAS - small.shape[1])
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    return torch.from_numpy(canvas).unsqueeze(0)


def paper_and_ink_record() -> dict[str, Any]:
    """`paper_and_ink` step by step, as the export records of MNIST's digit classifier, digit scanner and canvas
    segmenter give it (`grey`: the image's grey float32 / 255, before any inversion)."""
    return {
        "threshold": "t = Otsu's threshold of the 8-bit grey levels (Image.convert('L') as uint8): the t in 0..254 "
        "maximising w0 * w1 * (mu0 - mu1) ** 2, w0 and mu0 the count and mean level of the pixels <= t, w1 and mu1 "
        "those of the pixels > t (the first t on a tie; a t with an empty class is never chosen)",
        "paper": "the border is the outermost rows and columns (each pixel once; all pixels when a side is 2 or less); "
        "its class is the pixels > t when the median of its levels is above t, else the pixels <= t. When at least "
        "table_border of the border's pixels are of its class and the other class holds at least table_paper of the "
        "image, the page lies on a table: the table is the pixels of the border's class 4-connected to the border "
        "through that class (scipy.ndimage.label's default structure), the ink the border's class's other pixels and "
        "the paper the other class. Otherwise the paper is the border's class and the ink the other class. When the "
        "paper is the pixels > t, grey = 1 - grey",
        "table_border": TABLE_BORDER,
        "table_paper": TABLE_PAPER,
        "paper_level": "b = grey of the paper's pixels on the border (on a table: of all the paper's pixels); "
        "median(b) + paper_mads * 1.4826 * median(|b - median(b)|)",
        "paper_mads": PAPER_MADS,
        "ink_level": "numpy.percentile(grey of the ink pixels, ink_percentile) (linear interpolation); median(b) when "
        "there are none (a blank page on a table)",
        "ink_percentile": INK_PERCENTILE,
    }


def mnist_preparation_record() -> dict[str, Any]:
    """`mnist_preprocess` step by step, with its numbers, as `cnnlab export` writes it beside an MNIST model: enough
    to reproduce its input exactly without cnnlab (the prose "fit in 20x20, centre of mass at (14, 14)" left the
    inversion, the ink threshold, the filter and the rounding for a deployment to guess)."""
    return {
        "grey": "the decoded RGB image as PIL Image.convert('L') (L = R*299/1000 + G*587/1000 + B*114/1000), as "
        "float32 / 255",
        "invert_above_mean": INVERT_ABOVE_MEAN,  # refused when no pixel of grey (1 - grey if its mean is above it)...
        "ink_above": INK_ABOVE,  # ... is above this, or when grey.max() - grey.min() is at most this
        **paper_and_ink_record(),
        "flatten": flatten_step("s = max(3, round(min(h, w) * flatten_share)) | 1 (Python's round)"),
        "flatten_share": FLATTEN_SHARE,
        "flatten_below": FLATTEN_BELOW,
        "ink_level": "numpy.percentile(grey of the ink pixels, ink_percentile) (linear interpolation); median(b) when "
        "there are none (a blank page on a table); refused when ink_level - paper_level is at most ink_above",
        "stretch": "grey = clip((grey - paper_level) / (ink_level - paper_level), 0, 1) as float32, then 0 on the "
        "table",
        "crop": "grey cut to the bounding box of the pixels above ink_above (first to last row and column, inclusive)",
        "fit": INK_BOX,
        "fit_resize": f"PIL Image.fromarray(crop as float32, mode 'F').resize((max(1, round(w * {INK_BOX} / "
        f"max(h, w))), max(1, round(h * {INK_BOX} / max(h, w)))), Image.BILINEAR), then clipped to [0, 1]",
        "canvas": CANVAS,
        "place": f"the fitted h x w ink pasted on a {CANVAS}x{CANVAS} float32 canvas of zeros with its top-left at "
        f"row round({CANVAS // 2} - r) and column round({CANVAS // 2} - c), (r, c) the centre of mass of its values "
        f"(pixel indices from 0), each clamped to [0, {CANVAS} - h] and [0, {CANVAS} - w]; Python's round (half to "
        f"even); ink whose values sum to 0 goes at (({CANVAS} - h) // 2, ({CANVAS} - w) // 2)",
    }
