"""The one exception type a user sees: the CLI prints its message on one line and exits with code 2."""

from __future__ import annotations

import os
from collections.abc import Sequence


class CnnlabError(ValueError):
    """An error in the user's input (a spec, a path, a dataset, an option), with a message saying what to do."""


def listed(items: Sequence[str], limit: int) -> str:
    """``items`` joined by commas for a one-line message, cut after ``limit`` with the number left out
    ("a, b, c and 5 more")."""
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


def why_not_a_folder(path: str | os.PathLike[str]) -> str:
    """Why a path given as a folder is not one, for a message: "does not exist" or "is a file"."""
    return "is a file" if os.path.exists(path) else "does not exist"


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message, for a one-line message (yaml's and json's run over several), else its
    type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
