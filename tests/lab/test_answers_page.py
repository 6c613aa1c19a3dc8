"""The lab's Answers page: the sheet under the runs root, its figures in a gallery, nothing from outside the root."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cnnlab.lab.answers_page import answer_sheet


def test_without_a_sheet_the_page_says_how_to_write_one(tmp_path: Path) -> None:
    text, figures = answer_sheet(tmp_path)
    assert "cnnlab answers --quick" in text and figures == []


def test_the_answers_folder_itself_as_the_runs_root_shows_its_sheet(tmp_path: Path) -> None:
    """`cnnlab lab --runs runs/answers` (the folder `cnnlab answers` wrote) said there was no sheet, pointing at
    `--output runs/answers/answers`."""
    Image.new("RGB", (4, 4)).save(tmp_path / "plot.png")
    (tmp_path / "answers.md").write_text("## Exercise 1\n\n![plot](plot.png)\n")
    text, figures = answer_sheet(tmp_path)
    assert text.startswith("## Exercise 1") and figures == [((tmp_path / "plot.png").resolve(), "plot")]
    (tmp_path / "answers").mkdir()  # a sheet under RUNS/answers/, where `cnnlab answers` writes it, comes first
    (tmp_path / "answers" / "answers.md").write_text("## Exercise 2\n")
    assert answer_sheet(tmp_path)[0] == "## Exercise 2\n"


def test_figures_inside_the_root_go_to_the_gallery_missing_ones_are_named_others_dropped(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "answers"
    (folder / "figures").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(folder / "figures" / "scan.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    (folder / "answers.md").write_text(
        "## Exercise 7\n\n![scan](figures/scan.png) ![secret](../../outside.png) ![gone](figures/missing.png)\n"
    )
    text, figures = answer_sheet(tmp_path / "runs")
    assert figures == [((folder / "figures" / "scan.png").resolve(), "scan")]
    assert "## Exercise 7" in text and "![" not in text and "outside" not in text
    # a missing figure was dropped unsaid, the sheet's words pointing at nothing
    assert "_(figure: missing.png, cannot be shown: not found)_" in text


def test_a_figure_that_does_not_decode_is_named_in_the_text_not_sent_to_the_gallery(tmp_path: Path) -> None:
    """A broken figure reached the gallery, whose decoding failed the whole Answers page, sheet included."""
    folder = tmp_path / "answers"
    folder.mkdir()
    Image.effect_noise((64, 64), 50).save(folder / "good.png")
    (folder / "cut.png").write_bytes((folder / "good.png").read_bytes()[:2000])
    (folder / "answers.md").write_text("![good](good.png) ![cut](cut.png)\n")
    text, figures = answer_sheet(tmp_path)
    assert figures == [((folder / "good.png").resolve(), "good")]
    assert "_(figure: cut.png, cannot be shown: corrupt or truncated" in text


def test_a_sheet_saved_in_another_encoding_is_shown_not_refused(tmp_path: Path) -> None:
    """A sheet an editor saved in Latin-1 failed the Answers page with a UnicodeDecodeError."""
    folder = tmp_path / "answers"
    folder.mkdir()
    (folder / "answers.md").write_bytes("# Réponses\n\nExercise 1\n".encode("latin-1"))
    text, figures = answer_sheet(tmp_path)
    assert text == "# R\ufffdponses\n\nExercise 1\n" and figures == []
    # saved as UTF-8 with a byte-order mark (a Windows editor): the mark is not part of the first heading
    (folder / "answers.md").write_bytes("# Réponses\n".encode("utf-8-sig"))
    assert answer_sheet(tmp_path)[0] == "# Réponses\n"


def test_an_empty_or_unreadable_sheet_is_said_not_a_blank_page_or_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty answers.md showed a blank page; one this user cannot read failed the page with a PermissionError."""
    folder = tmp_path / "answers"
    folder.mkdir()
    (folder / "answers.md").write_text("\n \n")
    text, figures = answer_sheet(tmp_path)
    assert text.startswith(f"The answer sheet `{folder / 'answers.md'}` is empty.") and figures == []
    assert "cnnlab answers --quick" in text
    sheet = folder / "answers.md"
    read_text = Path.read_text

    def refused(path: Path, *args: object, **kwargs: object) -> str:  # chmod 000 does not stop root, as CI runs
        if path == sheet:
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refused)
    text, figures = answer_sheet(tmp_path)
    assert text.startswith(f"The answer sheet `{sheet}` cannot be read (Permission denied)") and figures == []


def test_an_unfinished_answers_record_without_a_sheet_says_how_to_continue_it(tmp_path: Path) -> None:
    """An interrupted `cnnlab answers --full` leaves answers.json and no answers.md: the page said "no answer sheet
    yet" and pointed at `--quick`, which measures the full record's exercises all over again."""
    import json

    folder = tmp_path / "answers"
    folder.mkdir()
    record = {"meta": {"mode": "full"}, "exercises": {"1": {"seconds": 3}, "2": {"seconds": 1}, "3": {"error": "x"}}}
    (folder / "answers.json").write_text(json.dumps(record))
    text, figures = answer_sheet(tmp_path)
    assert "`cnnlab answers --full` has measured 2 of 10 exercises (1, 2)" in text and figures == []
    assert f"`cnnlab answers --full --output {folder}` continues it" in text and "--quick" not in text
    for broken in ('{"meta": {"mode": "fu', "[1, 2]", "\xff\xfe"):  # cut short, not a record, not UTF-8
        (folder / "answers.json").write_bytes(broken.encode("latin-1"))
        text, figures = answer_sheet(tmp_path)
        assert "its `answers.json` cannot be read" in text or "is not an answer sheet's record" in text, broken
        assert "measures every exercise again" in text and "cnnlab answers --quick" in text and figures == []
