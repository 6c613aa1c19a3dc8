"""Live-memory accounting at the dispatch level: the bytes of every tensor storage alive, op by op, and their peak.

`LiveTensorTracker` is the counter that `cnnlab.budget.trace` uses to estimate a step's peak on the meta device and
that `cnnlab.train.oom.SimulatedMemoryLimit` uses to play a small GPU on any device.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveTensorTracker"]


class LiveTensorTracker(TorchDispatchMode):
    """Tracks the bytes of live tensor storages op by op and remembers the peak.

    Tensors passed to `add_existing` (parameters, the input) count from the start. Works on any device, meta included.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._keys: set[int] = set()

    def add_existing(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self._track(tensor)

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._keys:
            return
        nbytes = storage.nbytes()
        self._keys.add(key)
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._release, key, nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        if key in self._keys:
            self._keys.discard(key)
            self.live_bytes -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)
        return out
