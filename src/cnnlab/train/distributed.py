"""Data-parallel training under ``torchrun`` with PyTorch's DistributedDataParallel: nothing home-made.

Every ``cnnlab train ...`` runs unchanged under ``torchrun --nproc_per_node N``. The engine calls `init_distributed`
when it is built (process group from the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` variables torchrun
sets; NCCL on GPUs, gloo on CPUs; each rank on ``cuda:LOCAL_RANK``) and `setup` at the start of `fit`:

- the forward pass runs through `DistributedDataParallel` (gradients averaged across ranks in backward);
  ``trainer.model`` stays the plain module, so checkpoints and saved weights have the same keys and format as a
  single-process run, and a run can be resumed with any number of processes;
- ``--batch-size`` stays the *global* (effective) batch: each optimizer step's batch is split across the ranks, each
  taking every world-th sample (`ShardedBatches`), or a `DistributedSampler` replaces a DataLoader's sampler. The
  same command therefore follows the same optimisation path with 1 or N processes (BatchNorm statistics aside, which
  are per rank), and the learning rate needs no change; to use N times more samples per step, raise
  ``--batch-size`` and scale the learning rate with it (linear scaling with warm-up, Goyal et al. 2017);
- validation is sharded too and its metrics, like the training metrics, are all-reduced (sample-weighted means,
  summed throughput), so every rank sees the same numbers and takes the same early-stopping decision;
- only rank 0 writes (config.yaml, checkpoint.pt, metrics, plots) and shows progress.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from cnnlab.errors import CnnlabError
from cnnlab.train.batches import Batch, BatchSource, LoaderBatches, TensorBatches

if TYPE_CHECKING:
    from cnnlab.train.trainer import Trainer


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


def rank() -> int:
    """This process's global rank (0 without a job)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())


def cleanup() -> None:
    """Leave the job (call at the very end of a distributed script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


def _distributed_loader(loader: DataLoader, info: DistInfo, seed: int, drop_last: bool) -> LoaderBatches:
    """The same DataLoader with a DistributedSampler and 1/world of its batch size per rank."""
    batch_size = loader.batch_size
    if batch_size is None or loader.batch_sampler is None:
        raise CnnlabError("distributed training needs a DataLoader built with batch_size (not a custom batch_sampler)")
    if batch_size % info.world_size:
        raise CnnlabError(
            f"batch size {batch_size} does not split evenly over {info.world_size} processes; "
            f"use a multiple of {info.world_size}"
        )
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=drop_last,
    )
    rebuilt = DataLoader(
        loader.dataset,
        batch_size=batch_size // info.world_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )
    return LoaderBatches(rebuilt)


def shard(source: BatchSource, info: DistInfo, seed: int, drop_last: bool) -> BatchSource:
    """This rank's part of a batch source (DistributedSampler for DataLoaders, `ShardedBatches` otherwise)."""
    if isinstance(source, LoaderBatches):
        return _distributed_loader(source.loader, info, seed, drop_last)
    return ShardedBatches(source, info.rank, info.world_size)


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


def prepare_fit(
    trainer: Trainer, train: BatchSource, val: BatchSource | None
) -> tuple[BatchSource, BatchSource | None]:
    """The engine's single entry point at the start of `fit`: batch-size search, then DDP (no-ops by default).

    Under torchrun this rank's model moves to its device first, so the batch search probes the right GPU; the
    ranks then agree on the smallest batch any of them found.
    """
    config = trainer.config
    info = init_distributed(config.device)
    if info is not None and trainer.device.type == "cuda":
        trainer.device = torch.device("cuda", info.local_rank)
        trainer.model.to(trainer.device)
    if config.auto_batch_size or config.auto_accum:
        from cnnlab.train.batch_size import autosize

        train = autosize(trainer, train)
    if info is None:
        return train, val
    return setup(trainer, train, val, info)


def setup(
    trainer: Trainer, train: BatchSource, val: BatchSource | None, info: DistInfo
) -> tuple[BatchSource, BatchSource | None]:
    """Make `trainer` a DDP replica and return this rank's training and validation data (see the module doc)."""
    from torch.nn.parallel import DistributedDataParallel

    config = trainer.config
    per_rank_batch, remainder = divmod(config.batch_size, info.world_size)
    if remainder or per_rank_batch < 1:
        raise CnnlabError(
            f"--batch-size {config.batch_size} does not split evenly over {info.world_size} processes; "
            f"use a multiple of {info.world_size} (it is the global batch)"
        )
    # A micro-batch is per rank: the same number of micro-batches per step as in a single-process run.
    trainer.micro_batch_size = max(1, trainer.micro_batch_size // info.world_size)
    device_ids = [info.local_rank] if trainer.device.type == "cuda" else None
    ddp = DistributedDataParallel(trainer.model, device_ids=device_ids)
    trainer.forward_model = torch.compile(ddp) if config.compile else ddp  # type: ignore[assignment]
    trainer.is_main_process = info.rank == 0
    if info.rank != 0:
        config.progress = False  # one progress bar and one log, from rank 0
    sharded_train = shard(train, info, config.seed, drop_last=True)
    sharded_val = None if val is None else shard(val, info, config.seed, drop_last=False)
    # The engine's epoch and evaluation results are reduced before anything reads them (best epoch, callbacks,
    # early stopping, records); wrapping the bound methods keeps checkpoints free of distributed state.
    train_epoch, evaluate = trainer._train_epoch, trainer.evaluate
    train_samples = sharded_train.num_samples

    def reduced_train_epoch(source: BatchSource, epoch: int) -> dict[str, float]:
        return all_reduce_metrics(train_epoch(source, epoch), train_samples, trainer.device)

    def reduced_evaluate(data: Any, prefix: str = "", model: Any = None) -> dict[str, float]:
        results = evaluate(data, prefix=prefix, model=model)
        samples = trainer._eval_source(data).num_samples
        return all_reduce_metrics(results, samples, trainer.device)

    trainer._train_epoch = reduced_train_epoch  # type: ignore[method-assign]
    trainer.evaluate = reduced_evaluate  # type: ignore[method-assign]
    trainer.log(
        f"distributed: {info.world_size} processes ({info.backend}), global batch {config.batch_size} = "
        f"{per_rank_batch} per process"
    )
    return sharded_train, sharded_val
