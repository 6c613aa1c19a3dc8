"""report.md of a transfer-learning run: data and split, skipped files, preprocessing, phases, test results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.report.markdown import RunReport

__all__ = ["transfer_report"]


def transfer_report(summary: dict[str, Any], environment: dict[str, Any] | None = None) -> RunReport:
    """The report of a finished run from its `summary` (what `cnnlab.tasks.transfer.train_transfer` returns)."""
    config = summary["config"]
    test = summary["test"]
    classes = summary["classes"]
    report = RunReport(
        f"Transfer learning run `{Path(summary['run_dir']).name}`",
        f"Data `{config['data']}`; model `{config['arch']}` (pretrained: {config['pretrained']}); total wall time "
        f"{summary['wall_seconds']:.0f} s. The test set was evaluated once, after training.",
        environment,
    )
    report.heading("Data and split")
    report.text(f"Split: {summary['split']} (manifest: `split.csv`).")
    report.table(
        ["class", *summary["counts"]], [[name, *(c[name] for c in summary["counts"].values())] for name in classes]
    )
    skipped = summary["skipped"]
    report.text(f"Skipped files: {len(skipped)}.")
    items = [f"`{s['path']}` ({s['label']}): {s['reason']}" for s in skipped[:50]]
    if len(skipped) > 50:
        items.append(f"... and {len(skipped) - 50} more (results.json lists them all)")
    if items:
        report.bullets(items)
    pre = summary["preprocessing"]
    report.heading("Preprocessing")
    report.text(
        f"From the weights' record: resize shorter side to {pre['resize_size']} ({pre['interpolation']}), centre "
        f"crop {pre['input_size'][1]}x{pre['input_size'][2]}, scale to [0, 1], normalise mean "
        f"{[round(m, 3) for m in pre['mean']]} std {[round(s, 3) for s in pre['std']]}. Training adds augmentation "
        f"(random resized crop, flips, rotation, colour jitter): {config['augment']}; preview `augmented_preview.png`."
    )
    if summary.get("bn_adapted"):
        report.text(
            f"Batch-norm statistics recomputed on {summary['bn_adapted']['images']} training images (AdaBN) before "
            "training."
        )
    report.text("Input warnings: " + ("; ".join(summary["input_warnings"]) if summary["input_warnings"] else "none."))
    report.heading("Training")
    rows = [
        [
            name,
            phase["epochs_run"],
            phase["best_epoch"],
            phase["best_val_accuracy"],
            phase["train_seconds"],
            phase["wall_seconds"],
            f"`{name}/learning_curves.png`",
        ]
        for name, phase in summary["phases"].items()
    ]
    report.table(["phase", "epochs run", "best epoch", "best val accuracy", "train s", "wall s", "curves"], rows)
    report.image("learning curves", "learning_curves.png")
    report.heading("Test set (evaluated once)")
    report.text(
        f"{test['count']} images: accuracy **{test['accuracy']:.4f}**, balanced accuracy "
        f"**{test['balanced_accuracy']:.4f}**, loss {test['loss']:.4f}."
    )
    per_class = [[name, r["precision"], r["recall"], r["f1"], r["support"]] for name, r in test["per_class"].items()]
    report.table(["class", "precision", "recall", "F1", "support"], per_class)
    report.image("confusion matrix", "confusion_matrix.png").image("highest loss", "highest_loss.png")
    return report.add_config({k: v for k, v in config.items() if k not in ("extra", "progress")})
