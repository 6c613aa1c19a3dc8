"""``--tensorboard``: the engine writes event files that TensorBoard's own reader reads back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train import Callback, TrainConfig, Trainer
from cnnlab.train.config import EngineOptions
from cnnlab.train.tensorboard import TensorBoardLogger, first_layer_filter_grid

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard is in the lab and dev extras"
)


def _data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=generator)
    images = torch.randn(n, 1, 8, 8, generator=generator)
    images[torch.arange(n), 0, labels, labels] += 3.0
    return images, labels


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3))


def _read(run_dir: Path) -> event_accumulator.EventAccumulator:
    accumulator = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return accumulator


def _train(tmp_path: Path, callbacks: tuple[Callback, ...] = (), **options: object) -> Trainer:
    settings: dict[str, object] = dict(
        epochs=2, batch_size=16, lr=0.05, optimizer="sgd", output=str(tmp_path), task="toy", name="run",
        progress=False, log_every=2, tensorboard=True,
    )  # fmt: skip
    config = TrainConfig(**{**settings, **options})  # type: ignore[arg-type]
    trainer = Trainer(_model(), config, callbacks=callbacks)
    images, labels = _data()
    trainer.fit((images, labels), (images[:32], labels[:32]))
    return trainer


def test_event_file_holds_step_and_epoch_scalars_and_the_filters(tmp_path: Path) -> None:
    trainer = _train(tmp_path, warmup_epochs=1)
    accumulator = _read(trainer.run_dir)
    scalars = set(accumulator.Tags()["scalars"])
    assert {"step/train_loss", "step/lr", "epoch/train_loss", "epoch/val_loss", "epoch/val_accuracy"} <= scalars
    # 96 samples / 16 = 6 steps per epoch, 12 in all; logged every 2nd step.
    assert [event.step for event in accumulator.Scalars("step/train_loss")] == [2, 4, 6, 8, 10, 12]
    # One epoch of warm-up, then one-cycle's decay: the logged lr is the schedule's, step by step.
    learning_rates = [event.value for event in accumulator.Scalars("step/lr")]
    assert max(learning_rates) > learning_rates[0] and learning_rates[-1] < max(learning_rates)
    # The epoch scalars are the run's records (metrics.json), at the step each epoch ended.
    epoch_accuracy = accumulator.Scalars("epoch/val_accuracy")
    assert [event.step for event in epoch_accuracy] == [6, 12]
    recorded = [row["val_accuracy"] for row in trainer.history]
    assert [event.value for event in epoch_accuracy] == pytest.approx(recorded)
    assert "first_layer_filters" in accumulator.Tags()["images"]


class _CrashAtStep(Callback):
    """Flushes the event file, then interrupts the run, as a crash after the events were written would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:
        if step == self.step:
            for callback in trainer.callbacks:
                if isinstance(callback, TensorBoardLogger) and callback.writer is not None:
                    callback.writer.flush()
            raise KeyboardInterrupt


def test_a_resumed_run_continues_the_curves_without_repeating_steps(tmp_path: Path) -> None:
    # 6 steps per epoch: the crash at step 10 comes after step 8 was logged and the epoch-1 checkpoint (step 6).
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, callbacks=(_CrashAtStep(10),))
    _train(tmp_path, resume=True)
    steps = [event.step for event in _read(tmp_path / "toy" / "run").Scalars("step/train_loss")]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_missing_package_fails_with_the_options_and_when_the_trainer_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a)
    )
    with pytest.raises(CnnlabError, match=r'pip install "cnnlab\[lab\]"'):
        Trainer(_model(), TrainConfig(output=str(tmp_path), tensorboard=True, progress=False))
    # `cnnlab train ... --tensorboard`: said with the options, not once a transfer run's feature cache was built
    with pytest.raises(CnnlabError, match=r'pip install "cnnlab\[lab\]"'):
        EngineOptions(tensorboard=True)
    EngineOptions(tensorboard=False)


def test_no_event_file_without_the_option(tmp_path: Path) -> None:
    trainer = Trainer(_model(), TrainConfig(epochs=1, batch_size=16, output=str(tmp_path), task="t", progress=False))
    trainer.fit(_data())
    assert not list(trainer.run_dir.glob("events.out.tfevents.*"))


def test_filter_grid_shows_one_tile_per_kernel_and_skips_what_is_no_picture() -> None:
    grid = first_layer_filter_grid(nn.Conv2d(3, 4, 5), padding=1)
    assert grid is not None and grid.shape == (3, 2 * 6 + 1, 2 * 6 + 1)  # 2 x 2 tiles of 5 x 5 plus padding
    assert float(grid.min()) >= 0.0 and float(grid.max()) <= 1.0
    assert first_layer_filter_grid(nn.Conv2d(8, 4, 3)) is None
    assert first_layer_filter_grid(nn.Linear(3, 3)) is None
