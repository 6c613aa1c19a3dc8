"""Ctrl+C ends a command with exit code 130 and a line saying how to continue the run it stopped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def _interrupt(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    from cnnlab.cli import main

    monkeypatch.setattr(sys, "argv", ["cnnlab", *argv])
    with pytest.raises(SystemExit) as exit_code:
        main()
    assert exit_code.value.code == 130
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_an_interrupted_run_says_how_to_resume_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Typer turned Ctrl+C into a silent exit: the CLI's own "interrupted" line never printed, and a run named by
    its start time left the user to find its name before `--resume --name` could continue it."""
    import cnnlab.tasks.mnist
    from cnnlab.tasks import recipes

    def interrupted_mid_epoch(*_args: object, output: str = "runs", name: str | None = None, **_kwargs: object) -> None:
        recipes.note_current_run(Path(output) / "mnist" / "baseline-20261206-101500")
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", interrupted_mid_epoch)
    line = _interrupt(monkeypatch, capsys, ["train", "mnist", "--recipe", "baseline", "-o", str(tmp_path)])
    assert line == (
        f"interrupted: {tmp_path / 'mnist' / 'baseline-20261206-101500'} keeps its finished epochs; continue with the "
        "same command and --resume --name baseline-20261206-101500"
    )


def test_an_interruption_before_any_run_started_says_only_that(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import cnnlab.tasks.mnist
    from cnnlab.tasks import recipes

    def interrupted_while_loading(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", interrupted_while_loading)
    assert _interrupt(monkeypatch, capsys, ["train", "mnist"]) == "interrupted"


def test_an_interrupted_answer_sheet_is_continued_by_the_same_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The runs an exercise trains note themselves: the line named one of them with --resume, which `answers` has
    not; its finished exercises are read back by the same command."""
    from cnnlab.tasks import recipes
    from cnnlab.tasks.answers import measure

    def training_inside(_ctx: object) -> dict:
        recipes.note_current_run(tmp_path / "answers" / "mnist" / "quick-20261206-101500")
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setitem(measure.EXERCISES, 9, training_inside)
    line = _interrupt(monkeypatch, capsys, ["answers", "-e", "9", "-o", str(tmp_path / "answers")])
    assert line == (
        f"interrupted: {tmp_path / 'answers'} keeps what it finished; the same command again reads it back and goes on"
    )


def test_under_torchrun_only_rank_zero_says_how_to_continue(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl+C reaches every process of a torchrun job, and each printed the same "interrupted: ..." line."""
    import cnnlab.tasks.mnist
    from cnnlab.cli import main
    from cnnlab.tasks import recipes

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", interrupted)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(sys, "argv", ["cnnlab", "train", "mnist"])
    with pytest.raises(SystemExit) as exit_code:
        main()
    assert exit_code.value.code == 130 and "interrupted" not in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    assert _interrupt(monkeypatch, capsys, ["train", "mnist"]) == "interrupted"
