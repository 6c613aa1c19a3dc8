"""`cnnlab demo`: cnnlab's main job on embedded defaults, writing one report folder.

Stages, each a call into the library (a stage whose data is missing is skipped with the reason, never fatal):

1. budget: the chapter's exercise network (903,400 parameters), textbook and realistic memory, measured.
2. train: a quick MNIST CNN from scratch (`--recipe quick`), tested once on the 10,000 test images.
3. fcn: that CNN converted to a fully convolutional network, scanning a canvas of several digits (heatmap PNG).
4. photos: sample photos classified by the pretrained EfficientNet-Lite0 (offline ImageNet weights).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from cnnlab.errors import CnnlabError

EXERCISE_SPEC = ["conv 100 k3 s2 same", "conv 200 k3 s2 same", "conv 400 k3 s2 same"]
EXERCISE_INPUT = (3, 200, 300)
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def stage_budget(out_dir: Path, console: Console) -> dict[str, Any]:
    """Budget of the exercise network at batch 50, with one measured training step (batch 4, to stay quick)."""
    from cnnlab.budget import budget
    from cnnlab.budget.explain import explain
    from cnnlab.budget.render import print_report

    report = budget(EXERCISE_SPEC, input_shape=EXERCISE_INPUT, batch_size=50, memory_limit="8GiB")
    measured = budget(EXERCISE_SPEC, input_shape=EXERCISE_INPUT, batch_size=4, measure=True).measured
    print_report(report, console)
    (out_dir / "budget.json").write_text(json.dumps(report.to_dict(), indent=1))
    (out_dir / "budget_explained.txt").write_text(explain(report) + "\n")
    return {
        "params": report.params,
        "inference_bytes": report.inference["total_bytes"],
        "training_textbook_bytes": report.training["total_bytes"],
        "saved_estimate_over_measured_at_batch_4": measured["saved_ratio"] if measured else None,
    }


def stage_train(out_dir: Path, console: Console, data_dir: str | None) -> dict[str, Any]:
    """Train the quick MNIST recipe into ``<out_dir>/mnist/quick``."""
    from cnnlab.tasks.mnist import train_mnist

    summary = train_mnist("quick", data_dir=data_dir, output=str(out_dir), name="quick", overwrite=True)
    console.print(f"MNIST quick recipe: test accuracy {summary['test_accuracy']:.4f} ({summary['run_dir']})")
    return {"test_accuracy": summary["test_accuracy"], "run_dir": summary["run_dir"]}


def stage_fcn(out_dir: Path, console: Console, run_dir: str, data_dir: str | None) -> dict[str, Any]:
    """Convert the MNIST CNN to a fully convolutional one and scan a multi-digit canvas."""
    from cnnlab import load_model
    from cnnlab.fcn.scan import scan_canvas_demo

    heatmap = scan_canvas_demo(load_model(run_dir), out_dir, data_dir=data_dir)
    console.print(f"fully convolutional scan of a multi-digit canvas: {heatmap}")
    return {"heatmap": str(heatmap)}


def stage_photos(out_dir: Path, console: Console) -> dict[str, Any]:
    """Classify skimage's sample photos with the pretrained EfficientNet-Lite0."""
    from cnnlab.tasks.predict import classify_sample_photos

    predictions = classify_sample_photos(SAMPLE_PHOTOS, out_dir / "photos")
    for prediction in predictions:
        best = prediction["top"][0]
        console.print(f"{prediction['image']}: {best['label']} ({best['probability']:.1%})")
    return {"predictions": predictions}


def run_demo(output: str | Path = "runs/demo", data_dir: str | None = None, stages: tuple[str, ...] = ()) -> Path:
    """Run every stage (or the named ones), write ``summary.json`` and ``report.md``, return the folder."""
    from cnnlab.budget.render import default_console

    console = default_console()
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    context: dict[str, Any] = {}

    def attempt(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if stages and name not in stages:
            return
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        try:
            outcome = fn()
            outcome["seconds"] = round(time.perf_counter() - start, 1)
            results[name] = outcome
        except (CnnlabError, ImportError, FileNotFoundError) as error:
            results[name] = {"skipped": str(error).splitlines()[0]}
            console.print(f"[yellow]{name} skipped: {results[name]['skipped']}")

    attempt("budget", lambda: stage_budget(out_dir, console))
    attempt("train", lambda: context.update(stage_train(out_dir, console, data_dir)) or dict(context))
    if "run_dir" in context:
        attempt("fcn", lambda: stage_fcn(out_dir, console, context["run_dir"], data_dir))
    attempt("photos", lambda: stage_photos(out_dir, console))
    (out_dir / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / "report.md").write_text(_report_markdown(results))
    console.rule("[bold]done")
    console.print(f"report: {out_dir / 'report.md'}")
    return out_dir


def _report_markdown(results: dict[str, Any]) -> str:
    lines = ["# cnnlab demo", ""]
    for name, outcome in results.items():
        lines.append(f"## {name}")
        lines.append("")
        for key, value in outcome.items():
            if key == "predictions":
                for prediction in value:
                    best = prediction["top"][0]
                    lines.append(f"- {prediction['image']}: {best['label']} ({best['probability']:.1%})")
            else:
                lines.append(f"- {key}: {value}")
        lines.append("")
    return "\n".join(lines)
