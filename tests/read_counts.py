"""Counting the reads of a folder's files: a stand-in for `Path.read_bytes`, which the tests that check each image or
mask is read once (not hashed, then read again to decode) set with their monkeypatch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def read_bytes_noting(folder: Path, reads: list[str]) -> Callable[[Path], bytes]:
    """`Path.read_bytes` (as it is now) that also appends to `reads` the name of each file directly in `folder` it
    reads; set it with ``monkeypatch.setattr(Path, "read_bytes", ...)``."""
    read_bytes = Path.read_bytes

    def counted_read_bytes(path: Path) -> bytes:
        if path.parent == folder:
            reads.append(path.name)
        return read_bytes(path)

    return counted_read_bytes
