"""Durations, sizes and scores as a person reads them in a log line or a report: "8 s", "4 min 12 s", "0.3 MB",
"1.25 GB", "0.9931" or "-" for a score not measured.

A small run on a folder of a few dozen images is where most users start; "0 min" and "0 MB" told them nothing.
"""

from __future__ import annotations

__all__ = ["duration", "file_size", "score"]


def duration(seconds: float) -> str:
    """``8 s`` under a minute, ``4 min 12 s`` under ten minutes, ``38 min`` under an hour, then ``1 h 3 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 10:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if seconds < 3600 - 30:
        return f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def file_size(size: float) -> str:
    """Bytes in decimal units, as disks are sold: ``12 kB``, ``0.3 MB``, ``45 MB``, ``1.25 GB``."""
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    if size >= 1e7:
        return f"{size / 1e6:,.0f} MB"
    if size >= 1e5:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e3:.0f} kB"


def score(value: float | None) -> str:
    """An accuracy (or any fraction) to four places, ``-`` when there is none (a run without a validation set)."""
    return "-" if value is None else f"{value:.4f}"


def counted(count: int, one: str, many: str) -> str:
    """`count` things as a sentence says them: "1 test image", "12 test images", "1,500 test images"."""
    return f"{count:,} {one if count == 1 else many}"
