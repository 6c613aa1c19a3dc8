"""Out-of-memory recovery: an OOM in a step halves the micro-batch and redoes the step; nothing is lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, Trainer, load_checkpoint
from cnnlab.train.live_memory import LiveTensorTracker
from cnnlab.train.oom import SimulatedMemoryLimit
from cnnlab.train.strategy import Strategy


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=generator)
    images = torch.randn(n, 1, 8, 8, generator=generator) * 0.5
    images[torch.arange(n), 0, labels, labels] += 2.0
    return images, labels


class _OomAtCalls(nn.Module):
    """Runs `inner`, but raises torch.OutOfMemoryError on the chosen forward calls (1-based) in training."""

    def __init__(self, inner: nn.Module, fail_calls: set[int] | None = None, fail_always: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.fail_calls = fail_calls or set()
        self.fail_always = fail_always
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.fail_always or self.calls in self.fail_calls:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        return self.inner(x)


def _model() -> nn.Module:
    torch.manual_seed(0)  # no BatchNorm or dropout: a redone step is then exactly the step it replaces
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))


def _config(tmp_path: Path, name: str, **overrides: object) -> TrainConfig:
    options: dict[str, object] = dict(
        epochs=2,
        batch_size=32,
        lr=0.05,
        optimizer="sgd",
        schedule="onecycle",
        ema_decay=0.9,
        seed=3,
        output=str(tmp_path),
        name=name,
        progress=False,
    )
    options.update(overrides)
    return TrainConfig(**options)  # type: ignore[arg-type]


def test_an_oom_retry_is_said_without_progress_as_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The retry trains the rest of the run in smaller micro-batches (BatchNorm sees fewer samples): a note on the
    results, which -q (progress off, notes on) dropped with the progress."""
    trainer = Trainer(_OomAtCalls(_model(), fail_calls={3}), _config(tmp_path, "noted", epochs=1), notes=True)
    trainer.fit(_data())
    assert capsys.readouterr() == (
        "",
        "out of memory at step 3 (micro-batch 32): freed memory, redoing the step with micro-batch 16 x 2 accumulation "
        "steps (effective batch 32 unchanged)\n",
    )
    # what the tasks' results (their --json, which says no note) record of it
    retry = {"step": 3, "old_micro_batch": 32, "new_micro_batch": 16, "accum_steps": 2}
    assert trainer.batch_record() == {"batch_size": 32, "micro_batch_size": 16, "processes": 1, "oom_events": [retry]}


def test_injected_oom_is_recovered_with_nothing_lost(tmp_path: Path) -> None:
    data = _data()
    reference = Trainer(_OomAtCalls(_model()), _config(tmp_path, "reference"))
    reference.fit(data, data)
    # Batch 32 in one micro-batch: forward call 3 is step 3; then steps take 2 calls each.
    recovered = Trainer(_OomAtCalls(_model(), fail_calls={3}), _config(tmp_path, "recovered"))
    recovered.fit(data, data)

    steps_per_epoch = len(data[1]) // 32
    assert recovered.global_step == reference.global_step == 2 * steps_per_epoch
    assert [row["epoch"] for row in recovered.history] == [1.0, 2.0]
    assert recovered.micro_batch_size == 16
    [event] = recovered.oom_events
    assert (event.step, event.old_micro_batch, event.new_micro_batch, event.accum_steps) == (3, 32, 16, 2)
    # The same samples per step, the same averaged gradient: the same weights at the end.
    for p_ref, p_rec in zip(reference.model.parameters(), recovered.model.parameters(), strict=True):
        torch.testing.assert_close(p_rec, p_ref, rtol=1e-4, atol=1e-5)
    assert recovered.history[-1]["train_loss"] == pytest.approx(reference.history[-1]["train_loss"], rel=1e-4)
    # The smaller micro-batch is checkpointed, so a resumed run does not run out of memory again.
    assert load_checkpoint(recovered.run_dir / "checkpoint.pt")["micro_batch_size"] == 16


def test_oom_with_a_one_sample_micro_batch_is_an_actionable_error(tmp_path: Path) -> None:
    trainer = Trainer(_OomAtCalls(_model(), fail_always=True), _config(tmp_path, "hopeless", batch_size=4))
    with pytest.raises(CnnlabError, match="micro-batch of 1.*--precision bf16"):
        trainer.fit(_data(16))
    assert [e.new_micro_batch for e in trainer.oom_events] == [2, 1]


class _SecondOfTwoProcesses(Strategy):
    """A process of a two-process job whose collectives are not needed by the test (one process runs here)."""

    world_size = 2
    rank = 1


def test_oom_in_a_distributed_run_stops_instead_of_redoing_the_step_alone(tmp_path: Path) -> None:
    # Redone alone in two micro-batches, the step would run two gradient all-reduces where the other process runs
    # one: under torchrun the job hung (or averaged the gradients of different steps).
    model = _OomAtCalls(_model(), fail_calls={3})
    trainer = Trainer(model, _config(tmp_path, "ddp"), strategy=_SecondOfTwoProcesses())
    with pytest.raises(CnnlabError, match="step 3 in process 1 of 2.*cannot recover alone.*--accum auto"):
        trainer.fit(_data())
    assert trainer.oom_events == []
    assert model.calls == 3  # the step was not redone


def _peak_bytes(tmp_path: Path, micro: int) -> int:
    config = _config(tmp_path, f"peak{micro}", epochs=1, batch_size=micro, eval_batch_size=8, checkpoint=False)
    trainer = Trainer(_model(), config)
    with LiveTensorTracker() as tracker:
        trainer.fit(_data(64))
    return tracker.peak_bytes


def test_simulated_memory_limit_makes_training_adapt(tmp_path: Path) -> None:
    fits, too_big = _peak_bytes(tmp_path, 8), _peak_bytes(tmp_path, 64)
    assert fits < too_big
    limit = (fits + too_big) // 2
    config = _config(tmp_path, "limited", batch_size=64, eval_batch_size=8)
    trainer = Trainer(_model(), config)
    with SimulatedMemoryLimit(limit) as memory:
        trainer.fit(_data(256), _data(32))
    assert memory.errors >= 1
    assert memory.peak_bytes <= limit
    assert trainer.global_step == 2 * (256 // 64)
    assert len(trainer.history) == 2
    assert 8 <= trainer.micro_batch_size < 64
    assert trainer.config.batch_size == 64  # the effective batch is kept
