"""A disk cache of a frozen network part's outputs, per image and per view, for cached partial fine-tuning.

What is expensive in fine-tuning on a CPU is running the lower, frozen part of the network again and again; what
must adapt is the upper part. So the lower part runs once per image and per label-preserving view, its outputs are
stored in float16, and the upper part trains on them for as many epochs as it needs.

- **Keyed**: an entry's key is a hash of everything its contents depend on: the images and labels of the part, the
  model and its weights, the cut point, the views, the preprocessing (input size, crop, mean/std, interpolation), the
  precision and the version of the files' decoding (`cnnlab.data.folder.DECODING_VERSION`). Any change gives another
  key, so a stale entry is never read; a match is reused across runs (the 3 seeds of a benchmark build it once).
  Labels are keyed by class name, and an entry stores features only: the labels it serves are the caller's own
  indices, so a run whose classes come in another order (a split read back from its manifest) reuses the entry with
  its own labels, never with the builder's.
- **Sized first**: `estimate_bytes` is printed before the build with what the cache root already holds (`held`),
  and a cache that would not fit on the disk is a `CnnlabError` that names a cheaper setting and the space the
  other entries take (an entry no run is using may be deleted; a run rebuilds what it needs).
- **In memory or memory-mapped**: an entry is one ``.npy`` file [views, images, *feature shape]; `load` reads it into
  memory when it fits comfortably in the free RAM, else memory-maps it.
- **Never half-served**: a build writes into ``<key>.partial/`` and records its progress after every batch; an
  interrupted build resumes from there, and only a finished build is renamed to ``<key>/`` and ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.data.folder import ImageDataset, LabelledImages
from cnnlab.errors import CnnlabError
from cnnlab.files import PATH_BYTES, written_then_renamed
from cnnlab.layers.views import VIEWS
from cnnlab.report.units import file_size
from cnnlab.train import Trainer
from cnnlab.train.device import available_memory_bytes
from cnnlab.train.progress import ProgressBar

__all__ = ["CACHE_FORMAT", "CachedPart", "FeatureCache", "available_memory_bytes", "images_digest"]

CACHE_FORMAT = "cnnlab-feature-cache-1"
_FEATURES = "features.npy"
_META = "meta.json"
_PROGRESS = "progress.json"
_KEY_LENGTH = 20  # hex characters of an entry's name


def images_digest(images: LabelledImages) -> str:
    """A hash of a part's images, in order, with their class names and file sizes and times (an edited file changes
    it). Paths are resolved and labels hashed by name, so the same part read back from a split manifest (absolute
    paths, classes in sorted order) has the same digest as when it was first split, and reuses its cache."""
    digest = hashlib.sha256()
    for path, label in zip(images.paths, images.labels, strict=True):
        stat = os.stat(path)
        name = images.classes[label]
        digest.update(f"{Path(path).resolve()}\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode(errors=PATH_BYTES))
    return digest.hexdigest()


@dataclass
class CachedPart:
    """A finished cache entry: the features of every view of every image, and the images' labels (the caller's
    indices, in its class order).

    Attributes:
        features: float16 [views, images, *feature_shape] (in memory or memory-mapped).
        labels: int64 [images].
        views: the view of each first index.
        seconds: how long the build took, an interrupted build's sessions together (0 when the entry was reused).
        reused: whether it came from an earlier build.
    """

    features: torch.Tensor
    labels: torch.Tensor
    views: tuple[str, ...]
    seconds: float
    reused: bool

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (view, image) pair as one sample: features [views * images, ...] view-major, labels repeated."""
        views, count = self.features.shape[:2]
        return self.features.reshape(views * count, *self.features.shape[2:]), self.labels.repeat(views)


class _Views(nn.Module):
    """The lower part applied to every view of a batch: [N, C, H, W] -> [N, views, *feature shape]."""

    def __init__(self, lower: nn.Module, views: Sequence[str]) -> None:
        super().__init__()
        self.lower = lower
        self.views = tuple(views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.lower(VIEWS[name](x).contiguous()) for name in self.views], dim=1)


class FeatureCache:
    """The cache entries under one root directory (``<runs>/transfer/feature-cache``).

    Args:
        root: where the entries live.
        log: where progress lines go.
    """

    def __init__(self, root: str | os.PathLike[str], log: Callable[[str], Any] = print) -> None:
        self.root = Path(root)
        self.log = log

    @staticmethod
    def key(spec: dict[str, Any]) -> str:
        """The entry name for `spec` (everything the contents depend on)."""
        text = json.dumps({"format": CACHE_FORMAT, **spec}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:_KEY_LENGTH]

    @staticmethod
    def estimate_bytes(images: int, views: int, feature_shape: Sequence[int]) -> int:
        """Bytes of an entry: float16 features of every view of every image."""
        return images * views * int(np.prod(feature_shape)) * 2

    def path(self, spec: dict[str, Any]) -> Path:
        return self.root / self.key(spec)

    def held(self, besides: Collection[str] = ()) -> tuple[int, int]:
        """(entries, bytes) under the root other than the entries named in `besides` (a run's own): finished entries
        and unfinished builds alike. Any of them may be deleted while no run is using it; a run rebuilds what it
        needs."""
        entries, size = 0, 0
        if self.root.is_dir():
            for entry in self.root.iterdir():
                key = entry.name.removesuffix(".partial")
                if entry.is_dir() and len(key) == _KEY_LENGTH and key not in besides:
                    entries += 1
                    size += sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
        return entries, size

    def _held_text(self, besides: Collection[str]) -> str:
        entries, size = self.held(besides)
        if not entries:
            return ""
        return (
            f"{self.root} holds {entries} other entr{'y' if entries == 1 else 'ies'} ({file_size(size)}), finished or "
            "interrupted; any may be deleted while no run uses it: a run rebuilds what it needs"
        )

    def get_or_build(
        self,
        spec: dict[str, Any],
        lower: nn.Module,
        images: LabelledImages,
        transform: Callable[[Any], torch.Tensor],
        views: Sequence[str],
        feature_shape: Sequence[int],
        *,
        device: str = "cpu",
        batch_size: int = 64,
        precision: str = "fp32",
        channels_last: bool = False,
        workers: int = 0,
        progress: bool = True,
        cheaper: str = "",
        siblings: Collection[str] = (),
    ) -> CachedPart:
        """The entry for `spec`: read when it exists, else built (or its interrupted build resumed).

        Args:
            spec: what the contents depend on (see the module docstring); its hash names the entry.
            lower: the frozen part (eval mode is set here).
            images: the part's images, in order.
            transform: image -> preprocessed tensor [C, H, W] (the evaluation transform of the weights' record).
            views: `cnnlab.layers.views` names, identity first.
            feature_shape: the lower part's output shape for one image.
            device, batch_size, precision, channels_last, workers: how the lower part runs.
            progress: show a progress bar.
            cheaper: the settings to suggest when the entry would not fit (named in the error).
            siblings: the keys of the run's other entries (its other parts), which the line on what the cache holds
                besides does not count as other entries: the train part built seconds earlier was one.

        Raises:
            CnnlabError: when the entry would not fit on the disk.
        """
        final = self.path(spec)
        if (final / _META).is_file():  # said, as a build is: a run that printed nothing looked as if it had none
            self.log(
                f"feature cache: reusing {len(images)} images x {len(views)} views x "
                f"{'x'.join(map(str, feature_shape))} float16 in {final} (built for the same settings)"
            )
            return self._load(final, views, images, seconds=0.0, reused=True)
        size = self.estimate_bytes(len(images), len(views), feature_shape)
        self.root.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.name + ".partial")
        done, seconds_before = self._progress(partial, spec)
        free = shutil.disk_usage(self.root).free
        needed = size - (size * done // max(1, len(images)))
        held = self._held_text({final.name, *siblings})
        if needed * 1.05 > free:
            raise CnnlabError(
                f"the feature cache needs {file_size(size)} ({len(images)} images x {len(views)} views x "
                f"{'x'.join(map(str, feature_shape))} float16) and only {file_size(free)} are free in {self.root}; "
                f"{cheaper or 'use fewer --views or a smaller --image-size'}"
                + (f"; or free space: {held}" if held else "")
            )
        self.log(
            f"feature cache: {len(images)} images x {len(views)} views x {'x'.join(map(str, feature_shape))} float16 "
            f"= {file_size(size)} in {final}"
            + (f" (resuming after {done} images)" if done else "")
            + (f"; {held}" if held else "")
        )
        started = time.perf_counter() - seconds_before  # a resumed build counts on from its stopped session's seconds
        self._build(partial, spec, lower, images, transform, views, feature_shape, done, device, batch_size,
                    precision, channels_last, workers, progress, started)  # fmt: skip
        seconds = time.perf_counter() - started
        meta = json.loads((partial / _PROGRESS).read_text())
        meta["seconds"] = seconds
        (partial / _META).write_text(json.dumps(meta, indent=1))
        if final.exists():  # a concurrent build finished first: keep one
            shutil.rmtree(partial)
        else:
            os.replace(partial, final)
            # the progress record goes only after the rename: removed before it, a stop in between left a finished
            # build with no record of its rows, which the next run deleted and built again from the first image
            (final / _PROGRESS).unlink(missing_ok=True)
        return self._load(final, views, images, seconds=seconds, reused=False)

    # ---------------------------------------------------------------------------------------------------- private
    @staticmethod
    def _progress(partial: Path, spec: dict[str, Any]) -> tuple[int, float]:
        """Images already done by an interrupted build of the same spec, and the seconds it took to do them (0, 0.0:
        start afresh; a record written before the seconds were kept counts none)."""
        record = partial / _PROGRESS
        if record.is_file() and (partial / _FEATURES).is_file():
            try:
                state = json.loads(record.read_text())
                if state.get("spec") == json.loads(json.dumps(spec, default=str)):
                    return int(state["done"]), float(state.get("seconds", 0.0))
            except (json.JSONDecodeError, KeyError, ValueError):
                pass
        if partial.exists():
            shutil.rmtree(partial)
        return 0, 0.0

    def _build(
        self,
        partial: Path,
        spec: dict[str, Any],
        lower: nn.Module,
        images: LabelledImages,
        transform: Callable[[Any], torch.Tensor],
        views: Sequence[str],
        feature_shape: Sequence[int],
        done: int,
        device: str,
        batch_size: int,
        precision: str,
        channels_last: bool,
        workers: int,
        progress: bool,
        started: float,
    ) -> None:
        """Compute the rows from `done` on; `started` is the `time.perf_counter()` the build's seconds count from (an
        interrupted build's seconds before it), recorded with its progress after each batch."""
        partial.mkdir(parents=True, exist_ok=True)
        shape = (len(views), len(images), *feature_shape)
        if done == 0:
            features = np.lib.format.open_memmap(partial / _FEATURES, mode="w+", dtype=np.float16, shape=shape)
            self._record(partial, spec, 0, views, time.perf_counter() - started)
        else:
            features = np.load(partial / _FEATURES, mmap_mode="r+")
        remaining = images.subset(range(done, len(images)))
        loader = DataLoader(ImageDataset(remaining, transform), batch_size=batch_size, num_workers=workers)
        runner = Trainer.for_inference(
            _Views(lower, views), device=device, batch_size=batch_size, precision=precision, channels_last=channels_last
        )
        position = done
        batches = -(-len(remaining) // batch_size)
        with ProgressBar(batches, f"caching {len(images)} images x {len(views)} views", progress) as bar:
            for outputs, _ in runner.inference(loader):
                count = len(outputs)
                features[:, position : position + count] = outputs.transpose(0, 1).cpu().numpy().astype(np.float16)
                position += count
                features.flush()
                # the rows up to `position` are on disk, and the seconds they took (a stop loses only the batch after)
                self._record(partial, spec, position, views, time.perf_counter() - started)
                bar.advance()
        del features

    @staticmethod
    def _record(partial: Path, spec: dict[str, Any], done: int, views: Sequence[str], seconds: float) -> None:
        state = {
            "spec": json.loads(json.dumps(spec, default=str)),
            "done": done,
            "views": list(views),
            "seconds": seconds,
        }
        with written_then_renamed(partial / _PROGRESS) as temporary:
            temporary.write_text(json.dumps(state))

    @staticmethod
    def _load(entry: Path, views: Sequence[str], images: LabelledImages, seconds: float, reused: bool) -> CachedPart:
        size = (entry / _FEATURES).stat().st_size
        available = available_memory_bytes()
        in_memory = available is not None and size < available // 2  # unknown: memory-mapped, which always fits
        array = np.load(
            entry / _FEATURES, mmap_mode=None if in_memory else "c"
        )  # copy-on-write: torch takes no read-only array
        # The key matched the images' paths and class *names*; their indices are the caller's (its class order).
        labels = torch.tensor(images.labels, dtype=torch.int64)
        features = torch.from_numpy(array) if in_memory else torch.from_numpy(np.asarray(array))
        return CachedPart(features, labels, tuple(views), seconds, reused)
