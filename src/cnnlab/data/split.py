"""Train/validation/test splits that are stratified, reproducible from a seed, and written down.

The split of a run is saved as a manifest CSV (``path,label,split``) in the run directory. A later run (resume,
evaluation, a second phase) reads the manifest back instead of splitting again, so the test images can never drift
into training or model selection. Validation is always carved out of the non-test part: the test part is set aside
first, then the rest is divided.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from sklearn.model_selection import train_test_split

from cnnlab.data.folder import LabelledImages, _collect, _is_hidden, describe_skipped, file_digest, scan_folder
from cnnlab.errors import CnnlabError, listed
from cnnlab.files import PATH_BYTES, write_text_whole, written_then_renamed

__all__ = [
    "PART_NAMES",
    "SPLITS",
    "SPLIT_DIGESTS",
    "Split",
    "add_mask_digests",
    "check_mask_digests",
    "check_fractions",
    "check_split_digests",
    "check_split_images",
    "check_split_seed",
    "read_manifest",
    "read_mask_digests",
    "read_split_digests",
    "split_from_folders",
    "split_part_missing",
    "stratified_split",
    "validation_from_train",
    "write_manifest",
    "write_missing_split_digests",
    "write_split_digests",
]

SPLITS = ("train", "val", "test")
# the names a split's parts are often given (Kaggle's "valid", Keras's "validation", capitals), by the part each is
PART_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
Split = dict[str, list[int]]
# beside a run's split.csv: the content digest of each part's images, by which `cnnlab evaluate` recognises a copy of
# an image the run trained on under any name or folder, and a resume an image changed since; a segmentation run's
# also each image's mask's, by which a resume knows a mask relabelled since
SPLIT_DIGESTS = "split_digests.json"
_DIGEST_NAME = "blake2b-128 of each file's bytes"


def check_split_seed(seed: int) -> int:
    """`seed` when scikit-learn takes it as a split's seed (0 to 2**32 - 1); checked before any image is read.

    Raises:
        CnnlabError: out of that range (-1 was scikit-learn's error, reported as too few images per class).
    """
    if not 0 <= seed < 2**32:
        raise CnnlabError(f"--split-seed must be between 0 and {2**32 - 1}, got {seed}")
    return seed


def check_fractions(val_fraction: float | None, test_fraction: float | None, val_needed: bool = False) -> None:
    """Refuse split shares no split can use, each named by its option, before any image is read: -0.1, 1.5 and NaN
    were told "val fraction nan and test fraction 0.15 must be in [0, 1) and (0, 1) respectively" once the whole
    folder was decoded, and a transfer run's --val-fraction 0, which passed that check, "the split has no val images"
    in a run folder already made. None: not given.

    Args:
        val_needed: the run chooses its best epoch on validation images, so a --val-fraction of 0 is refused too.
    """
    shares = (("--val-fraction", val_fraction, not val_needed), ("--test-fraction", test_fraction, False))
    for option, value, zero_allowed in shares:
        if value is None or 0.0 < value < 1.0 or (zero_allowed and value == 0.0):
            continue
        why = ""
        if value == 0.0:
            why = (
                " (the run chooses its best epoch on the validation images)"
                if option == "--val-fraction"
                else " (the test images are what the run is scored on)"
            )
        low = "at least" if zero_allowed else "above"
        raise CnnlabError(f"{option} {value:g} must be {low} 0 and below 1{why}: a share of the images, such as 0.15")
    if val_fraction is not None and test_fraction is not None and val_fraction + test_fraction >= 1.0:
        raise CnnlabError(
            f"--val-fraction {val_fraction:g} and --test-fraction {test_fraction:g} add up to "
            f"{val_fraction + test_fraction:g}, which leaves no images to train on; their sum must be below 1"
        )


def stratified_split(
    labels: list[int],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> Split:
    """Indices of a stratified train/val/test split (70/15/15 by default).

    The test part is drawn first (``test_fraction`` of all samples), then validation (``val_fraction`` of all
    samples) from what remains; each part keeps the class proportions and holds every class (a class too small for
    its share of a part gets one image there, taken from a part holding two or more). The same labels and seed give
    the same split.

    Args:
        classes: the labels' names, for the error that says which class is too small.

    Raises:
        CnnlabError: fractions out of range, or a class too small to appear in every part (fewer images than parts).
    """
    check_fractions(val_fraction, test_fraction)
    check_split_seed(seed)
    indices = list(range(len(labels)))
    if min(Counter(labels).values(), default=0) < (3 if val_fraction else 2):
        # scikit-learn put a class of 2 in train and validation alone: never tested, without a word
        raise CnnlabError(_why_no_split(labels, val_fraction, test_fraction, "", classes))
    try:
        rest, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed)
        rest, test = _give_every_class(labels, rest, test)
        if val_fraction == 0:
            return {"train": sorted(rest), "val": [], "test": sorted(test)}
        rest_labels = [labels[i] for i in rest]
        train, val = train_test_split(
            rest, test_size=val_fraction / (1.0 - test_fraction), stratify=rest_labels, random_state=seed
        )
        train, val = _give_every_class(labels, train, val)
        val, train = _give_every_class(labels, val, train)
    except ValueError as error:
        raise CnnlabError(_why_no_split(labels, val_fraction, test_fraction, str(error), classes)) from None
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def _give_every_class(labels: Sequence[int], donor: list[int], part: list[int]) -> tuple[list[int], list[int]]:
    """`donor` and `part` with one image of each class that `part` lacks moved into it from `donor`, where donor holds
    two or more of that class (the first in donor's order, which scikit-learn shuffled by the seed). scikit-learn
    stratifies by proportion alone: a class of 3 among 300 images (0.45 of a test image) got no test image, and the
    run was scored on the other classes, balanced accuracy and all, without a word."""
    present = {labels[index] for index in part}
    held = Counter(labels[index] for index in donor)
    moved = set()
    for index in donor:
        if labels[index] not in present and held[labels[index]] >= 2:
            present.add(labels[index])
            moved.add(index)
    return [index for index in donor if index not in moved], [*part, *(index for index in donor if index in moved)]


def validation_from_train(
    labels: Sequence[int], split: Split, val_fraction: float, seed: int = 0, classes: Sequence[str] | None = None
) -> Split:
    """`split` with a stratified `val_fraction` of its train images moved to val: a split folder without ``val/``
    given ``--val-fraction``. Its test images stay as they are; the same labels, split and seed give the same result.

    Args:
        labels: every image's label (`split` indexes them).
        classes: the labels' names, for the error that says which class is too small.

    Raises:
        CnnlabError: `val_fraction` is not in (0, 1), or a class has too few train images to be in both parts.
    """
    if not 0.0 < val_fraction < 1.0:
        raise CnnlabError(f"--val-fraction {val_fraction:g} must be above 0 and below 1 (the share of train/ held out)")
    check_split_seed(seed)
    train = split["train"]
    train_labels = [labels[i] for i in train]
    try:
        kept, val = train_test_split(train, test_size=val_fraction, stratify=train_labels, random_state=seed)
        kept, val = _give_every_class(labels, kept, val)
        val, kept = _give_every_class(labels, val, kept)
    except ValueError as error:
        label, count = min(Counter(train_labels).items(), key=lambda item: item[1])
        smallest = repr(classes[label]) if classes is not None else f"number {label}"
        raise CnnlabError(
            f"cannot take a stratified {val_fraction:g} of {len(train)} train/ images as validation so that both "
            f"parts hold every class (the smallest class, {smallest}, has {count}); raise --val-fraction or add "
            f"images to train/ (scikit-learn: {error})"
        ) from None
    return {"train": sorted(kept), "val": sorted(val), "test": list(split["test"])}


def _why_no_split(
    labels: list[int], val_fraction: float, test_fraction: float, reason: str, names: Sequence[str] | None
) -> str:
    """What a stratified split of `labels` needs that it lacks: every part must hold every class, so each class needs
    one image per part and each part enough images for all classes (scikit-learn's own words only end the line)."""
    classes = Counter(labels)
    parts = "train, validation and test" if val_fraction else "train and test"

    def enough(total: int) -> bool:  # the sizes scikit-learn gives each part (it rounds the held-out part up)
        test = math.ceil(test_fraction * total)
        val = math.ceil(val_fraction / (1.0 - test_fraction) * (total - test))
        return min(test, val if val_fraction else test, total - test - val) >= len(classes)

    needed = next((f"{total:,}" for total in range(len(classes), 10**6) if enough(total)), "over a million")
    fractions = f"at these fractions (validation {val_fraction:g}, test {test_fraction:g}) that takes at least {needed}"
    said = f" (scikit-learn: {reason})" if reason else ""
    advice = f"collect more images or raise --val-fraction / --test-fraction{said}"
    if len(classes) == 1:
        return f"cannot split {len(labels)} images into {parts} parts that each hold one: {fractions} images; {advice}"
    label, count = min(classes.items(), key=lambda item: item[1])
    smallest = repr(names[label]) if names is not None else f"number {label}"
    per_class = 3 if val_fraction else 2
    if count < per_class:  # no fraction gives one image to every part: raising them was advice that could not work
        advice = f"add images to {smallest} or remove that class{said}"
    return (
        f"cannot split {len(labels)} images of {len(classes)} classes so that {parts} each hold every class: "
        f"{fractions} images and {per_class} per class (the smallest class, {smallest}, has {count}); {advice}"
    )


def write_manifest(path: str | os.PathLike[str], images: LabelledImages, split: Split) -> Path:
    """Write ``path,label,split`` rows (one per image in ``split``), in split then file order; returns ``path``.

    Paths are written absolute, so the manifest stays valid wherever the run directory is read from. The rows go to a
    temporary file renamed over ``path`` once all are written: `train transfer` writes its run's manifest again on
    every --resume, and one stopped midway left the rows written so far, which the next resume read back as the
    whole split (fewer test images, or "needs at least one train and one test image" for ever).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        written_then_renamed(path) as partial,
        open(partial, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as f,
    ):
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for part in SPLITS:
            for index in split.get(part, []):
                writer.writerow([Path(images.paths[index]).resolve(), images.classes[images.labels[index]], part])
    return path


def write_split_digests(
    path: str | os.PathLike[str],
    images: LabelledImages,
    split: Split,
    masks: Mapping[str, tuple[str, bytes | None]] | None = None,
) -> Path:
    """Write the content digest (`file_digest`, hex) of each part's images as JSON (``{"digest": ..., "train":
    [...], "val": [...], "test": [...]}``, sorted); returns ``path``.

    The digests the scan computed (`LabelledImages.digests`) are used as they are; an image without one (a split read
    from a manifest) is read once here, and one that cannot be read is left out.

    Args:
        masks: a segmentation split's masks: each image path's (mask path, the mask's digest, None to read it here),
            written as ``"masks": {image digest: mask digest}`` (sorted), which `check_mask_digests` compares; a
            reader of the parts alone (`read_split_digests`) passes over it.
    """
    parts: dict[str, list[str]] = {}
    mask_of: dict[str, str] = {}  # image digest -> its mask's
    for part in SPLITS:
        found = set()
        for index in split.get(part, []):
            image = images.paths[index]
            digest = _known_or_read(image, images.digests.get(image))
            if digest is None:
                continue
            found.add(digest.hex())
            if masks is not None and (mask_digest := _known_or_read(*masks[image])) is not None:
                mask_of[digest.hex()] = mask_digest.hex()
        parts[part] = sorted(found)
    record: dict[str, object] = {"digest": _DIGEST_NAME, **parts}
    if masks is not None:
        record["masks"] = dict(sorted(mask_of.items()))
    return write_text_whole(path, json.dumps(record))


def _known_or_read(path: str, digest: bytes | None) -> bytes | None:
    """`digest` when known, else the file's `file_digest` read now; None when it cannot be read."""
    if digest is not None:
        return digest
    try:
        return file_digest(path)
    except OSError:
        return None


def write_missing_split_digests(manifest: str | os.PathLike[str], masks: bool = False) -> Path | None:
    """Write the ``split_digests.json`` beside a run's split `manifest` that a run made before it was recorded lacks,
    from the images the manifest lists, when every one of them is still there; returns its path, or None when nothing
    was written (it is there already, with the masks' digests for `masks`; the manifest cannot be read, or an image it
    lists has gone).

    Without it `cnnlab evaluate` reads every training image again on each call; with one gone, a record of the rest
    would hide from it how many it cannot check.

    Args:
        masks: the manifest's label column holds each image's mask (a segmentation split's): their digests are
            recorded too, as `write_split_digests` records them, and they too must all be there. A file there already
            that records the images alone (written before masks were recorded) gets them on the same terms, and only
            when every image is still the one it records: its images' digests are kept as they are.
    """
    manifest = Path(manifest)
    path = manifest.with_name(SPLIT_DIGESTS)
    if not manifest.is_file():
        return None
    recorded = read_split_digests(path) if path.is_file() else None
    if path.is_file() and not (masks and recorded is not None and read_mask_digests(path) is None):
        return None  # there already, as complete as it can be made (or unreadable: not replaced)
    try:
        images, split = read_manifest(manifest)
    except CnnlabError:
        return None
    mask_of = {image: images.classes[label] for image, label in zip(images.paths, images.labels, strict=True)}
    files = [*images.paths, *(mask_of.values() if masks else ())]
    if not all(Path(file).is_file() for file in files):
        return None
    if recorded is not None:  # the images' alone: their masks' are added
        return add_mask_digests(path, images, split, {image: (mask, None) for image, mask in mask_of.items()})
    mask_files = {image: (mask, None) for image, mask in mask_of.items()} if masks else None
    return write_split_digests(path, images, split, mask_files)


def add_mask_digests(
    path: str | os.PathLike[str],
    images: LabelledImages,
    split: Split,
    masks: Mapping[str, tuple[str, bytes | None]],
) -> Path | None:
    """Add to the ``split_digests.json`` at `path`, which records a segmentation split's images alone (written before
    masks were recorded), the digests of their masks, as `write_split_digests` records them; its images' digests are
    kept as they are. Returns `path`, or None, nothing written, when the file is not such a record (none, unreadable,
    or with masks' digests already), or an image's bytes are not those it records or a file cannot be read: a mask
    recorded then would be the mask of another image than the run's.

    Args:
        masks: each image path's (mask path, the mask's digest, None to read it here); the images' digests are those
            `images` carries (`LabelledImages.digests`), else read here.
    """
    path = Path(path)
    recorded = read_split_digests(path)
    if recorded is None or read_mask_digests(path) is not None:
        return None
    mask_digests: dict[str, str] = {}
    for part in SPLITS:
        for index in split.get(part, []):
            image = images.paths[index]
            image_digest = _known_or_read(image, images.digests.get(image))
            mask_digest = _known_or_read(*masks[image])
            if image_digest is None or image_digest not in recorded[part] or mask_digest is None:
                return None
            mask_digests[image_digest.hex()] = mask_digest.hex()
    record = json.loads(path.read_text(encoding="utf-8"))
    return write_text_whole(path, json.dumps({**record, "masks": dict(sorted(mask_digests.items()))}))


def read_split_digests(path: str | os.PathLike[str]) -> dict[str, set[bytes]] | None:
    """The digests `write_split_digests` wrote, by part; None when there is no such file or it cannot be read (a run
    made before it was written)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        if record.get("digest") != _DIGEST_NAME:
            return None
        return {part: {bytes.fromhex(digest) for digest in record.get(part, [])} for part in SPLITS}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):
        return None


def check_split_digests(images: LabelledImages, split: Split, manifest: str | os.PathLike[str]) -> None:
    """Raise a `CnnlabError` when an image of a run's split `manifest` has bytes other than those the run's
    ``split_digests.json`` (beside the manifest) recorded for its part when the split was made: a resume would train
    on other images than the run's first session, without a word, so it is refused as a changed option is. A run
    made before that file was recorded has nothing to compare. The digests `images` carries (`LabelledImages.digests`,
    from a decode just done) are used; an image without one is read here, and one that cannot be read counts as
    changed.
    """
    recorded = read_split_digests(Path(manifest).with_name(SPLIT_DIGESTS))
    if recorded is None:
        return
    changed = []
    for part in SPLITS:
        for index in split.get(part, []):
            path = images.paths[index]
            digest = _known_or_read(path, images.digests.get(path))  # None, unreadable: not the bytes recorded
            if digest not in recorded[part]:
                changed.append((path, part))
    if changed:
        path, part = changed[0]
        raise CnnlabError(
            f"{len(changed)} image(s) of {manifest} changed since the run's split was made (first: {path}: its bytes "
            f"are not those {SPLIT_DIGESTS} records for the {part} part); restore them, or start a new run "
            "(--overwrite or another --name)"
        )


def read_mask_digests(path: str | os.PathLike[str]) -> dict[bytes, bytes] | None:
    """The masks' digests `write_split_digests` wrote (image digest -> its mask's); None when there is no such file,
    it cannot be read, or it holds none (a run made before masks were recorded, or a classifier's split)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        if record.get("digest") != _DIGEST_NAME or "masks" not in record:
            return None
        return {bytes.fromhex(image): bytes.fromhex(mask) for image, mask in record["masks"].items()}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):
        return None


def check_mask_digests(
    images: LabelledImages,
    split: Split,
    manifest: str | os.PathLike[str],
    masks: Mapping[str, tuple[str, bytes | None]],
) -> None:
    """Raise a `CnnlabError` when the mask of an image of a run's split `manifest` has bytes other than those the
    run's ``split_digests.json`` recorded for that image's mask when the split was made: masks relabelled between
    sessions would train the rest of the run on other labels than its first epochs, without a word, so it is refused
    as a changed image is (`check_split_digests`, which runs first: an image is known by its digest here). A file
    without masks' digests (a run made before they were recorded) has nothing to compare.

    Args:
        masks: each image path's (mask path, the mask's digest from a decode just done, None to read it here); a mask
            or image that cannot be read counts as changed.
    """
    recorded = read_mask_digests(Path(manifest).with_name(SPLIT_DIGESTS))
    if recorded is None:
        return
    changed = []
    for part in SPLITS:
        for index in split.get(part, []):
            image = images.paths[index]
            mask, known = masks[image]
            image_digest = _known_or_read(image, images.digests.get(image))
            expected = None if image_digest is None else recorded.get(image_digest)
            if expected is None or _known_or_read(mask, known) != expected:
                changed.append((mask, image, part))
    if changed:
        mask, image, part = changed[0]
        raise CnnlabError(
            f"{len(changed)} mask(s) of {manifest} changed since the run's split was made (first: {mask}, the mask of "
            f"{part} image {image}: its bytes are not those {SPLIT_DIGESTS} records for it); the run's sessions so "
            "far used the masks as they were: restore them, or start a new run (--overwrite or another --name)"
        )


def read_manifest(path: str | os.PathLike[str], classes: list[str] | None = None) -> tuple[LabelledImages, Split]:
    """Read a manifest written by `write_manifest` (or by hand: ``path,label,split`` with split train/val/test).

    Args:
        path: the CSV.
        classes: the class order to use (a saved run's); default: the sorted labels found in the manifest.

    Returns:
        The images (in manifest order, unchecked: they were checked when the manifest was made) and their split.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig", errors=PATH_BYTES) as f:  # a binary file: no header
            rows = list(csv.DictReader(f))
    except OSError as error:
        raise CnnlabError(f"cannot read split manifest {path}: {error.strerror or error}") from None
    if not rows or not {"path", "label", "split"} <= set(rows[0]):
        raise CnnlabError(f"{path} is not a split manifest: it needs a header `path,label,split` and rows")
    bad = sorted({row["split"] for row in rows} - set(SPLITS))
    if bad:
        raise CnnlabError(f"{path} has unknown split name(s) {bad}; use train, val and test")
    names = classes if classes is not None else sorted({row["label"] for row in rows})
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({row["label"] for row in rows} - set(index))
    if unknown:
        raise CnnlabError(f"{path} has labels {unknown} that are not among the run's classes {names}")
    base = path.parent
    paths = [row["path"] if Path(row["path"]).is_absolute() else str(base / row["path"]) for row in rows]
    images = LabelledImages(paths, [index[row["label"]] for row in rows], list(names), [], str(path))
    split: Split = {part: [i for i, row in enumerate(rows) if row["split"] == part] for part in SPLITS}
    if not split["train"] or not split["test"]:
        raise CnnlabError(f"{path} needs at least one train and one test image")
    return images, split


def check_split_images(images: LabelledImages, split: Split) -> tuple[LabelledImages, Split]:
    """The images of a given split that decode, each once, and the split over them: a damaged file, or a copy of an
    image already in an earlier part (train, then val, then test), is skipped and listed in ``skipped``, as a fresh
    scan does (a hand-made manifest was read unchecked: a zero-byte file stopped the run once training had begun, a
    test copy of a training image was scored as unseen)."""
    order = [index for part in SPLITS for index in split.get(part, [])]
    candidates = [(images.paths[index], images.classes[images.labels[index]]) for index in order]
    part_of: dict[str, str] = {}
    for part in reversed(SPLITS):  # a path listed in two parts belongs to the earlier one, where it is kept
        part_of.update({images.paths[index]: part for index in split.get(part, [])})
    checked = _collect(candidates, images.classes, images.source, check=True)
    split = {part: [i for i, path in enumerate(checked.paths) if part_of[path] == part] for part in SPLITS}
    empty = [part for part in ("train", "test") if not split[part]]
    if empty:
        skipped = describe_skipped([skipped.reason for skipped in checked.skipped])
        raise CnnlabError(f"{images.source} has no usable {' or '.join(empty)} image ({skipped})")
    return checked, split


def split_from_folders(root: str | os.PathLike[str], min_per_class: int = 100) -> tuple[LabelledImages, Split]:
    """A user-made split: ``root/train/<class>/...``, ``root/test/<class>/...`` and optionally ``root/val/<class>``.

    The classes are those of ``train``; ``min_per_class`` applies to the three parts together. A ``val`` or ``test``
    folder without class sub-folders is refused, saying how to fill it (`split_part_missing`); `train transfer` needs
    ``val`` too, or ``--val-fraction`` to take it from train/ (`validation_from_train`). An image whose bytes
    are already in an earlier part (train, then val, then test) is skipped and listed: a test copy of a training
    image would be scored as if the model had never seen it.
    """
    root = Path(root)
    parts = {part: root / part for part in SPLITS if (root / part).is_dir()}
    if "train" not in parts or "test" not in parts:
        raise CnnlabError(f"{root} is not a split folder: it needs train/ and test/ (and optionally val/) sub-folders")
    # a Kaggle split's valid/ beside train/ and test/ was passed over unsaid: its images in no part, the run told to
    # fill a val/ (or, given --val-fraction, validation taken from train/)
    misnamed = sorted(
        folder.name
        for folder in root.iterdir()
        if folder.is_dir() and PART_NAMES.get(folder.name.lower(), folder.name) not in (folder.name, *parts)
    )
    if misnamed:
        renames = ", ".join(f"{name}/ to {PART_NAMES[name.lower()]}/" for name in misnamed)
        raise CnnlabError(
            f"{root}: {', '.join(f'{name}/' for name in misnamed)} would not be read: a split folder's parts are "
            f"named train/, val/ and test/; rename {renames}"
        )
    scanned = {"train": scan_folder(parts["train"], min_per_class=0, check=False)}  # listed; decoded below
    classes = scanned["train"].classes
    for part, folder in parts.items():  # an empty val/ was "val has 0 class sub-folder(s)", with nothing to do
        if part != "train" and not any(p.is_dir() and not _is_hidden(p.name) for p in folder.iterdir()):
            raise CnnlabError(split_part_missing(root, part, classes))
        scanned[part] = scan_folder(folder, min_per_class=0, check=False)
    for part, images in scanned.items():
        if images.classes != classes:
            raise CnnlabError(f"{root / part} has classes {images.classes}, but train/ has {classes}; make them match")
    # Checked together, train first: a val or test copy of a training image is the copy skipped.
    candidates = [
        (path, classes[label])
        for images in scanned.values()
        for path, label in zip(images.paths, images.labels, strict=True)
    ]
    merged = _collect(candidates, classes, str(root), check=True)
    part_of = {path: part for part, images in scanned.items() for path in images.paths}
    split: Split = {part: [i for i, path in enumerate(merged.paths) if part_of[path] == part] for part in SPLITS}
    if min_per_class > 0:
        merged.check_min_per_class(min_per_class)
    return merged, split


def split_part_missing(root: str | os.PathLike[str], part: str, classes: Sequence[str]) -> str:
    """Why a split folder's `part` (val or test) gives a run no images, and what to do: fill ``part/<class>/`` as
    train/ is filled. A split folder's split is taken as it is (--val-fraction and --test-fraction apply to fresh
    splits), except that `train transfer --val-fraction` takes validation from train/ where val/ is missing."""
    use = "the best epoch is chosen on them" if part == "val" else "the run is scored on them, once"
    carve = "; or, with no val/ folder, pass --val-fraction F to take a stratified F of train/" if part == "val" else ""
    return (
        f"{Path(root) / part} holds no images: a split folder gives its {part}/ images in the class sub-folders of "
        f"train/ ({listed(list(classes), 8)}), and {use}; move some images of each class from train/ into "
        f"{part}/<class>/{carve} (a folder of class sub-folders alone, no train/ or test/, is split by the run itself)"
    )
