"""Stratified, reproducible splits; manifests written and read back; user-made split folders."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from cnnlab.data.folder import LabelledImages
from cnnlab.data.sources import open_image_source
from cnnlab.data.split import (
    read_manifest,
    split_from_folders,
    stratified_split,
    validation_from_train,
    write_manifest,
)
from cnnlab.errors import CnnlabError

LABELS = [0] * 200 + [1] * 60 + [2] * 40


def test_split_is_stratified_disjoint_and_complete() -> None:
    split = stratified_split(LABELS, 0.15, 0.15, seed=3)
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(len(LABELS)))
    for part, fraction in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        counts = Counter(LABELS[i] for i in split[part])
        for label, total in Counter(LABELS).items():
            assert abs(counts[label] - fraction * total) <= 1.5, (part, label, counts)


def test_validation_from_train_is_a_stratified_share_of_train_alone() -> None:
    given = {"train": list(range(250)), "val": [], "test": list(range(250, 300))}  # a split folder without val/
    split = validation_from_train(LABELS, given, 0.2, seed=4)
    assert split["test"] == given["test"] and sorted(split["train"] + split["val"]) == given["train"]
    assert Counter(LABELS[i] for i in split["val"]) == {0: 40, 1: 10}  # train/ holds 200 and 50 of them
    assert split == validation_from_train(LABELS, given, 0.2, seed=4) != validation_from_train(LABELS, given, 0.2)
    with pytest.raises(CnnlabError, match="--val-fraction 0 must be above 0 and below 1"):
        validation_from_train(LABELS, given, 0.0)
    one_of_c = {"train": [*range(10), 260], "val": [], "test": [270]}
    with pytest.raises(CnnlabError, match=r"both parts hold every class \(the smallest class, 'c', has 1\)"):
        validation_from_train(LABELS, one_of_c, 0.3, classes=["a", "b", "c"])


def test_split_is_reproducible_from_the_seed() -> None:
    assert stratified_split(LABELS, seed=1) == stratified_split(LABELS, seed=1)
    assert stratified_split(LABELS, seed=1)["test"] != stratified_split(LABELS, seed=2)["test"]


def test_validation_comes_from_the_non_test_part() -> None:
    # Same seed and test fraction: the test part does not move when the validation fraction changes.
    assert stratified_split(LABELS, 0.10, 0.25, 0)["test"] == stratified_split(LABELS, 0.20, 0.25, 0)["test"]


def test_bad_fractions_and_tiny_classes_are_errors() -> None:
    with pytest.raises(CnnlabError, match="add up to 1, which leaves no images to train on; their sum must be below 1"):
        stratified_split(LABELS, 0.5, 0.5)
    with pytest.raises(CnnlabError, match=r"--test-fraction 0 must be above 0 and below 1 \(the test images are what"):
        stratified_split(LABELS, 0.15, 0.0)
    with pytest.raises(CnnlabError, match=r"--val-fraction nan must be at least 0 and below 1: a share of the images"):
        stratified_split(LABELS, float("nan"), 0.15)
    with pytest.raises(CnnlabError, match="cannot split") as refused:  # it said "raise --val-fraction / ..."
        stratified_split([0] * 20 + [1], 0.15, 0.15, classes=["many", "solo"])
    assert "add images to 'solo' or remove that class" in str(refused.value) and "--val" not in str(refused.value)


@pytest.mark.parametrize(("classes", "val", "test"), [(2, 0.15, 0.15), (3, 0.0, 0.25), (5, 0.1, 0.2), (10, 0.2, 0.1)])
def test_a_folder_too_small_to_split_says_how_many_images_it_takes(classes: int, val: float, test: float) -> None:
    """It said "cannot split 4 images by class: The test_size = 1 should be greater or equal to the number of
    classes = 2; collect more images per class": how many was left to guess. The number it gives now is exact."""
    names = [f"class{index}" for index in range(classes)]
    with pytest.raises(CnnlabError, match=r"that takes at least (\d+) images") as refused:
        stratified_split([index % classes for index in range(classes)], val, test, classes=names)
    needed = int(re.search(r"at least (\d+) images", str(refused.value)).group(1))  # type: ignore[union-attr]
    assert "(the smallest class, 'class0', has 1)" in str(refused.value)
    stratified_split([index % classes for index in range(needed)], val, test)  # enough
    with pytest.raises(CnnlabError, match="cannot split"):
        stratified_split([index % classes for index in range(needed - 1)], val, test)  # one fewer is not
    # scikit-learn refuses the seed; it was reported as "cannot split ...; collect more images per class"
    with pytest.raises(CnnlabError, match="--split-seed must be between 0 and 4294967295, got -1"):
        stratified_split(LABELS, seed=-1)


def test_manifest_round_trip(tmp_path: Path) -> None:
    # the last is a Latin-1 name (a str with a surrogate on Linux): writing it was a UnicodeEncodeError traceback
    paths = [str(tmp_path / f"{i}.png") for i in range(len(LABELS) - 1)] + [str(tmp_path / "caf\udce9.png")]
    images = LabelledImages(paths, list(LABELS), ["a", "b", "c"])
    split = stratified_split(LABELS, seed=0)
    write_manifest(tmp_path / "split.csv", images, split)
    read_images, read_split = read_manifest(tmp_path / "split.csv")
    assert read_images.classes == ["a", "b", "c"]
    for part in ("train", "val", "test"):
        assert sorted(read_images.paths[i] for i in read_split[part]) == sorted(paths[i] for i in split[part])
        assert Counter(read_images.labels[i] for i in read_split[part]) == Counter(LABELS[i] for i in split[part])


def test_a_manifest_written_again_and_stopped_midway_keeps_the_whole_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train transfer --resume` writes its manifest again; stopped midway, the rows written so far were read back as
    the whole split by the next resume."""
    import csv

    import cnnlab.data.split

    paths = [str(tmp_path / f"{i}.png") for i in range(len(LABELS))]
    images = LabelledImages(paths, list(LABELS), ["a", "b", "c"])
    split = stratified_split(LABELS, seed=0)
    manifest = write_manifest(tmp_path / "split.csv", images, split)
    writer = csv.writer

    class StoppedWriter:
        def __init__(self, file: object) -> None:
            self.writer, self.rows = writer(file), 0

        def writerow(self, row: list[object]) -> None:
            self.rows += 1
            if self.rows == 6:
                raise KeyboardInterrupt
            self.writer.writerow(row)

    monkeypatch.setattr(cnnlab.data.split.csv, "writer", StoppedWriter)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(manifest, images, split)
    monkeypatch.undo()
    _, read_split = read_manifest(manifest)
    assert {part: len(indices) for part, indices in read_split.items()} == {k: len(v) for k, v in split.items()}
    assert [path.name for path in tmp_path.iterdir()] == ["split.csv"]


def test_split_folder_is_accepted(tmp_path: Path) -> None:
    for shade, (part, count) in enumerate((("train", 4), ("val", 2), ("test", 2))):
        for name, color in (("x", (255, 0, 0)), ("y", (0, 0, 255))):
            folder = tmp_path / part / name
            folder.mkdir(parents=True)
            for i in range(count):  # every image its own shade: identical files are kept once
                Image.new("RGB", (8, 8), (color[0], 10 * shade + i, color[2])).save(folder / f"{i}.png")
    images, split = split_from_folders(tmp_path, min_per_class=8)
    assert {part: len(indices) for part, indices in split.items()} == {"train": 8, "val": 4, "test": 4}
    assert all(Path(images.paths[i]).parts[-3] == "test" for i in split["test"])
    assert all(Path(images.paths[i]).parts[-3] == "train" for i in split["train"])
    with pytest.raises(CnnlabError, match="at least 9 per class"):
        split_from_folders(tmp_path, min_per_class=9)
    # an empty val/ was "val has 0 class sub-folder(s) (none); at least 2 are needed", with no remedy
    (tmp_path / "val").rename(tmp_path / "val-kept")
    (tmp_path / "val").mkdir()
    with pytest.raises(CnnlabError, match=r"val holds no images: .* train/ \(x, y\).*into val/<class>/"):
        split_from_folders(tmp_path, min_per_class=8)
    (tmp_path / "val").rmdir()
    (tmp_path / "val-kept").rename(tmp_path / "val")
    # A test image that is a copy of a training image is left out and listed: scored, it would inflate the test.
    import shutil

    shutil.copy(tmp_path / "train" / "x" / "0.png", tmp_path / "test" / "x" / "leak.png")
    images, split = split_from_folders(tmp_path, min_per_class=8)
    assert {part: len(indices) for part, indices in split.items()} == {"train": 8, "val": 4, "test": 4}
    (leak,) = [s for s in images.skipped if s.path.endswith("leak.png")]
    assert leak.label == "x" and leak.reason.startswith(
        f"a byte-identical copy of {tmp_path / 'train' / 'x' / '0.png'}"
    )


def test_a_file_named_twice_in_a_manifest_is_not_called_a_copy_of_itself(tmp_path: Path) -> None:
    # A test row naming a training image was skipped as "a byte-identical copy of photos/a.png" (its own path); a
    # file named under two labels was listed twice, each time as a copy of itself.
    from cnnlab.data.folder import describe_skipped
    from cnnlab.data.split import check_split_images

    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(paths[-1])
    images = LabelledImages([*paths, paths[0], paths[1]], [0, 1, 0, 1, 0, 0], ["x", "y"], source="manifest.csv")
    checked, split = check_split_images(images, {"train": [0, 1], "val": [], "test": [2, 3, 4, 5]})
    reasons = {(entry.path, entry.label): entry.reason for entry in checked.skipped}
    assert reasons == {
        (paths[0], "x"): "named twice; the first is kept",
        (paths[1], "x"): "named twice, labelled 'y' and 'x'; left out",
    }
    assert [checked.paths[i] for i in split["train"]] == [paths[0]]
    assert sorted(checked.paths[i] for i in split["test"]) == [paths[2], paths[3]]
    assert describe_skipped([entry.reason for entry in checked.skipped]) == "2 files skipped: 2 named twice"


@pytest.mark.parametrize("val", [0.15, 0.0])
def test_every_part_holds_every_class_of_an_unbalanced_folder(val: float) -> None:
    """A class of 3 among 300 images got no test image (scikit-learn stratifies by proportion alone: 0.45 of one), and
    the run was scored on the big class alone; a class of 2 went to train and validation only, never tested."""
    labels = [0] * 300 + [1] * 3
    for seed in range(5):
        split = stratified_split(labels, val, 0.15, seed=seed)
        assert sorted(split["train"] + split["val"] + split["test"]) == list(range(len(labels)))
        for part in ("train", "val", "test") if val else ("train", "test"):
            assert {labels[i] for i in split[part]} == {0, 1}, (seed, part, split[part][-3:])
        assert abs(len(split["test"]) - 0.15 * len(labels)) <= 2
    with pytest.raises(CnnlabError, match=r"the smallest class, 'rare', has 2\); add images to 'rare'") as refused:
        stratified_split([0] * 10 + [1] * 2, 0.15, 0.15, classes=["many", "rare"])
    assert "scikit-learn" not in str(refused.value)
    given = {"train": list(range(200)) + [300, 301], "val": [], "test": list(range(200, 300)) + [302]}
    split = validation_from_train(labels, given, 0.1)
    assert {labels[i] for i in split["val"]} == {labels[i] for i in split["train"]} == {0, 1}


@pytest.mark.parametrize(
    ("parts", "said"),
    [
        (("train", "val"), r"train/, val/ hold class sub-folders, .*: add test/ with the same class sub-folders"),
        (("Train", "Test"), r"Test/, Train/ hold class sub-folders, .*: rename Test/ to test/, Train/ to train/"),
        (("train", "valid", "test"), r"valid/ would not be read: .*; rename valid/ to val/"),
        (("training", "validation", "test"), r"rename training/ to train/, validation/ to val/"),
    ],
)
def test_a_split_folder_named_otherwise_is_refused_naming_the_folders(
    tmp_path: Path, parts: tuple[str, ...], said: str
) -> None:
    """train/ and val/ without test/, or Train/ and Test/, were read as two classes named "train" and "val" (every
    class's images under one of the two) and trained without a word; a Kaggle split's valid/ was passed over."""
    for shade, part in enumerate(parts):
        for name in ("x", "y"):
            (tmp_path / part / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (10 * shade + i, 80 if name == "x" else 160, 0)).save(
                    tmp_path / part / name / f"{i}.png"
                )
    with pytest.raises(CnnlabError, match=said):
        open_image_source(str(tmp_path), min_per_class=1)
    # a class folder named "train" (photos of trains) holds images, not class folders: a class as before
    vehicles = tmp_path / "vehicles"
    for name in ("car", "train"):
        (vehicles / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i, 50 if name == "car" else 200, 0)).save(vehicles / name / f"{i}.png")
    images, split, _ = open_image_source(str(vehicles), min_per_class=1)
    assert images.classes == ["car", "train"] and len(images) == 6 and split is None
