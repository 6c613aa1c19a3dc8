"""The lab's first page: the answer sheet that `cnnlab answers` wrote under the runs root, with its figures."""

from __future__ import annotations

import re
from pathlib import Path

SHEET = Path("answers") / "answers.md"  # `cnnlab answers` writes runs/answers/answers.md by default
RECORD = "answers.json"  # beside it: every result, saved as each exercise finishes; the sheet is written at the end
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def answer_sheet(runs_root: str | Path) -> tuple[str, list[tuple[Path, str]]]:
    """The sheet's Markdown with its image links taken out, and the figures they pointed to (path, caption).

    Only figures inside the runs root that decode are returned (the text says why another inside it cannot be shown:
    missing, or broken; one outside it is left out unnamed); the page shows them in a gallery (the Markdown component
    cannot load local files). Without a sheet, a short text says how to write one.
    """
    from cnnlab.data.folder import check_image

    root = Path(runs_root).resolve()
    folder = _sheet_folder(root)
    path = folder / SHEET.name
    if not path.is_file():
        return _no_sheet(folder), []
    try:
        # a sheet an editor saved in another encoding (Latin-1, a Windows code page) failed the page with a
        # UnicodeDecodeError: its odd bytes show as U+FFFD instead; utf-8-sig drops a Windows editor's byte-order mark
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as error:  # was a traceback in the page, the sheet's place left blank
        return (
            f"The answer sheet `{path}` cannot be read ({error.strerror or error}): give this user read permission, "
            "then reload this page.",
            [],
        )
    if not text.strip():  # was a blank page
        return f"The answer sheet `{path}` is empty. {_write_hint(folder)}", []
    figures: list[tuple[Path, str]] = []

    def take(match: re.Match[str]) -> str:
        figure = (path.parent / match.group(2)).resolve()
        if not figure.is_relative_to(root):
            return ""  # not shown, nor named
        # a broken one failed the whole page, sheet included; a missing one (deleted, or a sheet copied without its
        # figures) was dropped unsaid, the text around it pointing at nothing
        reason = check_image(figure) if figure.is_file() else "not found"
        if reason is not None:
            return f"_(figure: {figure.name}, cannot be shown: {reason})_"
        figures.append((figure, match.group(1) or figure.name))
        return f"_(figure: {figure.name}, in the gallery below)_"

    return _IMAGE.sub(take, text), figures


def _sheet_folder(root: Path) -> Path:
    """Where the sheet is: ``ROOT/answers/``, or the runs root itself when the lab was given the folder `cnnlab
    answers --output` wrote (``cnnlab lab --runs runs/answers``: it said "no answer sheet" of a sheet right there,
    and pointed at ``runs/answers/answers``); the first that holds a sheet, else a record, else ``ROOT/answers/``."""
    folders = (root / SHEET.parent, root)
    for name in (SHEET.name, RECORD):
        found = next((folder for folder in folders if (folder / name).is_file()), None)
        if found is not None:
            return found
    return folders[0]


def _write_hint(folder: Path) -> str:
    return (
        f"Write one with `cnnlab answers --quick` (a few minutes on a CPU; `--output {folder}` if your runs root is "
        "not `runs`), then reload this page."
    )


def _no_sheet(folder: Path) -> str:
    """What the page says where no sheet is: how to write one, or, where an interrupted `cnnlab answers` left its
    record, how many exercises it measured and the command that continues it (the page read "no answer sheet yet",
    pointing at ``--quick``, which measures a ``--full`` record's exercises again)."""
    import json

    from cnnlab.tasks.answers.measure import EXERCISES

    record = folder / RECORD
    if not record.is_file():
        return f"No answer sheet under `{folder}` yet. {_write_hint(folder)}"
    try:
        results = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: cut short, not JSON, not UTF-8
        reason = getattr(error, "strerror", None) or "not an answer sheet's record"
        return (
            f"No answer sheet under `{folder}` yet, and its `{RECORD}` cannot be read ({reason}): `cnnlab answers` "
            f"measures every exercise again and replaces it. {_write_hint(folder)}"
        )
    meta = results.get("meta") if isinstance(results, dict) else None
    exercises = results.get("exercises") if isinstance(results, dict) else None
    if not isinstance(exercises, dict) or not isinstance(meta, dict):
        return (
            f"No answer sheet under `{folder}` yet, and its `{RECORD}` is not an answer sheet's record: `cnnlab "
            f"answers` measures every exercise again and replaces it. {_write_hint(folder)}"
        )
    mode = f" --{meta['mode']}" if meta.get("mode") in ("quick", "full") else ""  # the flags of `cnnlab answers`
    measured = sorted(
        int(key)
        for key, value in exercises.items()
        if key.isdigit() and int(key) in EXERCISES and isinstance(value, dict) and "error" not in value
    )
    done = f" ({', '.join(map(str, measured))})" if measured else ""
    return (
        f"No answer sheet under `{folder}` yet: `cnnlab answers{mode}` has measured {len(measured)} of "
        f"{len(EXERCISES)} exercises{done} into its `{RECORD}`, and writes the sheet when all are done. If it was "
        f"interrupted, `cnnlab answers{mode} --output {folder}` continues it (what was measured is read back, not "
        "measured again); then reload this page."
    )
