"""The feature cache: reused when nothing changes, rebuilt when anything in its key does, an interrupted build
resumed and never served half-written, and a cache that would not fit refused with a cheaper setting named."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.data.folder import scan_folder
from cnnlab.errors import CnnlabError
from cnnlab.tasks.feature_cache import FeatureCache, images_digest

VIEWS = ("identity", "hflip")


def _images(root: Path, count: int = 10):  # noqa: ANN202
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count // 2):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return scan_folder(root, min_per_class=1)


def _transform(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


class _Counting(nn.Module):
    """A frozen 'lower part' that counts the images it sees and can fail after some."""

    def __init__(self, fail_after: int | None = None, seconds: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.seen = 0
        self.fail_after = fail_after
        self.seconds = seconds  # each call takes at least this long

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.seen += len(x)
        return self.conv(x)


def _spec(images, **changes: object) -> dict:  # noqa: ANN001
    spec: dict = {"images": images_digest(images), "model": "toy", "cut": "conv", "views": list(VIEWS), "size": 8}
    spec.update(changes)
    return spec


def _build(cache: FeatureCache, images, lower: nn.Module, **changes: object):  # noqa: ANN001, ANN202
    views = tuple(changes.get("views", VIEWS))  # type: ignore[arg-type]
    return cache.get_or_build(
        _spec(images, **changes), lower, images, _transform, views, (2, 8, 8), batch_size=4, progress=False
    )


def test_reused_when_nothing_changes_and_rebuilt_when_anything_does(tmp_path: Path) -> None:
    images = _images(tmp_path / "img")
    said: list[str] = []
    cache = FeatureCache(tmp_path / "cache", log=said.append)
    torch.manual_seed(0)
    lower = _Counting()
    first = _build(cache, images, lower)
    assert not first.reused and lower.seen == len(images) * len(VIEWS)
    assert len(said) == 1 and "reusing" not in said[0]
    assert first.features.dtype == torch.float16 and tuple(first.features.shape) == (2, len(images), 2, 8, 8)
    with torch.no_grad():  # the stored features are the lower part's outputs of each view
        expected = lower.conv(torch.stack([_transform(Image.open(p).convert("RGB")) for p in images.paths]).flip(-1))
    torch.testing.assert_close(first.features[1].float(), expected, atol=2e-3, rtol=2e-3)

    again = _build(cache, images, lower)
    assert again.reused and lower.seen == len(images) * len(VIEWS)  # read back: the network did not run
    assert said[-1].startswith("feature cache: reusing 10 images x 2 views")
    assert str(cache.path(_spec(images))) in said[-1]
    assert torch.equal(again.features, first.features) and torch.equal(again.labels, first.labels)
    for change in ({"model": "other"}, {"cut": "deeper"}, {"size": 16}, {"views": ["identity"]}):
        before = lower.seen
        rebuilt = _build(cache, images, lower, **change)
        assert not rebuilt.reused and lower.seen > before, change
    edited = images.subset(range(len(images) - 1))  # another split part: other images
    assert not _build(cache, edited, lower).reused


def test_an_interrupted_build_resumes_and_is_never_served_half_written(tmp_path: Path) -> None:
    images = _images(tmp_path / "img", count=12)
    cache = FeatureCache(tmp_path / "cache", log=lambda message: None)
    torch.manual_seed(0)
    broken = _Counting(fail_after=8, seconds=0.1)  # dies in the second batch of 4 images x 2 views
    with pytest.raises(KeyboardInterrupt):
        _build(cache, images, broken)
    entry = cache.path(_spec(images))
    assert not entry.exists()  # nothing finished: nothing that could be read as a cache
    progress = json.loads((entry.with_name(entry.name + ".partial") / "progress.json").read_text())
    assert progress["done"] == 4  # the first batch is on disk

    resumed_lower = _Counting(seconds=0.1)
    resumed_lower.load_state_dict(broken.state_dict())
    resumed = _build(cache, images, resumed_lower)
    assert not resumed.reused and resumed_lower.seen == (12 - 4) * len(VIEWS)  # only the rest was computed
    # The build's seconds are both sessions': its first batch (2 x 0.1 s) before the stop, the 2 others after it;
    # the stopped session's were lost, and a transfer report gave the cache the last session's seconds alone.
    assert resumed.seconds >= 0.6
    assert json.loads((entry / "meta.json").read_text())["seconds"] == resumed.seconds
    fresh = _Counting()
    fresh.load_state_dict(broken.state_dict())
    reference = FeatureCache(tmp_path / "reference", log=lambda message: None)
    whole = _build(reference, images, fresh)
    assert torch.equal(resumed.features, whole.features)  # the resumed entry equals one built in one go


def test_a_build_stopped_as_it_finished_is_not_built_again(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The progress record was deleted before the finished build was renamed into place: a stop in between left a
    whole build that the next run deleted and computed again from the first image."""
    import cnnlab.tasks.feature_cache

    images = _images(tmp_path / "img", count=12)
    cache = FeatureCache(tmp_path / "cache", log=lambda message: None)
    torch.manual_seed(0)
    lower = _Counting()
    replace = cnnlab.tasks.feature_cache.os.replace

    def stopped_at_the_entry(source: Path, target: Path) -> None:
        if str(source).endswith(".partial"):  # the finished build's rename (not a progress record's)
            raise KeyboardInterrupt
        replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(cnnlab.tasks.feature_cache.os, "replace", stopped_at_the_entry)
        with pytest.raises(KeyboardInterrupt):
            _build(cache, images, lower)
    assert lower.seen == len(images) * len(VIEWS) and not cache.path(_spec(images)).exists()
    again = _build(cache, images, lower)
    assert lower.seen == len(images) * len(VIEWS)  # none computed again
    assert not again.reused and _build(cache, images, lower).reused


def test_a_cache_that_does_not_fit_is_refused_with_a_cheaper_setting(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    images = _images(tmp_path / "img")
    cache = FeatureCache(tmp_path / "cache", log=lambda message: None)

    class Full:
        free = 1000

    with monkeypatch.context() as patched:
        patched.setattr("cnnlab.tasks.feature_cache.shutil.disk_usage", lambda path: Full())
        with pytest.raises(
            CnnlabError, match=r"the feature cache needs \d+ kB .* and only 1 kB are free.*fewer views"
        ) as refused:
            cache.get_or_build(_spec(images), _Counting(), images, _transform, VIEWS, (2, 8, 8), progress=False,
                               cheaper="use fewer views")  # fmt: skip
    assert "other entr" not in str(refused.value)  # an empty cache has nothing to delete

    lines: list[str] = []
    cache.log = lines.append
    _build(cache, images, _Counting())  # one finished entry
    with pytest.raises(KeyboardInterrupt):  # and one interrupted build
        _build(cache, images, _Counting(fail_after=4), model="other")
    on_disk = sum(f.stat().st_size for f in cache.root.rglob("*") if f.is_file())
    assert cache.held() == (2, on_disk)
    _build(cache, images, _Counting(), model="third")
    assert "holds 2 other entries" in lines[-1]  # the build line says what the cache already holds
    monkeypatch.setattr("cnnlab.tasks.feature_cache.shutil.disk_usage", lambda path: Full())
    with pytest.raises(CnnlabError, match=r"or free space: .* holds 3 other entries .*any may be deleted"):
        _build(cache, images, _Counting(), model="fourth")


def test_a_runs_own_other_parts_are_not_counted_as_other_entries(tmp_path: Path) -> None:
    # a transfer run's val part said "holds 1 other entry ... any may be deleted" of its train part, built just before
    images = _images(tmp_path / "img")
    lines: list[str] = []
    cache = FeatureCache(tmp_path / "cache", log=lines.append)
    parts = [_spec(images, part=part) for part in ("train", "val")]
    siblings = [cache.key(spec) for spec in parts]
    for spec in parts:
        cache.get_or_build(spec, _Counting(), images, _transform, VIEWS, (2, 8, 8), progress=False, siblings=siblings)
    assert len(lines) == 2 and not any("other entr" in line for line in lines)
    _build(cache, images, _Counting(), model="another run")
    assert "holds 2 other entries" in lines[-1]  # another run's build counts both


def test_a_part_read_back_from_its_split_manifest_has_the_same_digest(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from cnnlab.data.folder import LabelledImages
    from cnnlab.data.split import read_manifest, write_manifest

    images = _images(tmp_path / "data")
    latin = tmp_path / "data" / "a" / "caf\udce9.png"  # a Latin-1 name: a str with a surrogate on Linux
    Path(images.paths[0]).rename(latin)  # its digest was a UnicodeEncodeError traceback, and so was the manifest
    images.paths[0] = str(latin)
    # as a dataset may list them: relative paths, classes in their own (unsorted) order
    monkeypatch.chdir(tmp_path)
    relative = [str(Path(p).relative_to(tmp_path)) for p in images.paths]
    reordered = LabelledImages(relative, [1 - label for label in images.labels], ["b", "a"])
    split = {"train": list(range(0, 10, 2)), "val": [1, 3], "test": [5, 7, 9]}
    write_manifest(tmp_path / "split.csv", reordered, split)
    again, again_split = read_manifest(tmp_path / "split.csv")
    assert again.classes == ["a", "b"]  # sorted: other indices than the original's
    for part in ("train", "val", "test"):
        assert images_digest(again.subset(again_split[part])) == images_digest(reordered.subset(split[part]))


def test_an_entry_serves_each_caller_its_own_class_indices(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    # A run that split the data (classes in the dataset's order) builds the entry; a later run reads the same split
    # back from its manifest (classes sorted, other indices) and reuses the entry: it must get its own labels.
    from cnnlab.data.folder import LabelledImages
    from cnnlab.data.split import read_manifest, write_manifest

    images = _images(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    reordered = LabelledImages(images.paths, [1 - label for label in images.labels], ["b", "a"])
    split = {"train": list(range(0, 10, 2)), "val": [1, 3], "test": [5, 7, 9]}
    write_manifest(tmp_path / "split.csv", reordered, split)
    again, again_split = read_manifest(tmp_path / "split.csv")
    cache = FeatureCache(tmp_path / "cache")
    first = _build(cache, reordered.subset(split["train"]), _Counting())
    second = _build(cache, again.subset(again_split["train"]), _Counting())
    assert second.reused
    assert torch.equal(first.features, second.features)
    assert first.labels.tolist() == reordered.subset(split["train"]).labels
    assert second.labels.tolist() == again.subset(again_split["train"]).labels
    assert second.labels.tolist() != first.labels.tolist()  # the same images, indexed in the other class order


def test_a_system_that_does_not_say_its_free_memory_reads_the_cache_memory_mapped(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """macOS has no SC_AVPHYS_PAGES and Windows no os.sysconf: reading a built cache back raised there; now the free
    memory is unknown (None) and the cache is memory-mapped, which needs none."""
    import os

    import cnnlab.tasks.feature_cache as feature_cache

    images = _images(tmp_path / "img")
    cache = FeatureCache(tmp_path / "cache", log=lambda message: None)
    torch.manual_seed(0)
    built = _build(cache, images, _Counting())

    def no_meminfo(self: Path) -> str:
        raise FileNotFoundError(self)

    monkeypatch.setattr(feature_cache.Path, "read_text", no_meminfo)
    monkeypatch.delattr(os, "sysconf")  # as on Windows
    assert feature_cache.available_memory_bytes() is None
    opened = []
    load = np.load
    monkeypatch.setattr(
        np, "load", lambda *args, **kwargs: opened.append(kwargs.get("mmap_mode")) or load(*args, **kwargs)
    )
    again = _build(cache, images, _Counting())
    assert again.reused and opened == ["c"]
    assert torch.equal(again.features, built.features)
