"""report.md of a transfer-learning run: data and split, skipped files, preprocessing, phases, test results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.data.folder import describe_skipped
from cnnlab.report.markdown import RunReport
from cnnlab.report.units import duration

__all__ = ["transfer_report"]


def transfer_report(summary: dict[str, Any], environment: dict[str, Any] | None = None) -> RunReport:
    """The report of a finished run from its `summary` (what `cnnlab.tasks.transfer.train_transfer` returns)."""
    config = summary["config"]
    recipe = summary["recipe"]
    test = summary["test"]
    classes = summary["classes"]
    costs = summary.get("costs", {})
    views = summary["views"]
    arch = config["arch"] or recipe["arch"]
    trained = _trained_part(summary["unfreeze"])
    report = RunReport(
        f"Transfer learning run `{Path(summary['run_dir']).name}`",
        f"Data `{config['data']}`; recipe `{recipe['name']}`: {recipe['summary']}; {trained}; "
        f"model `{arch}` (pretrained: {config['pretrained']}). The test set was evaluated once, after training.",
        environment,
        summary.get("device"),
    )
    report.heading("Test set (evaluated once)")
    with_views = f" averaged over {len(views)} views ({', '.join(views)})" if len(views) > 1 else ""
    # The test loss is plain cross-entropy; the validation loss of the training table and curves is the training
    # loss, label smoothing included, so the two read as comparable when they are not.
    smoothing = {**recipe.get("train", {}), **(config.get("train") or {})}.get("label_smoothing") or 0.0
    unlike_val = f" without the label smoothing {smoothing} that val_loss includes" if smoothing else ""
    report.text(
        f"{test['count']} images: accuracy **{test['accuracy']:.4f}**, balanced accuracy "
        f"**{test['balanced_accuracy']:.4f}**, loss {test['loss']:.4f} (cross-entropy{unlike_val}); "
        f"logits{with_views or ' of one view'}."
    )
    rows = [["test-time averaging" if len(views) > 1 else "one view", test["accuracy"], test["balanced_accuracy"]]]
    if len(views) > 1:
        single = test["single_view"]
        rows.append(["the image alone (no averaging)", single["accuracy"], single["balanced_accuracy"]])
    report.table(["prediction", "accuracy", "balanced accuracy"], rows, scores=["accuracy", "balanced accuracy"])
    if "binary_accuracy" in test:
        report.text(
            f"Binary reading (defective when P(2/3) + P(1) >= 0.5, the dataset authors' task): accuracy "
            f"{test['binary_accuracy']:.4f}."
        )
    per_class = [[name, r["precision"], r["recall"], r["f1"], r["support"]] for name, r in test["per_class"].items()]
    report.table(["class", "precision", "recall", "F1", "support"], per_class, scores=["precision", "recall", "F1"])
    report.image("confusion matrix", "confusion_matrix.png").image("highest loss", "highest_loss.png")
    report.text("Every test image's probabilities: `test_predictions.csv`.")

    report.heading("What it cost")
    cost_rows = [[name, phase["epochs_run"], phase["train_seconds"], phase["wall_seconds"]] for name, phase in
                 summary["phases"].items()]  # fmt: skip
    cache = costs.get("cache_seconds")
    if cache is not None:
        cost_rows.insert(0, ["feature cache" + (" (reused)" if costs.get("cache_reused") else ""), None, None, cache])
    cost_rows.append(["test pass", None, None, costs.get("test_seconds")])
    sessions = summary.get("sessions", [])  # absent from the results of runs saved before sessions were recorded
    resumed = len(sessions) > 1 or (not sessions and bool(config.get("resume")))
    if not resumed:
        cost_rows.append(["whole run", None, None, summary["wall_seconds"]])
    else:
        cost_rows.append(["this session (the run was resumed)", None, None, summary["wall_seconds"]])
        if sessions:  # None: a session's wall time is unknown (killed outright), and so is the run's
            cost_rows.append([f"whole run, {len(sessions)} sessions", None, None, summary.get("wall_seconds_total")])
    report.table(["step", "epochs", "training s", "wall s"], cost_rows)
    if resumed:  # a phase's training seconds come back with its checkpoint; its wall seconds are this session's
        report.text(
            "This run was continued with --resume: a phase's epochs and training seconds are those of every session, "
            "its wall seconds this session's alone; the feature cache's are its build's, in whichever session "
            "finished it"
            + ("; the whole run's are every session's (Sessions below), unknown (-) where one recorded none." if
               sessions else "; an earlier session's wall time was not recorded.")
        )  # fmt: skip
    nxt = costs.get("next_recipe")
    if nxt:
        report.text(
            f"The next recipe is `{nxt['recipe']}`: {nxt['summary']}. It would take about **{duration(nxt['total'])}"
            f"** here: cache {duration(nxt['cache'])}, training {duration(nxt['training'])}, validation "
            f"{duration(nxt['validation'])}, test {duration(nxt['test'])}. Estimated from this run's measured "
            "test-pass speed and a timed training step of that recipe (cnnlab.tasks.transfer_cost); it assumes no "
            "cache to reuse and no early stop."
        )
    report.text(
        "Recipes, cheapest first: `quick` (the classifier on cached features), `default` (the top blocks on cached "
        "maps), `full` (the whole network on augmented images, a GPU's recipe); docs/BENCHMARKS.md lists what each "
        "cost and reached on ELPV."
    )

    report.add_sessions(sessions)
    report.heading("Data and split")
    report.text(f"Split: {summary['split']} (manifest: `split.csv`).")
    counts = summary["counts"]
    report.table(["class", *counts], [[name, *(c[name] for c in counts.values())] for name in classes])
    skipped = summary["skipped"]
    report.text(f"{describe_skipped([s['reason'] for s in skipped]).capitalize()}.")
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
        f"{[round(m, 3) for m in pre['mean']]} std {[round(s, 3) for s in pre['std']]}. Views for training and "
        f"test-time averaging: {', '.join(views)}; a preview of training images: `augmented_preview.png`."
    )
    report.heading("Training")
    monitor = config["monitor"]
    rows = [
        [name, phase.get("cut", "-"), phase["epochs_run"], phase["best_epoch"], phase.get(f"best_{monitor}")]
        for name, phase in summary["phases"].items()
    ]
    headers = ["phase", "trained from", "epochs run", f"best epoch ({monitor})", f"best {monitor}"]
    report.table(headers, rows, scores=[f"best {monitor}"])
    if "finetune" in summary["phases"] and len(views) > 1:  # one val_ column in the table and curves, two meanings
        report.text(
            f"The head phase's validation scores average the {len(views)} views, as the test's do; the fine-tuning "
            "phase validates on the image alone (one view), so its scores are not those of the model as tested."
        )
    report.image("learning curves", "learning_curves.png")
    report.add_config(_resolved_config(summary, arch))
    report.text(
        "Options as given; beside one left out (None), the value the run used. `train.*` are the recipe's training "
        "options with the ones given on top."
    )
    return report


def _resolved_config(summary: dict[str, Any], arch: str) -> dict[str, Any]:
    """The options as given, each one left out (None) shown with what the recipe, weights or views resolved it to."""
    config, recipe, pre = summary["config"], summary["recipe"], summary["preprocessing"]
    used = {
        "arch": arch,
        "unfreeze": summary["unfreeze"],
        "views": ", ".join(summary["views"]),
        "image_size": pre["input_size"][-1],
        "crop_pct": pre.get("crop_pct"),
    }
    shown = {k: v for k, v in config.items() if k != "progress"}
    for key, value in used.items():
        if key in shown and shown[key] is None and value is not None:
            shown[key] = f"None (used: {value})"
    given = shown.pop("train", None)
    if isinstance(given, dict):
        shown.update({f"train.{k}": v for k, v in {**recipe.get("train", {}), **given}.items()})
    return shown


def _trained_part(unfreeze: int | None) -> str:
    """What the run trained: the run's resolved ``unfreeze`` (the recipe's summary alone would misstate an overridden
    cut)."""
    if unfreeze is None:
        return "the whole network trained"
    if unfreeze == 0:
        return "the classifier alone trained"
    return f"the top {unfreeze} backbone blocks and the classifier trained"
