"""Progress bars for long work (training epochs, feature caches), with rich: transient, on stderr, off when asked.

rich is cnnlab's one progress and table library; on a terminal the bar redraws in place and disappears when done,
elsewhere (CI logs, pipes) it stays silent and the work's own summary lines are what is printed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """A context manager around one rich progress bar; every method is a no-op when `enabled` is False or stderr is
    neither a terminal nor a notebook.

    Args:
        total: steps to completion.
        description: what is being done ("epoch 3/10", "caching train features").
        enabled: show it at all.
    """

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self._bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        # off a terminal rich draws nothing but still wrote an empty line when the bar stopped: a blank line in the
        # logs and in the stderr of every command that has a bar (before "interrupted", one line)
        if console.is_terminal or console.is_jupyter:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=console,
                transient=True,
            )
            self._task = self._bar.add_task(description, total=total, status="")

    def __enter__(self) -> ProgressBar:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, steps: int = 1) -> None:
        """Count `steps` more steps done."""
        if self._bar is not None:
            self._bar.advance(self._task, steps)

    def show(self, status: str) -> None:
        """Show `status` (loss, throughput, ...) after the bar."""
        if self._bar is not None:
            self._bar.update(self._task, status=status)
