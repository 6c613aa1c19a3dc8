"""`--batch-size auto`: the search, its probe of full training steps plus evaluation, and accumulation."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train import Callback, TrainConfig, Trainer
from cnnlab.train.batch_size import accumulation_for, find_batch_size, search_largest, trainer_probe
from cnnlab.train.oom import SimulatedMemoryLimit
from cnnlab.train.strategy import DDPStrategy, DistInfo


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _collect_only_what_the_test_made() -> Iterator[None]:
    """Every probe of the search ends with `gc.collect()` (as it should on a GPU), which in a test session walks every
    object the earlier tests left (0.5-2 s a probe, most of this file's time). Objects from before the test are
    frozen out of collection: the tensors a probe makes, the only ones the simulated memory limit counts, are still
    collected."""
    gc.freeze()
    yield
    gc.unfreeze()


def test_search_finds_the_boundary_of_a_monotonic_probe() -> None:
    largest, tried, capped = search_largest(lambda b: b <= 37, start=2, cap=4096)
    assert (largest, capped) == (37, False)
    assert all(ok == (b <= 37) for b, ok in tried)
    assert len(tried) <= 12  # doubling then bisection, not a scan
    assert search_largest(lambda b: True, start=2, cap=100) == (
        100,
        [(2, True), (4, True), (8, True), (16, True), (32, True), (64, True), (100, True)],
        True,
    )
    assert search_largest(lambda b: False, start=8, cap=100)[0] == 0


@pytest.mark.parametrize(("requested", "fits", "accum"), [(128, 200, 1), (128, 50, 4), (96, 40, 3), (7, 3, 7)])
def test_accumulation_keeps_the_requested_batch(requested: int, fits: int, accum: int) -> None:
    assert accumulation_for(requested, fits) == accum
    assert requested % accum == 0 and requested // accum <= fits


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 64, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def _trainer(tmp_path: Path, name: str, batch_size: int = 512, **overrides: object) -> Trainer:
    # Wide layers: Adam's two state copies (allocated by the first optimizer step) are most of the memory.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 3))
    options: dict[str, object] = dict(epochs=1, batch_size=batch_size, optimizer="adamw", output=str(tmp_path))
    options.update(name=name, progress=False, checkpoint=False, **overrides)
    return Trainer(model, TrainConfig(**options))  # type: ignore[arg-type]


LIMIT = 7_200_000  # simulated free memory, bytes; the optimizer step alone peaks near 7.0 MB (measured)


def test_auto_batch_size_fits_a_whole_run_where_a_forward_backward_probe_does_not(tmp_path: Path) -> None:
    data = _data(1024)
    trainer = _trainer(tmp_path, "auto")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = find_batch_size(trainer, data, memory_limit=LIMIT, margin=0.1, cap=1024)
    assert 8 <= result.largest_fitting < 1024 and not result.capped
    assert result.batch_size == int(result.largest_fitting * 0.9) and result.accum_steps == 1
    assert trainer.config.batch_size == trainer.micro_batch_size == result.batch_size
    for p, p0 in zip(trainer.model.parameters(), before, strict=True):
        assert torch.equal(p, p0)  # the search restored the weights
    probe = trainer_probe(trainer, data, memory_limit=LIMIT)
    assert probe(result.largest_fitting) and not probe(result.largest_fitting + 1)  # a real boundary

    # What an inference-free, optimizer-free probe would pick (forward + backward only) is larger ...
    def forward_backward_fits(batch: int) -> bool:
        try:
            with SimulatedMemoryLimit(LIMIT):
                trainer.model(data[0][:batch]).sum().backward()
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            trainer.model.zero_grad(set_to_none=True)

    naive, _, _ = search_largest(forward_backward_fits, start=2, cap=1024)
    assert naive > result.largest_fitting
    # ... and that batch runs out of memory in real training (a step recovered by halving, or the evaluation at the
    # end of the epoch, as in Lightning #8028), while the chosen one does not.
    naive_run = _trainer(tmp_path, "naive", batch_size=naive)
    try:
        with SimulatedMemoryLimit(LIMIT):
            naive_run.fit(data, data)
        ran_out = bool(naive_run.oom_events)
    except torch.OutOfMemoryError:
        ran_out = True
    assert ran_out
    chosen_run = _trainer(tmp_path, "chosen", batch_size=result.batch_size)
    with SimulatedMemoryLimit(LIMIT) as memory:
        chosen_run.fit(data, data)  # training steps and the evaluation of every epoch
    assert memory.errors == 0 and not chosen_run.oom_events


def test_requested_batch_that_does_not_fit_is_kept_through_accumulation(tmp_path: Path) -> None:
    data = _data(1024)
    trainer = _trainer(tmp_path, "keep")
    result = find_batch_size(trainer, data, requested=512, memory_limit=LIMIT)
    assert result.batch_size == 512 and result.accum_steps >= 2
    assert result.micro_batch_size <= result.largest_fitting
    assert (trainer.config.batch_size, trainer.config.accum_steps) == (512, result.accum_steps)
    assert trainer.micro_batch_size == 512 // result.accum_steps


def test_nothing_fits_is_an_actionable_error(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="not even a batch of one sample fits"):
        find_batch_size(_trainer(tmp_path, "none"), _data(64), memory_limit=1000)


class _FirstOfTwoProcesses(DDPStrategy):
    """Rank 0 of a two-process job, in this one process: batches are sharded, collectives are left out."""

    def __init__(self) -> None:
        super().__init__(DistInfo(rank=0, world_size=2, local_rank=0, backend="gloo"))

    def wrap_model(self, model: nn.Module, device: torch.device, untrained_parameters: bool = False) -> nn.Module:
        return model

    def reduce_metrics(self, metrics: dict[str, float], weight: float, device: torch.device) -> dict[str, float]:
        return dict(metrics)

    def agree_on_minimum(self, value: int, device: torch.device) -> int:
        return value

    def check_same_options(self, options: Mapping[str, Any]) -> None:
        pass

    def sum_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.world_size  # as if the other process held the same


def test_distributed_auto_batch_is_at_most_the_training_set(tmp_path: Path) -> None:
    # Each process searched up to half the cap (1024), not half the 100 samples, and its largest fitting batch
    # times two made a global batch of 200: "training data has 50 samples, fewer than one batch of 200".
    torch.manual_seed(0)
    config = TrainConfig(
        epochs=1, batch_size=1024, auto_batch_size=True, output=str(tmp_path), name="auto", progress=False
    )
    trainer = Trainer(nn.Linear(64, 3), config, strategy=_FirstOfTwoProcesses())
    logged: list[str] = []
    trainer.note = logged.append  # type: ignore[method-assign]
    trainer.fit(_data(100))
    assert trainer.config.batch_size == 100 and trainer.micro_batch_size == 50
    assert trainer.global_step == 1
    # The log said "largest fitting 50 (the cap); training with batch 100 = 100 x 1 accumulation": 50 per process
    assert any(
        "largest fitting 50 per process (the cap); training with global batch 100 = 50 per process x 2 " in line
        for line in logged
    ), logged


def test_distributed_batch_larger_than_the_data_names_all_the_samples(tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, batch_size=200, output=str(tmp_path), name="large", progress=False)
    trainer = Trainer(nn.Linear(64, 3), config, strategy=_FirstOfTwoProcesses())
    with pytest.raises(CnnlabError, match="training data has 100 samples, fewer than one batch of 200"):
        trainer.fit(_data(100))


class _LimitDuringTraining(Callback):
    """The simulated memory limit from the first epoch on (the search has its own, nested ones would add up)."""

    def __init__(self, limit: int) -> None:
        self.memory = SimulatedMemoryLimit(limit)

    def on_fit_start(self, trainer: Trainer) -> None:
        self.memory.__enter__()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.memory.__exit__(None, None, None)


@pytest.mark.parametrize("mode", ["auto_batch_size", "auto_accum"])
def test_engine_option_searches_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    import cnnlab.train.batch_size as batch_size_module

    probe = batch_size_module.trainer_probe
    monkeypatch.setattr(batch_size_module, "trainer_probe", lambda *a, **k: probe(*a, **{**k, "memory_limit": LIMIT}))
    data = _data(1024)
    limit = _LimitDuringTraining(LIMIT)
    trainer = _trainer(tmp_path, mode, batch_size=512, **{mode: True})
    trainer.callbacks.append(limit)
    trainer.fit(data, data)
    assert limit.memory.errors == 0 and not trainer.oom_events
    config = trainer.config
    if mode == "auto_batch_size":
        assert config.batch_size < 512 and config.accum_steps == 1
    else:
        assert config.batch_size == 512 and config.accum_steps >= 2
        assert trainer.micro_batch_size == 512 // config.accum_steps
    assert trainer.global_step == 1024 // config.batch_size


@pytest.mark.parametrize(
    ("batch", "accum", "expected"),
    [
        ("auto", None, {"batch_size": 1024, "auto_batch_size": True}),
        ("256", "auto", {"batch_size": 256, "auto_accum": True}),
        (None, "4", {"accum_steps": 4}),
    ],
)
def test_command_line_values(batch: str | None, accum: str | None, expected: dict[str, object]) -> None:
    from cnnlab.train.config import EngineOptions

    assert EngineOptions(batch_size=batch, accum=accum).overrides() == expected


@pytest.mark.parametrize(("batch", "accum"), [("many", None), ("0", None), (None, "-2"), ("auto", "2")])
def test_bad_command_line_values_are_actionable(batch: str | None, accum: str | None) -> None:
    from cnnlab.train.config import EngineOptions

    with pytest.raises(CnnlabError, match="--batch-size|--accum"):
        EngineOptions(batch_size=batch, accum=accum).overrides()
