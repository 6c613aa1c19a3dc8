"""The lab's Answers page: the sheet under the runs root, its figures in a gallery, nothing from outside the root."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from cnnlab.lab.answers_page import answer_sheet


def test_without_a_sheet_the_page_says_how_to_write_one(tmp_path: Path) -> None:
    text, figures = answer_sheet(tmp_path)
    assert "cnnlab answers --quick" in text and figures == []


def test_figures_inside_the_root_go_to_the_gallery_and_others_are_dropped(tmp_path: Path) -> None:
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
