"""The records every run writes: ``metrics.json``, ``metrics.csv`` and ``learning_curves.png`` per epoch, and
``sessions.json``, each command that worked on the run.

The engine writes the metrics after every epoch (the plot only when an epoch is long enough for its ~0.5 s not to
matter), so an interrupted run still has its curves; tasks with several phases merge their phases' histories with
`write_history`. A task keeps its sessions with `RunSessions`: a run continued with --resume is the work of several
commands, and its report names each, with its wall time.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import time
import types
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, first_line
from cnnlab.files import pid_namespace, process_alive, save_figure_whole, write_text_whole, written_then_renamed
from cnnlab.train.config import command_line

__all__ = [
    "SESSIONS",
    "RunSessions",
    "SessionsRecordWarning",
    "epoch_axis",
    "last_session",
    "live_session",
    "plot_learning_curves",
    "read_sessions",
    "unended_session",
    "write_history",
]

SESSIONS = "sessions.json"
RESULTS = "results.json"  # a finished run's, written by its task after its last session ends
# A finished run of `cnnlab experiment` keeps its weights and its record under these names (no model.json): named here,
# below the tasks, so that `cnnlab.train.saved` can say what such a folder is when it is given to evaluate or predict.
EXPERIMENT_FINISHED = "finished.json"  # written last, after the weights: its presence means the run is complete
EXPERIMENT_WEIGHTS = "finished.safetensors"


class SessionsRecordWarning(UserWarning):
    """A run's sessions.json is not as cnnlab writes it (cut short, or edited by hand): what could not be read is
    unknown, and the run goes on."""


def write_history(history: Sequence[dict[str, float]], run_dir: str | os.PathLike[str], plot: bool = True) -> None:
    """Write `history` (one dict per epoch) as ``metrics.json`` and ``metrics.csv`` in `run_dir`, and the learning
    curves as ``learning_curves.png`` when `plot` is set."""
    run_dir = Path(run_dir)
    write_text_whole(run_dir / "metrics.json", json.dumps(list(history), indent=1))
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    # Rewritten whole every epoch from the history (a resumed run's comes from its checkpoint), never appended to:
    # a kill mid-write leaves the previous epoch's file, and a resume the rows of the epochs it kept.
    with written_then_renamed(run_dir / "metrics.csv") as partial, open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    if plot and history:
        plot_learning_curves(history, run_dir / "learning_curves.png")


def plot_learning_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Plot losses (left) and every other train_/val_ metric (right) against the epoch; returns `path`.

    Rows with a ``phase`` (a transfer run's head and fine-tuning phases, numbered across them) are drawn phase by
    phase: each curve breaks at a phase's end, where a dotted line and the phase's name mark it. Joined, the curve
    read as one continuous training, though the next phase starts from the best epoch's weights with another part of
    the network trained and a new schedule.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    phases = [(name, list(rows)) for name, rows in itertools.groupby(history, key=lambda row: row.get("phase"))]
    keys = sorted({k for row in history for k in row if k.startswith(("train_", "val_", "test_"))})
    loss_keys = [k for k in keys if k.endswith("loss")]
    other_keys = [k for k in keys if not k.endswith("loss")]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, group, title in ((loss_axis, loss_keys, "loss"), (metric_axis, other_keys, "metrics")):
        for key in group:
            color = None
            for index, (_, rows) in enumerate(phases):
                (line,) = axis.plot(
                    [row["epoch"] for row in rows],
                    [row.get(key, float("nan")) for row in rows],
                    marker="o",
                    color=color,
                    label=key if index == 0 else None,
                )
                color = line.get_color()
        if len(phases) > 1:
            for index, (name, rows) in enumerate(phases):
                if index:  # between the last epoch of the phase before and this phase's first
                    axis.axvline(rows[0]["epoch"] - 0.5, color="gray", linestyle=":", linewidth=1)
                axis.text(rows[0]["epoch"] - 0.4, 1.0, f" {name}", transform=axis.get_xaxis_transform(),
                          va="top", fontsize=8, color="gray")  # fmt: skip
        epoch_axis(axis, title)
        if group:
            axis.legend()
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=100)
    plt.close(figure)
    return path


def epoch_axis(axis: Any, title: str = "") -> None:
    """Label a learning-curve axis: whole epochs on x (matplotlib's ticks fell on 1.5, 2.5 ...), a title, a grid."""
    from matplotlib.ticker import MaxNLocator

    # min_n_ticks=1: with the default 2, a one-epoch run's view (0.945 to 1.055) holds one integer, and the locator
    # gave up on integers and ticked 0.945, 0.96 ... 1.05.
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_xlabel("epoch")
    axis.set_title(title)
    axis.grid(alpha=0.3)


class RunSessions:
    """The sessions of one run (each command that worked on it), kept in its ``sessions.json`` across --resume.

    A session is one entry: ``command`` (as typed), ``started`` (UTC, ISO 8601: when its wall time began, the command's
    start), ``first_epoch`` (the epochs finished before it) and ``last_epoch`` (finished when it stopped; None where the
    task has no epochs of its own), ``wall_seconds`` and ``ended`` (``finished``, ``interrupted`` or ``failed``, with
    ``error``, the exception that ended it, named with its message's first line), and ``preparing`` while it has trained
    nothing yet: what it was doing then (`doing`: ``loading MNIST``, ``building the feature cache``; None when not
    said). It is written when the session's work on the run folder begins (`begin`: the folder is then checked against
    --resume/--overwrite; a command refused before it writes nothing), again after each epoch (`epoch_done`), and when
    it ends (`end`, which a ``with`` block calls for an exception: Ctrl+C and SIGTERM reach it as KeyboardInterrupt),
    each time whole. A session of a run with earlier sessions (--resume) stopped before it began (reading its data, a
    ``with`` block around that work) is recorded too, as one that trained nothing: its wall time is the run's. It is
    written as that work begins (`doing`), so that a kill then leaves it too; a refusal of the command's input
    (`CnnlabError`) before the task began the session itself withdraws it, as no work on the run. A session killed
    outright (SIGKILL, power loss) cannot record its end: its ``wall_seconds`` stay None, unknown, and so does the
    run's total (`total_wall_seconds`), rather than a total that leaves it out.

    Args:
        run_dir: the run folder.
        resume: the command continues the run (--resume): the earlier sessions are read now, before this session
            rewrites the run's config.yaml (a run saved before sessions were recorded has one session, unrecorded,
            whose command its config.yaml names); else the run starts with this session.
        write: whether this process writes the file (under torchrun, rank 0 alone).
        started: `time.perf_counter()` when the command started (default: now).
    """

    def __init__(self, run_dir: str | os.PathLike[str], resume: bool, write: bool = True, started: float | None = None):
        self.path = Path(run_dir) / SESSIONS
        self.write = write
        self.started = time.perf_counter() if started is None else started
        self.sessions: list[dict[str, Any]] = read_sessions(run_dir) if resume else []
        self.current: dict[str, Any] | None = None
        self._doing: str | None = None
        self._tentative = False  # begun by `doing` for a resumed run: withdrawn if the command's input is refused
        self._file_before: bytes | None = None  # the sessions.json `doing` found, put back by a withdrawal
        self._earlier: dict[str, Any] | None = None  # the last earlier session that may have trained
        self._earlier_last_epoch: int | None = None  # as it recorded it

    def __enter__(self) -> RunSessions:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: types.TracebackType | None
    ) -> None:
        if kind is None:
            return
        if self.current is None:
            # stopped before this session began: a session of the run when the run had earlier ones (a fresh run's
            # folder is not its yet), unless a refusal of the command's input stopped it, which did no work on the run
            if not self.sessions or issubclass(kind, CnnlabError):
                return
            self.begin()
        elif issubclass(kind, CnnlabError) and self._tentative:
            self.withdraw()
            return
        if issubclass(kind, KeyboardInterrupt):
            self.end("interrupted")
        else:
            self.end("failed", error)

    def doing(self, what: str) -> None:
        """What this session is doing before it trains (``loading MNIST``, ``building the feature cache``): a session
        stopped then records it (``preparing``), and trained no epoch.

        A session of a run with earlier sessions (--resume) begins here, written before that work, so that a kill
        during it leaves the session (its time unknown) rather than no trace; the task's ``with`` block around the
        work records how it ends, and withdraws it for a refusal of the command's input (`CnnlabError`) met before
        the task called `begin` itself.
        """
        self._doing = what
        if self.current is None:
            if self.sessions:
                self._file_before = self.path.read_bytes() if self.path.is_file() else None
                self.begin()
                self._tentative = True
            return
        if "preparing" in self.current:
            self.current["preparing"] = what
            self._write()

    def withdraw(self) -> None:
        """This session, begun by `doing` and not yet by its task, did no work on the run after all (its input was
        refused, or another process finished the run first): sessions.json is put back as `doing` found it."""
        if self.current is None or not self._tentative:
            return
        self.sessions.remove(self.current)
        self.current, self._tentative = None, False
        if not self.write:
            return
        if self._file_before is None:
            self.path.unlink(missing_ok=True)
        else:
            with written_then_renamed(self.path) as partial:
                partial.write_bytes(self._file_before)

    def begin(self, first_epoch: int | None = None) -> None:
        """This session's work on the run folder begins, after `first_epoch` epochs finished by earlier sessions.

        Called again by a later trainer of a task with several (transfer's phases, each in a sub-folder with its
        own checkpoint), before this session has finished an epoch: the session begins where that trainer does (a
        phase finished by an earlier session trains none here), with the run's epochs counted across the phases.
        """
        self._tentative = False  # the task's own start: the run folder is this session's work now
        if self.current is not None:
            if first_epoch is not None and self.current["last_epoch"] in (None, self.current["first_epoch"]):
                self._starts_after(first_epoch)
                self._write()
            return
        # a session stopped in its preparation trained nothing: the epochs of the one before it end where ours begin
        self._earlier = next((s for s in reversed(self.sessions) if "preparing" not in s), None)
        self._earlier_last_epoch = None if self._earlier is None else self._earlier.get("last_epoch")
        self.current = {
            "command": command_line(),
            # when its wall time began (the command's start, before its data was read), not when it reached here
            "started": (datetime.now(UTC) - timedelta(seconds=time.perf_counter() - self.started)).isoformat(
                timespec="seconds"
            ),
            "first_epoch": None,
            "last_epoch": None,
            "wall_seconds": None,
            "ended": None,
            "preparing": self._doing,
            # who writes it, so that another command can tell a session training now from one killed (`live_session`)
            "pid": os.getpid(),
            "pid_namespace": pid_namespace(),
        }
        self.sessions.append(self.current)
        if first_epoch is not None:
            self._starts_after(first_epoch)
        self._write()

    def _starts_after(self, first_epoch: int) -> None:
        self.current["first_epoch"] = self.current["last_epoch"] = first_epoch
        self.current.pop("preparing", None)
        if self._earlier is not None:
            # the last earlier session counted an epoch whose checkpoint a kill kept from being written, or was
            # recorded before sessions were: its epochs end where this one's begin (from what it recorded, so
            # that a later phase's start, past an earlier phase's, gives back what the earlier one took off)
            recorded = self._earlier_last_epoch
            self._earlier["last_epoch"] = first_epoch if recorded is None else min(recorded, first_epoch)

    def epoch_done(self, epochs: int) -> None:
        """`epochs` epochs of the run are finished (this session's and the earlier ones')."""
        if self.current is not None:
            self.current["last_epoch"] = epochs
            self._write()

    def end(self, outcome: str = "finished", error: BaseException | None = None) -> None:
        """Record this session's wall seconds (since `started`) and how it ended, with the `error` that failed it
        (nothing, if it never began)."""
        if self.current is None or self.current["ended"] is not None:
            return
        self.current["wall_seconds"] = time.perf_counter() - self.started
        self.current["ended"] = outcome
        if error is not None:
            message = (str(error).strip().splitlines() or [""])[0]
            named = f"{type(error).__name__}: {message}" if message else type(error).__name__
            self.current["error"] = named if len(named) <= 200 else named[:197] + "..."
        self._write()

    @property
    def total_wall_seconds(self) -> float | None:
        """The wall seconds of every session, or None when one of them is unknown."""
        return total_wall_seconds(self.sessions)

    def results(self) -> dict[str, Any]:
        """What a run's results.json holds of its sessions: ``sessions`` (each one's entry) and ``wall_seconds_total``
        (None when a session's time is unknown), the keys its report, the lab and the answer sheet read."""
        return {"sessions": self.sessions, "wall_seconds_total": self.total_wall_seconds}

    def _write(self) -> None:
        if self.write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_whole(self.path, json.dumps(self.sessions, indent=1))


def last_session(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last session `RunSessions` recorded for the run in `folder`, None if none is readable."""
    try:
        sessions = json.loads((Path(folder) / SESSIONS).read_text())
    except (OSError, ValueError):
        return None
    last = sessions[-1] if isinstance(sessions, list) and sessions else None
    return last if isinstance(last, dict) else None


def unended_session(folder: str | os.PathLike[str]) -> str | None:
    """The session of the run in `folder` that has begun and not ended (training now, or killed outright), as
    "the session `COMMAND` (started TIME, N epochs finished)"; None when its last session ended or none is
    recorded."""
    last = last_session(folder)
    if last is None or last.get("ended") is not None or not last.get("started"):
        return None
    epochs = last.get("last_epoch")
    done = f", {epochs} epoch{'' if epochs == 1 else 's'} finished" if isinstance(epochs, int) else ""
    return f"the session `{last.get('command')}` (started {last['started']}{done})"


def live_session(folder: str | os.PathLike[str]) -> str | None:
    """The session of the run in `folder` whose process is training it now, in `unended_session`'s words followed by
    "in process PID"; None when none is, as far as can be told here. A session whose process is gone (killed) is not
    live; neither is one this process writes, nor one recorded without its process (before sessions recorded it) or
    by another machine or container (`pid_namespace`), whose process cannot be asked about."""
    running = unended_session(folder)
    last = last_session(folder) if running is not None else None
    pid = last.get("pid") if last is not None else None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or pid == os.getpid():
        return None
    if last.get("pid_namespace") != pid_namespace() or not process_alive(pid):
        return None
    return f"{running} in process {pid}"


def read_sessions(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The sessions `RunSessions` recorded in `run_dir`; for a run saved before they were recorded, one session
    standing for its earlier ones, unrecorded (``recorded: False``), with the command its config.yaml names (the last
    of them); none for a folder without either.

    A sessions.json cnnlab cannot read (cut short, not a list of sessions) is said in one line (a
    `SessionsRecordWarning`) and stands as one such session, ``unreadable``, its time unknown: the run goes on with a
    fresh record, and its total is unknown rather than short. A value edited into a session that is not what cnnlab
    records (a wall time that is not a number of seconds) is said too, and read as unknown. A last session recorded
    ``finished`` in a folder without results.json was stopped after its task recorded its end and before it wrote the
    results: it is read as ``interrupted``, saying so, and a --resume finishes the run.
    """
    run_dir = Path(run_dir)
    path = run_dir / SESSIONS
    if path.is_file():
        try:
            sessions = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            return _unreadable(run_dir, f"{path} is unreadable ({first_line(error)[:80]})")
        if not isinstance(sessions, list) or not all(isinstance(session, dict) for session in sessions):
            return _unreadable(run_dir, f"{path} is unreadable (not a list of sessions)")
        unknown = [f"session {number}'s {key} {session[key]!r}" for number, session in enumerate(sessions, 1)
                   for key in _SESSION_VALUES if key in session and not _SESSION_VALUES[key](session[key])]  # fmt: skip
        if unknown:
            warnings.warn(
                f"{path}: {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''} "
                f"{'is' if len(unknown) == 1 else 'are'} not what cnnlab records; read as unknown",
                SessionsRecordWarning,
                stacklevel=2,  # RunSessions' line for every task: said once, where a task reads the file twice
            )
        sessions = [{k: v if k not in _SESSION_VALUES or _SESSION_VALUES[k](v) else None for k, v in s.items()}
                    for s in sessions]  # fmt: skip
        last = sessions[-1] if sessions else None
        if last is not None and last.get("ended") == "finished" and not (run_dir / RESULTS).is_file():
            # A task records its end a moment before it writes results.json (which holds the sessions, with this
            # one's wall time): a stop between the two left a "finished" session of a run without results
            last["ended"], last["error"] = "interrupted", f"stopped before {RESULTS} was written"
        return sessions
    return _unrecorded(run_dir)


def _unrecorded(run_dir: Path, **note: Any) -> list[dict[str, Any]]:
    """One session standing for a run's earlier ones, whose record there is none of: its command as its config.yaml
    names it, its time unknown; none for a folder without a config.yaml (no run)."""
    config = run_dir / "config.yaml"
    if not config.is_file() and not note:
        return []
    import yaml

    try:
        command = (yaml.safe_load(config.read_text()) or {}).get("environment", {}).get("command")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, yaml.YAMLError):
        command = None  # none, or cut short (the task's to refuse): here it only names the command
    return [
        {"command": command if isinstance(command, str) else None, "started": None, "first_epoch": 0,
         "last_epoch": None, "wall_seconds": None, "ended": None, "recorded": False, **note}
    ]  # fmt: skip


def _unreadable(run_dir: Path, why: str) -> list[dict[str, Any]]:
    warnings.warn(
        f"{why}: its sessions count as one whose time is unknown, and a fresh record of them begins",
        SessionsRecordWarning,
        stacklevel=2,
    )
    return _unrecorded(run_dir, unreadable=True)


def _is_epoch(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def _is_seconds(value: Any) -> bool:
    return value is None or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )


def _is_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


# What each recorded value must be for the report and the totals to read it (None: unknown)
_SESSION_VALUES = {
    "command": _is_text,
    "started": _is_text,
    "first_epoch": _is_epoch,
    "last_epoch": _is_epoch,
    "wall_seconds": _is_seconds,
    "ended": _is_text,
    "preparing": _is_text,
    "error": _is_text,
}


def total_wall_seconds(sessions: Sequence[dict[str, Any]]) -> float | None:
    """The wall seconds of `sessions` together, or None when one of them is unknown (killed, or unrecorded)."""
    seconds = [session.get("wall_seconds") for session in sessions]
    return None if not seconds or None in seconds else float(sum(seconds))
