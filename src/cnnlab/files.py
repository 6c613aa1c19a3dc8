"""Files written whole or not at all: every file cnnlab reads back later (a checkpoint's companions, a run's records,
a split, a model) goes to a temporary name beside its path and is renamed over it once complete.

Like `cnnlab.errors`, this module sits below every layer, so data, train and tasks share the one way of doing it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

__all__ = [
    "PATH_BYTES",
    "check_writable",
    "make_folder",
    "readable_name",
    "save_figure_whole",
    "write_text_whole",
    "written_then_renamed",
]

# A temporary file this old is a leftover whatever its name says: no block writes one for a day, and a process id
# reused since (a container's processes restart at the same ids) or another machine's, unknown here, is still swept.
STALE_AFTER_SECONDS = 24 * 3600

# The `errors=` of a UTF-8 text file that holds file paths (a CSV of predictions, a split): a name that is not UTF-8
# (a zip made on Windows, a Latin-1 disk) is a str with surrogates on Linux, which strict UTF-8 refused to write (a
# traceback, and a CSV of its header alone); its bytes are written as they are and read back to the same path.
PATH_BYTES = "surrogateescape"


def readable_name(text: str) -> str:
    """`text` with the bytes of a file name that is not UTF-8 (surrogates, on Linux) shown as U+FFFD, as a viewer
    shows them ("caf\ufffd.jpg"): for text that cannot hold the bytes themselves (a figure's titles, strict JSON)."""
    if not any("\ud800" <= character <= "\udfff" for character in text):
        return text
    try:
        raw = text.encode("utf-8", PATH_BYTES)
    except UnicodeEncodeError:  # a surrogate no byte gave (none does on Linux): encoded as it is, read as U+FFFD
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


@contextlib.contextmanager
def written_then_renamed(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that takes a file name (safetensors, JSON text, CSV rows): renamed
    over `path` when the block finishes, deleted when it does not, so that `path` holds the old file or the new one,
    never half of one. The name (``.NAME.HOST.PID.tmp``) is hidden, the process's own, and has no image suffix, so a
    folder scan never lists it; the file gets the usual permissions, 0666 less the umask, whatever its writer gave
    it (safetensors' `save_file`, like `tempfile.mkstemp`, makes 0600: a model no one else could read).

    A process killed in the block (SIGKILL, power loss) cannot delete its temporary file: the next write of the same
    `path` deletes those of processes that are gone (`_sweep_leftovers`), never one that another live process,
    here or on another machine sharing the folder, is writing.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")
    _sweep_leftovers(path)
    try:
        yield temporary
        _usual_permissions(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """This process's umask: from /proc (reading it there changes nothing), else set and restored at once."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status", encoding="ascii") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_permissions(written: Path) -> None:
    """Give `written` the mode a file created with `open` gets (0666 less the umask)."""
    mode = 0o666 & ~_umask()
    if written.stat().st_mode & 0o777 != mode:
        os.chmod(written, mode)


def _host_label() -> str:
    """This machine's name as it goes in a temporary file's name: letters, digits and dashes, at most 40."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


_HOST = _host_label()


def _sweep_leftovers(path: Path) -> None:
    """Delete the temporary files of `path` that a process killed while writing it left behind: those of this
    machine whose process is gone, and any a day old (`STALE_AFTER_SECONDS`). The names cnnlab wrote before they
    held the machine's (``.NAME.PID.tmp``), and the random ones of `tempfile.mkstemp` that checkpoints had
    (``.NAME.XXXXXXXX.tmp``), are swept when a day old only. Nothing here may fail a write."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:(?:([A-Za-z0-9-]+)\.)?(\d+)|[a-z0-9_]{8})\.tmp")
    try:
        candidates = [entry for entry in os.scandir(path.parent) if entry.name.startswith(f".{path.name}.")]
    except OSError:
        return
    for entry in candidates:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        host, pid = match.group(1), int(match.group(2) or -1)  # -1: mkstemp's name, no process to ask
        if host == _HOST and pid == os.getpid():
            continue  # this process's own name: the block overwrites it
        try:
            old = time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_SECONDS
            if old or (host == _HOST and not process_alive(pid)):
                os.unlink(entry.path)
        except OSError:  # gone already (another process swept it), or not ours to delete
            continue


def process_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (another user's included: it may be writing); one whose
    existence cannot be checked counts as running."""
    if os.name == "nt":  # os.kill there ends the process; a leftover waits for the age rule
        return True
    if pid <= 0:
        return True  # 0 and negatives name process groups to os.kill, never one process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:
        return False  # no process has such an id
    except OSError:  # PermissionError: alive, another user's; anything else: do not guess it is gone
        return True
    return True


@functools.cache
def pid_namespace() -> str:
    """This process's machine and process-id namespace, in words: its host name, the kernel's boot id and the pid
    namespace (Linux's ``/proc``). A folder may be shared by machines and containers that each number their processes
    from 1, so a process id recorded in it means something only where these match."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):  # fmt: skip
        try:
            parts.append(read())
        except OSError:
            parts.append("")
    return "\n".join(parts)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file at `path`, in hex (the digest runs record of their weights and check on load)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_text_whole(path: str | os.PathLike[str], text: str) -> Path:
    """`Path.write_text` through `written_then_renamed`: a reader never finds half of `text` at `path`. A file name that
    is not UTF-8 in `text` (a report's skipped files) is written as its bytes (`PATH_BYTES`): it ended a transfer run,
    trained and tested, in a UnicodeEncodeError traceback before its report.md."""
    path = Path(path)
    with written_then_renamed(path) as temporary:
        temporary.write_text(text, errors=PATH_BYTES)
    return path


def save_figure_whole(figure: Any, path: str | os.PathLike[str], **options: Any) -> Path:
    """`figure.savefig(path, **options)` (a matplotlib figure) through `written_then_renamed`, in the format that
    `path`'s suffix names (the temporary name's ``.tmp`` would name none); returns `path`."""
    path = Path(path)
    with written_then_renamed(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip(".").lower() or None, **options)
    return path


def check_writable(path: str | os.PathLike[str], option: str = "--output", shown: str | None = None) -> None:
    """Make the folder of the file `path` and prove the file can be written there, before any work that ends in
    writing it: a read-only folder said "Read-only file system: .p.csv.part", a hidden temporary name, with exit
    code 1, once the model was loaded. A file already at `path` is left as it was.

    Raises:
        CnnlabError: `path` lies under a file, or its folder cannot be made or written (the system's reason), naming
            `option` and `shown` (what the user gave, when `path` is a file cnnlab names inside it; default `path`).
    """
    path = Path(path)
    shown = str(path) if shown is None else shown
    _refuse_file_above(path.parents, option, shown)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as error:
        raise CnnlabError(f"{option} {shown}: cannot write there ({error.strerror or error})") from None
    if not existed:
        path.unlink()


def make_folder(path: str | os.PathLike[str], option: str = "--output", shown: str | None = None) -> Path:
    """Make the folder `path` (and its parents), as a run's folder is made; returns it.

    Raises:
        CnnlabError: a file stands at `path` or above it, or the folder cannot be made (the system's reason), naming
            `option` and `shown` (what the user gave; default `path`): an OSError said it with exit code 1.
    """
    path = Path(path)
    shown = str(path) if shown is None else shown
    _refuse_file_above((path, *path.parents), option, shown)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CnnlabError(f"{option} {shown}: cannot make the folder {path} ({error.strerror or error})") from None
    return path


def _refuse_file_above(folders: Sequence[Path], option: str, shown: str) -> None:
    """Refuse the first of `folders` (a path and its parents, nearest first) that exists, when it is not a folder."""
    above = next(folder for folder in folders if folder.exists())  # "." or "/" at the latest
    if not above.is_dir():
        raise CnnlabError(f"{option} {shown}: {above} is a file, not a folder")
