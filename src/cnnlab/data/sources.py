"""Where a labelled image set comes from: ``--data`` as a class folder, a CSV of ``path,label``, a split folder
(``train/``, ``val/``, ``test/``) or a built-in dataset name, and the per-class limit for quick trials.

Bad files are found while scanning and listed in `LabelledImages.skipped`; they never reach training.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnlab.data.folder import LabelledImages, check_listable, scan_csv, scan_folder
from cnnlab.data.split import PART_NAMES, Split, check_split_digests, check_split_images, split_from_folders
from cnnlab.errors import CnnlabError

__all__ = [
    "BUILTIN_DATASETS",
    "check_files_exist",
    "check_split_unchanged",
    "limit_per_class",
    "open_image_source",
    "source_classes",
    "source_defaults",
]

BUILTIN_DATASETS = ("elpv", "elpv:binary")
# What the literature does with a built-in dataset, used unless the command line says otherwise: ELPV's papers
# split 75/25 train/test (validation is taken from the training part), and the cells have no up or down.
_DEFAULTS = {
    "elpv": {"test_fraction": 0.25, "val_fraction": 0.15, "views": "dihedral"},
    "elpv:binary": {"test_fraction": 0.25, "val_fraction": 0.15, "views": "dihedral"},
}


def source_defaults(data: str) -> dict[str, object]:
    """The split fractions and views a built-in dataset is used with by default (empty for the user's own data)."""
    return dict(_DEFAULTS.get(data, {})) if data in BUILTIN_DATASETS and not Path(data).exists() else {}


def source_classes(data: str) -> list[str] | None:
    """The fixed class order of a built-in dataset (ELPV's classes in order of defect probability), which a split read
    back from its manifest must keep; None for the user's own data, whose classes are sorted by name either way."""
    if data not in BUILTIN_DATASETS or Path(data).exists():
        return None
    from cnnlab.data.elpv import ELPV_BINARY_CLASSES, ELPV_CLASSES

    return list(ELPV_BINARY_CLASSES if data.endswith(":binary") else ELPV_CLASSES)


def open_image_source(data: str, min_per_class: int = 100) -> tuple[LabelledImages, Split | None, str]:
    """The images of `data`, the split it brings (a split folder's; None otherwise) and what it was.

    Args:
        data: a built-in dataset name (`BUILTIN_DATASETS`), a ``.csv`` of ``path,label``, a folder with ``train/`` and
            ``test/`` (and optionally ``val/``) sub-folders, or a folder with one sub-folder per class.
        min_per_class: the fewest usable images a class may have.

    Raises:
        CnnlabError: for a path that is none of these, or a class with too few images.
    """
    path = Path(data)
    if data in BUILTIN_DATASETS and not path.exists():
        from cnnlab.data.elpv import load_elpv

        images = load_elpv(min_per_class=min_per_class, binary=data.endswith(":binary"))
        return images, None, f"built-in dataset {data}"
    if path.is_file() and path.suffix.lower() == ".csv":
        return scan_csv(path, min_per_class=min_per_class), None, f"CSV {path}"
    if path.is_dir():
        check_listable(path)  # its parts and classes are looked for next
    if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
        images, split = split_from_folders(path, min_per_class=min_per_class)
        return images, split, f"split folder {path}"
    if path.is_dir():
        _refuse_split_parts_as_classes(path)
        return scan_folder(path, min_per_class=min_per_class), None, f"class folders {path}"
    found = "does not exist" if not path.exists() else "is a file other than a .csv"  # said "is neither" for both
    raise CnnlabError(
        f"--data {data!r} {found}; give a folder of images, a .csv of path,label or a built-in dataset "
        f"({', '.join(BUILTIN_DATASETS)})"
    )


def _refuse_split_parts_as_classes(root: Path) -> None:
    """Refuse a folder whose sub-folders are a split's parts, each of class sub-folders, that is not a split folder
    (``train/`` and ``test/``, lower case): ``train/`` and ``val/`` without ``test/``, or ``Train/`` and ``Test/``, were
    taken as two classes named after the parts, the images of every class filed under "train" or "val", and trained
    without a word."""
    parts = sorted(
        folder.name
        for folder in root.iterdir()
        if folder.is_dir()
        and folder.name.lower() in PART_NAMES
        and any(child.is_dir() and not child.name.startswith(".") for child in folder.iterdir())
    )
    if not parts:
        return
    renames = [f"{name}/ to {PART_NAMES[name.lower()]}/" for name in parts if name != PART_NAMES[name.lower()]]
    present = {PART_NAMES[name.lower()] for name in parts}
    todo = [f"rename {', '.join(renames)}"] if renames else []
    todo += [f"add {part}/ with the same class sub-folders" for part in ("train", "test") if part not in present]
    raise CnnlabError(
        f"{root}: {', '.join(f'{name}/' for name in parts)} hold{'s' if len(parts) == 1 else ''} class sub-folders, "
        f"so {'it is' if len(parts) == 1 else 'they are'} read as a split, not as classes; a split folder is train/ "
        f"and test/, and optionally val/, each of class sub-folders: {' and '.join(todo)}, or merge them into "
        f"{root}/<class>/ for the run to split"
    )


def limit_per_class(images: LabelledImages, max_per_class: int | None, seed: int) -> LabelledImages:
    """At most `max_per_class` images of each class, chosen with `seed` (all of them when None)."""
    if max_per_class is None:
        return images
    generator = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for label in range(len(images.classes)):
        members = [i for i, y in enumerate(images.labels) if y == label]
        order = torch.randperm(len(members), generator=generator).tolist()
        keep += [members[i] for i in order[:max_per_class]]
    limited = images.subset(sorted(keep))
    limited.skipped = images.skipped
    return limited


def check_files_exist(images: LabelledImages, manifest: str | os.PathLike[str]) -> None:
    """Raise a `CnnlabError` when an image listed in a split manifest has gone missing."""
    missing = [p for p in images.paths if not Path(p).is_file()]
    if missing:
        raise CnnlabError(
            f"{len(missing)} image(s) of {manifest} are missing (first: {missing[0]}); restore them or start a new run"
        )


def check_split_unchanged(images: LabelledImages, split: Split, manifest: str | os.PathLike[str]) -> None:
    """Raise a `CnnlabError` when an image of a run's split manifest, checked when the split was made, can no longer
    be used: a file emptied or damaged since (a resume stopped with PIL's "cannot identify image file" and a
    traceback once training had begun), or one that is now a copy of another listed image (a resume trained it under
    the label its path had); or when its bytes are not those the run's ``split_digests.json`` recorded
    (`check_split_digests`: a resume trained on other images than its first session, without a word). Every image
    is decoded again, as the first run's scan did, and its digest taken from those bytes.
    """
    check_files_exist(images, manifest)
    checked, checked_split = check_split_images(images, split)
    if checked.skipped:
        first = checked.skipped[0]
        raise CnnlabError(
            f"{len(checked.skipped)} image(s) of {manifest} changed since the run's split was made and can no longer "
            f"be used (first: {first.path}: {first.reason}); restore them, or start a new run (--overwrite or "
            "another --name)"
        )
    check_split_digests(checked, checked_split, manifest)
