"""The progress bar: drawn on a terminal, nothing at all elsewhere (logs, pipes)."""

import pytest

from cnnlab.train.progress import ProgressBar


def _draw() -> None:
    with ProgressBar(3, "predicting") as bar:
        bar.advance()
        bar.show("loss 0.5")


def test_off_a_terminal_a_bar_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """It wrote an empty line when it stopped: a blank line in every log, before "interrupted" on a Ctrl+C."""
    _draw()
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_a_bar_is_drawn_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich takes the stream for a terminal
    _draw()
    out, err = capsys.readouterr()
    assert out == "" and "predicting" in err
