"""`--batch-size auto`: the largest batch that trains without running out of memory, tested the way it will run.

Automatic batch finders fail in known ways: they probe a forward pass or a single step, then the run dies later in
the first evaluation or when the optimizer allocates its state (Lightning #8028, #9625, #20231; Ultralytics #1451,
#4679), or they halve the batch without scaling gradient accumulation (accelerate). Here each candidate batch runs
through the engine's own step (`Trainer.trial`: same loss, precision, channels_last, EMA, checkpointing) for
`steps` full optimizer steps, so the optimizer state exists, then through one evaluation batch of the size
evaluation will use. Memory is freed between tries, and the model's weights and buffers are restored afterwards.

The tuner runs before training starts (`Trainer.fit` calls `tune_batch_size` when ``--batch-size auto`` or
``--accum auto`` is set) and uses only the trainer's public API: `Trainer.trial` to try a candidate and
`Trainer.set_batch_size` to apply the answer.

The search doubles from `start` until a candidate fails or reaches `cap`, then bisects. The chosen batch is the
largest that fitted, times ``1 - margin`` (a safety margin for fragmentation and for whatever the probe does not
see). When a batch size was requested and it does not fit, `accumulation_for` keeps it as the effective batch and
splits it into micro-batches that fit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.train.batches import BatchSource, TensorBatches, as_batch_source
from cnnlab.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from cnnlab.train.oom import SimulatedMemoryLimit, free_memory

if TYPE_CHECKING:
    from cnnlab.train.trainer import Trainer

Probe = Callable[[int], bool]


@dataclass
class BatchSearch:
    """What the search found.

    Attributes:
        largest_fitting: the largest micro-batch that ran a full probe (0 when none did).
        batch_size: the effective batch to train with.
        accum_steps: micro-batches per optimizer step (`batch_size // accum_steps` fits).
        tried: every candidate, in order, with whether it fitted.
        capped: the search stopped at `cap`, not at a failure.
    """

    largest_fitting: int
    batch_size: int
    accum_steps: int
    tried: list[tuple[int, bool]] = field(default_factory=list)
    capped: bool = False

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.accum_steps


def search_largest(probe: Probe, start: int = 1, cap: int = 4096) -> tuple[int, list[tuple[int, bool]], bool]:
    """Largest b in [1, cap] with ``probe(b)`` true, assuming it is monotonic: doubling from `start`, then bisection.

    Returns:
        (largest fitting batch or 0, the candidates tried with their outcome, whether `cap` was reached).
    """
    tried: list[tuple[int, bool]] = []

    def attempt(batch: int) -> bool:
        ok = probe(batch)
        tried.append((batch, ok))
        return ok

    low, high = 0, max(1, min(start, cap))
    while attempt(high):
        low = high
        if high >= cap:
            return low, tried, True
        high = min(high * 2, cap)
    # low fits (or is 0), high does not
    if low == 0 and high > 1:
        return search_largest_between(attempt, 0, high), tried, False
    return search_largest_between(attempt, low, high), tried, False


def search_largest_between(attempt: Probe, low: int, high: int) -> int:
    """Bisection between a fitting `low` (0 means none known) and a failing `high`."""
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if attempt(middle) else (low, middle)
    return low


def accumulation_for(requested: int, largest_fitting: int) -> int:
    """The fewest micro-batches per step that keep `requested` as the effective batch with micro-batches that fit.

    The count divides `requested` (the engine's configs require it), so a prime batch may need one-sample steps.
    """
    if largest_fitting < 1:
        raise CnnlabError(
            "not even one sample fits in memory; try --precision bf16, --grad-checkpointing or smaller images"
        )
    accum = max(1, -(-requested // largest_fitting))
    while requested % accum:
        accum += 1
    return accum


def _example_batch(train_data: Any, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """Some real samples (one batch) to tile into candidates of any size."""
    source = as_batch_source(train_data, trainer.config.batch_size, drop_last=False)
    inputs = getattr(source, "inputs", None)
    targets = getattr(source, "targets", None)
    if isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor):
        return inputs, targets
    batch = next(iter(source.batches(0, trainer.config.seed, shuffle=False, device=trainer.device)), None)
    if batch is None or not isinstance(batch[0], torch.Tensor):
        raise CnnlabError("--batch-size auto needs training data with tensor inputs and at least one sample")
    return batch[0], batch[1]


def _tile(tensor: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    index = torch.arange(size, device=tensor.device) % len(tensor)
    return tensor[index].to(device)


def trainer_probe(
    trainer: Trainer,
    train_data: Any,
    *,
    steps: int = 2,
    evaluate: bool = True,
    memory_limit: int | None = None,
) -> Probe:
    """A probe that runs `steps` training steps and one evaluation batch at a candidate micro-batch size.

    Args:
        trainer: the run's trainer, before `fit` (its model, loss, transforms, precision and options are used).
        train_data: the run's training data (samples are taken from it and tiled to the candidate size).
        steps: full optimizer steps per candidate (two: the optimizer state is allocated by the first).
        evaluate: also run one evaluation batch (of ``eval_batch_size``, else twice the candidate).
        memory_limit: simulate a device with this many free bytes (`SimulatedMemoryLimit`); for tests.

    Returns:
        ``probe(batch) -> bool``: whether the candidate ran without running out of memory. The model's weights and
        buffers, the config and the trainer's state are restored after every call.
    """
    config = trainer.config
    inputs, targets = _example_batch(train_data, trainer)
    snapshot = trainer.snapshot()  # outside the simulated limit, as a real device would not hold it

    def probe(batch: int) -> bool:
        limit = SimulatedMemoryLimit(memory_limit) if memory_limit is not None else contextlib.nullcontext()
        try:
            with limit:
                x, y = _tile(inputs, batch, trainer.device), _tile(targets, batch, trainer.device)
                eval_batch = None
                if evaluate:
                    size = config.eval_batch_size or 2 * batch  # evaluation batches default to twice the batch
                    eval_batch = (_tile(inputs, size, trainer.device), _tile(targets, size, trainer.device))
                trainer.trial(x, y, snapshot, steps=steps, eval_batch=eval_batch)
                del x, y, eval_batch
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            free_memory(trainer.device)

    return probe


def find_batch_size(
    trainer: Trainer,
    train_data: Any,
    *,
    requested: int | None = None,
    margin: float = 0.1,
    cap: int = 4096,
    start: int = 2,
    steps: int = 2,
    evaluate: bool = True,
    memory_limit: int | None = None,
    probe: Probe | None = None,
    apply: bool = True,
) -> BatchSearch:
    """Find the batch to train with, and (by default) set it on the trainer and its config.

    Args:
        trainer: the run's trainer, before `fit`.
        train_data: the run's training data.
        requested: an effective batch to keep (through accumulation if it does not fit); None: the largest batch
            that fits, less the margin (``--batch-size auto``).
        margin: fraction taken off the largest fitting batch (0.1: 90 % of it).
        cap: the largest batch tried (the number of training samples also caps it).
        start: the first candidate of the doubling phase.
        steps: optimizer steps per candidate.
        evaluate: also test one evaluation batch per candidate.
        memory_limit: simulated free memory in bytes (tests); None: the device's real memory.
        probe: replaces the trainer probe (``probe(batch) -> fits``).
        apply: write the result into ``trainer.config`` (batch_size, accum_steps) and ``trainer.micro_batch_size``.
    """
    if not 0.0 <= margin < 1.0:
        raise CnnlabError(f"batch-size margin must be in [0, 1), got {margin}")
    num_samples = as_batch_source(train_data, trainer.config.batch_size).num_samples
    cap = max(1, min(cap, num_samples if requested is None else requested))
    probe = probe or trainer_probe(trainer, train_data, steps=steps, evaluate=evaluate, memory_limit=memory_limit)
    # A requested batch is tried first: when it fits, one probe is enough; otherwise bisection below it.
    first = cap if requested is not None else min(start, cap)
    largest, tried, capped = search_largest(probe, start=first, cap=cap)
    if largest == 0:
        raise CnnlabError(
            "not even a batch of one sample fits in memory; try --precision bf16, --grad-checkpointing, "
            "smaller images or a smaller model"
        )
    safe = largest if capped else max(1, int(largest * (1.0 - margin)))
    if requested is None:
        result = BatchSearch(largest, safe, 1, tried, capped)
    else:
        result = BatchSearch(largest, requested, accumulation_for(requested, safe), tried, capped)
    if apply:
        trainer.set_batch_size(result.batch_size, result.accum_steps, trainer.config.eval_batch_size)
        outcome = ", ".join(f"{b}{'' if ok else ' (out of memory)'}" for b, ok in tried)
        trainer.note(
            f"batch size search: tried {outcome}; largest fitting {largest}{' (cap)' if capped else ''}, "
            f"training with batch {result.batch_size} = {result.micro_batch_size} x {result.accum_steps} accumulation"
        )
    return result


def tune_batch_size(trainer: Trainer, train: BatchSource) -> BatchSource:
    """Size the batch of a trainer that has not started (``auto_batch_size`` / ``auto_accum``); `Trainer.fit` calls it.

    - ``auto_batch_size``: the largest batch that fits, up to ``config.batch_size`` (the cap), less the margin;
      in-memory data is re-batched with it.
    - ``auto_accum``: ``config.batch_size`` stays the effective batch; the micro-batch is the largest that fits
      (less the margin) and ``accum_steps`` grows to match.

    A resumed run takes the batch its checkpoint was trained with (no search, so the run continues identically).
    Under torchrun each process searches its own per-process batch and all take the smallest.

    Returns:
        The training data, re-batched when its batch size changed.
    """
    config = trainer.config
    if config.auto_batch_size and not isinstance(train, TensorBatches):
        raise CnnlabError(
            "--batch-size auto needs in-memory data (the batch of a DataLoader is fixed); "
            "pass the batch size and --accum auto instead"
        )
    checkpoint = config.run_dir / CHECKPOINT_NAME
    if config.resume and checkpoint.is_file():
        saved = load_checkpoint(checkpoint)["config"]
        batch_size, accum_steps = int(saved["batch_size"]), int(saved["accum_steps"])
        eval_batch_size = saved.get("eval_batch_size")
    else:
        world = trainer.strategy.world_size
        per_rank = max(1, config.batch_size // world)
        # --batch-size auto: the global batch (per-process batch x processes) is at most the training set
        cap = max(1, min(config.batch_size, train.num_samples) // world) if config.auto_batch_size else per_rank
        result = find_batch_size(
            trainer, train, requested=None if config.auto_batch_size else per_rank, cap=cap, apply=False
        )
        micro = trainer.strategy.agree_on_minimum(result.micro_batch_size, trainer.device)
        if config.auto_batch_size:
            batch_size, accum_steps = micro * world, 1
        else:
            batch_size = config.batch_size
            accum_steps = accumulation_for(per_rank, micro)
        eval_batch_size = config.eval_batch_size or (2 * batch_size // accum_steps if accum_steps > 1 else None)
        outcome = ", ".join(f"{b}{'' if ok else ' (out of memory)'}" for b, ok in result.tried)
        # Under torchrun the search and the micro-batch are per process, the batch global: say which is which
        # ("largest fitting 512 (the cap); training with batch 1024 = 1024 x 1 accumulation" mixed them).
        per_process = " per process" if world > 1 else ""
        split = f"{micro} per process x {world} processes" if world > 1 else f"{batch_size // accum_steps}"
        trainer.note(
            f"batch size search: tried {outcome}; largest fitting {result.largest_fitting}{per_process}"
            f"{' (the cap)' if result.capped else ''}; training with {'global ' if world > 1 else ''}batch "
            f"{batch_size} = {split} x {accum_steps} accumulation"
        )
    trainer.set_batch_size(batch_size, accum_steps, eval_batch_size)
    if isinstance(train, TensorBatches):
        return train.with_batch_size(batch_size, drop_last=True)
    return train
