"""Help text as Typer's Rich help prints it well.

Typer's Rich help (the markup mode cnnlab uses, for its styles and escapes) keeps every line break of a command's
help after the first paragraph, so a paragraph wrapped at 120 columns in the source came out ragged in an 80-column
terminal: each source line wrapped again on its own.
"""

from __future__ import annotations

import inspect

__all__ = ["paragraphs"]


def paragraphs(text: str) -> str:
    """`text` (a docstring or help string) with each paragraph on one line, for the terminal to wrap.

    A paragraph whose lines are all indented (a command example) keeps its lines as written.
    """
    blocks = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        block if all(line.startswith(" ") for line in block.splitlines()) else " ".join(block.split("\n"))
        for block in blocks
    )
