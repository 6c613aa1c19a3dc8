"""report.md for every run: one small Markdown builder and the sections every task's report shares.

Each task writes ``report.md`` in its run directory with `RunReport`: a header (what ran, the command, when, on what
hardware), the task's own sections (data, test results), the training section (`add_training`: epochs, best
validation epoch, time, throughput, the learning curves) and the configuration. Figures are files next to the report,
linked by their file name, so the folder can be moved or zipped and still reads; a figure not there when the report is
written (deleted from a finished run whose report ``--resume`` writes again) is named as missing, not linked.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cnnlab.files import write_text_whole
from cnnlab.report.units import duration, score

__all__ = ["RunReport", "format_value", "markdown_table"]


def format_value(value: Any) -> str:
    """A table cell: floats to 4 significant digits (whole numbers from 1,000), None as "-", the rest as strings."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], scores: Collection[str] = ()) -> str:
    """A GitHub-flavoured Markdown table (columns of numbers right-aligned, None written "-").

    Args:
        scores: the headers of columns that hold accuracies and other fractions: their floats are written to four
            places, as the report's text and `cnnlab evaluate` write them (`cnnlab.report.units.score`), where
            `format_value`'s four significant digits gave "0.007782" beside "0.0078", and "1" for a perfect score.
    """
    rows = [list(row) for row in rows]
    fixed = [header in scores for header in headers]
    # a column of numbers with some not measured (None, written "-") is still a column of numbers
    numeric = [
        all(row[i] is None or _is_number(row[i]) for row in rows) and any(_is_number(row[i]) for row in rows)
        for i in range(len(headers))
    ]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if is_number and rows else "---" for is_number in numeric) + "|",
    ]
    lines += [
        "| "
        + " | ".join(
            score(cell) if is_score and isinstance(cell, float) else _cell_text(format_value(cell))
            for cell, is_score in zip(row, fixed, strict=False)
        )
        + " |"
        for row in rows
    ]
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell_text(text: str) -> str:
    """Text safe inside a table cell: a "|" (a class folder may be named "a|b") ended the cell and shifted every
    number after it into the wrong column; a line break ended the row."""
    return text.replace("|", "\\|").replace("\n", " ")


class RunReport:
    """Builds one run's report.md.

    Args:
        title: the report's title (e.g. "MNIST run `quick-20261203-101010`").
        summary: one paragraph under the title: what was trained on what.
        environment: the run's environment record (`cnnlab.train.config.environment_record`): command, versions,
            hardware; None to leave the header out.
    """

    def __init__(
        self,
        title: str,
        summary: str = "",
        environment: Mapping[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        self.lines: list[str] = [f"# {title}", ""]
        self._figures: dict[int, tuple[str, str]] = {}  # the line of each figure linked: its alt text and file name
        if summary:
            self.lines += [summary, ""]
        if environment:
            versions = environment.get("versions", {})
            self.lines += [
                f"- command: `{environment.get('command', '?')}`",
                f"- written: {datetime.now().strftime('%Y-%m-%d %H:%M')}, on {_hardware(environment, device)}; torch "
                f"{versions.get('torch', '?')}, cnnlab {versions.get('cnnlab', '?')}",
                "",
            ]

    def heading(self, text: str, level: int = 2) -> RunReport:
        self.lines += ["#" * level + " " + text, ""]
        return self

    def text(self, paragraph: str) -> RunReport:
        self.lines += [paragraph.strip(), ""]
        return self

    def bullets(self, items: Iterable[str]) -> RunReport:
        self.lines += [f"- {item}" for item in items] + [""]
        return self

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]], scores: Collection[str] = ()) -> RunReport:
        self.lines += [markdown_table(headers, rows, scores), ""]
        return self

    def image(self, alt: str, path: str | os.PathLike[str] | None) -> RunReport:
        """Link a figure by its file name (it lives next to report.md); nothing when there is no figure. One that is not
        next to the report when it is written is named as missing instead (`write`)."""
        if path is not None:
            self._figures[len(self.lines)] = (alt, Path(path).name)
            self.lines += [f"![{alt}]({Path(path).name})", ""]
        return self

    def add_training(
        self,
        history: Sequence[Mapping[str, float]],
        monitor: str | None = None,
        curves: str | None = "learning_curves.png",
    ) -> RunReport:
        """The training section: one row per epoch (loss, accuracy-like metrics, time) and the learning curves."""
        self.heading("Training")
        if not history:
            return self.text("No epoch was trained in this run.")
        keys = [k for k in history[0] if k.startswith(("train_", "val_")) and not k.endswith("seconds")]
        rows = [[int(row["epoch"]), *(row.get(k) for k in keys), row.get("epoch_seconds")] for row in history]
        self.table(["epoch", *keys, "seconds"], rows, scores=[k for k in keys if not k.endswith("loss")])
        if monitor and all(monitor in row for row in history):
            best = (
                max(history, key=lambda row: row[monitor])
                if not monitor.endswith("loss")
                else min(history, key=lambda row: row[monitor])
            )
            self.text(f"Best {monitor}: {best[monitor]:.4f} at epoch {int(best['epoch'])}.")
        return self.image("learning curves", curves)

    def add_sessions(self, sessions: Sequence[Mapping[str, Any]]) -> RunReport:
        """The sessions of a run continued with --resume (`cnnlab.train.records.RunSessions`): the epoch it was resumed
        from, each session's command, epochs and wall time, and their total, unknown where a session could not record
        its own (killed outright); nothing for a run of one session, whose command the header names."""
        if len(sessions) < 2:
            return self
        self.heading("Sessions")
        first = sessions[-1].get("first_epoch")  # None: a task whose sessions do not count epochs
        resumed_after = "" if first is None else (f", last resumed after epoch {first}" if first else ", the last "
                                                  "started before any epoch had finished")  # fmt: skip
        known = [_wall(s) for s in sessions if _wall(s) is not None]
        unknown = [str(number) for number, s in enumerate(sessions, 1) if _wall(s) is None]
        if not unknown:
            total = f"Wall time of all sessions: **{duration(sum(known))}**."
        else:
            total = (
                f"Wall time of all sessions: **unknown**: session{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)} recorded no wall time (stopped outright, by SIGKILL or a power loss, run "
                f"before cnnlab recorded sessions, or its record unreadable); the others took {duration(sum(known))}."
            )
        self.text(f"This run was continued with --resume: {len(sessions)} sessions{resumed_after}. {total}")
        rows = [[number, *_session_cells(s)] for number, s in enumerate(sessions, 1)]
        return self.table(["session", *_SESSION_COLUMNS], rows)

    def add_member_sessions(self, members: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> RunReport:
        """The sessions of an ensemble's members, each a run of its own (`add_sessions` in its report): one row per
        session of each member, and the wall time they add up to; nothing when no member has any."""
        rows = [
            [member, number, *_session_cells(s)] for member, sessions in members for number, s in enumerate(sessions, 1)
        ]
        if not rows:
            return self
        self.heading("Sessions")
        known = [_wall(s) for _, sessions in members for s in sessions if _wall(s) is not None]
        total = duration(sum(known)) if len(known) == len(rows) else "unknown (a session recorded none)"
        self.text(
            f"Each member's sessions (the commands that trained it, in its sessions.json): {len(rows)} in all, wall "
            f"time **{total}** added up (members trained at once, by `--member`, overlap)."
        )
        return self.table(["member", "session", *_SESSION_COLUMNS], rows)

    def add_config(self, config: Mapping[str, Any]) -> RunReport:
        """The configuration, one option per row (the full record is config.yaml)."""
        self.heading("Configuration")
        rows = [[key, _short(value)] for key, value in config.items()]
        return self.table(["option", "value"], rows)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report to `path`, its figures linked where they are beside it. A figure that is not (deleted from a
        finished run whose report.md ``--resume`` wrote again) is named as missing: a link to it showed a broken image.
        """
        path = Path(path)
        lines = list(self.lines)
        for index, (alt, name) in self._figures.items():
            if not (path.parent / name).is_file():
                lines[index] = f"_Figure not shown ({alt}): `{name}` is not in the run folder._"
        return write_text_whole(path, "\n".join(lines).rstrip() + "\n")


def _hardware(environment: Mapping[str, Any], device: str | None) -> str:
    """What the run trained on: the GPU when its device was one, else the CPU with its cores and the threads torch
    used. The line named the machine's GPU whenever it had one, so a ``--device cpu`` run read as a GPU run."""
    hardware = environment.get("hardware", {})
    gpu = hardware.get("cuda")
    if gpu and device is not None and device.startswith("cuda"):
        return str(gpu)
    cores = hardware.get("cpu_count", "?")
    cpu = f"{hardware.get('cpu', 'CPU')}, {cores} cores"
    threads = hardware.get("torch_threads")
    if threads is not None and threads != cores:
        cpu += f" ({threads} torch thread{'' if threads == 1 else 's'})"
    if device is None and gpu:  # not told which: the machine's CPU and GPU both
        return f"{cpu} and {gpu}"
    if device is not None and device.split(":")[0] not in ("cpu", "cuda"):  # mps, xpu: that device, on this CPU
        return f"{device} ({cpu})"
    return cpu


_SESSION_COLUMNS = ["started (UTC)", "command", "epochs", "wall time", "ended"]


def _session_cells(session: Mapping[str, Any]) -> list[str]:
    """A session's row after its number: `_SESSION_COLUMNS`."""
    wall = _wall(session)
    return [session.get("started") or "?", f"`{session.get('command') or '?'}`", _session_epochs(session),
            "unknown" if wall is None else duration(wall), _session_end(session)]  # fmt: skip


def _wall(session: Mapping[str, Any]) -> float | None:
    """A session's wall seconds; None when unknown (not recorded, or not a number: a record edited by hand)."""
    wall = session.get("wall_seconds")
    return float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) and wall >= 0 else None


def _session_epochs(session: Mapping[str, Any]) -> str:
    """The epochs a session finished, numbered from 1 across the run: ``3-5``, ``none``, ``none (stopped while
    loading MNIST)`` for one stopped before it trained, ``?`` (not known), or ``-`` for a task whose sessions do not
    count epochs."""
    if "preparing" in session:  # it stopped before its training began
        doing = session["preparing"]
        return f"none (stopped while {doing})" if doing and session.get("ended") != "finished" else "none"
    first, last = session.get("first_epoch"), session.get("last_epoch")
    if "first_epoch" in session and first is None:
        return "-"
    if first is None or last is None:
        return "?"
    if last <= first:
        return "none"
    return str(last) if last == first + 1 else f"{first + 1}-{last}"


def _session_end(session: Mapping[str, Any]) -> str:
    if session.get("unreadable"):
        return "not known (the run's sessions.json was unreadable; these are its earlier sessions)"
    if session.get("recorded") is False:
        return "not recorded (the run was saved before cnnlab recorded sessions)"
    ended = session.get("ended") or "not recorded (stopped outright)"
    error = session.get("error")
    return f"{ended} ({error})" if isinstance(error, str) and error else ended  # the table keeps a "|" in its cell


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 100 else text[:97] + "..."
