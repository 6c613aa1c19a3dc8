"""`cnnlab data segmentation-demo`: folders in the documented format that `SegmentationFolder` reads back whole."""

from __future__ import annotations

import pytest
import torch

from cnnlab.data.paths import resolve_data_dir
from cnnlab.data.segmentation import CLASS_NAMES, SegmentationFolder
from cnnlab.data.segmentation_demo import sample_photos, write_segmentation_demo
from cnnlab.errors import CnnlabError

needs_mnist = pytest.mark.skipif(
    not any((resolve_data_dir(None) / sub / "train-images-idx3-ubyte").is_file() for sub in ("MNIST/raw", "mnist", "")),
    reason="MNIST IDX files not found ($CNNLAB_DATA)",
)


@needs_mnist
@pytest.mark.parametrize("variant", ["digits", "rgb"])
def test_demo_folder_reads_back_with_every_pair_usable(tmp_path, variant):
    summary = write_segmentation_demo(tmp_path / variant, variant, count=8, seed=3)
    folder = SegmentationFolder(tmp_path / variant, skip_bad=True)
    pairs = folder.read_all()
    assert len(pairs) == 8 and not folder.skipped
    assert folder.class_names == CLASS_NAMES
    labels = torch.cat([mask.flatten() for _, mask in pairs.values()]).unique()
    assert labels[0] == 0 and len(labels) > 2  # background and several digits
    shapes = {tuple(mask.shape) for _, mask in pairs.values()}
    if variant == "rgb":
        assert len(shapes) > 1  # mixed sizes
        image, _ = pairs[0]
        assert not torch.equal(image[0], image[1])  # colour, not grey
    else:
        assert shapes == {(64, 64)}
    assert summary["sizes"] == [
        [min(s[0] for s in shapes), min(s[1] for s in shapes)],
        [max(s[0] for s in shapes), max(s[1] for s in shapes)],
    ]
    again = write_segmentation_demo(tmp_path / "again", variant, count=8, seed=3)
    assert again["sizes"] == summary["sizes"]
    first = (tmp_path / variant / "images" / "00005.png").read_bytes()
    assert first == (tmp_path / "again" / "images" / "00005.png").read_bytes()


def test_sample_photos_are_rgb_and_offline():
    photos = sample_photos()
    assert len(photos) >= 2 and all(photo.ndim == 3 and photo.shape[-1] == 3 for photo in photos)


def test_demo_options_are_checked(tmp_path):
    with pytest.raises(CnnlabError, match="--variant"):
        write_segmentation_demo(tmp_path, "colour")
    with pytest.raises(CnnlabError, match="--count"):
        write_segmentation_demo(tmp_path, "digits", count=2)


@pytest.mark.parametrize(("typed", "meant"), [("RGB", "rgb"), ("digit", "digits"), ("Digits", "digits")])
def test_a_misspelt_variant_is_told_the_one_it_is_close_to(tmp_path, typed, meant):
    """--variant RGB or digit was told the list alone."""
    with pytest.raises(CnnlabError, match=f"--variant '{typed}' is not one of digits, rgb; did you mean {meant}\\?$"):
        write_segmentation_demo(tmp_path / "demo", typed, count=3)
    with pytest.raises(CnnlabError, match="--variant 'colour' is not one of digits, rgb$"):
        write_segmentation_demo(tmp_path / "demo", "colour", count=3)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("variant", ["digits", "rgb"])
def test_a_negative_seed_is_refused_before_any_folder_is_made(tmp_path, variant):
    """numpy's generator raised a ValueError traceback on -1, after images/ and masks/ had been made empty."""
    with pytest.raises(CnnlabError, match="--seed must be 0 or more, got -1"):
        write_segmentation_demo(tmp_path / "demo", variant, count=3, seed=-1)
    assert not (tmp_path / "demo").exists()


def _stopping_at_the_third_pair(sample):  # noqa: ANN001, ANN202
    """`sample` (the demo's maker of one pair) raising KeyboardInterrupt on its third call: Ctrl+C in the third pair."""
    calls = []

    def stopping(*args):  # noqa: ANN002, ANN202
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return sample(*args)

    return stopping


@needs_mnist  # the rgb variant draws its digits from MNIST
def test_an_interrupted_demo_trains_as_it_is_and_the_same_command_finishes_it(tmp_path, monkeypatch, capsys):
    """Ctrl+C left no classes.json and a half-written last pair, and a second run refused the folder as used. A bar
    counts the pairs (a thousand were written in silence)."""
    import sys

    import cnnlab.data.segmentation_demo as demo
    import cnnlab.train.progress
    from cnnlab.cli import main

    advanced = []

    class RecordedBar(cnnlab.train.progress.ProgressBar):
        def __init__(self, total, description, enabled=True):
            super().__init__(total, description, enabled=False)
            advanced.append(description)

        def advance(self, steps=1):
            advanced.append(steps)

    monkeypatch.setattr(cnnlab.train.progress, "ProgressBar", RecordedBar)
    sample = demo._rgb_sample
    root = tmp_path / "demo"
    monkeypatch.setattr(demo, "_rgb_sample", _stopping_at_the_third_pair(sample))
    command = ["cnnlab", "data", "segmentation-demo", str(root), "--count", "5", "--variant", "rgb", "--seed", "3"]
    monkeypatch.setattr(sys, "argv", command)
    with pytest.raises(SystemExit) as exit_code:
        main()
    assert exit_code.value.code == 130
    assert f"stopped after 2 of 5 pairs: {root} trains on them as it is" in capsys.readouterr().err
    assert advanced == ["writing 5 image + mask pairs", 1, 1]
    monkeypatch.setattr(demo, "_rgb_sample", sample)
    # as if stopped inside pair 2: its mask written, its image not yet renamed from the temporary name
    (root / "masks" / "00002.png").write_bytes(b"not this mask")
    (root / "images" / "00002.png.part").write_bytes(b"\x89PNG")
    folder = SegmentationFolder(root)  # without skip_bad: every listed image has its mask
    assert len(folder.read_all()) == 2 and not folder.skipped and folder.class_names == CLASS_NAMES

    with pytest.raises(CnnlabError, match="--variant rgb --count 5 --seed 3"):
        write_segmentation_demo(root, "rgb", count=5, seed=4)
    summary = write_segmentation_demo(root, "rgb", count=5, seed=3)
    assert summary["kept"] == 2 and demo.interrupted_demo(root) is None
    write_segmentation_demo(tmp_path / "whole", "rgb", count=5, seed=3)
    for part in ("images", "masks"):
        assert sorted(p.name for p in (root / part).iterdir()) == [f"{i:05d}.png" for i in range(5)]
        for i in range(5):
            assert (root / part / f"{i:05d}.png").read_bytes() == (
                tmp_path / "whole" / part / f"{i:05d}.png"
            ).read_bytes()
    with pytest.raises(CnnlabError, match="already holds files"):
        write_segmentation_demo(root, "rgb", count=5, seed=3)


@needs_mnist
def test_an_rgb_demo_is_not_continued_with_another_set_of_photographs(tmp_path, monkeypatch):
    """The rgb pairs are cut from sklearn's photos and scikit-image's where it is installed: a demo stopped with one
    set was continued with the other, its pairs from two streams under one seed (the same seed and count give other
    pairs without scikit-image)."""
    import cnnlab.data.segmentation_demo as demo

    sample, photos = demo._rgb_sample, demo.sample_photos()
    root = tmp_path / "demo"
    with monkeypatch.context() as patch:
        patch.setattr(demo, "_rgb_sample", _stopping_at_the_third_pair(sample))
        with pytest.raises(KeyboardInterrupt):
            write_segmentation_demo(root, "rgb", count=4, seed=3)
    with monkeypatch.context() as patch:
        patch.setattr(demo, "sample_photos", lambda: photos[:1])  # another set: as without scikit-image
        refusal = f"cut from {len(photos)} sample photographs, where this setup has 1 \\(scikit-image"
        with pytest.raises(CnnlabError, match=refusal):
            write_segmentation_demo(root, "rgb", count=4, seed=3)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["00000.png", "00001.png"]
    with pytest.raises(CnnlabError, match="other options \\(--variant rgb --count 4 --seed 3\\)"):
        write_segmentation_demo(root, "rgb", count=4, seed=4)
    assert write_segmentation_demo(root, "rgb", count=4, seed=3)["kept"] == 2  # with the photos it began with


@needs_mnist
def test_a_demo_stopped_while_it_recorded_its_options_is_still_finished(tmp_path, monkeypatch):
    """Each run that continues a demo writes its options file again; a stop while it was written left it empty, and
    every later run refused the folder: "holds an interrupted demo of other options (unreadable ...)"."""
    from pathlib import Path

    import cnnlab.data.segmentation_demo as demo

    sample = demo._rgb_sample
    root = tmp_path / "demo"
    with monkeypatch.context() as patch:
        patch.setattr(demo, "_rgb_sample", _stopping_at_the_third_pair(sample))
        with pytest.raises(KeyboardInterrupt):
            write_segmentation_demo(root, "rgb", count=5, seed=3)
    write_text, write_bytes = Path.write_text, Path.write_bytes

    def stopped_in_the_options(write):
        def stopped(path, data, *args, **kwargs):
            if not path.name.startswith(demo.PROGRESS):
                return write(path, data, *args, **kwargs)
            write(path, data[:0], *args, **kwargs)
            raise KeyboardInterrupt

        return stopped

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", stopped_in_the_options(write_text))
        patch.setattr(Path, "write_bytes", stopped_in_the_options(write_bytes))
        with pytest.raises(KeyboardInterrupt):
            write_segmentation_demo(root, "rgb", count=5, seed=3)
    summary = write_segmentation_demo(root, "rgb", count=5, seed=3)
    assert summary["kept"] == 2 and demo.interrupted_demo(root) is None
