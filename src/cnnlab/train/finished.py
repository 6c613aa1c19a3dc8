"""A finished run read back: what ``--resume`` of a run that already finished does, the same for every task.

A run is finished once its ``results.json`` is there (each task writes it whole after its test pass). ``--resume`` of
it (and an ensemble member's process meeting a finished member) compares its options with the recorded ones first, in
the task, before any data is read; then `read_back` returns the results without training or testing anything again:

- the folder returned is where the run is now (``results.json`` names the folder it was trained in, which a copied or
  renamed run has left), and ``finished_before`` is True, which the CLI says (and prints with ``--json``);
- a report.md that a stop between results.json and report.md never wrote is written from what the run saved (the
  task's `write_report`), and a report that cannot be written from it is said, not a traceback;
- one line says which of these it was; no session is added to ``sessions.json``: nothing was done to the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = "results.json"
REPORT = "report.md"
# what the CLI says of a run read back, in place of this session's time: every `train` command the same words
FINISHED_EARLIER = "finished earlier, nothing run (--resume of a finished run)"
# the same of `train mnist --member K` (no --resume) meeting an ensemble whose members have all finished
MEMBER_FINISHED_EARLIER = "finished earlier, nothing run (--member of an ensemble whose members have all finished)"

# What a report rewritten from a finished run's files may fail on: a file missing or unreadable (metrics.json,
# config.yaml), or written by an older cnnlab without a key the report needs.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError)


def is_finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` finished: its results.json, written whole once its test pass is done, is there."""
    return (run_dir / RESULTS).is_file()


def read_back(
    run_dir: Path,
    write_report: Callable[[dict[str, Any]], None],
    log: Callable[[str], None] | None,
    write: bool = True,
) -> dict[str, Any]:
    """The results of the finished run in `run_dir` (its options already compared by the task), nothing run again.

    Args:
        run_dir: where the run is now.
        write_report: writes the run's report.md from its results (as saved) and what else the run saved; called only
            when report.md is missing.
        log: where the line saying what was done goes (``print``, with ``--quiet`` too; None: nowhere, as with
            ``--json``).
        write: whether this process writes files and says what it did (under torchrun, rank 0 alone).

    Returns:
        results.json's results with ``run_dir`` where the run is now and ``finished_before`` True.
    """
    if log is None or not write:
        log = _nowhere
    # where it is now: results.json names the folder it was trained in, which a moved or renamed run has left (a
    # report written back would be titled with the old name)
    summary = {**json.loads((run_dir / RESULTS).read_text()), "run_dir": str(run_dir)}
    report = run_dir / REPORT
    if report.is_file():
        log(f"{run_dir} is already finished; nothing to do (its report: {report})")
    else:
        try:
            if write:
                write_report(summary)
        except _UNREADABLE as error:
            log(f"{run_dir} is already finished; its report is missing, and what it saved cannot make one: {error}")
        else:
            log(f"{run_dir} is already finished; its report was missing, written from its results.json: {report}")
    return {**summary, "finished_before": True}


def _nowhere(line: str) -> None:
    """A line not said: progress off, or a process other than the one that writes."""
