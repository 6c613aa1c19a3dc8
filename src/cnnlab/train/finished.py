"""A finished run read back: what ``--resume`` of a run that already finished does, the same for every task.

A run is finished once its ``results.json`` is there (each task writes it whole after its test pass). ``--resume`` of
it (and an ensemble member's process meeting a finished member) compares its options with the recorded ones first, in
the task, before any data is read; then `read_back` returns the results without training or testing anything again:

- the folder returned is where the run is now (``results.json`` names the folder it was trained in, which a copied or
  renamed run has left), and ``finished_before`` is True, which the CLI says (and prints with ``--json``);
- a figure its report links that was deleted since and can be drawn again from what the run saved (its learning
  curves from metrics.json, every run's; the task's `figures`: a confusion matrix from results.json, MNIST's
  misclassified digits from its saved test probabilities) is drawn again, first, so that the report links it; one
  that needs the test pass again (the model's predictions) stays missing;
  no file that is there is rewritten;
- a report.md that a stop between results.json and report.md never wrote is written from what the run saved (the
  task's `write_report`), and a report that cannot be written from it is said, not a traceback; a report that is
  there is never rewritten (it may have been edited): a figure it links that is missing still is named in the line;
- one line says which of these it was, for the run's parts too (an ensemble's members, `Part`, read back first, each
  the same way, named by their folder); no session is added to ``sessions.json``: nothing was done to the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, first_line
from cnnlab.train.records import RESULTS, plot_learning_curves

REPORT = "report.md"
LEARNING_CURVES = "learning_curves.png"
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


def read_results(run_dir: Path) -> dict[str, Any]:
    """The results.json of the finished run in `run_dir`.

    Raises:
        CnnlabError: it cannot be read (cut short, edited, not cnnlab's): written whole by its task, it was damaged
            since (a json traceback, before); the line says how to have the run tested again.
    """
    path = run_dir / RESULTS
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(results, dict):
            raise ValueError(f"a JSON {type(results).__name__}, not the run's results")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CnnlabError(
            f"{path} cannot be read ({first_line(error)}); it holds the finished run's test results: put it back (copy "
            "the run again), or delete it and --resume to test the run again from its checkpoint"
        ) from None
    return results


def read_back(
    run_dir: Path,
    write_report: Callable[[dict[str, Any]], None],
    log: Callable[[str], None] | None,
    write: bool = True,
    figures: Mapping[str, Callable[[dict[str, Any], Path], object]] | None = None,
    parts: Sequence[Part] = (),
) -> dict[str, Any]:
    """The results of the finished run in `run_dir` (its options already compared by the task), nothing run again.

    Args:
        run_dir: where the run is now.
        write_report: writes the run's report.md from its results (as saved) and what else the run saved; called only
            when report.md is missing.
        log: where the line saying what was done goes (``print``, with ``--quiet`` too; None: nowhere, as with
            ``--json``).
        write: whether this process writes files and says what it did (under torchrun, rank 0 alone).
        figures: the task's figures that its report links and what the run saved can draw again, by file name: each
            draws it at the path given from the run's results (as saved). Drawn only when missing, as the learning
            curves are from metrics.json; one that cannot be drawn (a file unreadable, or saved by an older cnnlab
            without what it needs) stays missing, and a report written names it so.
        parts: the run's parts with results and a report of their own (an ensemble's members), read back first, the
            same way: what was done to them is said in the run's line, named by their folder (``seed1/...``).

    Returns:
        results.json's results with ``run_dir`` where the run is now and ``finished_before`` True.

    Raises:
        CnnlabError: its results.json cannot be read (`read_results`), or its saved model cannot be loaded as `predict`
            loads it (`load_model`: model.json, ensemble.json or the weights damaged or missing).
    """
    _check_saved_model(run_dir)
    if log is None or not write:
        log = _nowhere
    drawn: list[str] = []
    said: list[str] = []  # what was done to the reports, the parts' first
    for part in parts:
        name = part.run_dir.name
        _, part_drawn, part_said = _read_back_folder(part.run_dir, part.write_report, write, part.figures, f"{name}'s")
        drawn += [f"{name}/{figure}" for figure in part_drawn]
        said += part_said
    summary, run_drawn, run_said = _read_back_folder(run_dir, write_report, write, figures, "its")
    drawn += run_drawn
    line = f"{run_dir} is already finished"
    if drawn:  # "nothing to do" no more
        line += f"; {', '.join(drawn)} {'was' if len(drawn) == 1 else 'were'} missing, drawn again from what it saved"
    line += "".join(f"; {clause}" for clause in [*said, *run_said])
    if not run_said:
        report = run_dir / REPORT
        line += f" (its report: {report})" if drawn or said else f"; nothing to do (its report: {report})"
    log(line)
    return {**summary, "finished_before": True}


def _check_saved_model(run_dir: Path) -> None:
    """Refuse a finished run whose saved model `predict` would refuse (its model.json, ensemble.json or weights cut
    short, replaced or deleted), in the one line `load_model` says it in: it was read back with exit code 0, its line
    pointing at a model that no command could load. A folder that saved none of them is its task's to judge."""
    from cnnlab.train.saved import ENSEMBLE_SPEC, MODEL_SPEC, MODEL_WEIGHTS, load_model

    if any((run_dir / name).exists() for name in (MODEL_SPEC, ENSEMBLE_SPEC, MODEL_WEIGHTS)):
        load_model(run_dir)


@dataclass(frozen=True)
class Part:
    """A part of a run read back with it (`read_back`'s `parts`): its folder, its `write_report` and `figures`."""

    run_dir: Path
    write_report: Callable[[dict[str, Any]], None]
    figures: Mapping[str, Callable[[dict[str, Any], Path], object]] | None = None


def _read_back_folder(
    run_dir: Path,
    write_report: Callable[[dict[str, Any]], None],
    write: bool,
    figures: Mapping[str, Callable[[dict[str, Any], Path], object]] | None,
    whose: str,
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The run (or part) in `run_dir` read back: its results where it is now, the figures missing that were drawn
    again, and what is said of its report (`whose` report, in the line: none when it is there linking nothing missing).
    Nothing is drawn or written unless `write`."""
    # where it is now: results.json names the folder it was trained in, which a moved or renamed run has left (a
    # report written back would be titled with the old name)
    summary = {**read_results(run_dir), "run_dir": str(run_dir)}
    if not write:
        return summary, [], []
    drawn = _draw_missing(run_dir, summary, {LEARNING_CURVES: _learning_curves, **(figures or {})})
    report = run_dir / REPORT
    if report.is_file():
        if broken := _links_missing(report):  # kept as it is (it may have been edited): said, not rewritten
            them = "it" if len(broken) == 1 else "them"
            kept = f"(remove it to have it written again, naming {them} as missing): {report}"
            said = f"{whose} report links {', '.join(broken)}, not in the run folder, which what it saved cannot draw"
            return summary, drawn, [f"{said} again: the report is kept as it is {kept}"]
        return summary, drawn, []
    try:
        write_report(summary)
    except _UNREADABLE as error:
        return summary, drawn, [f"{whose} report is missing, and what it saved cannot make one: {error}"]
    return summary, drawn, [f"{whose} report was missing, written from its results.json: {report}"]


def _draw_missing(
    run_dir: Path, summary: dict[str, Any], figures: Mapping[str, Callable[[dict[str, Any], Path], object]]
) -> list[str]:
    """Draw each of `figures` missing from `run_dir` again from what the run saved; the names of those drawn."""
    drawn = []
    for name, draw in figures.items():
        path = run_dir / name
        if path.exists():  # never rewritten
            continue
        try:
            draw(summary, path)
        except _UNREADABLE:  # left missing: a report written names it so
            continue
        if path.is_file():
            drawn.append(name)
    return drawn


def _links_missing(report: Path) -> list[str]:
    """The figures that `report` links by file name (``![alt](name.png)``, as `RunReport` writes them) and that are not
    beside it, in the order it links them."""
    try:
        text = report.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    names = dict.fromkeys(re.findall(r"!\[[^\]\n]*\]\(([^)/\\\n]+)\)", text))
    return [name for name in names if not (report.parent / name).exists()]


def _learning_curves(summary: dict[str, Any], path: Path) -> None:
    """Every run's learning curves, from the metrics.json beside them (none: a run that trained no epoch, or an
    ensemble's folder, whose members have their own)."""
    metrics = path.with_name("metrics.json")
    if metrics.is_file() and (history := json.loads(metrics.read_text())):
        plot_learning_curves(history, path)


def _nowhere(line: str) -> None:
    """A line not said: progress off, or a process other than the one that writes."""
