"""The `cnnlab` command line: a thin layer that parses options, calls library functions and prints.

Each command group lives in its own module here and registers itself on `app`; no command holds logic that the
library lacks. Errors in user input (`CnnlabError`) are printed on one line with exit code 2, never a traceback;
so are errors of the file system (`OSError`: a folder that cannot be made, no permission, a full disk), with exit
code 1.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, TextIO

import typer

from cnnlab.errors import CnnlabError

app = typer.Typer(
    name="cnnlab",
    help="Understand, size, build, train, transfer and convert convolutional neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(
    context: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the cnnlab version and exit."),
) -> None:
    """Understand, size, build, train, transfer and convert convolutional neural networks."""
    if version:
        from cnnlab import __version__

        typer.echo(f"cnnlab {__version__}")
        raise typer.Exit()
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())
        raise typer.Exit()


# Command modules, in the order their commands appear in --help. Each defines `register(app)`.
# `train_*` modules add subcommands to the `train` group defined in cli/train.py (`train_app`).
_COMMAND_MODULES = [
    "answers",
    "budget",
    "zoo",
    "train",
    "train_transfer",
    "train_segment",
    "ensemble",
    "evaluate",
    "predict",
    "export",
    "fcn",
    "experiment",
    "explain",
    "lab",
    "data",
]


def _register_commands() -> None:
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cnnlab.cli.{module_name}")
        except ModuleNotFoundError as error:
            if error.name == f"cnnlab.cli.{module_name}":
                continue  # a command group not built yet
            raise
        module.register(app)


def _one_line_summaries(group: typer.Typer) -> None:
    """Give every command of `group` (and of its sub-groups) a summary on one line for the group's command list.

    Typer lists a command by the first paragraph of its docstring, and in Rich markup mode it keeps that paragraph's
    line breaks, so a docstring wrapped at 120 columns showed as ragged rows in `cnnlab --help`.
    """
    for info in group.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if info.short_help is None and doc:
            info.short_help = " ".join(doc.strip().split("\n\n")[0].split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _one_line_summaries(sub.typer_instance)


_register_commands()
_one_line_summaries(app)


def main() -> None:
    """Entry point of the `cnnlab` console script and of `python -m cnnlab`."""
    warnings.formatwarning = _format_warning
    _names_written_as_bytes()
    with _sigterm_as_interrupt() as sigterm, _one_error_line_per_job(sigterm):
        try:
            _stop_when_torchrun_ends()
            app()
        except SystemExit as done:
            if not done.code:  # click ends a successful command with SystemExit(0)
                _leave_distributed_job()
            if _interrupted(done) or (done.code and sigterm.received):  # typer turns Ctrl+C into an exit (130)
                _stop_interrupted(sigterm.received)
            raise
        except KeyboardInterrupt:
            _stop_interrupted(sigterm.received)
        except BaseException as error:
            if sigterm.received:  # what the stop caused (a DataLoader worker the same SIGTERM ended): not an error
                _stop_interrupted(True)
            if isinstance(error, CnnlabError):
                print(f"error: {error}", file=sys.stderr)
                sys.exit(2)
            if isinstance(error, OSError):  # a folder that cannot be made, a full disk, no permission: no traceback
                print(f"error: {_describe(error)}", file=sys.stderr)
                sys.exit(1)
            if lost := _lost_peer(error):
                _stop_after_lost_peer(lost)
            raise


def _name_bytes_or_escape(error: UnicodeError) -> tuple[bytes, int]:
    """The encoding error handler `_names_written_as_bytes` gives stdout and stderr: a file name's bytes that are not
    UTF-8 (surrogates U+DC80..U+DCFF on Linux) written as they are, as "surrogateescape" does; any other character the
    stream's encoding lacks backslash-escaped, so that printing never fails."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    unwritten = error.object[error.start : error.end]
    return b"".join(
        bytes([ord(character) - 0xDC00])
        if "\udc80" <= character <= "\udcff"
        else character.encode("ascii", "backslashreplace")
        for character in unwritten
    ), error.end


NAME_BYTES_OR_ESCAPE = "cnnlab-name-bytes-or-escape"
codecs.register_error(NAME_BYTES_OR_ESCAPE, _name_bytes_or_escape)


def _names_written_as_bytes() -> None:
    """Print a file name that is not UTF-8 (a Latin-1 "caf\\xe9.jpg" from a zip made on Windows: a str with a surrogate
    on Linux) as its bytes on stdout and stderr alike, as the CSVs, splits and reports hold it.

    Under a UTF-8 locale (en_US.UTF-8, a desktop's) stdout is strict, and printing such a name (predict's results, a
    run's skipped files) ended the command in a UnicodeEncodeError traceback; under C.UTF-8, stdout wrote its bytes
    and stderr "caf\\udce9.jpg", one file named two ways.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):  # not a TextIOWrapper (a test's StringIO)
            stream.reconfigure(errors=NAME_BYTES_OR_ESCAPE)  # type: ignore[union-attr]


OTHER_RANK_ERROR_WAIT_SECONDS = 3.0
_unheld_stderr: TextIO | None = None  # stderr itself while a rank other than 0 holds what it writes


def _other_torchrun_rank() -> bool:
    """Whether this process is a rank other than 0 of a torchrun job (read from torchrun's variables: no torch)."""
    try:
        return _torchrun_job() and int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


@contextlib.contextmanager
def _one_error_line_per_job(sigterm: _Sigterm) -> Iterator[None]:
    """Under torchrun only rank 0 speaks, unless another rank fails: the job says a warning or an error once.

    Every rank parses the same command and reads the same inputs, so each printed the same warnings (rank 1's came
    after rank 0's results, at the end of a successful job) and the same usage error or ``error:`` line. A rank other
    than 0 holds what it writes to stderr until its command ends. When it succeeds, is interrupted (Ctrl+C reaches
    every rank) or torchrun stopped it (SIGTERM: another rank failed, and says why), what it held is dropped. When its
    end is a usage or input error (exit code 2, or 1 for a file-system error), it waits up to
    `OTHER_RANK_ERROR_WAIT_SECONDS` for torchrun's SIGTERM, which comes when another rank (rank 0, with the same
    error) has failed first: its copy is then dropped. A rank that fails alone (an input only it cannot read) still
    prints its error and its warnings, a few seconds later. A traceback is printed by Python after the command
    returns, so it is never held.
    """
    if not _other_torchrun_rank():
        yield
        return
    import io
    import time

    global _unheld_stderr
    stderr, held = sys.stderr, io.StringIO()
    sys.stderr, _unheld_stderr = held, stderr
    input_error = said_by_rank_zero = False
    try:
        yield
        said_by_rank_zero = True
    except SystemExit as done:
        # a success, Ctrl+C (which reaches every rank; rank 0 says how to continue), or a lost peer (said already)
        said_by_rank_zero = not done.code or done.code in (INTERRUPTED, TERMINATED) or isinstance(done, _LostPeer)
        input_error = done.code in (1, 2) and not isinstance(done, _LostPeer)
        raise
    finally:
        sys.stderr, _unheld_stderr = stderr, None
        try:
            deadline = time.monotonic() + OTHER_RANK_ERROR_WAIT_SECONDS
            while input_error and not sigterm.received and time.monotonic() < deadline:
                time.sleep(0.05)
        except KeyboardInterrupt:  # torchrun's SIGTERM, through _sigterm_as_interrupt
            pass
        if not (said_by_rank_zero or sigterm.received):
            stderr.write(held.getvalue())
            stderr.flush()


INTERRUPTED = 130  # Ctrl+C (SIGINT), as a shell reports a command it stopped: 128 + 2
TERMINATED = 143  # SIGTERM (kill, timeout, docker stop, a scheduler's preemption, torchrun): 128 + 15


def _stop_interrupted(terminated: bool) -> NoReturn:
    """Print how to continue the stopped run, and exit with the code of the signal that stopped it."""
    if line := _interrupted_line(terminated):
        print(line, file=_unheld_stderr or sys.stderr)  # rank 1 speaking for the job: not held
    sys.exit(TERMINATED if terminated else INTERRUPTED)


class _Sigterm:
    received = False

    def note(self, _signum: int, _frame: object) -> None:
        """A SIGTERM handler that only notes the signal came."""
        self.received = True


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[_Sigterm]:
    """While the command runs, SIGTERM stops it as Ctrl+C does: a KeyboardInterrupt in the main thread, so finished
    epochs, rows and files are kept, what Ctrl+C finishes is finished, and the line to continue is printed; the
    process then exits with code 143. Without this, SIGTERM ended the process on the spot, with none of that.

    Only the first SIGTERM interrupts; later ones are ignored, so that the clean-up they would cut short runs to its
    end (`timeout` sends SIGTERM to the command and then to its whole process group, so the command often gets two;
    `timeout -k`, docker, SLURM and torchrun follow with SIGKILL when a process does not end in time). The handler
    before it is restored when the command ends. Processes started from the command are unaffected: DataLoader
    workers install torch's own handler (they leave quietly when their parent sends SIGTERM), and each torchrun
    worker runs its own `main`, so torchrun's SIGTERM stops every rank as Ctrl+C stops them (rank 0 prints the line).
    A SIGTERM that a process was told to ignore (SIG_IGN) stays ignored.
    """
    sigterm = _Sigterm()
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (AttributeError, ValueError):  # no SIGTERM here
        previous = None
    if previous in (None, signal.SIG_IGN) or threading.current_thread() is not threading.main_thread():
        yield sigterm
        return

    def interrupt(_signum: int, _frame: object) -> None:
        if not sigterm.received:
            sigterm.received = True
            _children_may_end()
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield sigterm
    finally:
        signal.signal(signal.SIGTERM, previous)


def _children_may_end() -> None:
    """After SIGTERM, let the command's child processes end without it being an error.

    A SIGTERM sent to a process group (`timeout`, `kill -TERM -PGID`, torchrun's workers, each a group) or to every
    process of a job (SLURM) also ends the command's DataLoader workers, and torch's SIGCHLD handler then raised
    "DataLoader worker (pid N) is killed by signal: Terminated" wherever the clean-up was, or printed it from a
    destructor at exit. Their end is expected now: SIGCHLD gets a handler that does nothing (not SIG_IGN, which would
    reap children that torch and multiprocessing still wait for), and keeps it until the process exits.
    """
    if hasattr(signal, "SIGCHLD") and callable(signal.getsignal(signal.SIGCHLD)):
        signal.signal(signal.SIGCHLD, _do_nothing)


def _do_nothing(_signum: int, _frame: object) -> None:
    pass


_DEFAULT_FORMAT = warnings.formatwarning


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """cnnlab's own warnings as a line a user reads, ``warning: ...`` (they came with the source file and line that
    raised them, and that line's code); other libraries' as Python formats them."""
    if category.__module__.split(".")[0] == "cnnlab":
        return f"warning: {message}\n"
    return _DEFAULT_FORMAT(message, category, filename, lineno, line)


def _interrupted(done: SystemExit) -> bool:
    """Whether `done` ends a command that Ctrl+C interrupted (a KeyboardInterrupt in its chain of causes)."""
    error: BaseException | None = done
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


_torchrun_pid: int | None = None  # the torchrun that started this rank, while it is asked to stop with it
PR_SET_PDEATHSIG = 1  # Linux's prctl option: the signal this process gets when its parent ends


def _stop_when_torchrun_ends() -> None:
    """Under torchrun (Linux), have the kernel send this rank SIGTERM when torchrun ends, so that it stops as when
    torchrun stops it (`_sigterm_as_interrupt`: its finished epochs kept, the line to continue said).

    torchrun starts each rank in a session of its own and stops them on its way out; killed by SIGKILL (kill -9, the
    out-of-memory killer, a scheduler that ends the launcher alone), it cannot: its ranks trained on, orphaned and
    unseen, writing the run's checkpoint, which a `--resume` of the same command then wrote too.
    """
    global _torchrun_pid
    if not (_torchrun_job() and "TORCHELASTIC_RUN_ID" in os.environ and sys.platform.startswith("linux")):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        parent = os.getppid()
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0:
            _torchrun_pid = parent
            if os.getppid() != parent:  # torchrun ended before the kernel was asked
                os.kill(os.getpid(), signal.SIGTERM)


def _torchrun_ended() -> bool:
    """Whether the torchrun that started this rank has ended (`_stop_when_torchrun_ends`)."""
    return _torchrun_pid is not None and os.getppid() != _torchrun_pid


TORCHRUN_ENDED = (
    "stopped: torchrun ended without stopping this job's processes (it was killed: kill -9, the out-of-memory killer, "
    "a scheduler), and they stop with it"
)
TORCHRUN_STOPPED = "stopped by torchrun (another process of the job failed, or torchrun was sent SIGTERM)"


def _interrupted_line(terminated: bool = False) -> str:
    """The line an interruption prints: how to continue the run it stopped, if a task had started one ("" in the
    processes of a torchrun job other than rank 0: Ctrl+C reaches them all, and each printed the same line).

    Under torchrun a SIGTERM is not the user's Ctrl+C (torchrun passes SIGINT on as SIGINT): torchrun sends it to
    every process left when one of them fails, or when it was itself sent SIGTERM (kill, a scheduler). The line
    says so, where "interrupted" had the user look for a Ctrl+C they never pressed instead of for the failed rank;
    and when a rank of this machine has ended (failed, or killed: then it printed nothing), it names it, and the
    lowest rank left says the line if rank 0 is the one that ended. A rank that waited for data, in no collective, when
    a peer of another machine was lost is stopped by torchrun too, and names that machine where this one can tell.
    """
    stopped_by_torchrun = terminated and _torchrun_job()
    if stopped_by_torchrun and _torchrun_ended():  # every rank got the same SIGTERM from the kernel: rank 0 says it
        hint = _hint()
        return "" if _other_torchrun_rank() else f"{TORCHRUN_ENDED}; {hint}" if hint else TORCHRUN_ENDED
    ended: list[int] = []
    asks = stopped_by_torchrun and "cnnlab.train.strategy" in sys.modules
    if asks:  # a rank that exited 143 was stopped by the same SIGTERM (torchrun sends it to every rank at once)
        ended = [rank for rank in _ended_ranks(wait_seconds=0) if _how_ended(rank) != f"exit code {TERMINATED}"]
    if not _says_for_the_job(ended):
        return ""
    lost_here = _ranks_here_that_lost_a_peer() if asks else []
    hint = _hint()
    if lost_here is None and _ranks_elsewhere():  # torchrun lost its store with the machine that held it
        what = "stopped by torchrun: " + _lost_another("torchrun lost the job's store")
    elif ended:  # a rank killed (it says nothing) or failed: named, as after a lost peer
        what = f"stopped by torchrun: {_ranks_ended(ended)}; {_ended_rank_error(ended)}"
    elif lost_here:  # it ended after losing a peer, while this rank waited for data, in no collective
        what = "stopped by torchrun: " + _lost_another(f"{_rank_list(lost_here)} of this machine lost it")
    else:
        what = _torchrun_stopped() if stopped_by_torchrun else "interrupted"
        return f"{what}: {hint}" if hint else what
    return f"{what}; {hint}" if hint else what


def _hint() -> str | None:
    """How to continue the run that was stopped (`cnnlab.tasks.recipes.interrupted_hint`); None where none started."""
    recipes = sys.modules.get("cnnlab.tasks.recipes")  # not imported (nor torch) when nothing had started
    return recipes.interrupted_hint() if recipes is not None else None


def _torchrun_stopped() -> str:
    """`TORCHRUN_STOPPED`, and in a job of several machines that torchrun may have lost one of the others (it stops its
    ranks when the machine that holds the job's rendezvous is gone: nothing on this one says which rank ended)."""
    elsewhere = _ranks_elsewhere() if "cnnlab.train.strategy" in sys.modules else {}
    if not elsewhere:
        return TORCHRUN_STOPPED
    logs = "the torchrun log of " if len(elsewhere) == 1 else "the torchrun logs of "
    named = ", ".join(f"{host} ({_rank_list(ranks)})" for host, ranks in elsewhere.items())
    return (
        "stopped by torchrun (another process of the job failed, torchrun was sent SIGTERM, or it lost another machine "
        f'of the job: see {logs}{named}, which names a rank that ended under "Root Cause")'
    )


# What the backends say when a peer is gone. gloo: its connection to the peer closed. NCCL (GPUs): the remote rank
# exited or the network failed (ncclRemoteError, or a socket closed under an internal error), or its watchdog aborted
# the communicator after a collective waited past the group's timeout for a peer. Not every "NCCL error": an
# unhandled CUDA error or an invalid usage is this rank's own.
_GLOO_LOST = ("closed by peer", "reset by peer")
_NCCL_LOST = (
    "remote process exited",
    "ncclRemoteError",
    "Connection closed by remote peer",
    "NCCL communicator was aborted",
    "Watchdog caught collective operation timeout",
)


def _lost_peer(error: BaseException) -> str:
    """The backend and its reason when `error` is this torchrun process losing its connection to another ("" otherwise):
    ``"gloo: Connection closed by peer [10.0.0.2]:4410"``, ``"NCCL: remote process exited or there was a network
    error"``.

    When a rank fails while the others wait for its gradients, they meet gloo's "Connection closed by peer" (or
    "reset by peer"), or NCCL's error, before torchrun's SIGTERM reaches them, and rank 0 printed a 60-line traceback
    of it, without the line saying how to continue the run.
    """
    if not (_torchrun_job() and isinstance(error, RuntimeError)):  # torch's DistBackendError is a RuntimeError
        return ""
    message = str(error)
    if "gloo" in message and any(reason in message for reason in _GLOO_LOST):
        reason = message.split("] ", 1)[-1]  # gloo's message starts with its source file: "[/.../pair.cc:561] ..."
        return "gloo: " + reason.split(". ", 1)[0]
    if any(reason in message for reason in _NCCL_LOST):
        return "NCCL: " + _nccl_reason(message)
    return ""


def _nccl_reason(message: str) -> str:
    """The line of NCCL's message that says the peer is gone, without torch's source file, NCCL's version or the rank.

    ``NCCL error in: .../ProcessGroupNCCL.cpp:1970, remote process exited or there was a network error, NCCL version
    2.21.5`` (then ``ncclRemoteError: ...`` and ``Last error:`` lines) gives ``remote process exited or there was a
    network error``; ``NCCL communicator was aborted on rank 2.  Original reason for failure was: [Rank 2] Watchdog
    caught collective operation timeout: WorkNCCL(...) ran for 1805457 milliseconds before timing out.`` gives the
    reason from ``Watchdog``.
    """
    message = message.split("Original reason for failure was:", 1)[-1]
    lines = [line for line in message.splitlines() if line.strip()] or [message]
    line = next((line for line in lines if any(reason in line for reason in _NCCL_LOST)), lines[0])
    line = re.sub(r"^\s*NCCL error in: \S+, ", "", line)  # torch's source file and line
    line = re.sub(r", NCCL version [\w.+-]+", "", line)
    line = re.sub(r"^\s*(\[[^\]]*\]\s*)+", "", line)  # "[Rank 2] ", "[PG 0 (default_pg) Rank 2] "
    return line.strip().rstrip(".")


class _LostPeer(SystemExit):
    """The exit (code 1) of a rank that lost another: the job's line about it is said already."""


def _stop_after_lost_peer(lost: str) -> NoReturn:
    """One line for the job when a rank lost another, naming the rank that ended where this machine can see it, with
    how to continue the run; exit code 1. When none of this machine's ended (but those that lost a peer themselves),
    the line names the other machines, with their ranks: which rank there ended only that machine's torchrun says.

    Rank 0 says it; when rank 0 itself ended (killed: a killed rank says nothing), the lowest rank left on its machine
    does, so the job still says which rank ended and how to continue. The other ranks say nothing: their line would
    be the same. The rank named may have printed its error (above), or have been killed, which leaves none.
    """
    torchrun_stop = _Sigterm()
    if threading.current_thread() is threading.main_thread():
        # torchrun's SIGTERM, which follows when it sees the rank ended, no longer cuts the line short (it raised a
        # KeyboardInterrupt while the line was being made, and the job ended with no word: 2 of 12 kills of a rank);
        # it is noted, for `_end_broken_job`
        signal.signal(signal.SIGTERM, torchrun_stop.note)
    ended: list[int] = []
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C, a moment later
        from cnnlab.train.strategy import note_lost_peer

        note_lost_peer()  # so that no other rank names this one as the rank that ended
        ended = _ended_ranks()
        if _says_for_the_job(ended):
            hint = _hint()
            if ended:
                line = (
                    f"stopped: {_ranks_ended(ended)} while this process waited for it ({lost}); "
                    f"{_ended_rank_error(ended)}"
                )
            else:
                line = f"stopped: {_lost_another(lost)}"
            print(f"{line}; {hint}" if hint else line, file=_unheld_stderr or sys.stderr)
    _end_broken_job(torchrun_stop, bool(ended))
    raise _LostPeer(1)


TORCHRUN_NOTICE_SECONDS = 5.0


def _end_broken_job(torchrun_stop: _Sigterm, rank_here_ended: bool) -> None:
    """End this rank now with code 1, its group broken by the peer it lost (a no-op when it never joined a group).

    Left to end as a process normally does, it rarely ended with its own code: `main` restored SIGTERM's
    default on its way out, and torchrun's SIGTERM, sent when torchrun sees the rank that ended, then killed it in
    the interpreter's shutdown (torchrun's table showed `-15 (SIGTERM)`: 11 of 13 kills of a rank, 2 CPU processes);
    and a rank whose peer was on another machine, exiting with its gloo group alive, could abort in gloo's threads
    (`-6 (SIGABRT)`, "terminate called without an active exception"). A broken group cannot be left cleanly, and
    nothing is lost by skipping the shutdown: the error has unwound through the task's clean-up (sessions.json is
    written then), metrics and checkpoints are written whole as the run goes, and TensorBoard's writer thread appends
    each event to its file as it is logged, while this rank waits in the collective that fails (the step logged just
    before a peer was killed was in the file after 6 of 6 kills, 2 CPU processes).

    When a rank of this machine ended, torchrun's SIGTERM is awaited first (up to `TORCHRUN_NOTICE_SECONDS`):
    torchrun's "Root Cause" is the failure it saw first, and this rank, ending before torchrun saw the rank that
    ended, would be named in its place.
    """
    from cnnlab.train.strategy import world_size

    if world_size() <= 1:
        return
    import time

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C while waiting: end now
        deadline = time.monotonic() + TORCHRUN_NOTICE_SECONDS
        while rank_here_ended and not torchrun_stop.received and time.monotonic() < deadline:
            time.sleep(0.05)
    for stream in (sys.stdout, _unheld_stderr or sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe
            stream.flush()
    os._exit(1)


ENDED_RANK_ERROR = "its error is above, or, if there is none, it was killed (kill -9, the out-of-memory killer)"
KILLED_RANK = "it was killed (kill -9, the out-of-memory killer): a killed rank prints no error"
CRASHED_RANK = (
    "it crashed (an abort, as on a C++ error in gloo or NCCL, or a segmentation fault): its message, if any, is above"
)
_CRASH_SIGNALS = ("SIGABRT", "SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE")


def _ended_rank_error(ended: list[int]) -> str:
    """Where to look for why the `ended` ranks ended, by how they ended where that showed (`_how_ended`)."""
    how = {_how_ended(rank) for rank in ended}
    if how == {"SIGKILL"}:
        return KILLED_RANK
    if how <= set(_CRASH_SIGNALS):
        return CRASHED_RANK
    if all(kind is not None and kind.startswith("exit code") for kind in how):
        return "its error is above"
    return ENDED_RANK_ERROR


def _how_ended(rank: int) -> str | None:
    """How a rank that `_ended_ranks` found ended (``"SIGABRT"``, ``"exit code 1"``), as torchrun's table says it;
    None where that did not show (`cnnlab.train.strategy.how_rank_ended`)."""
    strategy = sys.modules.get("cnnlab.train.strategy")  # loaded when a rank was found: torch is not imported here
    return None if strategy is None else strategy.how_rank_ended(rank)


# Which rank of another machine ended is known there only: its torchrun's failure table, whose "Root Cause" names it.
OTHER_MACHINE_LOG = 'whose torchrun log names it under "Root Cause", after its error if it printed one'


def _lost_another(reason: str) -> str:
    """``lost another process of the torchrun job (REASON); the rank that ended ran on another machine, node-b
    (rank 2), whose torchrun log names it ...``, or ``...; see its error`` where no rank of the job ran elsewhere."""
    said = f"lost another process of the torchrun job ({reason})"
    if elsewhere := _ranks_elsewhere():
        return f"{said}; the rank that ended ran on another machine, {_machines(elsewhere)}, {OTHER_MACHINE_LOG}"
    return f"{said}; see its error"


def _machines(ranks_by_host: dict[str, list[int]]) -> str:
    """``"node1 (ranks 4-7)"``, ``"one of node1 (ranks 4-7), node2 (rank 8)"``: where a lost rank may have run."""
    named = [f"{host} ({_rank_list(ranks)})" for host, ranks in ranks_by_host.items()]
    return named[0] if len(named) == 1 else "one of " + ", ".join(named)


def _rank_list(ranks: list[int]) -> str:
    """``"rank 3"``, ``"ranks 4-7"``, ``"ranks 1, 3-5"`` (runs of consecutive ranks as a range)."""
    runs: list[list[int]] = []
    for rank in sorted(ranks):
        if runs and rank == runs[-1][-1] + 1:
            runs[-1].append(rank)
        else:
            runs.append([rank])
    shown = ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
    return ("rank " if len(ranks) == 1 else "ranks ") + shown


def _ranks_ended(ended: list[int]) -> str:
    """``"rank 1 of the torchrun job ended"``, ``"rank 1 of the torchrun job ended (SIGABRT)"``, ``"ranks 1, 2 of
    the torchrun job ended"``, ``"ranks 1 (SIGKILL), 2 (exit code 1) of the torchrun job ended"``: how each ended
    where that showed."""
    how = {rank: _how_ended(rank) for rank in ended}
    if len(ended) == 1:
        return f"rank {ended[0]} of the torchrun job ended" + (f" ({how[ended[0]]})" if how[ended[0]] else "")
    named = ", ".join(f"{rank} ({how[rank]})" if how[rank] else str(rank) for rank in ended)
    return f"ranks {named} of the torchrun job ended"


def _says_for_the_job(ended: list[int]) -> bool:
    """Whether this rank speaks for the job in its machine's log: rank 0, or the lowest rank left on this machine when
    the ranks below it have `ended` or run on other machines (each machine's torchrun writes a log of its own: a job
    whose rank 0 ran on a machine that was lost said nothing on the others)."""
    elsewhere = _ranks_elsewhere() if "cnnlab.train.strategy" in sys.modules else {}
    other_machines = {rank for ranks in elsewhere.values() for rank in ranks}
    return all(lower in ended or lower in other_machines for lower in range(int(os.environ.get("RANK", "0"))))


def _ended_ranks(wait_seconds: float = 1.0) -> list[int]:
    """The ranks of this machine that have ended (`cnnlab.train.strategy.ended_ranks`), found after a lost peer."""
    from cnnlab.train.strategy import ended_ranks

    return ended_ranks(wait_seconds)


def _ranks_here_that_lost_a_peer() -> list[int] | None:
    """The ranks of this machine that ended after losing a peer; None: the job's store does not answer
    (`cnnlab.train.strategy.ranks_here_that_lost_a_peer`)."""
    from cnnlab.train.strategy import ranks_here_that_lost_a_peer

    return ranks_here_that_lost_a_peer()


def _ranks_elsewhere() -> dict[str, list[int]]:
    """The job's ranks on other machines, by host (`cnnlab.train.strategy.ranks_elsewhere`), after a lost peer."""
    from cnnlab.train.strategy import ranks_elsewhere

    return ranks_elsewhere()


def _torchrun_job() -> bool:
    """Whether this process is one of several of a torchrun job (read from torchrun's variables: no torch)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _describe(error: OSError) -> str:
    """The system's reason and the path; where a folder was needed but a file stands, that file named."""
    if error.filename is None:
        return str(error.strerror or error)
    path = Path(error.filename)
    if isinstance(error, FileExistsError | NotADirectoryError):  # mkdir on, or under, a file
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            return f"{blocking} is a file, where a folder is needed" + ("" if blocking == path else f" (for {path})")
    return f"{error.strerror or error}: {path}"


def _leave_distributed_job() -> None:
    """Destroy the torchrun job's process group after a successful command (a no-op outside torchrun).

    A gloo process that exits with its group alive can abort in the backend's threads during interpreter shutdown
    ("terminate called without an active exception", pytorch/pytorch#190489), which torchrun reports as a failed
    job after the work is done. Not after an error: a peer may still be inside a collective, and torchrun stops the
    job anyway. torch.distributed is looked up, not imported, so commands that never load torch stay fast.

    A peer that ends (fails, or is killed) while this rank waits in the group's last barrier is said as one lost in
    training is (`_stop_after_lost_peer`): its gloo error escaped `main`'s handlers from here, as a 30-line traceback.
    """
    if "torch.distributed" in sys.modules:
        from cnnlab.train.strategy import cleanup

        try:
            cleanup()
        except RuntimeError as error:
            if lost := _lost_peer(error):
                _stop_after_lost_peer(lost)
            raise
