"""`written_then_renamed`: a file whole or not at all, and the temporary files of killed writers swept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab import files
from cnnlab.files import written_then_renamed


def test_a_file_is_renamed_into_place_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), written_then_renamed(target) as temporary:
        temporary.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]
    with written_then_renamed(target) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["results.json"]


def test_a_writer_killed_in_the_block_leaves_nothing_once_the_file_is_written_again(tmp_path: Path) -> None:
    """SIGKILL inside the block left ``.NAME.PID.tmp`` beside the file for good: nothing ever removed it."""
    target = tmp_path / "results.json"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(files.__file__).parents[1])},
    )
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    writer.kill()
    writer.wait()
    assert len(os.listdir(tmp_path)) == 1  # its temporary file
    with written_then_renamed(target) as temporary:
        temporary.write_text("whole")
    assert os.listdir(tmp_path) == ["results.json"]


_KILLED_WRITER = """
import sys, time
from cnnlab.files import written_then_renamed
with written_then_renamed(sys.argv[1]) as temporary:
    temporary.write_text("half")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_only_the_leftovers_of_processes_that_are_gone_are_swept(tmp_path: Path) -> None:
    """Never another live process's temporary file, here or on another machine sharing the folder (ensemble members,
    a multi-node job's output): those of other machines, whose process ids mean nothing here, only a day old."""
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()  # its process id is gone
    host, day_ago = files._HOST, time.time() - files.STALE_AFTER_SECONDS - 60
    names = {
        "dead here": f".results.json.{host}.{ended.pid}.tmp",
        "alive here": f".results.json.{host}.{os.getppid()}.tmp",
        "another machine's": f".results.json.other-machine.{ended.pid}.tmp",
        "another machine's, a day old": f".results.json.other-machine.{os.getppid()}.tmp",
        "an older cnnlab's": f".results.json.{ended.pid}.tmp",
        "an older cnnlab's, a day old": f".results.json.{os.getppid()}.tmp",
        "a checkpoint's mkstemp name": ".results.json.k1ll3d_0.tmp",
        "a checkpoint's mkstemp name, a day old": ".results.json.x_9abcde.tmp",
        "another file's": f".results.json.bak.{host}.{ended.pid}.tmp",
        "not a temporary file": ".results.json.notes",
    }
    for what, name in names.items():
        (tmp_path / name).write_text(what)
        if what.endswith("a day old"):
            os.utime(tmp_path / name, (day_ago, day_ago))
    with written_then_renamed(tmp_path / "results.json") as temporary:
        temporary.write_text("{}")
    swept = {what for what, name in names.items() if not (tmp_path / name).exists()}
    assert swept == {
        "dead here",
        "another machine's, a day old",
        "an older cnnlab's, a day old",
        "a checkpoint's mkstemp name, a day old",
    }
    assert (tmp_path / "results.json").read_text() == "{}"


def test_a_file_written_by_safetensors_gets_the_usual_permissions(tmp_path: Path) -> None:
    """safetensors writes 0600: every model.safetensors and fcn.safetensors was unreadable to the rest of a team
    sharing the runs folder, where the other files of the run were not."""
    import os

    import torch
    from safetensors.torch import save_file

    from cnnlab.files import written_then_renamed

    umask = os.umask(0o022)
    try:
        with written_then_renamed(tmp_path / "model.safetensors") as partial:
            save_file({"weight": torch.zeros(2)}, str(partial))
        with written_then_renamed(tmp_path / "notes.txt") as partial:
            partial.write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "notes.txt").stat().st_mode & 0o777 == 0o644


def test_a_text_file_holds_a_file_name_that_is_not_utf8_as_its_bytes(tmp_path: Path) -> None:
    """A run's report.md naming a skipped Latin-1 file (a str with a surrogate on Linux) raised UnicodeEncodeError:
    the run, trained and tested, ended before its report."""
    written = files.write_text_whole(tmp_path / "report.md", "skipped caf\udce9.png\n")
    assert written.read_bytes() == b"skipped caf\xe9.png\n"
    assert files.readable_name("caf\udce9.png") == "caf\ufffd.png" and files.readable_name("caf\xe9") == "caf\xe9"
