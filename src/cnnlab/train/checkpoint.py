"""Atomic checkpoints that load with `torch.load(weights_only=True)`.

A checkpoint is written to a temporary file in the same directory (`cnnlab.files.written_then_renamed`, as every
file cnnlab reads back), flushed to disk (fsync), then renamed over the old one with `os.replace`, so a crash at any
moment leaves either the old or the new checkpoint, never half of one.
RNG states are stored as tensors and plain lists so the restricted unpickler accepts them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.files import written_then_renamed

CHECKPOINT_NAME = "checkpoint.pt"  # a run's checkpoint inside its run directory


def run_in_the_way(run_dir: str | os.PathLike[str]) -> CnnlabError:
    """The error for a run started, without --resume or --overwrite, where a run already is."""
    return CnnlabError(
        f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, or choose another "
        "--name"
    )


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """`torch.save` to `path` atomically: under `cnnlab.files.written_then_renamed`'s temporary name (this process's
    own; a killed save's is swept by a later one once its process is gone, never while another process writes it),
    flushed to disk (fsync) before the rename, and the rename itself made durable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_then_renamed(path) as temporary, open(temporary, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `atomic_save` (weights_only=True: no arbitrary code runs)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CnnlabError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CnnlabError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error})") from None


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors/lists."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
