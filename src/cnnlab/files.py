"""Files written whole or not at all: every file cnnlab reads back later (a checkpoint's companions, a run's records,
a split, a model) goes to a temporary name beside its path and is renamed over it once complete.

Like `cnnlab.errors`, this module sits below every layer, so data, train and tasks share the one way of doing it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["written_then_renamed"]


@contextlib.contextmanager
def written_then_renamed(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that takes a file name (safetensors, JSON text, CSV rows): renamed
    over `path` when the block finishes, deleted when it does not, so that `path` holds the old file or the new one,
    never half of one. The name (``.NAME.PID.tmp``) is hidden, the process's own, and has no image suffix, so a folder
    scan never lists it; the file gets the usual permissions (`tempfile.mkstemp` makes them 0600)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
