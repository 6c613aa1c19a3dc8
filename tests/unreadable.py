"""A folder this user cannot list, for tests: chmod 000 does not stop root (as CI runs), so `os.scandir` of it is
made to raise the PermissionError a real user would meet."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def refuse_listing(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """`os.scandir(folder)` raises PermissionError (errno 13) until the test ends; every other folder lists."""
    scandir = os.scandir

    def refused(path: str | os.PathLike[str] = ".") -> object:
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refused)
