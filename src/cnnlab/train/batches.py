"""Batch sources: where the engine's batches come from, kept abstract so tasks choose the fastest path.

- `TensorBatches`: tensors held in memory (on the training device) and indexed per batch. No DataLoader, no
  per-sample Python: the fast path for small datasets such as MNIST or cached features.
- `LoaderBatches`: any `torch.utils.data.DataLoader` (image folders, segmentation pairs, sharded under torchrun).

Both yield one *optimizer-step batch* `(inputs, targets)` at a time; the engine splits it into micro-batches. The
order of every epoch is a pure function of `(seed, epoch)`, so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader

Batch = tuple[Any, torch.Tensor]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that orders epoch `epoch` of a run seeded with `seed`."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))


@runtime_checkable
class BatchSource(Protocol):
    """What the engine needs from training/evaluation data."""

    def batches(self, epoch: int, seed: int, shuffle: bool, device: torch.device) -> Iterator[Batch]:
        """Yield `(inputs, targets)` on `device`; the order depends only on `(seed, epoch)` when shuffled."""
        ...

    def __len__(self) -> int:
        """Batches per epoch."""
        ...

    @property
    def num_samples(self) -> int:
        """Samples per epoch."""
        ...


class TensorBatches:
    """Batches indexed from in-memory tensors (moved to the device once, on first use).

    Args:
        inputs: [N, ...] tensor (any dtype; float conversion is the task's or the batch transform's job).
        targets: [N, ...] tensor.
        batch_size: samples per batch.
        drop_last: drop the last incomplete batch (on by default for training to keep BN statistics sane; the
            engine passes `drop_last=False` semantics for evaluation by building its own source).
        weights: a weight per sample: a shuffled epoch then draws as many samples as there are, with replacement,
            in proportion to their weights (e.g. class-balanced sampling); None shuffles without replacement.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        drop_last: bool = False,
        weights: torch.Tensor | None = None,
    ) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
        if weights is not None and len(weights) != len(inputs):
            raise ValueError(f"{len(weights)} sample weights for {len(inputs)} samples")
        self.inputs = inputs
        self.targets = targets
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.weights = weights

    def with_batch_size(self, batch_size: int, drop_last: bool | None = None) -> TensorBatches:
        """The same tensors with another batch size."""
        keep = self.drop_last if drop_last is None else drop_last
        return TensorBatches(self.inputs, self.targets, batch_size, drop_last=keep, weights=self.weights)

    @property
    def num_samples(self) -> int:
        """Samples per epoch."""
        return len(self.inputs)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch: int, seed: int, shuffle: bool, device: torch.device) -> Iterator[Batch]:
        if self.inputs.device != device:
            self.inputs, self.targets = self.inputs.to(device), self.targets.to(device)
        n = self.num_samples
        if shuffle and self.weights is not None:
            draws = torch.multinomial(
                self.weights.double(), n, replacement=True, generator=epoch_generator(seed, epoch)
            )
            order = draws.to(device)
        elif shuffle:
            order = torch.randperm(n, generator=epoch_generator(seed, epoch)).to(device)
        for i in range(len(self)):
            start, stop = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if shuffle:
                index = order[start:stop]
                yield self.inputs[index], self.targets[index]
            else:
                yield self.inputs[start:stop], self.targets[start:stop]


class LoaderBatches:
    """A DataLoader as a batch source.

    Shuffling follows the loader's own sampler; when the loader has a `generator` it is re-seeded from
    `(seed, epoch)` each epoch, and a sampler with `set_epoch` (DistributedSampler) is told the epoch, so the order
    is reproducible and resumable.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int, seed: int, shuffle: bool, device: torch.device) -> Iterator[Batch]:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # type: ignore[union-attr]
        if self.loader.generator is not None:
            self.loader.generator.manual_seed(epoch_generator(seed, epoch).initial_seed())
        non_blocking = device.type == "cuda"
        for inputs, targets in self.loader:
            yield _to_device(inputs, device, non_blocking), targets.to(device, non_blocking=non_blocking)


def _to_device(value: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device, non_blocking) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device, non_blocking) for k, v in value.items()}
    return value


def as_batch_source(data: Any, batch_size: int, drop_last: bool = False) -> BatchSource:
    """Wrap what a task hands the engine: a BatchSource as is, a DataLoader, or an `(inputs, targets)` pair."""
    if isinstance(data, TensorBatches):
        return data
    if isinstance(data, DataLoader):
        return LoaderBatches(data)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return TensorBatches(data[0], data[1], batch_size, drop_last=drop_last)
    if isinstance(data, BatchSource):
        return data
    raise TypeError(
        f"cannot use {type(data).__name__} as training data: pass (inputs, targets), a DataLoader or a BatchSource"
    )
