"""Durations and sizes in log lines and reports: a small run says seconds and kilobytes, not "0 min" and "0 MB"."""

from __future__ import annotations

import pytest

from cnnlab.report.units import duration, file_size


@pytest.mark.parametrize(
    "seconds,text",
    [(0, "0 s"), (8.4, "8 s"), (59.4, "59 s"), (59.6, "1 min"), (61, "1 min 1 s"), (252, "4 min 12 s"),
     (600, "10 min"), (2280, "38 min"), (3600, "1 h"), (3780, "1 h 3 min"), (7260, "2 h 1 min"), (-1, "0 s")],
)  # fmt: skip
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    "size,text",
    [(0, "0 kB"), (1500, "2 kB"), (250_000, "0.2 MB"), (9_940_000, "9.9 MB"), (45e6, "45 MB"), (1.25e9, "1.25 GB"),
     (2_621_440_000, "2.62 GB")],
)  # fmt: skip
def test_file_size(size: float, text: str) -> None:
    assert file_size(size) == text
