"""`--help` shows every help text as written: Typer renders help with Rich markup, which silently drops a bracketed
word such as ``[relu]`` or ``cnnlab[lab]`` unless the bracket is escaped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from rich.text import Text
from typer.testing import CliRunner

from cnnlab.cli import app


def _commands(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app), ()))


def test_every_command_is_walked() -> None:
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"budget", "train transfer", "train segment", "export", "predict"} <= paths


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "cnnlab" for p, _ in COMMANDS])
def test_help_texts_survive_rich_markup(path: tuple[str, ...], command: Any) -> None:
    texts = {"(command)": command.help or ""}
    texts |= {param.name: getattr(param, "help", None) or "" for param in command.params}
    for name, text in texts.items():
        shown = Text.from_markup(text).plain
        assert shown == text.replace("\\[", "["), f"cnnlab {' '.join(path)} {name}: Rich drops part of {text!r}"


def test_budget_help_shows_the_optional_activation() -> None:
    result = CliRunner().invoke(app, ["budget", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "conv F kK sS same|valid|pN [relu]" in result.output
    assert "dense N [relu]" in result.output


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "cnnlab" for p, _ in COMMANDS])
def test_each_command_is_listed_on_one_line(path: tuple[str, ...], command: Any) -> None:
    """The command list in a group's --help shows each summary as one paragraph, not the docstring's line breaks."""
    summary = (command.short_help or command.help or "").split("\n\n")[0]
    assert "\n" not in summary, f"cnnlab {' '.join(path)} is listed with a line break: {summary!r}"


def test_the_top_level_command_list_reads_as_sentences() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    evaluate = next(line for line in result.output.splitlines() if "│ evaluate" in line)
    assert "a confusion-matrix PNG and a PNG of the misclassified images" in evaluate


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "cnnlab" for p, _ in COMMANDS])
def test_every_paragraph_of_a_command_help_is_one_line(path: tuple[str, ...], command: Any) -> None:
    """Typer's Rich help keeps a paragraph's line breaks: budget's and train segment's, wrapped at 120 columns in the
    source, came out ragged in an 80-column terminal. An indented paragraph (a command example) keeps its lines; the
    first paragraph (the summary) Typer joins itself."""
    for paragraph in (command.help or "").split("\n\n")[1:]:
        lines = paragraph.strip("\n").splitlines()
        if len(lines) > 1 and not all(line.startswith(" ") for line in lines):
            pytest.fail(f"cnnlab {' '.join(path)}: a help paragraph has line breaks: {paragraph[:80]!r}...")


def test_help_paragraphs_keep_an_indented_example() -> None:
    from cnnlab.cli.help_text import paragraphs

    text = """First line
    goes on.

      cnnlab budget resnet18
      cnnlab budget lenet5

    Last
    paragraph."""
    assert (
        paragraphs(text) == "First line goes on.\n\n  cnnlab budget resnet18\n  cnnlab budget lenet5\n\nLast paragraph."
    )


def test_help_texts_name_what_the_code_does() -> None:
    """Help that had gone stale: lab's pages (lab/app.py has an Answers tab and segments in Scan and segment),
    explain's Grad-CAM layer for a segmenter (report.explain._segmenter_cam_layer) and train segment's recipes
    (the demo, answers --quick, trains none)."""
    commands = {" ".join(path): command for path, command in COMMANDS}
    lab = " ".join(commands["lab"].help.split())
    assert "the answer sheet" in lab and "a segmentation run's masks" in lab
    cam_layer = next(p for p in commands["explain"].params if p.name == "cam_layer")
    assert "segmenter's decoder map at stride 4" in cam_layer.help
    recipe = next(p for p in commands["train segment"].params if p.name == "recipe")
    assert "demo" not in recipe.help
