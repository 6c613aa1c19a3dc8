"""What the next transfer recipe would cost on this machine, estimated from what this run measured.

A run knows two speeds of its own machine: the test pass (images decoded, preprocessed and run forward through the
whole network once per view) gives the seconds per forward FLOP, and a training step of the next recipe's trainable
part, timed here on random inputs at the recipe's batch size (three steps, seconds), gives the seconds per trained
sample. The next recipe's cost is then counted from its work:

- ``cached``: the cache build (every training and validation image, once per view, through the frozen lower part:
  forward seconds scaled by the lower part's share of the network's FLOPs), the training steps, validation once per
  epoch through the upper part, and the test pass.
- ``full``: the head phase's cache of pooled features (the whole network, once per image and view), the training
  steps on images, validation once per epoch (one view), and the test pass.

The estimate ignores early stopping and a cache that may already exist, so it is an upper bound of the typical run.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "COST_ORDER",
    "TIMED_ACTIVATION_BYTES",
    "estimate_recipe_seconds",
    "forward_flops",
    "next_recipe",
    "timed_batch",
    "trained_step_memory",
]

COST_ORDER = ("quick", "default", "full")
# The activations a timed training step may keep. Timing the full recipe's step at its batch of 32 held 2.5 GB, where
# a tiny run's own training had peaked at 1.6 GB (the process, torch included); at most this much, 6 images of
# EfficientNet-Lite0 at 224 px, the run peaks at 2.0 GB.
TIMED_ACTIVATION_BYTES = 512 * 2**20


def next_recipe(name: str) -> str | None:
    """The recipe after `name` in cost order (None for the last, or a recipe outside the order)."""
    if name not in COST_ORDER or name == COST_ORDER[-1]:
        return None
    return COST_ORDER[COST_ORDER.index(name) + 1]


def forward_flops(module: nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    """FLOPs of one forward pass of `module` on one input of `shape` (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, *shape, device=device))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def timed_batch(module: nn.Module, shape: tuple[int, ...], batch: int) -> int:
    """Samples per timed forward and backward: `batch`, or fewer where their activations would pass
    `TIMED_ACTIVATION_BYTES` (what one sample's forward saves for backward, its input included, counted on the meta
    device as `cnnlab budget` does)."""
    from cnnlab.budget.trace import forward_saved_bytes

    # traced at 2 samples and halved: training-mode batch norm refuses one sample on a 1x1 map (a 16 px input)
    per_sample = forward_saved_bytes(module, shape, 2) // 2
    return max(1, min(batch, TIMED_ACTIVATION_BYTES // max(per_sample, 1)))


def _step_seconds(
    module: nn.Module, shape: tuple[int, ...], classes: int, device: torch.device, batch: int, channels_last: bool
) -> float:
    """Seconds per sample of a training step of `batch` samples (forward, backward, AdamW) of a copy of `module` on
    random inputs, in the recipe's memory format: the faster of two steps after a first one that allocates.

    Forward and backward run on `timed_batch` samples (their seconds per sample hardly depend on the batch on a CPU,
    where the memory does: the whole network at 224 px and batch 32 held 2.5 GB, three times what the run itself had
    needed), the optimizer step once, its seconds shared by the `batch` samples of a step.
    """
    micro = timed_batch(module, shape, batch)
    trainee = copy.deepcopy(module).train()
    for layer in trainee.modules():  # the recipes train with frozen batch norm (`FreezeBatchNorm`)
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
    for param in trainee.parameters():
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=1e-6)
    inputs = torch.randn(micro, *shape, device=device)
    if channels_last and inputs.ndim == 4:
        trainee, inputs = (
            trainee.to(memory_format=torch.channels_last),
            inputs.contiguous(memory_format=torch.channels_last),
        )
    targets = torch.randint(0, classes, (micro,), device=device)

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    timings = []
    for _ in range(3):
        started = now()
        nn.functional.cross_entropy(trainee(inputs), targets).backward()
        backward = now()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timings.append((backward - started) / micro + (now() - backward) / batch)
    return min(timings[1:])


def _top_blocks(model: nn.Module, input_size: tuple[int, ...], unfreeze: int | None) -> tuple[int, int]:
    """(the backbone blocks a cached recipe trains, all the backbone's blocks): `unfreeze` of them, all for None (or
    for a smaller model than the recipe's)."""
    from cnnlab.models import trainable_blocks

    blocks = len(trainable_blocks(model, input_size))
    return (blocks if unfreeze is None else min(int(unfreeze), blocks)), blocks


def estimate_recipe_seconds(
    recipe: Any,
    model: nn.Module,
    input_size: tuple[int, int, int],
    counts: dict[str, int],
    views: int,
    seconds_per_flop: float,
    device: torch.device,
    classes: int,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Seconds the `recipe` (a `TransferRecipe`) would take on this run's images, by part of the work.

    Args:
        recipe: the recipe to estimate.
        model: the network (any weights; a copy is timed, `model` is not changed).
        input_size: (C, H, W) of the recipe's inputs.
        counts: images per split part (``train``, ``val``, ``test``).
        views: views per image.
        seconds_per_flop: measured by this run's test pass (images decoded, preprocessed and run forward).
        device: where `model` lives.
        classes: the model's outputs (targets of the timed steps).
        batch_size: the batch the recipe would train with (default: the recipe's); a step is timed at it.

    Returns:
        ``{"cache", "training", "validation", "test", "total"}`` in seconds.
    """
    from cnnlab.models import split_classifier

    epochs = int(recipe.train.get("epochs", 10))
    batch = batch_size or int(recipe.train.get("batch_size", 32))
    channels_last = bool(recipe.train.get("channels_last", False))
    whole = forward_flops(model, input_size, device) * seconds_per_flop  # seconds per image and view
    n_train, n_val, n_test = (counts.get(part, 0) for part in ("train", "val", "test"))
    if recipe.method == "cached":
        top, _ = _top_blocks(model, input_size, recipe.unfreeze)
        split = split_classifier(model, top, input_size)
        lower = forward_flops(split.lower, input_size, device) * seconds_per_flop
        upper = forward_flops(split.upper, split.feature_shape, device) * seconds_per_flop
        cache = (n_train + n_val) * views * lower
        samples = epochs * n_train * views
        training = samples * _step_seconds(split.upper, split.feature_shape, classes, device, batch, channels_last)
        validation = epochs * n_val * views * upper
    else:
        cache = (n_train + n_val) * views * whole  # the head phase's pooled features
        samples = epochs * n_train
        training = samples * _step_seconds(model, input_size, classes, device, batch, channels_last)
        validation = epochs * n_val * whole
    parts = {"cache": cache, "training": training, "validation": validation, "test": n_test * views * whole}
    return {**parts, "total": sum(parts.values())}


def trained_step_memory(
    run: str | os.PathLike[str],
    input_shape: tuple[int, ...] | None = None,
    memory_limit: int | None = None,
    device: str | None = None,
) -> dict[str, Any] | None:
    """What a cached transfer run trained, and the memory of that training step; None for any other target.

    Such a run never trains the whole network: its frozen lower part runs once per image into the cache, and each
    step trains the top blocks and the head on cached maps. That step is traced on the meta device at the run's
    batch size with the optimizer the engine built for it (its `--optimizer` and momentum: the engine's SGD keeps a
    Nesterov momentum buffer per parameter; its layer-wise param groups), stepping as torch steps on the device the
    run trained on (float32 maps: the cache's float16 is widened for training), at the run's `--precision`: a bf16
    or fp16 run's forward ran under autocast, which the meta device cannot run, so its step is the planner's bf16
    remedy of the float32 trace (`budget.planner.mixed_precision_step`; fp16 holds the same sizes).

    Args:
        run: what `cnnlab budget` was given.
        input_shape: the image shape being sized (default: the run's own).
        memory_limit: also find the largest batch of that step within this many bytes.
        device: the device to size the step for (cpu, cuda; default: the one the run trained on).

    Returns:
        ``{"recipe", "blocks_trained", "blocks", "feature_shape", "batch", "accum_steps", "optimizer", "momentum",
        "device", "precision", "trained_parameters", "parameters", "optimizer_state_bytes", "peak_bytes"}``, and
        ``"max_batch"`` and ``"max_batch_capped"`` (it is the planner's search cap: a larger batch fits too) with a
        memory limit (at the run's precision); ``batch`` is the samples of one forward and
        backward (the batch over ``accum_steps``), ``momentum`` the SGD momentum (None for the other optimizers).
    """
    results = Path(run) / "results.json"
    try:
        record = json.loads(results.read_text()) if results.is_file() else {}
    except (OSError, ValueError):
        return None
    recipe = record.get("recipe") if isinstance(record, dict) else None
    if not isinstance(recipe, dict) or recipe.get("method") != "cached":
        return None
    from cnnlab.budget.core import resolve_model
    from cnnlab.budget.planner import LARGEST_PLANNED_BATCH, mixed_precision_step, plan_batch
    from cnnlab.budget.trace import trace
    from cnnlab.models import split_classifier
    from cnnlab.train import TrainConfig, top_param_groups
    from cnnlab.train.device import parse_device

    _, model, shape, _ = resolve_model(str(run), input_shape)  # initialised on the CPU: the split checks its cut
    top, blocks = _top_blocks(model, shape, record.get("unfreeze"))
    split = split_classifier(model, top, shape)
    train = {**recipe.get("train", {}), **(record.get("config", {}).get("train") or {})}
    engine = _engine_config(Path(run), record)
    if engine is not None:  # the batch it trained with: after --batch-size auto's search, shrunk for a small folder
        train |= engine
        batch = int(engine["batch_size"])
    else:  # a run without its phase's record: its options, and the shrinking `_Run.train_config` does
        batch = train.get("batch_size")
        batch = int(batch) if isinstance(batch, int) or str(batch).isdigit() else int(recipe["train"]["batch_size"])
        samples = _cached_training_samples(record)
        if samples and samples < batch and "batch_size" not in (record.get("config", {}).get("train") or {}):
            batch = samples
    accum = max(1, int(train.get("accum_steps") or 1))
    batch = max(1, batch // accum)  # each forward and backward runs on a micro-batch
    optimizer = str(train.get("optimizer", TrainConfig.optimizer))
    momentum = float(train.get("momentum", TrainConfig.momentum)) if optimizer == "sgd" else None
    # the budget's names for the engine's optimizers: its "sgd" has a momentum buffer whenever momentum > 0
    traced = ("momentum" if momentum else "sgd") if optimizer == "sgd" else optimizer
    # the rest frozen, as the run trained it (no gradients, no state), in the run's groups: one per block and decay
    groups = top_param_groups(model, top, float(recipe.get("layer_decay", 1.0)), float(train.get("weight_decay", 0)))
    upper = copy.deepcopy(split.upper).to("meta").train()
    for_device = parse_device(device).type if device is not None else _run_device(Path(run), record, train)
    step_groups = _groups_by_name(split.upper, groups)
    step = trace(upper, split.feature_shape, batch, "float32", "meta", traced, inference=False,
                 for_device=for_device, param_groups=step_groups)  # fmt: skip
    precision = str(train.get("precision") or TrainConfig.precision)
    mixed = precision in ("bf16", "fp16")
    peak, max_batch = step.peak_live_bytes, None
    if mixed:
        peak, max_batch = mixed_precision_step(upper, split.feature_shape, batch, traced, for_device, step_groups,
                                               memory_limit)  # fmt: skip
    elif memory_limit is not None:
        plan = plan_batch(upper, split.feature_shape, torch.float32, traced, memory_limit, for_device=for_device,
                          param_groups=step_groups)  # fmt: skip
        max_batch = plan["remedies"][0]["max_batch"]
    answer = {
        "recipe": recipe.get("name"),
        "blocks_trained": top,
        "blocks": blocks,
        "feature_shape": list(split.feature_shape),
        "batch": batch,
        "accum_steps": accum,
        "optimizer": optimizer,
        "momentum": momentum,
        "device": for_device,
        "precision": precision,
        "trained_parameters": sum(p.numel() for p in upper.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()),
        "optimizer_state_bytes": step.optimizer_state_bytes,
        "peak_bytes": peak,
    }
    if max_batch is not None:  # the planner stops at its cap: a batch of that size is a lower bound, not the answer
        answer["max_batch"] = max_batch
        answer["max_batch_capped"] = max_batch >= LARGEST_PLANNED_BATCH
    return answer


def _engine_config(run: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The engine's config of a cached run's training phase, as its `Trainer` wrote it once the batch was sized
    (``<run>/partial/config.yaml`` or ``head/``); None where there is none."""
    import yaml

    for phase in ("partial", "head"):
        if phase not in (record.get("phases") or {}):
            continue
        try:
            config = yaml.safe_load((run / phase / "config.yaml").read_text(encoding="utf-8"))["config"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return None
        return config if isinstance(config, dict) and isinstance(config.get("batch_size"), int) else None
    return None


def _cached_training_samples(record: dict[str, Any]) -> int | None:
    """Training samples of a cached run's epoch (every view of every training image), from its results.json."""
    try:
        return sum(int(n) for n in record["counts"]["train"].values()) * max(1, len(record.get("views") or ()))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _groups_by_name(module: nn.Module, groups: list[dict[str, Any]]) -> Any:
    """`groups` (of `module`'s parameters) as a builder of the same groups on any copy of `module`, which the budget
    traces rather than `module` itself."""
    names = {id(param): name for name, param in module.named_parameters()}
    named = [
        ({k: v for k, v in group.items() if k != "params"}, [names[id(p)] for p in group["params"]]) for group in groups
    ]

    def build(copy_of_module: nn.Module) -> list[dict[str, Any]]:
        params = dict(copy_of_module.named_parameters())
        return [{**options, "params": [params[name] for name in members]} for options, members in named]

    return build


def _run_device(run: Path, record: dict[str, Any], train: dict[str, Any]) -> str:
    """The device type a run trained on: the one it recorded, else the one it asked for; ``auto`` was CUDA where the
    run's config.yaml saw a GPU."""
    recorded = record.get("device")
    requested = str(recorded or train.get("device") or "auto")
    if requested != "auto":
        return requested.split(":")[0]
    import yaml

    try:
        environment = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")).get("environment", {})
        return "cuda" if environment.get("hardware", {}).get("cuda") else "cpu"
    except (OSError, yaml.YAMLError, AttributeError):
        return "cpu"
