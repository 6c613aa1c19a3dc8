"""A stop (Ctrl+C, SIGTERM) while a figure is written: for tests that a file is written whole or not at all."""

from pathlib import Path

import pytest
from matplotlib.figure import Figure


def stop_savefig_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every `Figure.savefig` write its file, cut it to a third (what a kill mid-write leaves) and raise
    KeyboardInterrupt."""
    savefig = Figure.savefig

    def stopped_midway(figure: Figure, target: Path, *args: object, **kwargs: object) -> None:
        savefig(figure, target, *args, **kwargs)
        with open(target, "r+b") as f:
            f.truncate(f.seek(0, 2) // 3)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", stopped_midway)
