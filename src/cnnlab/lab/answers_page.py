"""The lab's first page: the answer sheet that `cnnlab answers` wrote under the runs root, with its figures."""

from __future__ import annotations

import re
from pathlib import Path

SHEET = Path("answers") / "answers.md"  # `cnnlab answers` writes runs/answers/answers.md by default
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def answer_sheet(runs_root: str | Path) -> tuple[str, list[tuple[Path, str]]]:
    """The sheet's Markdown with its image links taken out, and the figures they pointed to (path, caption).

    Only figures inside the runs root that decode are returned (the text says why another cannot be shown); the page
    shows them in a gallery (the Markdown component cannot load local files). Without a sheet, a short text says how
    to write one.
    """
    from cnnlab.data.folder import check_image

    root = Path(runs_root).resolve()
    path = root / SHEET
    if not path.is_file():
        return (
            f"No answer sheet under `{root / SHEET.parent}` yet. Write one with `cnnlab answers --quick` (a few "
            f"minutes on a CPU; `--output {root / SHEET.parent}` if your runs root is not `runs`), "
            "then reload this page.",
            [],
        )
    # a sheet an editor saved in another encoding (Latin-1, a Windows code page) failed the page with a
    # UnicodeDecodeError: its odd bytes show as U+FFFD instead; utf-8-sig drops a Windows editor's byte-order mark
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    figures: list[tuple[Path, str]] = []

    def take(match: re.Match[str]) -> str:
        figure = (path.parent / match.group(2)).resolve()
        if figure.is_file() and figure.is_relative_to(root):
            reason = check_image(figure)  # a broken one failed the whole page, sheet included
            if reason is not None:
                return f"_(figure: {figure.name}, cannot be shown: {reason})_"
            figures.append((figure, match.group(1) or figure.name))
            return f"_(figure: {figure.name}, in the gallery below)_"
        return ""

    return _IMAGE.sub(take, text), figures
