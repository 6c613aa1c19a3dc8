"""How a run is spread over processes: one process (`Strategy`), or torchrun + DistributedDataParallel (`DDPStrategy`).

The `Trainer` calls its strategy at fixed points and never looks at the process group itself (the design of
Lightning's ``Strategy``): it asks the strategy for the device, for the module the forward pass runs through, for this
process's share of the batches, to reduce the epoch's and the evaluation's metrics, and whether this process writes
files. `select_strategy` picks one from the environment, so every ``cnnlab train ...`` runs unchanged under
``torchrun --nproc_per_node N``:

- the process group comes from the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` variables torchrun sets (NCCL
  on GPUs, gloo on CPUs; each rank on ``cuda:LOCAL_RANK``);
- the forward pass runs through `DistributedDataParallel` (gradients averaged across ranks in backward);
  ``trainer.model`` stays the plain module, so checkpoints and saved weights have the same keys and format as a
  single-process run, and a run can be resumed with any number of processes its global batch splits over;
- ``--batch-size`` stays the *global* (effective) batch: each optimizer step's batch is split across the ranks, each
  taking every world-th sample (`ShardedBatches`, or `ShardedBatchSampler` for a DataLoader). The
  same command therefore follows the same optimisation path with 1 or N processes (BatchNorm statistics aside, which
  are per rank), and the learning rate needs no change; to use N times more samples per step, raise
  ``--batch-size`` and scale the learning rate with it (linear scaling with warm-up, Goyal et al. 2017);
- validation is sharded too, and every rank scores the outputs of all of them (`gather_batches`), so validation
  metrics are those of the whole set; the training metrics are all-reduced (sample-weighted means, summed
  throughput). Every rank sees the same numbers and takes the same early-stopping decision;
- only rank 0 writes (config.yaml, checkpoint.pt, metrics, plots) and shows progress.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Sampler

from cnnlab.errors import CnnlabError
from cnnlab.train.batches import Batch, BatchSource, LoaderBatches, TensorBatches

__all__ = [
    "DDPStrategy",
    "DistInfo",
    "ResumedRun",
    "ShardedBatchSampler",
    "ShardedBatches",
    "Strategy",
    "all_reduce_metrics",
    "cleanup",
    "describe_processes",
    "ended_ranks",
    "how_rank_ended",
    "init_distributed",
    "is_main_process",
    "main_process_first",
    "note_lost_peer",
    "ranks_elsewhere",
    "ranks_here_that_lost_a_peer",
    "select_strategy",
    "world_size",
]


@dataclass(frozen=True)
class ResumedRun:
    """What `Strategy.check_batch_size` says of a run being resumed.

    Attributes:
        run_dir: the run's folder.
        saved_with: the number of processes its checkpoint was saved with (None: not recorded, an older checkpoint).
        auto_batch_size: its batch was chosen by --batch-size auto at its start.
    """

    run_dir: Path
    saved_with: int | None
    auto_batch_size: bool


def describe_processes(count: int) -> str:
    """``"1 process"``, ``"2 processes"``."""
    return f"{count} process" if count == 1 else f"{count} processes"


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    """Processes in the initialised job (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 and in single-process runs: the process that writes files and logs.

    Before the process group exists (or after it is destroyed) the ``RANK`` variable torchrun sets decides, so code
    that runs around `Trainer.fit` under torchrun also writes from rank 0 only.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: str = "auto") -> DistInfo | None:
    """Join the torchrun job described by the environment, once; None when not launched by torchrun.

    Args:
        device: the configured device; ``auto``/``cuda`` with CUDA present use NCCL and ``cuda:LOCAL_RANK``.
    """
    if env_world_size() <= 1:
        return None
    if not dist.is_available():
        raise CnnlabError("torchrun launched several processes, but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)  # "cuda" now means this rank's GPU
    if not dist.is_initialized():
        with _sigterm_ends_the_process():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            _note_peers()
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())


_peers: list[tuple[str, str, int]] = []  # (host name, `_machine`, process id) of every rank of the job, by rank


def _note_peers() -> None:
    """Keep every rank's host, machine and process id, so that a rank that loses another can name it (`ended_ranks`)."""
    peers: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(peers, (socket.gethostname(), _machine(), os.getpid()))
    _peers[:] = peers


def _machine() -> str:
    """What tells whether a peer's process id names a process here: the kernel's boot id (one per machine and boot)
    and this process's PID namespace (one per container); empty where the system shows neither (not Linux).

    The host name alone was taken for it, and machines can share one (containers, cloud images, ``localhost``): a
    rank of another machine, its process id looked up on this one, where no such process runs, was named as the
    rank that ended.
    """
    parts = []
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))  # "pid:[4026531836]"
    return " ".join(parts)


def _here(host: str, machine: str) -> bool:
    """Whether a peer that noted `host` and `machine` (`_note_peers`) runs where this process can see its process."""
    return host == socket.gethostname() and machine == _machine()


def _process_ended(pid: int) -> bool:
    """Whether process `pid` (of this machine) has ended: gone, or a zombie its parent (torchrun) has not reaped."""
    return _process_end(pid)[0]


def _process_end(pid: int) -> tuple[bool, int | None]:
    """Whether process `pid` (of this machine) has ended, and its wait status (as `os.waitpid` gives it) when that
    shows: while it is a zombie that torchrun has not reaped yet (Linux's ``/proc/PID/stat``, whose last field, since
    Linux 3.5, is the status; 0 where it is not shown to this process). None once it is gone, or where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True, None
    except OSError:  # no /proc (not Linux)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True, None
        except PermissionError:
            pass
        return False, None
    if fields[0] not in ("Z", "X"):
        return False, None
    status = int(fields[49]) if len(fields) >= 50 and fields[49].isdigit() else 0  # field 52: exit_code
    return True, status or None


_end_statuses: dict[int, int] = {}  # rank -> its wait status, read by `ended_ranks` while it was a zombie


def ended_ranks(wait_seconds: float = 1.0) -> list[int]:
    """The ranks of this machine whose process has ended, for a rank that lost its connection to another.

    A peer's sockets close as its process exits, a moment before the system shows it ended, so this looks again for up
    to `wait_seconds` while none has. Ranks on other machines cannot be seen from here: never listed. Nor are the
    ranks that ended because they too lost a peer (`note_lost_peer`): when a rank of another machine is killed, a rank
    of this one that waited on it ends first, and was named as the rank that ended. Empty before `init_distributed`
    joined the job (or when it was joined by other code). How each ended, where it showed, is `how_rank_ended`'s.
    """
    own = os.getpid()
    local = [(rank, pid) for rank, (host, machine, pid) in enumerate(_peers) if _here(host, machine) and pid != own]
    deadline = time.monotonic() + wait_seconds
    while True:
        ended = []
        for rank, pid in local:
            gone, status = _process_end(pid)
            if gone and not _lost_a_peer(rank):
                ended.append(rank)
                if status is not None:
                    _end_statuses[rank] = status
        if ended or not local or time.monotonic() >= deadline:
            return ended
        time.sleep(0.05)


def how_rank_ended(rank: int) -> str | None:
    """``"SIGABRT"``, ``"SIGKILL"``, ``"exit code 1"``: how a rank that `ended_ranks` found had ended, as torchrun's
    failure table says it (its ``exitcode``, a negative one a signal); None when that did not show (the rank was
    already reaped by torchrun, or this is not Linux)."""
    status = _end_statuses.get(rank)
    if status is None:
        return None
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit code {code}"
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


_LOST_A_PEER = "cnnlab/lost_a_peer/"  # + rank: the job's store key of a rank that ends because it lost another
_STORE_TIMEOUT = timedelta(seconds=2)  # the store's host (torchrun's agent on the first machine) may be gone too


def note_lost_peer() -> None:
    """Note in the job's store that this rank ends because it lost its connection to another (before it ends).

    The other ranks' `ended_ranks` then leave it out: it is not the rank that failed or was killed. Best effort: the
    store may be unreachable when the machine that holds it is the one lost.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    with contextlib.suppress(RuntimeError, ValueError):
        _store().set(f"{_LOST_A_PEER}{dist.get_rank()}", "1")


_store_unreachable = False  # the store failed to answer `_lost_a_peer` once: not asked again


def _lost_a_peer(rank: int) -> bool:
    """Whether `rank` noted that it ends because it lost a peer (`note_lost_peer`); False when that cannot be read."""
    global _store_unreachable
    if _store_unreachable or not (dist.is_available() and dist.is_initialized()):
        return False
    try:
        return _store().check([f"{_LOST_A_PEER}{rank}"])
    except (RuntimeError, ValueError):
        _store_unreachable = True  # each try may wait for `_STORE_TIMEOUT`
        return False


def ranks_here_that_lost_a_peer() -> list[int] | None:
    """The ranks of this machine that noted they end because they lost a peer (`note_lost_peer`), for a rank that
    torchrun stopped; None when the job's store does not answer: the torchrun that held it, on another machine, is
    gone (torchrun stops its ranks when it loses the store; this machine's torchrun, which sent the stop, is alive).

    A rank that waits for its DataLoader's workers, in no collective, when a peer is lost does not meet the backend's
    error: it is stopped by torchrun's SIGTERM, sent when a rank of its machine ended after losing the peer, or when
    torchrun lost its store with the machine that held it. Ranks of other machines are not asked: a rank there that
    lost a peer may have lost one of this machine's, stopped by the same SIGTERM.
    """
    global _store_unreachable
    if not (dist.is_available() and dist.is_initialized()):
        return []
    if _store_unreachable:  # `ended_ranks` found it so: each try may wait for `_STORE_TIMEOUT`
        return None
    own = os.getpid()
    here = [rank for rank, (host, machine, pid) in enumerate(_peers) if _here(host, machine) and pid != own]
    try:
        store = _store()
        store.check([f"{_LOST_A_PEER}{dist.get_rank()}"])  # the store asked once even where no other rank runs here
        return [rank for rank in here if store.check([f"{_LOST_A_PEER}{rank}"])]
    except (RuntimeError, ValueError):
        _store_unreachable = True
        return None


def _store() -> dist.Store:
    """The job's key-value store (torchrun's), waiting at most `_STORE_TIMEOUT` on any call from now on."""
    store = dist.distributed_c10d._get_default_store()
    store.set_timeout(_STORE_TIMEOUT)
    return store


def ranks_elsewhere() -> dict[str, list[int]]:
    """The ranks of the job on other machines, by host name, as they noted them when they joined (`ended_ranks`).

    For a rank that lost another and found none of its own machine ended: the one lost ran on one of these, and only
    that machine (its torchrun's log) can say which it was. Empty before `init_distributed` joined the job.
    """
    elsewhere: dict[str, list[int]] = {}
    for rank, (host, machine, _pid) in enumerate(_peers):
        if not _here(host, machine):
            elsewhere.setdefault(host, []).append(rank)
    return elsewhere


@contextlib.contextmanager
def _sigterm_ends_the_process() -> Iterator[None]:
    """SIGTERM's default action (the process ends at once) for the block, in place of the CLI's handler.

    The CLI turns SIGTERM into a KeyboardInterrupt, which Python raises only once the main thread runs Python again.
    `init_process_group` waits in C++ until every rank has joined (gloo's connections through the store, for up to
    30 minutes): a rank that torchrun stopped there, its peer stopped before joining, did not end until torchrun
    killed it 30 s later ("Unable to shutdown process ... via 15, forcefully exiting via 9"; 2 of 44 stops at random
    times, 2 CPU cores). The rank writes nothing while it waits, and files are written whole, so no clean-up is lost.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "SIGTERM")
        or signal.getsignal(signal.SIGTERM) in (signal.SIG_IGN, None)  # told to ignore it: still ignored
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def main_process_first(device: str = "auto") -> Iterator[None]:
    """Run the block in rank 0 first, then in the other processes of a torchrun job (at once without one).

    For work whose result is written once and read by every process (a task's feature cache): the others then
    find it done instead of writing the same files at the same time.

    Args:
        device: the run's configured device (it picks the process group's backend, as `init_distributed` does).
    """
    if init_distributed(device) is None:
        yield
        return
    main = dist.get_rank() == 0
    if not main:
        dist.barrier()  # wait for rank 0 to finish the block
    try:
        yield
    finally:
        if main:
            dist.barrier()


def cleanup() -> None:
    """Leave the job (call at the very end of a distributed script, after it succeeded).

    Every rank waits for the others before the group is torn down: a rank that destroys its gloo group while a peer
    is still writing its last files can abort in the backend's threads ("terminate called without an active
    exception"), and torchrun then fails a job whose work is done.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class Strategy:
    """One process: the model runs as it is, every batch is this process's, metrics need no reduction."""

    world_size = 1
    rank = 0

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes files and shows progress (``RANK`` decides when torchrun set it)."""
        return is_main_process()

    def device(self, configured: torch.device) -> torch.device:
        """The device this process trains on, given the configured one."""
        return configured

    def wrap_model(self, model: nn.Module, device: torch.device, untrained_parameters: bool = False) -> nn.Module:
        """The module the forward pass of training runs through (gradients flow back to `model`).

        Args:
            model: the plain module.
            device: this process's device.
            untrained_parameters: `model` has parameters that require gradients but get none (no param group
                trains them, the forward pass may not use them).
        """
        return model

    def micro_batch_size(self, micro_batch_size: int) -> int:
        """This process's micro-batch for a step whose micro-batch, over all processes, is `micro_batch_size`."""
        return micro_batch_size

    def check_same_options(self, options: Mapping[str, Any]) -> None:
        """Refuse a job whose processes were started with different `options` (a run's config, `TrainConfig.to_dict`).

        Raises:
            CnnlabError: a rank's options differ from rank 0's, but for those that say only where and how this
                process runs (`PROCESS_FREE_OPTIONS`); every rank raises it.
        """

    def check_batch_size(self, batch_size: int, resumed: ResumedRun | None = None) -> int:
        """This process's share of the global `batch_size`.

        Args:
            batch_size: the global batch.
            resumed: the run being resumed, whose batch is kept (its schedule counted its steps with it), so the
                refusal names the process counts that divide it, not another --batch-size.

        Raises:
            CnnlabError: `batch_size` does not split evenly over the processes.
        """
        return batch_size

    def shard(self, source: BatchSource, seed: int, drop_last: bool) -> BatchSource:
        """This process's share of every batch of `source`."""
        return source

    def reduce_metrics(self, metrics: dict[str, float], weight: float, device: torch.device) -> dict[str, float]:
        """The metrics of all processes combined, each weighted by its `weight` (its number of samples)."""
        return dict(metrics)

    def agree_on_minimum(self, value: int, device: torch.device) -> int:
        """The smallest `value` any process holds (each process searches its own batch size)."""
        return value

    def sum_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        """`value` (a tensor on this process's device) summed over all processes."""
        return value

    def gather_batches(
        self, batches: Iterator[Batch], device: torch.device, target_fill: int | None = None
    ) -> Iterator[Batch]:
        """The whole batches of which `batches` (outputs, targets) are this process's shards (see `shard`): every
        process gets every sample of each batch, in the order of a single-process run.

        Args:
            batches: this process's shards of evaluation batches.
            device: where the whole batches go.
            target_fill: the target value that counts in no loss or metric (``ignore_index``), to pad the shards of
                a batch whose samples were padded to different sizes; None: they must have one size.
        """
        yield from batches

    def describe(self, batch_size: int) -> str | None:
        """A line for the log when the run is spread over processes; None otherwise."""
        return None


class DDPStrategy(Strategy):
    """torchrun + `DistributedDataParallel`: one process per device, batches split across them (see module doc).

    Args:
        info: this process's place in the job (`init_distributed`).
    """

    def __init__(self, info: DistInfo) -> None:
        self.info = info
        self.world_size = info.world_size
        self.rank = info.rank

    @property
    def is_main_process(self) -> bool:
        return self.info.rank == 0

    def device(self, configured: torch.device) -> torch.device:
        return torch.device("cuda", self.info.local_rank) if configured.type == "cuda" else configured

    def wrap_model(self, model: nn.Module, device: torch.device, untrained_parameters: bool = False) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model,
            device_ids=[self.info.local_rank] if device.type == "cuda" else None,
            # DDP otherwise waits for every parameter's gradient, and stops at the second step when some get none
            find_unused_parameters=untrained_parameters,
        )

    def micro_batch_size(self, micro_batch_size: int) -> int:
        # A micro-batch is per rank: the same number of micro-batches per step as in a single-process run.
        return max(1, micro_batch_size // self.world_size)

    def check_same_options(self, options: Mapping[str, Any]) -> None:
        from cnnlab.train.config import check_resumable

        every: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(every, dict(options))
        for rank, theirs in enumerate(every[1:], start=1):
            check_resumable(
                every[0], theirs, "", free=PROCESS_FREE_OPTIONS, refusal=_OTHER_OPTIONS.replace("RANK", str(rank))
            )

    def check_batch_size(self, batch_size: int, resumed: ResumedRun | None = None) -> int:
        per_rank, remainder = divmod(batch_size, self.world_size)
        if not remainder and per_rank >= 1:
            return per_rank
        if resumed is None:
            raise CnnlabError(
                f"--batch-size {batch_size} does not split evenly over {self.world_size} processes; "
                f"use a multiple of {self.world_size} (it is the global batch)"
            )
        # A resumed run keeps its batch, and "use a multiple" told a run whose batch --batch-size auto had chosen to
        # pass a --batch-size that the resume then refuses: the remedy is the number of processes.
        saved = "" if resumed.saved_with is None else f", saved with {describe_processes(resumed.saved_with)},"
        chosen = " (chosen by --batch-size auto at its start)" if resumed.auto_batch_size else ""
        counts = [count for count in range(1, batch_size + 1) if batch_size % count == 0]
        shown = ", ".join(map(str, counts[:8])) + (", ..." if len(counts) > 8 else "")
        raise CnnlabError(
            f"cannot resume {resumed.run_dir}{saved} on {describe_processes(self.world_size)}: its global batch of "
            f"{batch_size}{chosen} does not split evenly over them, and a resumed run keeps its batch; resume it on a "
            f"number of processes that divides {batch_size} ({shown})"
        )

    def shard(self, source: BatchSource, seed: int, drop_last: bool) -> BatchSource:
        if isinstance(source, LoaderBatches):
            return _distributed_loader(source.loader, self.info, drop_last)
        return ShardedBatches(source, self.info.rank, self.world_size)

    def reduce_metrics(self, metrics: dict[str, float], weight: float, device: torch.device) -> dict[str, float]:
        return all_reduce_metrics(metrics, weight, device)

    def agree_on_minimum(self, value: int, device: torch.device) -> int:
        tensor = torch.tensor([value], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def sum_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        summed = value.clone()
        dist.all_reduce(summed)
        return summed

    def gather_batches(
        self, batches: Iterator[Batch], device: torch.device, target_fill: int | None = None
    ) -> Iterator[Batch]:
        # Until every process has run out (a process whose share of the last batch is empty has one batch fewer).
        iterator = iter(batches)
        while True:
            batch = next(iterator, None)
            shards: list[Any] = [None] * self.world_size
            dist.all_gather_object(shards, None if batch is None else (batch[0].cpu(), batch[1].cpu()))
            if all(shard is None for shard in shards):
                return
            outputs = _interleave([None if shard is None else shard[0] for shard in shards], 0)
            targets = _interleave([None if shard is None else shard[1] for shard in shards], target_fill)
            yield outputs.to(device), targets.to(device)

    def describe(self, batch_size: int) -> str | None:
        return (
            f"distributed: {self.world_size} processes ({self.info.backend}), global batch {batch_size} = "
            f"{batch_size // self.world_size} per process"
        )


# Options that may differ between the processes of a job: where each machine keeps the runs and the data, how it
# shows progress, its threads and DataLoader workers; and the run's name, whose default holds the second each process
# started at (rank 0 alone writes the run). Any other difference (the learning rate, the epochs, the batch,
# the seed, the data's digest, resuming or not) made the ranks step with different settings: the job trained on in
# silence with replicas that drifted apart, or waited forever in a collective another rank never reached.
PROCESS_FREE_OPTIONS = frozenset(
    {"progress", "log_every", "output", "name", "num_threads", "tensorboard", "device", "extra.data", "extra.workers"}
)
_OTHER_OPTIONS = (
    "rank RANK of this torchrun job was started with other options than rank 0 ({changes}, rank 0's value first); "
    "run the same command on every machine of the job"
)


def select_strategy(device: str = "auto") -> Strategy:
    """`DDPStrategy` when launched by torchrun with several processes, else the single-process `Strategy`."""
    info = init_distributed(device)
    return Strategy() if info is None else DDPStrategy(info)


class ShardedBatches:
    """A batch source whose every batch is split across ranks: rank r keeps samples r, r + W, r + 2W, ...

    The wrapped source's batches are the global ones, so the order and grouping of samples per optimizer step are
    those of a single-process run. Works for any source with tensor inputs (for in-memory tensors each rank holds
    the whole dataset, which is the point of the fast path).

    Args:
        source: the global batches.
        rank: this process's rank.
        world_size: processes in the job.
    """

    def __init__(self, source: BatchSource, rank: int, world_size: int) -> None:
        self.source = source
        self.rank = rank
        self.world_size = world_size

    def with_batch_size(self, batch_size: int, drop_last: bool | None = None) -> ShardedBatches:
        """Re-batch the wrapped tensors (used for evaluation batches)."""
        if not isinstance(self.source, TensorBatches):
            raise CnnlabError("only in-memory tensor data can be re-batched")
        return ShardedBatches(self.source.with_batch_size(batch_size, drop_last), self.rank, self.world_size)

    @property
    def num_samples(self) -> int:
        total = self.source.num_samples
        return len(range(self.rank, total, self.world_size))

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, epoch: int, seed: int, shuffle: bool, device: torch.device) -> Iterator[Batch]:
        for inputs, targets in self.source.batches(epoch, seed, shuffle, device):
            if not isinstance(inputs, torch.Tensor):
                raise CnnlabError("distributed training of structured inputs needs a DataLoader (DistributedSampler)")
            yield inputs[self.rank :: self.world_size], targets[self.rank :: self.world_size]


class ShardedBatchSampler(Sampler[list[int]]):
    """A DataLoader's batch sampler whose every batch is split across ranks: rank r keeps its r-th, (r + W)-th, ...

    The wrapped sampler draws the global batches from the loader's own generator, which `LoaderBatches` seeds from
    `(seed, epoch)`, so each step takes the samples of the same step of a single-process run (a DistributedSampler
    shuffles with a generator of its own, and pads the last shard with repeated samples). In training (`drop_last`)
    a last batch that does not split evenly over the ranks is dropped: every rank must take every step with as many
    micro-batches as the others, whose gradients DDP all-reduces; in evaluation a rank with nothing of it skips it.

    Args:
        batch_sampler: the loader's `BatchSampler` (the global batches).
        rank: this process's rank.
        world_size: processes in the job.
        drop_last: drop a last batch that does not split evenly over the ranks (training).
    """

    def __init__(self, batch_sampler: BatchSampler, rank: int, world_size: int, drop_last: bool) -> None:
        self.batch_sampler = batch_sampler
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            shard = list(batch)[self.rank :: self.world_size]
            if shard and not (self.drop_last and len(batch) % self.world_size):
                yield shard

    def __len__(self) -> int:
        batches = len(self.batch_sampler)
        tail = len(self.batch_sampler.sampler) % self.batch_sampler.batch_size  # type: ignore[arg-type]
        if self.batch_sampler.drop_last or tail == 0:
            return batches
        skipped = tail % self.world_size != 0 if self.drop_last else tail <= self.rank
        return batches - int(skipped)


def _distributed_loader(loader: DataLoader, info: DistInfo, drop_last: bool) -> LoaderBatches:
    """The same DataLoader taking this rank's share of each of its batches (`ShardedBatchSampler`)."""
    batch_size = loader.batch_size
    if batch_size is None or not isinstance(loader.batch_sampler, BatchSampler):
        raise CnnlabError("distributed training needs a DataLoader built with batch_size (not a custom batch_sampler)")
    if batch_size % info.world_size:
        raise CnnlabError(
            f"batch size {batch_size} does not split evenly over {info.world_size} processes; "
            f"use a multiple of {info.world_size}"
        )
    rebuilt = DataLoader(
        loader.dataset,
        batch_sampler=ShardedBatchSampler(loader.batch_sampler, info.rank, info.world_size, drop_last),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,  # the shuffling sampler's own, which LoaderBatches seeds every epoch
        persistent_workers=loader.persistent_workers,
    )
    return LoaderBatches(rebuilt)


def _interleave(shards: list[torch.Tensor | None], fill: int | None) -> torch.Tensor:
    """The batch whose rows r, r + W, r + 2W, ... are shard r's (W shards; None: an empty shard), each padded at the
    end of every dimension to the largest with `fill`."""
    present = [shard for shard in shards if shard is not None]
    size = [max(shard.shape[d] for shard in present) for d in range(1, present[0].ndim)]
    if fill is None and any(list(shard.shape[1:]) != size for shard in present):
        raise CnnlabError(
            "the processes' shards of an evaluation batch have different sizes "
            f"({', '.join(str(tuple(s.shape[1:])) for s in present)}) and the loss has no ignore_index to pad with"
        )
    whole = present[0].new_full((sum(len(shard) for shard in present), *size), 0 if fill is None else fill)
    for rank, shard in enumerate(shards):
        if shard is not None:
            whole[(slice(rank, None, len(shards)), *(slice(0, n) for n in shard.shape[1:]))] = shard
    return whole


def all_reduce_metrics(metrics: dict[str, float], weight: float, device: torch.device) -> dict[str, float]:
    """Metrics averaged over ranks, weighted by `weight` (this rank's samples); throughput summed, times maxed."""
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
    if world_size() <= 1 or not keys:
        return dict(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    summed = torch.cat([values * weight, values, torch.tensor([float(weight)], dtype=torch.float64, device=device)])
    dist.all_reduce(summed)
    maxed = values.clone()
    dist.all_reduce(maxed, op=dist.ReduceOp.MAX)
    count = len(keys)
    total_weight = float(summed[-1])
    reduced = dict(metrics)
    for i, key in enumerate(keys):
        if key.endswith("per_second"):
            reduced[key] = float(summed[count + i])
        elif key.endswith("seconds") or key in ("epoch", "lr"):
            reduced[key] = float(maxed[i])
        else:
            reduced[key] = float(summed[i]) / max(total_weight, 1e-12)
    return reduced
