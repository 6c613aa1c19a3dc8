"""benchmarks/budget.py's table, where `budget --measure` has no finite ratio to give."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from benchmark_script import load_benchmark


def test_a_step_that_saved_nothing_is_shown_as_a_dash_and_its_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It formatted every ratio with :.4f and crashed (TypeError) on the null that --measure gives, with a note, when
    a real step saved 0 bytes; torchinfo's pass over the saved bytes divided by that 0."""
    script = load_benchmark("budget")
    note = "the real step held 0 bytes against an estimate of 4,096: no finite ratio"
    measured = {
        "peak_live_bytes": 2_000_000,
        "saved_for_backward_bytes": 0,
        "saved_ratio": None,
        "saved_ratio_note": note,
        "peak_ratio": 1.25,
    }
    report = SimpleNamespace(measured=measured, training={"total_bytes": 3_000_000})
    monkeypatch.setattr(script, "cases", lambda: [("frozen net", ["conv 2 k3"], (1, 8, 8), 2)])
    monkeypatch.setattr(script, "budget", lambda *args, **kwargs: report)
    monkeypatch.setattr(script, "torchinfo_sizes", lambda *args: (1_000, 5_000_000))  # torchinfo is not installed
    monkeypatch.setattr(sys, "argv", ["budget.py"])
    script.main()
    out = capsys.readouterr().out
    assert "| frozen net | 0.0 | 2.0 | - | 1.2500 | 1.500 | - | 2.500 |" in out
    assert f"frozen net: {note}" in out


def test_a_step_whose_peak_was_zero_gives_dashes_and_a_note_not_a_division_by_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The textbook and torchinfo totals were divided by the measured peak unguarded: ZeroDivisionError where the real
    step held nothing live (budget --measure itself gives its ratio as 1.0 when the estimate is 0 too)."""
    script = load_benchmark("budget")
    measured = {"peak_live_bytes": 0, "saved_for_backward_bytes": 0, "saved_ratio": 1.0, "peak_ratio": 1.0}
    report = SimpleNamespace(measured=measured, training={"total_bytes": 64})
    monkeypatch.setattr(script, "cases", lambda: [("nothing kept", ["flatten"], (1, 2, 2), 1)])
    monkeypatch.setattr(script, "budget", lambda *args, **kwargs: report)
    monkeypatch.setattr(script, "torchinfo_sizes", lambda *args: (0, 16))  # torchinfo is not installed
    monkeypatch.setattr(sys, "argv", ["budget.py"])
    script.main()
    out = capsys.readouterr().out
    assert "| nothing kept | 0.0 | 0.0 | 1.0000 | 1.0000 | - | - | - |" in out
    assert "nothing kept: the real step's peak of live tensors was 0 bytes: no total has a finite ratio to it" in out
