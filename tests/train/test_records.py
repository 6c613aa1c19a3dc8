"""The sessions a run records (`cnnlab.train.records`): which process trains a run now."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cnnlab.files import pid_namespace
from cnnlab.train.records import SESSIONS, RunSessions, live_session


def test_a_session_names_its_process_and_is_live_while_that_process_runs(tmp_path: Path) -> None:
    """sessions.json did not say which process wrote a session, so a session not ended was "still training or
    killed" to every command: one training now could not be told from one killed, and was replaced under it."""
    sessions = RunSessions(tmp_path, resume=False)
    sessions.begin(0)
    sessions.epoch_done(1)
    recorded = json.loads((tmp_path / SESSIONS).read_text())
    assert recorded[-1]["pid"] == os.getpid() and recorded[-1]["pid_namespace"] == pid_namespace()
    assert live_session(tmp_path) is None  # this process's own: no other command trains it

    def written_by(pid: int, **changes: object) -> str | None:
        (tmp_path / SESSIONS).write_text(json.dumps([{**recorded[-1], "pid": pid, **changes}]))
        return live_session(tmp_path)

    parent = os.getppid()  # a live process of this machine
    assert written_by(parent) == (
        f"the session `{recorded[-1]['command']}` (started {recorded[-1]['started']}, 1 epoch finished) in process "
        f"{parent}"
    )
    assert written_by(parent, ended="finished") is None
    assert written_by(parent, pid_namespace="another machine\nboot\npid:[1]") is None  # its process unknown here
    assert written_by(parent, pid_namespace=None) is None  # recorded before sessions named their process
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()  # its process id is gone: killed outright, its end never recorded
    assert written_by(ended.pid) is None
