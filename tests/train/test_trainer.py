"""The training engine: exact resume, atomic checkpoints, early stopping, accumulation, records."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnlab import files
from cnnlab.errors import CnnlabError
from cnnlab.train import Callback, TensorBatches, TrainConfig, Trainer, atomic_save, load_checkpoint
from cnnlab.train import checkpoint as checkpoint_module
from cnnlab.train.config import ENGINE_FLAGS, OptionError


def _data(n: int = 192, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=generator)
    images = torch.randn(n, 1, 8, 8, generator=generator) * 0.5
    images[:, 0, labels, labels] += 2.0  # class k lights up pixel (k, k): learnable
    images[torch.arange(n), 0, labels, labels] += 2.0
    return images, labels


def _model(seed: int = 0, batch_norm: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    norm: nn.Module = nn.BatchNorm2d(4) if batch_norm else nn.Identity()
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3))


def _noise(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Consumes the global torch RNG, so resume must restore it to be exact.
    return inputs + 0.1 * torch.randn_like(inputs), targets


def _config(tmp_path: Path, **overrides: object) -> TrainConfig:
    options: dict[str, object] = dict(
        epochs=4,
        batch_size=32,
        lr=0.05,
        optimizer="sgd",
        weight_decay=5e-4,
        schedule="onecycle",
        warmup_epochs=1,
        label_smoothing=0.1,
        ema_decay=0.9,
        grad_clip=1.0,
        seed=7,
        output=str(tmp_path),
        task="toy",
        name="run",
        progress=False,
    )
    options.update(overrides)
    return TrainConfig(**options)  # type: ignore[arg-type]


class _KillAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_kill_gives_identical_weights(tmp_path: Path) -> None:
    train, val = _data(), _data(64, seed=1)
    reference = Trainer(_model(), _config(tmp_path, name="straight"), train_transform=_noise)
    reference.fit(train, val)

    killed = Trainer(_model(), _config(tmp_path, name="killed"), train_transform=_noise, callbacks=[_KillAfter(1)])
    with pytest.raises(KeyboardInterrupt):
        killed.fit(train, val)
    # The kill came after epoch 2's validation but before its checkpoint: epoch 1's checkpoint is what survives.
    assert load_checkpoint(tmp_path / "toy" / "killed" / "checkpoint.pt")["epoch"] == 1

    # A different initialisation proves the weights come from the checkpoint.
    resumed = Trainer(_model(seed=123), _config(tmp_path, name="killed", resume=True), train_transform=_noise)
    history = resumed.fit(train, val)

    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert resumed.global_step == reference.global_step
    assert _states_equal(resumed.model.state_dict(), reference.model.state_dict())
    assert _states_equal(resumed.eval_model.state_dict(), reference.eval_model.state_dict())
    assert history[-1]["val_loss"] == reference.history[-1]["val_loss"]


def test_uninterrupted_runs_with_same_seed_are_identical_and_seed_matters(tmp_path: Path) -> None:
    train = _data()
    first = Trainer(_model(), _config(tmp_path, name="a", epochs=2), train_transform=_noise)
    first.fit(train)
    second = Trainer(_model(), _config(tmp_path, name="b", epochs=2), train_transform=_noise)
    second.fit(train)
    other_seed = Trainer(_model(), _config(tmp_path, name="c", epochs=2, seed=8), train_transform=_noise)
    other_seed.fit(train)
    assert _states_equal(first.model.state_dict(), second.model.state_dict())
    assert not _states_equal(first.model.state_dict(), other_seed.model.state_dict())


def test_training_learns_and_writes_records(tmp_path: Path) -> None:
    trainer = Trainer(_model(), _config(tmp_path, epochs=6))
    history = trainer.fit(_data(), _data(96, seed=1))
    assert history[-1]["val_accuracy"] > 0.9  # chance is 1/3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    run_dir = tmp_path / "toy" / "run"
    assert json.loads((run_dir / "metrics.json").read_text()) == history
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    assert (run_dir / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["config"]["lr"] == 0.05
    assert {"command", "versions", "hardware"} <= set(saved["environment"])


def test_the_epoch_lr_is_the_mean_rate_of_its_steps_not_the_schedules_value_after_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last epoch of a cosine run (a one-epoch run's only one) printed and saved "lr 0.00e+00", the schedule's
    end, and every other epoch the rate the next one starts at."""
    rates: list[float] = []

    class _Rates(Callback):
        def on_train_batch_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:
            rates.append(trainer.scheduler.get_last_lr()[0])  # type: ignore[union-attr]  # after the step: the next

    config = _config(tmp_path, epochs=2, schedule="cosine", warmup_epochs=0, progress=True)
    history = Trainer(_model(), config, callbacks=[_Rates()]).fit(_data(128))  # 4 steps an epoch
    used = [0.05, *rates[:-1]]  # each step trains at the rate the schedule held before it
    assert [row["lr"] for row in history] == pytest.approx([sum(used[:4]) / 4, sum(used[4:]) / 4])
    assert history[-1]["lr"] > 0.002 and rates[-1] == 0.0
    assert (
        f"epoch 2/2  train_loss {history[-1]['train_loss']:.4f}  lr {history[-1]['lr']:.2e}" in capsys.readouterr().err
    )
    csv_rows = (tmp_path / "toy" / "run" / "metrics.csv").read_text().splitlines()
    assert [float(row.split(",")[2]) for row in csv_rows[1:]] == pytest.approx([row["lr"] for row in history])


def test_atomic_checkpoint_survives_crash_during_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1, "weights": torch.ones(3)}, path)

    def crash(*args: object) -> None:
        raise OSError("disk yanked")

    monkeypatch.setattr(checkpoint_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk yanked"):
        atomic_save({"epoch": 2, "weights": torch.zeros(3)}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left behind


def test_atomic_checkpoint_survives_crash_mid_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1}, path)

    def half_write(obj: object, f: object) -> None:
        # the one temporary name of cnnlab.files: this process's, which a later save sweeps only once it is gone
        assert Path(f.name).name == f".checkpoint.pt.{files._HOST}.{os.getpid()}.tmp"  # type: ignore[attr-defined]
        f.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(checkpoint_module.torch, "save", half_write)
    with pytest.raises(RuntimeError, match="mid-write"):
        atomic_save({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_early_stopping_stops_after_patience_and_resumes_its_state(tmp_path: Path) -> None:
    flat = {"flat": lambda outputs, targets: 0.5}  # never improves after the first epoch
    config = _config(tmp_path, epochs=20, monitor="val_flat", early_stopping_patience=2, ema_decay=None)
    history = Trainer(_model(), config, metrics=flat).fit(_data(), _data(64, seed=1))
    assert len(history) == 3  # epoch 1 sets the best, epochs 2 and 3 do not improve
    assert all(row["val_flat"] == 0.5 for row in history)
    # Resumed after it stopped (interrupted during a later phase or the test pass), it trained a 4th epoch.
    resumed = Trainer(_model(), dataclasses.replace(config, resume=True), metrics=flat)
    assert resumed.fit(_data(), _data(64, seed=1)) == history


def test_without_progress_the_notes_on_the_results_are_still_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-q turns the progress off and leaves the notes on: the batch a search chose, why training stopped before its
    epochs and which epoch's weights were kept went through `Trainer.log` with the epoch lines, and -q dropped them."""
    from cnnlab.train import BestWeights

    flat = {"flat": lambda outputs, targets: 0.5}  # never improves after the first epoch
    options = dict(epochs=20, monitor="val_flat", early_stopping_patience=1, ema_decay=None, auto_batch_size=True)
    config = _config(tmp_path, batch_size=16, **options)
    train, val = _data(32), _data(16, seed=1)

    def fit(config: TrainConfig, notes: bool | None) -> int:
        return len(Trainer(_model(), config, metrics=flat, callbacks=[BestWeights()], notes=notes).fit(train, val))

    assert fit(config, notes=True) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.splitlines() == [  # no epoch line, no progress bar
        "batch size search: tried 2, 4, 8, 16; largest fitting 16 (the cap); training with batch 16 = 16 x 1 "
        "accumulation",
        "early stopping: val_flat has not improved for 1 epochs",
        "restored the weights of epoch 1 (val_flat 0.5000)",
    ]
    fit(dataclasses.replace(config, resume=True), notes=True)
    assert capsys.readouterr().err.splitlines() == [
        "early stopping had stopped this run after epoch 2: nothing left to train",
        "restored the weights of epoch 1 (val_flat 0.5000)",
    ]
    # notes left to follow the progress (a Python caller's progress=False; --json): nothing said
    fit(dataclasses.replace(config, overwrite=True, auto_batch_size=False), notes=None)
    assert capsys.readouterr() == ("", "")


def test_early_stopping_on_unknown_metric_is_a_clear_error(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=2, monitor="val_nope", early_stopping_patience=1)
    with pytest.raises(CnnlabError, match="val_nope"):
        Trainer(_model(), config).fit(_data(), _data(64, seed=1))


def test_a_run_whose_weights_become_nan_stops_with_an_error_and_keeps_its_last_sound_checkpoint(tmp_path: Path) -> None:
    # --lr 1e30 trained every epoch on NaN weights, saved and tested them, and the run was reported as finished
    config = _config(tmp_path, epochs=2, lr=1e30, grad_clip=None, ema_decay=None, precision="bf16")
    with pytest.raises(OptionError, match="diverged in epoch 1: its weights became NaN or infinite") as raised:
        Trainer(_model(), config).fit(_data(64))
    assert "lower --lr (now 1e+30), or use --precision fp32 (now bf16)," in raised.value.phrased(ENGINE_FLAGS)
    assert not (config.run_dir / "checkpoint.pt").exists()  # no checkpoint of NaN weights to resume
    assert not (config.run_dir / "metrics.json").exists()


def test_an_output_that_is_a_file_is_one_line_naming_it(tmp_path: Path) -> None:
    # `cnnlab train mnist -o afile` (transfer, segment alike) was an OSError, "afile is a file, where a folder is
    # needed", with exit code 1, after the data was read; now the CnnlabError of a user mistake (exit code 2).
    (tmp_path / "afile").write_text("kept")
    with pytest.raises(CnnlabError, match=r"^--output .*afile: .*afile is a file, not a folder$"):
        Trainer(_model(), _config(tmp_path / "afile")).prepare_run_dir()
    assert (tmp_path / "afile").read_text() == "kept"


def test_gradient_accumulation_matches_full_batch(tmp_path: Path) -> None:
    # Without BatchNorm, 4 micro-batches of 8 give the same gradient as one batch of 32 (up to float rounding).
    options = dict(epochs=2, ema_decay=None, grad_clip=None)
    full = Trainer(_model(batch_norm=False), _config(tmp_path, name="full", **options))
    full.fit(_data())
    accumulated = Trainer(_model(batch_norm=False), _config(tmp_path, name="accum", accum_steps=4, **options))
    accumulated.fit(_data())
    assert accumulated.micro_batch_size == 8
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(accumulated.model.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_dataloader_source_trains(tmp_path: Path) -> None:
    images, labels = _data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True, generator=torch.Generator())
    history = Trainer(_model(), _config(tmp_path, epochs=3)).fit(loader, TensorBatches(*_data(64, seed=1), 16))
    assert history[-1]["val_accuracy"] > 0.6


def test_existing_run_is_not_overwritten_and_resume_checks_options(tmp_path: Path) -> None:
    Trainer(_model(), _config(tmp_path, epochs=1)).fit(_data())
    with pytest.raises(CnnlabError, match="already holds a run"):
        Trainer(_model(), _config(tmp_path, epochs=1)).fit(_data())
    with pytest.raises(CnnlabError, match="lr: 0.05 -> 0.1"):
        Trainer(_model(), _config(tmp_path, epochs=1, lr=0.1, resume=True)).fit(_data())
    with pytest.raises(CnnlabError, match="no checkpoint"):
        Trainer(_model(), _config(tmp_path, name="other", resume=True)).fit(_data())


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("schedule", "step", "schedule 'step' is not one of"),
        ("precision", "{lr}", r"precision '\{lr\}' is not one of"),  # the message is a template: not filled in
        (
            "accum_steps",
            3,
            "batch_size 128 is not divisible by accum_steps 3: the accumulation steps that divide it are 1, 2, 4",
        ),
        ("epochs", 0, ">= 1"),
        ("lr", float("nan"), "lr must be > 0 and finite, got nan"),  # trained ten epochs of NaN loss
        ("lr", float("inf"), "lr must be > 0 and finite"),
        ("momentum", 1.5, r"momentum must be in \[0, 1\)"),
        ("weight_decay", -0.1, "weight_decay must be >= 0"),
        ("warmup_epochs", float("nan"), "warmup_epochs must be >= 0"),
        ("label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\)"),
        ("grad_clip", 0.0, "grad_clip must be > 0"),
    ],
)
def test_config_validation(option: str, value: object, message: str) -> None:
    with pytest.raises(CnnlabError, match=message):
        TrainConfig(**{option: value})  # type: ignore[arg-type]


def test_bf16_autocast_and_channels_last_run(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=1, precision="bf16", channels_last=True)
    history = Trainer(_model(), config).fit(_data(), _data(64, seed=1))
    assert torch.isfinite(torch.tensor(history[-1]["val_loss"]))


def test_training_accuracy_leaves_out_the_losss_ignored_targets(tmp_path: Path) -> None:
    # A 1x1 conv that always predicts class 0; half the mask pixels are 255 ("ignore"): every labelled pixel is right.
    model = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([5.0, -5.0]))
    images = torch.rand(8, 1, 4, 4)
    masks = torch.zeros(8, 4, 4, dtype=torch.long)
    masks[:, :, 2:] = 255
    config = _config(tmp_path, epochs=1, batch_size=4, lr=1e-6, ema_decay=None, label_smoothing=0.0)
    trainer = Trainer(model, config, loss_fn=nn.CrossEntropyLoss(ignore_index=255))
    history = trainer.fit(TensorBatches(images, masks, 4), (images, masks))
    assert history[0]["train_accuracy"] == 1.0  # not 0.5: the ignored half is not counted as wrong


def test_a_batch_without_a_labelled_target_is_left_out_of_the_training_loss(tmp_path: Path) -> None:
    """Random crops of scribbled masks (mostly 255) can hold no labelled pixel: that batch's mean loss is 0/0, and
    the epoch's train_loss was NaN although every weight stayed finite."""
    step_losses: list[float] = []

    class _Losses(Callback):
        def on_train_batch_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:
            step_losses.append(float(loss))

    images = torch.rand(8, 1, 4, 4)
    masks = torch.randint(0, 2, (8, 4, 4))
    masks[::2] = 255  # every other sample wholly unlabelled; one sample a batch
    config = _config(tmp_path, epochs=1, batch_size=1, ema_decay=None, label_smoothing=0.0)
    trainer = Trainer(nn.Conv2d(1, 2, 1), config, loss_fn=nn.CrossEntropyLoss(ignore_index=255), callbacks=[_Losses()])
    val_masks = masks.clone()
    val_masks[:2] = 255  # the first validation batch (of 2) wholly unlabelled as well
    history = trainer.fit(TensorBatches(images, masks, 1), (images, val_masks))
    finite = [loss for loss in step_losses if loss == loss]
    assert len(finite) == 4 and len(step_losses) == 8  # the four unlabelled batches' losses are NaN
    assert history[0]["train_loss"] == pytest.approx(sum(finite) / 4)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    loss_fn = nn.CrossEntropyLoss(ignore_index=255)
    with torch.no_grad():  # the other validation batches' mean losses, weighted by their samples as before
        expected = sum(
            float(loss_fn(trainer.eval_model(images[i : i + 2]), val_masks[i : i + 2])) * 2 for i in (2, 4, 6)
        )
    assert history[0]["val_loss"] == pytest.approx(expected / 6, rel=1e-5)


def test_compile_on_a_cpu_keeps_torchs_cuda_home_warning_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`train transfer --compile` on a CPU printed torch's "No CUDA runtime is found, using CUDA_HOME='/usr/local'"
    (logged when the compiler imports torch.utils.cpp_extension), which reads as a fault in a run that wants no CUDA."""
    import logging

    Trainer(_model(), _config(tmp_path, compile=True, device="cpu"))
    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
        logger.warning("another warning")
    assert [record.getMessage() for record in caplog.records] == ["another warning"]


def test_compile_on_a_cpu_says_it_is_slow_and_needs_a_compiler(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quick MNIST epoch under --compile took 148 s instead of about 1 s (2 loaded CPU cores) without a word, its
    img/s 3; without a C++ compiler the first step failed with a traceback of torch's inductor."""
    from torch._inductor import cpp_builder, exc

    Trainer(_model(), _config(tmp_path, compile=True, device="cpu", progress=True))
    said = capsys.readouterr().err
    assert "--compile: torch.compile builds the model's kernels during its first training steps" in said
    assert "counted in the first epoch's seconds" in said

    def no_compiler() -> str:
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(CnnlabError, match="--compile on the CPU needs a C\\+\\+ compiler .* or leave --compile out"):
        Trainer(_model(), _config(tmp_path, compile=True, device="cpu"))


def test_a_save_killed_mid_write_leaves_no_temp_file_after_the_resume(tmp_path: Path) -> None:
    """SIGKILL during a checkpoint save left `.checkpoint.pt.XXXX.tmp` (a whole checkpoint's size) in the run folder
    for good: nothing removed it. Then every start deleted all of them, also the one a live process (a second command
    on the run, another machine sharing the folder) was writing: now a save sweeps only a gone process's."""
    with pytest.raises(KeyboardInterrupt):
        Trainer(_model(), _config(tmp_path, epochs=2), callbacks=[_KillAfter(1)]).fit(_data())
    run_dir = tmp_path / "toy" / "run"
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()  # its process id is gone
    day_ago = time.time() - files.STALE_AFTER_SECONDS - 60
    stale = run_dir / f".checkpoint.pt.{files._HOST}.{ended.pid}.tmp"
    stale.write_bytes(b"half a checkpoint")
    older_cnnlab = run_dir / ".checkpoint.pt.k1ll3d_0.tmp"  # tempfile.mkstemp's name, as checkpoints had, a day old
    older_cnnlab.write_bytes(b"half a checkpoint")
    os.utime(older_cnnlab, (day_ago, day_ago))
    live = run_dir / f".checkpoint.pt.{files._HOST}.{os.getppid()}.tmp"  # another process writing it now: kept
    live.write_bytes(b"a checkpoint being written")
    other = run_dir / ".metrics.csv.tmp"  # not a checkpoint's: left alone
    other.write_text("x")
    with open(run_dir / "metrics.csv", "a") as f:  # a row the checkpoint does not hold (records written, then killed)
        f.write("9.0,1.0\n")
    Trainer(_model(), _config(tmp_path, epochs=2, resume=True)).fit(_data())
    assert not stale.exists() and not older_cnnlab.exists()
    assert live.read_bytes() == b"a checkpoint being written" and other.exists()
    # metrics.csv is rewritten whole from the checkpoint's history: the epochs the run kept, each once, in order
    epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1.0", "2.0"]


def test_best_weights_with_ema_leave_the_best_epoch_in_the_weights_evaluation_uses(tmp_path: Path) -> None:
    """BestWeights copies the best epoch's weights from `eval_model` (the EMA's when it is on) but loaded them back into
    `model`: with EMA on, the tasks then saved and tested `eval_model`, the EMA of the last epoch, not the best."""
    from cnnlab.train import BestWeights

    epoch = {"now": 0}

    class Record(Callback):
        def __init__(self) -> None:
            self.weights: dict[int, dict[str, torch.Tensor]] = {}

        def on_train_epoch_start(self, trainer: Trainer, index: int) -> None:
            epoch["now"] = index

        def on_epoch_end(self, trainer: Trainer, index: int, metrics: dict[str, float]) -> None:
            self.weights[index + 1] = {k: v.clone() for k, v in trainer.eval_model.state_dict().items()}

    first_is_best = {"score": lambda outputs, targets: 1.0 if epoch["now"] == 0 else 0.5}
    record = Record()
    config = _config(tmp_path, epochs=3, monitor="val_score", ema_decay=0.9)
    trainer = Trainer(_model(), config, metrics=first_is_best, callbacks=[record, BestWeights()])
    trainer.fit(_data(), _data(64, seed=1))
    assert trainer.best_epoch == 1 and not _states_equal(record.weights[1], record.weights[3])
    assert _states_equal(trainer.eval_model.state_dict(), record.weights[1])
