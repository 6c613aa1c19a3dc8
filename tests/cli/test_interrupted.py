"""Ctrl+C ends a command with exit code 130 and a line saying how to continue the run it stopped."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def _interrupt(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    from cnnlab.cli import main

    monkeypatch.setattr(sys, "argv", ["cnnlab", *argv])
    with pytest.raises(SystemExit) as exit_code:
        main()
    assert exit_code.value.code == 130
    return capsys.readouterr().err.strip().splitlines()[-1]


# gloo's error in a rank whose peer is gone, as torch raises it
_GLOO_ERROR = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
    "[127.0.0.1]:19864. This is typically caused by a remote worker crashing."
)


def _resume_hint(tmp_path: Path) -> str:
    """How the job's line says to continue the run `_gloo_peer_lost` notes."""
    run_dir = tmp_path / "mnist" / "ddp"
    return f"{run_dir} keeps its finished epochs; continue with the same command and --resume --name ddp"


def _rank_zero_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    app: Callable[[], None],
    world_size: int,
    ended: list[int],
    **patched: object,
) -> list[str]:
    """Rank 0 of a `world_size`-process torchrun job running `app` in place of the CLI's, the ranks `ended` seen
    ended and the CLI's other functions `patched`: its exit code checked 1, the lines it wrote on stderr."""
    import cnnlab.cli as cli
    from cnnlab.tasks import recipes

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(cli, "_ended_ranks", lambda wait_seconds=1.0: ended)
    for name, value in patched.items():
        monkeypatch.setattr(cli, name, value, raising=False)
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exit_code:
        cli.main()
    assert exit_code.value.code == 1
    return capsys.readouterr().err.strip().splitlines()


def _gloo_peer_lost(run_dir: Path) -> Callable[[], None]:
    """A stand-in for the CLI's app: a run in `run_dir` whose collective meets gloo's error for a lost peer."""
    from cnnlab.tasks import recipes

    def peer_lost() -> None:
        recipes.note_current_run(run_dir)
        raise RuntimeError(_GLOO_ERROR)

    return peer_lost


def test_an_interrupted_run_says_how_to_resume_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Typer turned Ctrl+C into a silent exit: the CLI's own "interrupted" line never printed, and a run named by
    its start time left the user to find its name before `--resume --name` could continue it."""
    import cnnlab.tasks.mnist
    from cnnlab.tasks import recipes

    def interrupted_mid_epoch(*_args: object, output: str = "runs", name: str | None = None, **_kwargs: object) -> None:
        recipes.note_current_run(Path(output) / "mnist" / "baseline-20261206-101500")
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", interrupted_mid_epoch)
    line = _interrupt(monkeypatch, capsys, ["train", "mnist", "--recipe", "baseline", "-o", str(tmp_path)])
    assert line == (
        f"interrupted: {tmp_path / 'mnist' / 'baseline-20261206-101500'} keeps its finished epochs; continue with the "
        "same command and --resume --name baseline-20261206-101500"
    )


def test_an_interruption_before_any_run_started_says_only_that(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import cnnlab.tasks.mnist
    from cnnlab.tasks import recipes

    def interrupted_while_loading(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", interrupted_while_loading)
    assert _interrupt(monkeypatch, capsys, ["train", "mnist"]) == "interrupted"


def test_an_interrupted_answer_sheet_is_continued_by_the_same_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The runs an exercise trains note themselves: the line named one of them with --resume, which `answers` has
    not; its finished exercises are read back by the same command."""
    from cnnlab.tasks import recipes
    from cnnlab.tasks.answers import measure

    def training_inside(_ctx: object) -> dict:
        recipes.note_current_run(tmp_path / "answers" / "mnist" / "quick-20261206-101500")
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setitem(measure.EXERCISES, 9, training_inside)
    line = _interrupt(monkeypatch, capsys, ["answers", "-e", "9", "-o", str(tmp_path / "answers")])
    assert line == (  # nothing had finished: nothing to read back
        f"interrupted: no run in {tmp_path / 'answers'} had finished yet (it keeps the epochs it checkpointed); the "
        "same command again goes on from there"
    )
    finished = tmp_path / "answers" / "mnist" / "default"
    finished.mkdir(parents=True)
    (finished / "results.json").write_text("{}")  # a run of the sheet's that an earlier invocation finished
    line = _interrupt(monkeypatch, capsys, ["answers", "-e", "9", "-o", str(tmp_path / "answers")])
    assert line == (
        f"interrupted: {tmp_path / 'answers'} keeps what it finished; the same command again reads it back and goes on"
    )


def test_under_torchrun_only_rank_zero_says_how_to_continue(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl+C reaches every process of a torchrun job, and each printed the same "interrupted: ..." line."""
    import cnnlab.tasks.mnist
    from cnnlab.cli import main
    from cnnlab.tasks import recipes

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", interrupted)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(sys, "argv", ["cnnlab", "train", "mnist"])
    with pytest.raises(SystemExit) as exit_code:
        main()
    assert exit_code.value.code == 130 and "interrupted" not in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    assert _interrupt(monkeypatch, capsys, ["train", "mnist"]) == "interrupted"


def test_under_torchrun_a_sigterm_says_torchrun_stopped_the_job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """When one rank failed alone, torchrun's SIGTERM made rank 0 print "interrupted: ...", as if the user had
    pressed Ctrl+C; it now says torchrun stopped it, and still how to continue. Outside torchrun SIGTERM reads as
    before."""
    import os
    import signal

    import cnnlab.cli as cli
    import cnnlab.tasks.mnist
    from cnnlab.cli import main
    from cnnlab.tasks import recipes

    def terminated_mid_epoch(*_args: object, output: str = "runs", **_kwargs: object) -> None:
        recipes.note_current_run(Path(output) / "mnist" / "ddp")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises KeyboardInterrupt in here at once

    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", terminated_mid_epoch)
    monkeypatch.setattr(sys, "argv", ["cnnlab", "train", "mnist", "-o", str(tmp_path)])
    hint = (
        f"{tmp_path / 'mnist' / 'ddp'} keeps its finished epochs; continue with the same command "
        "and --resume --name ddp"
    )
    # A rank of this machine that ended (killed by SIGKILL, it printed nothing) is named; rank 0 ended: rank 1 says it.
    ended_one = "stopped by torchrun: rank 1 of the torchrun job ended; its error is above, or, if there is none, it"
    for world_size, rank, ended, said in (
        ("2", "0", [], "stopped by torchrun (another process of the job failed"),
        ("1", "0", [], "interrupted: "),
        ("2", "0", [1], ended_one),
        ("2", "1", [0], ended_one.replace("rank 1", "rank 0")),
        ("2", "1", [], None),
    ):
        monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
        monkeypatch.setattr(cli, "_ended_ranks", lambda wait_seconds=1.0, ended=ended: ended)
        monkeypatch.setenv("WORLD_SIZE", world_size)
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exit_code:
            main()
        printed = capsys.readouterr().err.strip().splitlines()
        assert exit_code.value.code == 143
        if said is None:
            assert printed == []
            continue
        assert printed[-1].startswith(said) and printed[-1].endswith(hint)
        assert ("interrupted" in printed[-1]) == (world_size == "1")


def _stopped_by_torchrun_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, rank: str, **patched: object
) -> list[str]:
    """Rank `rank` of a 3-process torchrun job stopped by torchrun's SIGTERM mid-run (as while it waits for its
    DataLoader's workers, in no collective), the CLI's functions `patched`: its exit code checked 143, its lines."""
    import os
    import signal

    import cnnlab.cli as cli
    import cnnlab.train.strategy  # noqa: F401 (loaded, as in a rank that joined its job)
    from cnnlab.tasks import recipes

    def stopped_waiting_for_data() -> None:
        recipes.note_current_run(tmp_path / "mnist" / "ddp")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises KeyboardInterrupt in here at once

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cli, "app", stopped_waiting_for_data)
    nothing_seen = {"_ended_ranks": lambda wait_seconds=1.0: [], "_how_ended": lambda rank: None}
    nothing_seen |= {"_ranks_here_that_lost_a_peer": lambda: [], "_ranks_elsewhere": dict}
    for name, value in {**nothing_seen, **patched}.items():
        monkeypatch.setattr(cli, name, value, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as exit_code:
        cli.main()
    assert exit_code.value.code == 143
    return capsys.readouterr().err.strip().splitlines()


_OTHER_MACHINE_LOG = 'whose torchrun log names it under "Root Cause", after its error if it printed one'


@pytest.mark.parametrize(
    ("rank", "patched", "said"),
    [
        (
            "0",
            {"_ranks_here_that_lost_a_peer": lambda: [1]},  # `ended_ranks` leaves out a rank that lost a peer
            "stopped by torchrun: lost another process of the torchrun job (rank 1 of this machine lost it); the rank "
            f"that ended ran on another machine, node-b (rank 2), {_OTHER_MACHINE_LOG}",
        ),
        (
            "0",
            {
                "_ranks_here_that_lost_a_peer": lambda: None,
                "_ended_ranks": lambda wait_seconds=1.0: [1],
                "_how_ended": {1: "exit code 143"}.get,
            },  # fmt: skip
            "stopped by torchrun: lost another process of the torchrun job (torchrun lost the job's store); the rank "
            f"that ended ran on another machine, node-b (rank 2), {_OTHER_MACHINE_LOG}",
        ),
        (
            "0",
            {"_ended_ranks": lambda wait_seconds=1.0: [1], "_how_ended": {1: "exit code 143"}.get},
            "stopped by torchrun (another process of the job failed, torchrun was sent SIGTERM, or it lost another "
            'machine of the job: see the torchrun log of node-b (rank 2), which names a rank that ended under "Root '
            'Cause")',
        ),
        (
            "2",
            {"_ranks_here_that_lost_a_peer": lambda: None, "_ranks_elsewhere": lambda: {"node-a": [0, 1]}},
            "stopped by torchrun: lost another process of the torchrun job (torchrun lost the job's store); the rank "
            f"that ended ran on another machine, node-a (ranks 0-1), {_OTHER_MACHINE_LOG}",
        ),
    ],
    ids=["rank-here-lost-the-peer", "store-lost", "rank-here-stopped-too", "rank-zero-elsewhere"],
)
def test_a_rank_stopped_by_torchrun_after_a_peer_was_lost_elsewhere_names_that_machine(
    rank: str,
    patched: dict[str, object],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Two torchrun launchers (`--nnodes 2`), rank 2 of the second killed while the first's ranks wait for their
    DataLoader's workers: rank 1 met gloo's error, noted it lost a peer and ended, and torchrun's SIGTERM stopped rank 0
    in no collective, which said only "stopped by torchrun (another process of the job failed, or torchrun was sent
    SIGTERM)" (3 of 3 tries); where the second launcher held the rendezvous, the first stopped both ranks as it lost
    it, and rank 0 named rank 1, stopped by the same SIGTERM, as "rank 1 of the torchrun job ended (exit code 143); its
    error is above"; and where rank 0 ran on the machine lost, the others said nothing. The line now names the other
    machine whose log names the rank, or says that torchrun may have lost it."""
    patched = {"_ranks_elsewhere": lambda: {"node-b": [2]}, **patched}
    lines = _stopped_by_torchrun_line(monkeypatch, capsys, tmp_path, rank, **patched)
    assert lines == [f"{said}{':' if said.endswith(')') else ';'} {_resume_hint(tmp_path)}"]


def test_a_rank_stopped_by_torchrun_that_does_not_speak_asks_the_store_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Every rank stopped by torchrun asked the job's store which ranks had lost a peer, the ones that then said nothing
    too: where the store's host (rank 0) had ended, each waited up to 2 s for its answer. Only the rank that speaks
    asks."""

    def asked() -> list[int]:
        raise AssertionError("a rank that says nothing asked the store")

    assert _stopped_by_torchrun_line(monkeypatch, capsys, tmp_path, "1", _ranks_here_that_lost_a_peer=asked) == []


@pytest.mark.parametrize(
    ("rank", "ended", "said"),
    [
        ("0", [], "lost another process of the torchrun job (gloo: {gloo}); see its error"),
        ("0", [1], "rank 1 of the torchrun job ended while this process waited for it (gloo: {gloo}); {killed}"),
        ("1", [0], "rank 0 of the torchrun job ended while this process waited for it (gloo: {gloo}); {killed}"),
        ("1", [], None),
        ("2", [1], None),
    ],
    ids=["unknown", "rank1-ended", "rank0-ended-rank1-says", "rank1-silent", "rank2-silent"],
)
def test_under_torchrun_a_lost_peer_is_one_line_naming_the_rank_and_saying_how_to_continue(
    rank: str,
    ended: list[int],
    said: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A rank waiting in an all-reduce when another failed met gloo's "Connection closed by peer" before torchrun's
    SIGTERM, and rank 0 printed its 60-line traceback, with no line saying how to continue the run. The line now names
    the rank that ended where this machine sees it (a rank killed by SIGKILL prints nothing of its own), and when rank
    0 is the one that ended, the lowest rank left says it; the others, holding their stderr, say nothing and no longer
    wait for torchrun's SIGTERM as after an input error. Outside torchrun the same error is raised as it was."""
    import cnnlab.cli as cli
    import cnnlab.tasks.mnist
    from cnnlab.tasks import recipes

    def peer_failed(*_args: object, output: str = "runs", **_kwargs: object) -> None:
        recipes.note_current_run(Path(output) / "mnist" / "ddp")
        raise RuntimeError(_GLOO_ERROR)

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", peer_failed)
    monkeypatch.setattr(cli, "_ended_ranks", lambda wait_seconds=1.0: ended)
    monkeypatch.setattr(sys, "argv", ["cnnlab", "train", "mnist", "-o", str(tmp_path)])
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", rank)
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_code:
        cli.main()
    assert exit_code.value.code == 1
    assert time.monotonic() - started < cli.OTHER_RANK_ERROR_WAIT_SECONDS - 0.5
    hint = _resume_hint(tmp_path)
    killed = "its error is above, or, if there is none, it was killed (kill -9, the out-of-memory killer)"
    expected = [] if said is None else ["stopped: " + said.format(gloo=GLOO_LOST, killed=killed) + "; " + hint]
    assert capsys.readouterr().err.strip().splitlines() == expected
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="closed by peer"):
        cli.main()


GLOO_LOST = "Connection closed by peer [127.0.0.1]:19864"


@pytest.mark.parametrize(
    ("elsewhere", "where"),
    [
        ({"node-b": [2, 3]}, "node-b (ranks 2-3)"),
        ({"node-b": [1], "node-c": [3, 5, 6, 7]}, "one of node-b (rank 1), node-c (ranks 3, 5-7)"),
    ],
    ids=["one-other-machine", "two-other-machines"],
)
def test_a_peer_lost_on_another_machine_is_said_with_the_machine_whose_log_names_it(
    elsewhere: dict[str, list[int]],
    where: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A rank of another machine that ended (killed, or failed) cannot be seen from this one, and rank 0 said only
    "lost another process of the torchrun job ...; see its error", which named neither the rank nor where to look.
    The line now names the other machines, with the ranks each ran as the ranks noted when they joined, and the log
    that names the rank (that machine's torchrun's "Root Cause"); it makes up no rank."""
    peer_lost = _gloo_peer_lost(tmp_path / "mnist" / "ddp")
    lines = _rank_zero_line(monkeypatch, capsys, peer_lost, 8, [], _ranks_elsewhere=lambda: elsewhere)
    assert lines == [
        f"stopped: lost another process of the torchrun job (gloo: {GLOO_LOST}); the rank that ended ran on another "
        f'machine, {where}, whose torchrun log names it under "Root Cause", after its error if it printed one; '
        f"{_resume_hint(tmp_path)}"
    ]


# NCCL's errors as torch raises them on a GPU rank whose peer is gone (torch 2.x; NCCL 2.18-2.28), and one that is
# this rank's own.
_NCCL_REMOTE = (
    "NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3763, remote process exited or there "
    "was a network error, NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a network error or a "
    "remote process exiting prematurely.\nLast error:\nsocketProgressOpt: Call to recv from 10.0.0.2<33759> failed : "
    "Connection reset by peer"
)
_NCCL_CLOSED = (
    "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1275, internal error, NCCL version 2.14.3\n"
    "ncclInternalError: Internal check failed.\nLast error:\nNet : Connection closed by remote peer node-b<50260>"
)
_NCCL_ABORTED = (
    "NCCL communicator was aborted on rank 0.  Original reason for failure was: [Rank 0] Watchdog caught collective "
    "operation timeout: WorkNCCL(SeqNum=10, OpType=ALLREDUCE, Timeout(ms)=600000) ran for 600457 milliseconds before "
    "timing out."
)
_NCCL_OWN = (
    "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1331, unhandled cuda error (run with "
    "NCCL_DEBUG=INFO for details), NCCL version 2.18.1\nncclUnhandledCudaError: Call to CUDA function failed."
)


@pytest.mark.parametrize(
    ("message", "said"),
    [
        (_NCCL_REMOTE, "NCCL: remote process exited or there was a network error"),
        (_NCCL_CLOSED, "NCCL: Net : Connection closed by remote peer node-b<50260>"),
        (
            _NCCL_ABORTED,
            "NCCL: Watchdog caught collective operation timeout: WorkNCCL(SeqNum=10, OpType=ALLREDUCE, "
            "Timeout(ms)=600000) ran for 600457 milliseconds before timing out",
        ),
        ("[Rank 0] NCCL communicator was aborted on rank 0.", "NCCL: NCCL communicator was aborted on rank 0"),
        (_NCCL_OWN, None),
    ],
    ids=["remote-exited", "connection-closed", "watchdog-timeout", "aborted", "own-cuda-error"],
)
def test_a_peer_lost_under_nccl_is_the_same_line_as_under_gloo(
    message: str,
    said: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """On GPUs the ranks talk through NCCL, whose errors for a peer that is gone (a remote process exited, a socket
    closed, the watchdog's abort after a collective waited past the timeout) carry none of gloo's words: they were
    not recognised, and rank 0 printed their traceback where a gloo rank says the job's line. They now give the same
    line, with NCCL's reason on one line; an NCCL error of this rank's own (a CUDA error) is raised as before."""
    import torch.distributed as dist

    import cnnlab.cli as cli
    from cnnlab.tasks import recipes

    def peer_lost() -> None:
        recipes.note_current_run(tmp_path / "mnist" / "ddp")
        raise dist.DistBackendError(message)

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cli, "app", peer_lost)
    monkeypatch.setattr(cli, "_ended_ranks", lambda wait_seconds=1.0: [1])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    if said is None:
        with pytest.raises(dist.DistBackendError):
            cli.main()
        assert capsys.readouterr().err == ""
        return
    with pytest.raises(SystemExit) as exit_code:
        cli.main()
    assert exit_code.value.code == 1
    hint = _resume_hint(tmp_path)
    killed = "its error is above, or, if there is none, it was killed (kill -9, the out-of-memory killer)"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"stopped: rank 1 of the torchrun job ended while this process waited for it ({said}); {killed}; {hint}"
    ]


@pytest.mark.parametrize(
    ("how", "said"),
    [
        (
            {1: "SIGABRT"},
            "rank 1 of the torchrun job ended (SIGABRT) while this process waited for it ({gloo}); it crashed (an "
            "abort, as on a C++ error in gloo or NCCL, or a segmentation fault): its message, if any, is above",
        ),
        (
            {1: "SIGKILL"},
            "rank 1 of the torchrun job ended (SIGKILL) while this process waited for it ({gloo}); it was killed "
            "(kill -9, the out-of-memory killer): a killed rank prints no error",
        ),
        (
            {1: "exit code 1"},
            "rank 1 of the torchrun job ended (exit code 1) while this process waited for it ({gloo}); its error is "
            "above",
        ),
        (
            {1: "SIGKILL", 2: "exit code 1"},
            "ranks 1 (SIGKILL), 2 (exit code 1) of the torchrun job ended while this process waited for it ({gloo}); "
            "its error is above, or, if there is none, it was killed (kill -9, the out-of-memory killer)",
        ),
    ],
    ids=["aborted", "killed", "failed", "one-killed-one-failed"],
)
def test_a_lost_rank_is_said_with_how_it_ended(
    how: dict[int, str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A rank that aborted (SIGABRT, as gloo's "terminate called without an active exception") or crashed was said
    as "its error is above, or, if there is none, it was killed (kill -9, the out-of-memory killer)", which sent the
    user looking for a kill or the out-of-memory killer. Where how it ended showed, the line says it, as torchrun's
    table does, and where to look for that kind of end."""
    peer_lost = _gloo_peer_lost(tmp_path / "mnist" / "ddp")
    lines = _rank_zero_line(monkeypatch, capsys, peer_lost, 3, sorted(how), _how_ended=how.get)
    assert lines == [f"stopped: {said.format(gloo='gloo: ' + GLOO_LOST)}; {_resume_hint(tmp_path)}"]


@pytest.mark.parametrize(("rank", "ended"), [("0", [1]), ("1", [0])], ids=["rank1-ended", "rank0-ended-rank1-says"])
def test_a_peer_lost_in_the_last_barrier_is_the_same_line_as_one_lost_in_training(
    rank: str, ended: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A rank that finished its command waits for the others in `cleanup`'s barrier before leaving the job; a peer that
    ended there (killed, or failed after its last collective) raised gloo's "Connection closed by peer" from the
    handler of the command's successful exit, past the CLI's own handlers: a 30-line traceback in place of the line
    that names the rank and says how to continue (exit code 1), as when the peer is lost in training."""
    import cnnlab.cli as cli
    from cnnlab.tasks import recipes
    from cnnlab.train import strategy

    def finished() -> None:
        recipes.note_current_run(tmp_path / "mnist" / "ddp")
        raise SystemExit(0)  # as click ends a successful command

    def peer_lost_in_barrier() -> None:
        raise RuntimeError(_GLOO_ERROR)

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cli, "app", finished)
    monkeypatch.setattr(strategy, "cleanup", peer_lost_in_barrier)
    monkeypatch.setattr(cli, "_ended_ranks", lambda wait_seconds=1.0: ended)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as exit_code:
        cli.main()
    assert exit_code.value.code == 1
    hint = _resume_hint(tmp_path)
    killed = "its error is above, or, if there is none, it was killed (kill -9, the out-of-memory killer)"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"stopped: rank {ended[0]} of the torchrun job ended while this process waited for it (gloo: {GLOO_LOST}); "
        f"{killed}; {hint}"
    ]


class _Exited(BaseException):
    """`os._exit`, faked: the process would end here."""


@pytest.mark.parametrize(
    ("ended", "sigterm_after", "exit_after"),
    [([1], 0.3, (0.3, 0.9)), ([1], None, (1.0, 2.0)), ([], 1.5, (0.0, 0.9))],
    ids=["rank-here-ended", "torchrun-never-stops-it", "rank-elsewhere-ended"],
)
def test_a_rank_that_lost_a_peer_exits_with_its_own_code_whenever_torchrun_stops_it(
    ended: list[int],
    sigterm_after: float | None,
    exit_after: tuple[float, float],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A rank that lost a peer said its line and meant to exit with code 1, but `main` restored SIGTERM's default on
    its way out, and torchrun's SIGTERM (sent once torchrun sees the rank that ended) killed it in the interpreter's
    shutdown: torchrun's table showed it as `-15 (SIGTERM)`, and with its broken gloo group alive it could abort
    (`-6`). It now ends at once with code 1 (`os._exit`), its line flushed, SIGTERM only noted until then; when a rank
    of its machine ended it first waits (boundedly) for torchrun's SIGTERM, so that torchrun names that rank, not this
    one, as the "Root Cause"."""
    import os
    import signal
    import threading

    import cnnlab.cli as cli
    from cnnlab.tasks import recipes
    from cnnlab.train import strategy

    peer_lost = _gloo_peer_lost(tmp_path / "mnist" / "ddp")

    started = time.monotonic()
    exits: list[tuple[int, float, object, str]] = []

    def exit_now(code: int) -> None:
        exits.append((code, time.monotonic() - started, signal.getsignal(signal.SIGTERM), capsys.readouterr().err))
        raise _Exited

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setattr(cli, "app", peer_lost)
    monkeypatch.setattr(cli, "_ended_ranks", lambda wait_seconds=1.0: ended)
    monkeypatch.setattr(cli, "_ranks_elsewhere", lambda: {"node-b": [1]})
    monkeypatch.setattr(cli, "TORCHRUN_NOTICE_SECONDS", 1.0, raising=False)
    monkeypatch.setattr(strategy, "world_size", lambda: 2)  # the job's process group is joined (and broken)
    monkeypatch.setattr(os, "_exit", exit_now)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    reached_the_test: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: reached_the_test.append(signum))
    timer = threading.Timer(sigterm_after or 0.0, os.kill, (os.getpid(), signal.SIGTERM))
    if sigterm_after is not None:
        timer.start()
    try:
        with pytest.raises((_Exited, SystemExit)) as ending:
            cli.main()
    finally:
        timer.cancel()  # not after the command: the test's handler stays only until then
        signal.signal(signal.SIGTERM, previous)
    assert ending.type is _Exited, f"SystemExit({ending.value}): left to the shutdown, where torchrun's SIGTERM kills"
    [(code, after, handler, said)] = exits
    assert code == 1 and handler not in (signal.SIG_DFL, signal.SIG_IGN) and not reached_the_test
    assert exit_after[0] <= after < exit_after[1], after
    assert said.startswith("stopped: ") and said.count("\n") == 1


# A command in a child process: the task notes its run, reads batches from a DataLoader worker until stopped, and on
# KeyboardInterrupt finishes its clean-up (slowly enough for a second signal to arrive during it) before re-raising.
_STOPPED_COMMAND = """
import sys, time
from pathlib import Path
import torch
from torch.utils.data import DataLoader
import cnnlab.tasks.mnist
from cnnlab.cli import main
from cnnlab.tasks import recipes

def train_mnist(*_args, output="runs", name=None, **_kwargs):
    run_dir = Path(output) / "mnist" / name
    recipes.note_current_run(run_dir)
    try:
        for index, _ in enumerate(DataLoader(range(10**6), batch_size=1, num_workers=1)):
            if index == 0:
                print("training", flush=True)
            time.sleep(0.01)
    except KeyboardInterrupt:
        time.sleep(0.5)
        (Path(output) / "cleaned-up").write_text("yes")
        raise

cnnlab.tasks.mnist.train_mnist = train_mnist
sys.argv = ["cnnlab", "train", "mnist", "-o", sys.argv[1], "--name", "E"]
main()
"""


def test_sigterm_stops_a_command_as_ctrl_c_does(tmp_path: Path) -> None:
    """SIGTERM (kill, `timeout`, docker stop, SLURM, torchrun) ended the process on the spot: no line saying how to
    continue, and none of the clean-up that Ctrl+C runs. Sent here as `timeout` sends it, twice to the whole process
    group, DataLoader worker included: the clean-up finishes, the worker's end is no error, exit code 143."""
    import os
    import signal
    import subprocess

    import cnnlab

    environment = {**os.environ, "PYTHONPATH": str(Path(cnnlab.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    environment.pop("RANK", None)
    command = subprocess.Popen(
        [sys.executable, "-c", _STOPPED_COMMAND, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,  # its own process group, as `timeout` makes one
    )
    try:
        assert command.stdout is not None and command.stdout.readline() == "training\n"
        os.killpg(command.pid, signal.SIGTERM)
        time.sleep(0.1)
        os.killpg(command.pid, signal.SIGTERM)
        _, err = command.communicate(timeout=20)
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
    assert command.returncode == 143, err
    assert (tmp_path / "cleaned-up").read_text() == "yes"
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"interrupted: {tmp_path / 'mnist' / 'E'} keeps its finished epochs; continue with the same command and "
        "--resume --name E"
    )


# torchrun, as far as its ranks can tell: it starts the rank (a session of its own, its output to a file) and waits.
_LAUNCHER = """
import subprocess, sys, time
log = open(sys.argv[2], "w")
command = [sys.executable, "-c", sys.argv[1], sys.argv[3]]
rank = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
print(rank.pid, flush=True)
time.sleep(60)
"""
# A rank of a 2-process torchrun job whose command notes its run and trains until stopped.
_RANK = """
import sys, time
from pathlib import Path
import cnnlab.cli as cli
from cnnlab.tasks import recipes

def command():
    recipes.note_current_run(Path(sys.argv[1]) / "mnist" / "k")
    print("training", flush=True)
    time.sleep(30)

cli.app = command
cli.main()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_rank_whose_torchrun_was_killed_stops_and_says_how_to_continue(tmp_path: Path) -> None:
    """torchrun killed by SIGKILL (kill -9, the out-of-memory killer, a scheduler ending the launcher alone) cannot stop
    its ranks, each in a session of its own: they trained on, orphaned (2 of 2 ranks of `train mnist` ran on to the
    run's last epoch), writing the checkpoint that a `--resume` of the same command then wrote too. The kernel now
    sends each rank SIGTERM when torchrun ends, and it stops as torchrun stops it, rank 0 saying how to continue."""
    import os
    import signal
    import subprocess

    import cnnlab
    from cnnlab.train.strategy import _process_ended

    environment = {**os.environ, "PYTHONPATH": str(Path(cnnlab.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    environment |= {"WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_RUN_ID": "k"}
    log = tmp_path / "rank0.log"
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, _RANK, str(log), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    assert launcher.stdout is not None
    rank = int(launcher.stdout.readline())
    try:
        for _ in range(1200):  # its command started (and so asked for the signal): slow on a loaded machine
            if "training" in log.read_text():
                break
            time.sleep(0.05)
        assert "training" in log.read_text(), log.read_text()[-2000:]
        launcher.kill()
        launcher.wait()
        for _ in range(400):
            if _process_ended(rank):
                break
            time.sleep(0.05)
        assert _process_ended(rank), f"the rank trains on after its torchrun was killed: {log.read_text()[-2000:]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rank, signal.SIGKILL)
    said = log.read_text().splitlines()[-1]
    hint = f"{tmp_path / 'mnist' / 'k'} keeps its finished epochs; continue with the same command and --resume --name k"
    assert said == (
        "stopped: torchrun ended without stopping this job's processes (it was killed: kill -9, the out-of-memory "
        f"killer, a scheduler), and they stop with it; {hint}"
    )
