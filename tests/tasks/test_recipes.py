"""What every task's start shares (`cnnlab.tasks.recipes`): a run another process trains now is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_in_process import run_cnnlab
from cnnlab.files import pid_namespace


def _session(pid: int) -> dict[str, object]:
    """A session of `cnnlab train` not ended, 1 epoch finished, written by process `pid` of this machine."""
    started = "2026-12-07T23:00:00+00:00"
    return {"command": "cnnlab train it --epochs 6", "started": started, "first_epoch": 0, "last_epoch": 1,
            "wall_seconds": None, "ended": None, "pid": pid, "pid_namespace": pid_namespace()}  # fmt: skip


def _run_being_trained(run_dir: Path, pid: int) -> dict[str, bytes]:
    """A run folder, with its checkpoint, whose last session process `pid` writes; returns its files' bytes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoint.pt").write_bytes(b"the checkpoint of epoch 1")
    (run_dir / "config.yaml").write_text("the config of the run being trained\n")
    (run_dir / "sessions.json").write_text(json.dumps([_session(pid)]))
    return {path.name: path.read_bytes() for path in run_dir.iterdir()}


def _transfer_photos(root: Path) -> list[str]:
    from test_transfer import make_photo_folder  # noqa: PLC0415 - sibling test module

    photos = make_photo_folder(root / "photos", per_class=4)
    return ["--data", str(photos), "--model", "lenet5", "--no-pretrained", "--unfreeze", "1", "--min-per-class", "2"]


def _segment_folder(root: Path) -> list[str]:
    from test_segment_folder import _folder  # noqa: PLC0415 - sibling test module

    return ["--data", str(_folder(root / "pairs", count=4))]


# each train command, its run folder under -o, and the options it needs to reach its run folder
COMMANDS = {
    "mnist": (["train", "mnist"], "mnist/live", None),
    "mnist ensemble": (["train", "mnist", "--ensemble", "2"], "mnist/live/seed1", None),  # a member being trained
    "segment canvases": (["train", "segment"], "segment/live", None),
    "segment folder": (["train", "segment"], "segment/live", _segment_folder),
    "transfer": (["train", "transfer"], "transfer/live", _transfer_photos),
}


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_run_another_process_trains_is_neither_replaced_nor_resumed(tmp_path: Path, command: str, flag: str) -> None:
    """`train ... --overwrite` (or --resume) of a run that another command was still training went ahead: both
    exited 0, and the folder ended up mixed (config.yaml of one, model and results of the other, sessions.json of
    one). Now refused in one line, naming the process, before anything in the folder is written or removed."""
    words, run, data = COMMANDS[command]
    parent = os.getppid()  # a live process of this machine, not this one: the "other command"
    before = _run_being_trained(tmp_path / "runs" / run, parent)
    extra = data(tmp_path) if data is not None else ["--data-dir", str(tmp_path / "no-mnist")]
    completed = run_cnnlab(*words, *extra, "-o", str(tmp_path / "runs"), "--name", "live", "--epochs", "1", flag)
    assert completed.returncode == 2, completed.stderr[-2000:]
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0] == (
        f"error: {tmp_path / 'runs' / run} is being trained now by the session `cnnlab train it --epochs 6` (started "
        f"2026-12-07T23:00:00+00:00, 1 epoch finished) in process {parent}; wait for it to finish, or stop that "
        "process, then run this command again"
    )
    assert {path.name: path.read_bytes() for path in (tmp_path / "runs" / run).iterdir()} == before


def test_a_member_process_leaves_its_fellows_being_trained_alone(tmp_path: Path) -> None:
    """`train mnist --ensemble 2 --member 1` trains beside member 0's process in the same ensemble folder: member 0
    being trained is no reason to refuse it, its own member being trained by another process is."""
    runs = tmp_path / "runs"
    _run_being_trained(runs / "mnist" / "pair" / "seed0", os.getppid())
    member = ["train", "mnist", "--ensemble", "2", "--name", "pair", "-o", str(runs), "--data-dir", str(tmp_path)]
    completed = run_cnnlab(*member, "--member", "1")
    assert completed.returncode == 2 and "is being trained now" not in completed.stderr, completed.stderr
    assert "seed0/config.yaml cannot be read" in completed.stderr  # went on, to compare member 0's options
    completed = run_cnnlab(*member, "--member", "0")
    assert completed.returncode == 2 and "seed0 is being trained now by the session" in completed.stderr


def test_a_run_whose_process_was_killed_is_replaced_or_resumed_as_before(tmp_path: Path) -> None:
    """A session whose process is gone (SIGKILL) never recorded its end: it is no process's now, and --overwrite and
    --resume go on as before."""
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()  # its process id is gone
    runs = tmp_path / "runs"
    _run_being_trained(runs / "segment" / "killed", ended.pid)
    for flag in ("--overwrite", "--resume"):
        completed = run_cnnlab("train", "segment", "-o", str(runs), "--name", "killed", flag, "--data-dir",
                               str(tmp_path / "no-mnist"))  # fmt: skip
        assert completed.returncode == 2 and "is being trained now" not in completed.stderr, completed.stderr
        assert "MNIST" in completed.stderr  # went on, to the data this test has none of


@pytest.mark.parametrize("run", ["mnist/live", "mnist/live/seed1"])
def test_an_ensemble_combined_over_a_run_another_process_trains_is_refused(tmp_path: Path, run: str) -> None:
    """`cnnlab ensemble RUNS --name NAME --overwrite`, where NAME was a run (or an ensemble's member) that
    `cnnlab train mnist` trained at that moment, removed its folder, checkpoint and all, under the training process."""
    parent = os.getppid()  # a live process of this machine, not this one: the training command
    before = _run_being_trained(tmp_path / "runs" / run, parent)
    members = [str(tmp_path / "members" / "a"), str(tmp_path / "members" / "b")]
    completed = run_cnnlab("ensemble", *members, "--name", "live", "-o", str(tmp_path / "runs"), "--overwrite")
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.startswith(f"error: {tmp_path / 'runs' / run} is being trained now by the session ")
    assert {path.name: path.read_bytes() for path in (tmp_path / "runs" / run).iterdir()} == before
