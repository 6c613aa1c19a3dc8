"""Labelled photo collections: an ImageFolder-style directory or a CSV of (path, label), checked before training.

Every file is opened and fully decoded once while scanning, so a zero-byte, non-image, truncated or corrupt file is
found up front, listed in `LabelledImages.skipped` with the reason, and left out, as is an image too thin for a
classifier to resize (`thin_image_reason`); the class counts reported (and checked against ``min_per_class``) are the
counts *after* skipping, so a bad file never changes the balance silently.
A byte-identical copy of an image already listed (a duplicated file, a link) is skipped the same way, so the split
can never put one copy in training and another in the test set; an image filed under two labels is left out in both
places, since one of the two labels is wrong and nothing says which.

`load_image` converts any mode PIL can read into 8-bit RGB the way a person would expect: EXIF orientation applied
(a damaged EXIF block read as none, as viewers do), 16-bit and 32-bit grayscale rescaled from their real range, CMYK
converted, palette and alpha images (and a PNG's transparent colour) composited on white, grayscale replicated to
three channels.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import struct
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

from cnnlab.errors import CnnlabError, first_line, listed, why_not_a_folder

__all__ = [
    "DECODING_VERSION",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "MAX_ASPECT_RATIO",
    "LabelledImages",
    "HiddenClassWarning",
    "LooseImagesWarning",
    "SimilarClassesWarning",
    "SkippedFile",
    "UnreadFormatWarning",
    "bytes_digest",
    "check_image",
    "check_listable",
    "decode_image",
    "decode_image_and_digest",
    "describe_skipped",
    "file_digest",
    "image_files",
    "load_image",
    "scan_csv",
    "scan_folder",
    "thin_image_reason",
    "to_rgb",
    "turned_by_exif",
    "with_remedy",
]

# The version of how `load_image` decodes a file, raised whenever some file decodes to other pixels, so that what was
# computed from decoded images and kept (the transfer feature cache, keyed on the files' names, sizes and times) is
# computed again, never read back as the old decoding while predict decodes the new way. 2: a PNG's transparent
# colour composited on white; 3: a float image stretched from its finite values' range; 4: a 16-bit grey PNG's
# transparent colour composited on white too (and left out of the range it is stretched from); 5: the transparent colour
# of a 16-bit RGB or a 2- or 4-bit grey PNG composited on white (`_key_as_decoded`).
DECODING_VERSION = 5

# the names photos are saved under that Pillow decodes: .jfif is how Windows saves a JPEG from the web, .avif a phone's
# or a browser's AVIF (a class's .jfif files were left out of training without a word)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif")
IMAGE_EXTENSIONS += (".ppm", ".pgm", ".pbm", ".pnm")
# photos Pillow does not decode on its own: an iPhone's HEIC and cameras' raw files (left out of a folder unsaid)
UNREAD_PHOTO_EXTENSIONS = (".heic", ".heif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2")


# A classifier resizes an image's shorter side to its input size (256 px for most weights) before its centre crop: a
# 1 x 100,000 px strip, which Pillow's guard lets through, became 256 x 25.6 M px (20 GB) first. A wide panorama is
# about 10:1; at 50:1 Inception-v3's 342 px makes 342 x 17,100 px, 18 MB.
MAX_ASPECT_RATIO = 50


class SimilarClassesWarning(UserWarning):
    """Two class names differ only in letter case, end spaces or Unicode form ('Cat' and 'cat'): two classes."""


class LooseImagesWarning(UserWarning):
    """A class folder holds images beside its class sub-folders, in no class: they are left out."""


class HiddenClassWarning(UserWarning):
    """A folder beside the class folders whose name starts with a dot holds images: it is not a class."""


class UnreadFormatWarning(UserWarning):
    """A folder holds photos in a format cnnlab does not read (HEIC, camera raw): they are left out."""


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of a dataset, and why."""

    path: str
    label: str
    reason: str


COPY_REASON = "a byte-identical copy of"  # how a skipped copy's reason starts (`describe_skipped` counts them apart)
NAMED_TWICE_REASON = "named twice"  # a file a manifest lists twice (counted apart as well)
MISSING_REASON = "no such file"  # a path that names no file (a CSV's row), counted apart from damaged files
CONFLICT_REASON = "the same image as"  # how the reason of an image filed under two labels starts
THIN_REASON = "too thin for a classifier"  # how the reason of an image over `MAX_ASPECT_RATIO` starts
DOWNSCALE_REMEDY = "downscale it first"  # how the reason of an image over Pillow's guard ends: it names its remedy
# what the reason of an image over Pillow's guard says, wherever it stands (a segmentation pair's names the pair's
# remedy after it, a mask's is inside "cannot be read as a mask (...)")
LARGE_REASON = "too many pixels to decode safely"


def with_remedy(reason: str, remedy: str) -> str:
    """`reason` (`decode_image`'s) followed by `remedy`, what the caller takes instead ("upload a PNG or JPEG photo"),
    unless the reason names its own: an image over Pillow's pixel guard is a readable photo, and "downscale it first;
    upload a PNG or JPEG photo" sent its user to convert a file that already was one."""
    return reason if reason.endswith(DOWNSCALE_REMEDY) else f"{reason}; {remedy}"


def describe_skipped(reasons: Sequence[str]) -> str:
    """How many files were skipped, the unreadable ones, the missing ones and the copies of kept images counted apart:
    "3 files skipped: 2 unreadable, 1 byte-identical copy of a kept image". A copy is a good image: "bad files" sent
    users looking for damage; a CSV row naming no file was "unreadable" too.
    """
    copies = sum(reason.startswith(COPY_REASON) for reason in reasons)
    missing = sum(reason == MISSING_REASON for reason in reasons)
    conflicts = sum(reason.startswith(CONFLICT_REASON) for reason in reasons)
    repeats = sum(reason.startswith(NAMED_TWICE_REASON) for reason in reasons)
    thin = sum(reason.startswith(THIN_REASON) for reason in reasons)
    # over Pillow's pixel guard: a readable photo, which "unreadable" sent users looking for damage; a segmentation
    # pair's reason ends with the pair's remedy instead of DOWNSCALE_REMEDY, and was counted unreadable still
    large = sum(LARGE_REASON in reason for reason in reasons)
    unreadable = len(reasons) - copies - missing - conflicts - repeats - thin - large
    kinds = [f"{unreadable} unreadable"] if unreadable else []
    kinds += [f"{thin} too thin"] if thin else []
    kinds += [f"{large} too large to decode"] if large else []
    kinds += [f"{missing} missing"] if missing else []
    kinds += [f"{repeats} named twice"] if repeats else []
    kinds += [f"{conflicts} filed under two labels"] if conflicts else []
    kinds += (
        [f"{copies} byte-identical cop{'y of a kept image' if copies == 1 else 'ies of kept images'}"] if copies else []
    )
    total = f"{len(reasons)} file{'' if len(reasons) == 1 else 's'} skipped"
    return f"{total}: {', '.join(kinds)}" if kinds else total


@dataclass
class LabelledImages:
    """A checked list of labelled image files.

    Attributes:
        paths: image files, as strings (absolute or as given).
        labels: class index of each file.
        classes: class names in index order.
        skipped: files that could not be used.
        source: where the list came from (folder, CSV or dataset name), for reports.
        digests: `file_digest` of each path whose bytes the scan read (none for a list made without reading them),
            so the split's digests (`cnnlab.data.split.write_split_digests`) cost no second read.
    """

    paths: list[str]
    labels: list[int]
    classes: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)
    source: str = ""
    digests: dict[str, bytes] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        """Usable images per class (after skipping bad files), in class order."""
        counts = Counter(self.labels)
        return {name: counts.get(index, 0) for index, name in enumerate(self.classes)}

    def check_min_per_class(self, min_per_class: int) -> None:
        """Raise a `CnnlabError` listing every class with fewer than ``min_per_class`` usable images."""
        counts = self.class_counts()
        short = {name: count for name, count in counts.items() if count < min_per_class}
        if short:
            skipped = f" ({describe_skipped([s.reason for s in self.skipped])})" if self.skipped else ""
            if not any(counts.values()):  # most likely not an image folder at all: say so, not 70 times "has 0"
                raise CnnlabError(
                    f"{self.source}: none of its {len(counts)} classes ({listed(list(counts), 8)}) has a usable "
                    f"image{skipped}; a class is a sub-folder of images ({', '.join(IMAGE_EXTENSIONS)}) or a label "
                    "in the CSV"
                )
            # a class folder of no image file at all (text files, HEIC only) was told to lower --min-per-class
            filed = {entry.label for entry in self.skipped}
            bare = [name for name, count in short.items() if count == 0 and name not in filed]
            if bare:
                one = len(bare) == 1
                raise CnnlabError(
                    f"{self.source}: {listed(bare, 8)} {'holds' if one else 'hold'} no image files (cnnlab reads "
                    f"{', '.join(IMAGE_EXTENSIONS)}); put the class's images in {'it' if one else 'each'}, or remove "
                    f"the folder{'' if one else 's'}"
                )
            shown = ", ".join(f"{name} has {count}" for name, count in list(short.items())[:8])
            more = f", and {len(short) - 8} more classes are short too" if len(short) > 8 else ""
            raise CnnlabError(
                f"{self.source}: {shown} usable images{skipped}{more}; at least {min_per_class} per class are needed "
                "(collect more images or lower --min-per-class)"
            )

    def subset(self, indices: Sequence[int]) -> LabelledImages:
        """The images at ``indices`` (same classes and digests, no skipped list)."""
        paths = [self.paths[i] for i in indices]
        digests = {path: self.digests[path] for path in paths if path in self.digests}
        return LabelledImages(paths, [self.labels[i] for i in indices], list(self.classes), [], self.source, digests)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit ("I;16*") and 32-bit ("I", "F") grayscale to "L", stretched from the image's real value range; a PNG's
    transparent colour (tRNS) white, as `to_rgb` composites an 8-bit one, and left out of that range."""
    array = np.asarray(image, dtype=np.float64)
    # a 16-bit grey PNG's transparent value kept its hidden grey (black mostly), where the 8-bit one's became white
    transparent = image.info.get("transparency")
    hidden = array == transparent if isinstance(transparent, int) else np.zeros(array.shape, dtype=bool)
    shown = array[~hidden] if hidden.any() and not hidden.all() else array
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
        if shown.max() <= 4095:  # 12-bit sensors stored in 16-bit containers
            low, high = float(shown.min()), float(shown.max())
    else:
        # a float image's NaN (a scan's or a map's "no data") and infinities made min and max NaN or infinite, and the
        # whole image black: the range is its finite values', NaN and -inf taken as its smallest, +inf as its largest
        finite = shown[np.isfinite(shown)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        array = np.nan_to_num(array, nan=low, posinf=high, neginf=low)
    scaled = (array - low) / max(high - low, 1e-12) * 255.0
    scaled[hidden] = 255.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image, EXIF orientation applied (see the module docstring for the modes).

    Raises:
        OSError: unreadable, truncated or corrupt file (PIL's `UnidentifiedImageError` is an OSError).
    """
    with _without_bomb_warning(), Image.open(path) as opened:
        _key_as_decoded(opened)
        opened.load()
        return to_rgb(opened)


# A PNG's transparent colour (tRNS) is stored in the file's bit depth, and Pillow decodes these depths to 8 bits but
# compares the stored key with the 8-bit pixels: a 16-bit RGB key was matched by its low byte (the pixels keep their
# high one) and a 2- or 4-bit grey key (1 of 0..3) by a level Pillow had scaled (85): the background stayed its hidden
# colour unless the key was black or, in 16 bits, a grey level times 257. Rescaled as the pixels are, per raw mode.
_KEY_SCALES: dict[str, Callable[[int], int]] = {
    "RGB;16B": lambda value: value >> 8,  # the high byte; a colour differing only in its low byte matches too
    "L;2": lambda value: value * 85,
    "L;4": lambda value: value * 17,
}


def _key_as_decoded(image: Image.Image) -> None:
    """Set an opened (not yet loaded) PNG's transparent colour to the value its pixels decode to (`_KEY_SCALES`)."""
    transparent = image.info.get("transparency")
    if image.format != "PNG" or transparent is None or isinstance(transparent, bytes) or len(image.tile) != 1:
        return
    scale = _KEY_SCALES.get(str(image.tile[0].args))
    if scale is not None:
        image.info["transparency"] = (
            tuple(scale(value) for value in transparent) if isinstance(transparent, tuple) else scale(transparent)
        )


@contextlib.contextmanager
def _without_bomb_warning() -> Iterator[None]:
    """Pillow's DecompressionBombWarning left out: an image of 90 to 179 MP (a 12000x9000 scan) decodes, and each
    decode printed two lines of Pillow's source ("could be decompression bomb DOS attack") that named no file, once
    in the scan and again in training, predict or evaluate. Over 179 MP Pillow's error stands, said with the file's
    name (`check_image`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as `load_image` gives it: a new 8-bit RGB image, EXIF orientation applied."""
    if (turn := _ORIENTATION_TURNS.get(_orientation(image))) is not None:
        image = image.transpose(turn)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit(image)
    elif mode == "P":
        image = _composite_on_white(image) if "transparency" in image.info else image.convert("RGB")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = _composite_on_white(image)
    elif mode in ("1", "L", "RGB") and "transparency" in image.info:
        # a transparent colour (PNG's tRNS), as PNG optimisers (oxipng, optipng) store a cut-out's all-or-nothing
        # alpha: its hidden colour, black mostly, was the background, where the same image as RGBA had white
        image = _composite_on_white(image)
    # CMYK (PIL's JPEG decoder already undoes Adobe's inverted CMYK), YCbCr, L, 1 and RGB: plain conversion.
    return image.convert("RGB")


def turned_by_exif(image: Image.Image) -> bool:
    """Whether `image`'s EXIF orientation swaps its width and height (`to_rgb` and `load_image` apply it)."""
    return _orientation(image) in (5, 6, 7, 8)


# The turn that shows an image upright, per EXIF orientation: ImageOps.exif_transpose's table. Applied here rather than
# through exif_transpose, which also rewrites the EXIF block it copies to the result: a photo whose other tags were
# damaged (a maker note, a string in a number's place) raised struct.error or TypeError there.
_ORIENTATION_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """`image`'s EXIF orientation (or XMP's, which Pillow reads into it), 1 (as stored) when it has none or it cannot
    be read: a PNG or WebP whose EXIF block is damaged decodes fully (`check_image` passed it) and then raised
    SyntaxError in `load_image`, a traceback in the middle of training or predict; a viewer shows it as stored."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error):
        return 1
    return orientation if isinstance(orientation, int) else 1


def thin_image_reason(width: int, height: int) -> str | None:
    """Why a ``width`` x ``height`` px image is too thin for a classifier (its shorter side resized to the input size,
    the longer one would be hundreds of times longer), or None when its aspect ratio is at most `MAX_ASPECT_RATIO`."""
    ratio = max(width, height) / max(min(width, height), 1)
    if ratio <= MAX_ASPECT_RATIO:
        return None
    return (
        f"{THIN_REASON}: {width}x{height} px, an aspect ratio of {ratio:,.0f}:1, over the {MAX_ASPECT_RATIO}:1 a "
        "classifier takes (it resizes the shorter side to its input size); crop the image to the part to classify"
    )


def check_image(path: str | os.PathLike[str], resized: bool = False) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it decodes fully.

    Args:
        resized: the image is for a classifier whose preprocessing resizes its shorter side to the input size, so an
            image too thin for that (`thin_image_reason`) is refused too.
    """
    return _read_checked(path, resized)[1]


def decode_image(path: str | os.PathLike[str]) -> tuple[Image.Image | None, tuple[int, int], str | None]:
    """``path`` decoded once, every pixel (truncated and corrupt data fail, as in `check_image`), in the mode and
    orientation it is stored in (`to_rgb` converts it as `load_image` does); the (width, height) the file stores; and
    why it cannot be used (the image None), or None.
    """
    data, reason = _read_bytes(path)
    if reason is not None:
        return None, (0, 0), reason
    return _decode(data)


def decode_image_and_digest(
    path: str | os.PathLike[str], data: bytes | None = None
) -> tuple[Image.Image | None, tuple[int, int], str | None, bytes | None]:
    """`decode_image`, and the `file_digest` of the bytes it decoded (None when none could be read): one read of the
    file gives both, for a caller that records what it decoded. `data`: the file's bytes where the caller has read
    them already (to digest them before it decodes), else (None or empty) they are read here."""
    if not data:
        data, reason = _read_bytes(path)
        if reason is not None:
            return None, (0, 0), reason, None
    return (*_decode(data), bytes_digest(data))


def _read_checked(path: str | os.PathLike[str], resized: bool = False) -> tuple[bytes, str | None]:
    """The file's bytes (read once) and why they cannot be used as an image (resized, with ``resized``), or None when
    they decode fully."""
    data, reason = _read_bytes(path)
    if reason is None:
        _, size, reason = _decode(data)
        if reason is None and resized:
            reason = thin_image_reason(*size)
    return data, reason


def _read_bytes(path: str | os.PathLike[str]) -> tuple[bytes, str | None]:
    """The file's bytes, and why they cannot be read (None when they can)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return b"", MISSING_REASON
    except IsADirectoryError:
        return b"", "a folder, not an image file"
    except OSError as error:
        return b"", f"unreadable ({error.strerror or error})"
    return data, None if data else "zero-byte file"


def _decode(data: bytes) -> tuple[Image.Image | None, tuple[int, int], str | None]:
    """`decode_image` of a file's bytes."""
    size = (0, 0)
    try:
        with _without_bomb_warning():
            image = Image.open(io.BytesIO(data))
            size = image.size
            _key_as_decoded(image)
            image.load()  # decodes every pixel: truncated and corrupt data fail here
    except UnidentifiedImageError:
        reason = "not an image PIL can read"
    except Image.DecompressionBombError:
        reason = (
            f"{LARGE_REASON} (more than {2 * Image.MAX_IMAGE_PIXELS:,}, Pillow's guard against "
            f"decompression bombs); {DOWNSCALE_REMEDY}"
        )
    except (OSError, SyntaxError, ValueError) as error:
        reason = f"corrupt or truncated ({first_line(error)})"
    else:
        return image, size, None
    return None, size, reason


def file_digest(path: str | os.PathLike[str]) -> bytes:
    """A digest of the file's bytes: equal for byte-identical copies (and links to one file)."""
    return bytes_digest(Path(path).read_bytes())


def bytes_digest(data: bytes) -> bytes:
    """`file_digest` of a file whose bytes are `data`."""
    return hashlib.blake2b(data, digest_size=16).digest()


def _collect(candidates: Sequence[tuple[str, str]], classes: Sequence[str], source: str, check: bool) -> LabelledImages:
    """The candidates that decode and are not too thin for a classifier (`thin_image_reason`), each image once: a
    later byte-identical copy (a duplicate file, a link) is skipped and listed, since one copy in training and another
    in the test set would score the model on an image it saw. A copy under another label leaves the image out
    altogether (both listed): it was trained under whichever label came first."""
    index = {name: i for i, name in enumerate(classes)}
    kept: dict[str, str] = {}  # path -> label, in order
    skipped = []
    first: dict[bytes, tuple[str, str]] = {}  # content digest -> (path, label) of its first occurrence
    digests: dict[str, bytes] = {}  # path -> content digest
    copies: list[tuple[int, str]] = []  # (position in skipped, the first file) of each copy under the same label
    for path, label in candidates:
        data, reason = _read_checked(path, resized=True) if check else (b"", None)
        if reason is None and check:
            digest = bytes_digest(data)  # the bytes just decoded: each file is read once
            digests.setdefault(path, digest)
            if digest in first:
                seen, seen_label = first[digest]
                if seen == path:  # one file named twice (a manifest's rows), not a copy of another file
                    reason = f"{NAMED_TWICE_REASON}; the first is kept"
                    if seen_label != label:  # trained under either label, it would be wrong under the other
                        kept.pop(seen, None)
                        reason = f"{NAMED_TWICE_REASON}, labelled {seen_label!r} and {label!r}; left out"
                elif seen_label == label:
                    reason = f"{COPY_REASON} {seen}; the first is kept"
                    copies.append((len(skipped), seen))
                else:
                    reason = f"{CONFLICT_REASON} {seen}, labelled {seen_label!r} there; both are left out"
                    if kept.pop(seen, None) is not None:
                        why = f"{CONFLICT_REASON} {path}, labelled {label!r} there; both are left out"
                        skipped.append(SkippedFile(seen, seen_label, why))
            else:
                first[digest] = (path, label)
        if reason is not None:
            skipped.append(SkippedFile(path, label, reason))
            continue
        kept[path] = label
    for position, seen in copies:  # "the first is kept" was said of a first later left out under two labels
        if seen not in kept:
            copy = skipped[position]
            why = f"{CONFLICT_REASON} {seen}, which is filed under two labels; every copy is left out"
            skipped[position] = SkippedFile(copy.path, copy.label, why)
    labels = [index[label] for label in kept.values()]
    return LabelledImages(
        list(kept), labels, list(classes), skipped, source, {path: digests[path] for path in kept if path in digests}
    )


def scan_folder(
    root: str | os.PathLike[str],
    min_per_class: int = 100,
    check: bool = True,
    known_classes: Sequence[str] | None = None,
) -> LabelledImages:
    """The images of an ImageFolder-style tree ``root/<class>/**/<image>``, classes sorted by name.

    Files whose extension is not an image extension are ignored (not counted as bad); hidden files and folders, the
    ``__MACOSX`` folder a zip made on a Mac unpacks and a Synology NAS's ``@eaDir`` thumbnails are ignored.
    A dot folder holding images (``.bird/``, not a tool's ``.git`` or ``.ipynb_checkpoints``) is noted (a warning).
    Image-named files that do not decode are skipped and listed.

    Args:
        root: the folder holding one sub-folder per class.
        min_per_class: the fewest usable images a class may have (0: no check).
        check: decode every file to find bad ones (turn off only for trusted, already-checked data).
        known_classes: the classes of a trained model, for scoring it on new images: the result's classes, in
            their order (labels index them); a folder of each is optional (one is enough), a folder of another
            name is refused before any image is decoded.

    Raises:
        CnnlabError: missing folder, fewer than two classes (with `known_classes`: none), a class below
            ``min_per_class``, or a class folder not in `known_classes`.
    """
    root = Path(root)
    if not root.is_dir():
        raise CnnlabError(
            f"{root} {why_not_a_folder(root)}; pass a folder with one sub-folder of images per class, or a CSV"
        )
    check_listable(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))
    _refuse_undecodable_names(root, classes)
    # a class folder linked from elsewhere (an unmounted drive, a moved folder) was left out, its class unsaid
    dangling = sorted(
        p.name
        for p in root.iterdir()
        if p.is_symlink() and not p.exists() and not (_is_hidden(p.name) or p.name.lower().endswith(IMAGE_EXTENSIONS))
    )
    if dangling:
        first = root / dangling[0]
        raise CnnlabError(
            f"{root}: {listed(dangling, 3)} {'is a link' if len(dangling) == 1 else 'are links'} to nothing ({first} "
            f"-> {os.readlink(first)}, which does not exist), so {'its' if len(dangling) == 1 else 'their'} images "
            "would be left out; restore what it links to (mount the drive), or remove the link"
        )
    if known_classes is not None:
        unknown = [name for name in classes if name not in known_classes]
        known = listed(list(known_classes), 10)
        if unknown:
            what = "is not a class" if len(unknown) == 1 else "are not classes"
            # "CAT" beside the model's "cat" was refused with no word on the case, the names looking alike
            renames = [
                f"{name} to {spelled[0]}" for name in unknown if len(spelled := _in_any_case(name, known_classes)) == 1
            ]
            rename = f"rename {listed(renames, 5)} (a class's name matches in its case too)" if renames else ""
            others = "name each sub-folder after the class of its images, or move the folder out"
            if renames and len(renames) < len(unknown):
                others = f"; {others.replace('each', 'each other')}"
            raise CnnlabError(
                f"{root}: {listed(unknown, 5)} {what} of the model (its classes: {known}); {rename}"
                f"{others if len(renames) < len(unknown) else ''}"
            )
        if not classes:
            raise CnnlabError(
                f"{root} has no class sub-folder; put each image in a sub-folder named after its class (the model's "
                f"classes: {known})"
            )
    elif len(classes) < 2:
        if not classes and (flat := _flat_folder_reason(root)):
            raise CnnlabError(flat)
        raise CnnlabError(
            f"{root} has {len(classes)} class sub-folder(s) ({', '.join(classes) or 'none'}); "
            "at least 2 are needed (root/<class name>/<images>)"
        )
    loose = sorted(
        p.name
        for p in root.iterdir()
        if p.is_file() and not _is_hidden(p.name) and p.name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if loose:  # images beside the class folders were left out without a word
        warnings.warn(
            f"{root}: {len(loose)} image file(s) directly in it, not in a class sub-folder ({listed(loose, 3)}), are "
            "left out: a class is a sub-folder; move each image into its class's folder to use it",
            LooseImagesWarning,
            stacklevel=2,
        )
    _warn_hidden_classes(root)
    _warn_alike(classes, str(root))
    _refuse_one_folder_twice(root, classes)
    candidates = [(path, name) for name in classes for path in image_files(root / name)]
    _refuse_links_across_classes(root, candidates)
    images = _collect(candidates, classes if known_classes is None else list(known_classes), str(root), check)
    if min_per_class > 0:
        images.check_min_per_class(min_per_class)
    return images


def check_listable(folder: str | os.PathLike[str]) -> None:
    """Raise a `CnnlabError` naming `folder` when it cannot be listed (no read permission): a data folder so stopped
    train, evaluate or a scan with a PermissionError traceback."""
    try:
        with os.scandir(folder):
            pass
    except OSError as error:
        raise CnnlabError(f"cannot read the folder {folder} ({error.strerror or error}); make it readable") from None


def _refuse_undecodable_names(root: Path, classes: Sequence[str]) -> None:
    """Refuse a class folder whose name is not UTF-8 (``caf\\xe9``, a Latin-1 name from an old zip or disk): a class
    name is shown and recorded as text, and the run crashed with matplotlib's TypeError on its confusion matrix, after
    training, its test report unwritten."""
    undecodable = [name for name in classes if not _is_utf8(name)]
    if undecodable:
        raw = os.fsencode(undecodable[0])
        shown = root if _is_utf8(str(root)) else os.fsencode(root)
        more = f" (and {len(undecodable) - 1} more)" if len(undecodable) > 1 else ""
        raise CnnlabError(
            f"{shown}: the class folder name {raw!r}{more} is not UTF-8 text, which a class's name is shown and "
            f"recorded as; rename it ({raw.decode('cp1252', errors='replace')!r} if it was written in Latin-1)"
        )


def _is_utf8(name: str) -> bool:
    """Whether a file name Python decoded from the file system (undecodable bytes kept as surrogates) is UTF-8 text."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _in_any_case(name: str, classes: Sequence[str]) -> list[str]:
    """The classes whose name is `name` in another case."""
    return [known for known in classes if known != name and known.casefold() == name.casefold()]


def _flat_folder_reason(root: Path) -> str:
    """Why `root`, which holds image files and no class sub-folder, cannot be trained on, and what to pass instead:
    one class's folder passed as --data was told only "has 0 class sub-folder(s) (none); at least 2 are needed", its
    images unmentioned. Empty when `root` holds no image file."""
    direct = sorted(
        p.name
        for p in root.iterdir()
        if p.is_file() and not _is_hidden(p.name) and p.name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not direct:
        return ""
    parent = root.resolve().parent
    siblings = [p for p in parent.iterdir() if p.is_dir() and not _is_hidden(p.name)]
    names = listed(sorted(p.name for p in siblings), 4)
    remedy = (
        f"pass its parent, {parent}, which holds {len(siblings)} class folders ({names})"
        if len(siblings) >= 2
        else "put the images in sub-folders named after their classes, at least 2 (root/<class name>/<images>)"
    )
    return (
        f"{root} holds {len(direct)} image file(s) ({listed(direct, 3)}) and no class sub-folder, as one class's "
        f"folder does: a class is a sub-folder of the folder passed; {remedy}"
    )


def _refuse_one_folder_twice(root: Path, classes: Sequence[str]) -> None:
    """Refuse two class folders that are one folder (one a link to the other, or both links to it): every image was
    filed under both labels and left out, and the run refused as "azure has 0, blue has 0 usable images (12 files
    skipped: 12 filed under two labels)", the link unnamed."""
    by_folder: dict[str, list[str]] = {}
    for name in classes:
        by_folder.setdefault(os.path.realpath(root / name), []).append(name)
    same = next((names for names in by_folder.values() if len(names) > 1), None)
    if same is not None:
        links = [name for name in same if (root / name).is_symlink()]
        how = f"{', '.join(links)} {'is a link' if len(links) == 1 else 'are links'} to" if links else "both are"
        raise CnnlabError(
            f"{root}: the class folders {' and '.join(same)} are one folder ({how} "
            f"{os.path.realpath(root / same[0])}), so every image in it would be filed under two labels; remove the "
            "link, or give each class its own images"
        )


# folders that tools write beside the photos, their names starting with a dot: version control, Jupyter's checkpoints,
# a Mac's and a Linux desktop's metadata, trash and thumbnails (the thumbnails of the photos beside them)
_TOOL_DOT_FOLDERS = (".git", ".svn", ".hg", ".dvc", ".ipynb_checkpoints", ".DS_Store", ".AppleDouble")
_TOOL_DOT_FOLDERS += (".Spotlight-V100", ".fseventsd", ".Trashes", ".Trash", ".thumbnails", ".cache")


def _warn_hidden_classes(root: Path) -> None:
    """Note the folders whose names start with a dot (`.c/`, a class renamed by a slip) that hold images: they are not
    classes, and were dropped without a word. Tools' folders (`_TOOL_DOT_FOLDERS`, `.Trash-1000`) are not noted."""
    hidden = sorted(
        p.name
        for p in root.iterdir()
        if p.name.startswith(".")
        and p.is_dir()
        and p.name not in _TOOL_DOT_FOLDERS
        and not p.name.startswith(".Trash")
        and image_files(p, unreadable_ok=True)
    )
    if hidden:
        warnings.warn(
            f"{root}: {listed(hidden, 3)} {'holds' if len(hidden) == 1 else 'hold'} images but "
            f"{'is not a class' if len(hidden) == 1 else 'are not classes'}: a folder whose name starts with a dot is "
            "hidden and left out; rename it without the dot to train on it as a class",
            HiddenClassWarning,
            stacklevel=3,
        )


def _refuse_links_across_classes(root: Path, candidates: Sequence[tuple[str, str]]) -> None:
    """Refuse a link inside one class folder to `root` or into another class folder: its images were filed under both
    labels and left out, the run refused as "b has 0 usable images (20 filed under two labels)", the link unnamed.
    A link to an image directly in `root` (to `root` itself, a class folder that is a link to it included) is refused
    too: those images were said to be "left out" (`LooseImagesWarning`) and were filed under the link's class, which
    `cnnlab evaluate --data` with one class folder scored them as."""
    real_root = Path(os.path.realpath(root))
    folders = {os.path.realpath(root / name): name for name in {name for _, name in candidates}}
    folders.pop(str(real_root), None)  # a class folder that is a link to the data folder holds its loose images
    for path, name in candidates:
        real = Path(os.path.realpath(path))
        other = next((folders[str(parent)] for parent in real.parents if str(parent) in folders), name)
        loose = real.parent == real_root
        if other == name and not loose:
            continue
        link = root / name  # the first link on the way from the class folder to the image
        for part in Path(path).relative_to(root / name).parts:
            if link.is_symlink():
                break
            link = link / part
        if loose:
            raise CnnlabError(
                f"{link} is a link to {os.path.realpath(link)}, so {real.name}, an image directly in {root} and in no "
                f"class folder, would be filed under {name}; move the image into {root / name} and remove the link, "
                "or remove the link to leave the image out"
            )
        raise CnnlabError(
            f"{link} is a link to {os.path.realpath(link)}, so the images of {other} under it would be filed under two "
            f"labels ({other} and {name}); remove the link, or link only folders of {name}'s own images"
        )


def _warn_alike(classes: Sequence[str], source: str) -> None:
    """Warn of class names that differ only in letter case, spaces at their ends ('cat ', a folder named by hand) or
    Unicode form: 'Cat' and 'cat' (folders merged from two sources; one folder on macOS and Windows), or 'café' as a
    Mac writes it (decomposed) and as typed, which print alike. Each was trained as a class of its own, the model
    asked to tell a class from itself."""
    groups: dict[str, list[str]] = {}
    for name in classes:
        groups.setdefault(unicodedata.normalize("NFKC", name).strip().casefold(), []).append(name)
    alike = [names for names in groups.values() if len(names) > 1]
    if alike:

        def named(name: str) -> str:  # the two forms of café print alike
            return repr(name) + (" (decomposed)" if unicodedata.normalize("NFC", name) != name else "")

        shown = "; ".join(" and ".join(named(name) for name in names) for names in alike[:3])
        warnings.warn(
            f"{source}: class names {shown} differ only in letter case, spaces at the ends or Unicode form, and are "
            "trained as different classes; if they are one class, merge them under one name",
            SimilarClassesWarning,
            stacklevel=3,
        )


# folders of metadata that tools write among photos: a Mac zip's __MACOSX (taken for a class of no images), a Synology
# NAS's @eaDir of thumbnails of every photo beside it (trained on and tested as more photos: a test thumbnail of a
# training photo scored as unseen); and the system folders at the root of a drive (a USB stick's $RECYCLE.BIN and
# System Volume Information, an ext4 disk's lost+found) and Python's __pycache__, each refused as "has 0 usable images"
_NOT_PHOTO_FOLDERS = ("__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "lost+found", "__pycache__")


def _is_hidden(name: str) -> bool:
    """A hidden file or folder, or a folder of metadata (`_NOT_PHOTO_FOLDERS`)."""
    return name.startswith(".") or name in _NOT_PHOTO_FOLDERS


def image_files(folder: str | os.PathLike[str], unreadable_ok: bool = False) -> list[str]:
    """The image files under `folder` and its sub-folders (by extension), sorted; hidden files and folders skipped.

    A linked sub-folder is walked like any other (os.walk's default skipped its images unsaid), each real folder once:
    a link back to a folder above it is not followed again.

    Raises:
        CnnlabError: a folder (`folder` or one below it) that cannot be listed (no read permission), whose images
            os.walk left out without a word (a class of such a folder "holds no image files"); unless
            `unreadable_ok`.
    """
    found = []
    unread: Counter[str] = Counter()
    walked: set[str] = set()
    unlisted: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=unlisted.append):
        walked.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(
            d for d in dirnames if not _is_hidden(d) and os.path.realpath(Path(dirpath) / d) not in walked
        )
        for filename in sorted(filenames):
            if not filename.startswith(".") and filename.lower().endswith(IMAGE_EXTENSIONS):
                found.append(str(Path(dirpath) / filename))
            elif not filename.startswith(".") and filename.lower().endswith(UNREAD_PHOTO_EXTENSIONS):
                unread[Path(filename).suffix.lower()] += 1
    if unlisted and not unreadable_ok:
        error = unlisted[0]
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        raise CnnlabError(
            f"cannot read the folder {error.filename}{more} ({error.strerror or error}), so its images would be left "
            f"out; make it readable (chmod -R u+rX), or move it out of {folder}"
        )
    if unread:  # an iPhone's .HEIC photos were left out without a word
        counts = ", ".join(f"{count} {suffix}" for suffix, count in sorted(unread.items()))
        warnings.warn(
            f"{folder}: {counts} file(s) left out: cnnlab reads {', '.join(IMAGE_EXTENSIONS)}; convert them to JPEG "
            "or PNG to use them",
            UnreadFormatWarning,
            stacklevel=2,
        )
    return found


def scan_csv(path: str | os.PathLike[str], min_per_class: int = 100, check: bool = True) -> LabelledImages:
    """The images listed in a CSV of ``path,label`` rows. A header row is optional: ``path,label``, or any first
    row whose path is neither an image file name nor a file (``filename,species``).

    Relative image paths are taken relative to the CSV's folder. Missing files are skipped and listed like bad ones.

    Raises:
        CnnlabError: unreadable CSV, malformed rows, fewer than two labels or a class below ``min_per_class``.
    """
    path = Path(path)
    try:  # utf-8-sig: a spreadsheet's byte-order mark is not part of the first path
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except OSError as error:
        raise CnnlabError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise CnnlabError(
            f"{path} is not UTF-8 text (byte {error.start}); save it as a UTF-8 CSV of `path,label` rows"
        ) from None
    if rows and _is_header(rows[0], path.parent):  # "filename,species" was a row: an unreadable file in a class
        rows = rows[1:]
    candidates = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise CnnlabError(f"{path} row {number} is {row!r}; every row must be `path,label`")
        image_path = Path(row[0].strip())
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        candidates.append((str(image_path), row[1].strip()))
    classes = sorted({label for _, label in candidates})
    _warn_alike(classes, str(path))
    if len(classes) < 2:
        raise CnnlabError(f"{path} has {len(classes)} distinct label(s); at least 2 are needed")
    images = _collect(candidates, classes, str(path), check)
    if not images.paths and all(skipped.reason == MISSING_REASON for skipped in images.skipped):
        raise CnnlabError(
            f"{path}: none of its {len(candidates)} rows names an existing file (the first: {candidates[0][0]}); "
            f"relative paths are read from the CSV's folder, {path.parent}"
        )
    if min_per_class > 0:
        images.check_min_per_class(min_per_class)
    return images


def _is_header(row: list[str], folder: Path) -> bool:
    """Whether the CSV's first `row` names its columns rather than an image."""
    first = row[0].strip()
    if [cell.strip().lower() for cell in row[:2]] == ["path", "label"]:
        return True
    return bool(first) and not first.lower().endswith(IMAGE_EXTENSIONS) and not (folder / first).is_file()


class ImageDataset(torch.utils.data.Dataset):
    """A map-style dataset over `LabelledImages`: ``(transform(load_image(path)), label)``.

    Args:
        images: the checked file list.
        transform: PIL image -> tensor (see `cnnlab.data.photo_transforms`).
    """

    def __init__(self, images: LabelledImages, transform: Callable[[Image.Image], Any]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = load_image(self.images.paths[index])
        return self.transform(image), self.images.labels[index]
