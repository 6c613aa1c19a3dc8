"""`cnnlab evaluate RUN --data DIR`: a transfer or segmentation run scored on a labelled folder of new images.

Nothing here classifies or segments on its own: a transfer run's images go through `cnnlab.tasks.predict.view_logits`
(the run's preprocessing record, each of its recorded views, the engine's inference path: what its own test pass ran
and, averaged over the views, what `cnnlab predict` gives), and the scores are `classification_test_report`'s, the
test report's. (An MNIST run is scored on the MNIST test set by `cnnlab.tasks.mnist.evaluate_mnist`.)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.folder import describe_skipped, scan_folder
from cnnlab.data.paths import check_output_outside_data
from cnnlab.errors import CnnlabError, listed, why_not_a_folder
from cnnlab.files import PATH_BYTES, check_writable, write_text_whole, written_then_renamed
from cnnlab.layers.views import ViewAverage
from cnnlab.report.classification import classification_summary, classification_test_report
from cnnlab.tasks.predict import load_predictor, view_logits

__all__ = ["evaluate_folder", "evaluation_lines"]


def evaluate_folder(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    output_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Score a saved transfer run on `data`, a folder with one sub-folder of images per class.

    Args:
        run: the run directory (or its ``model.json`` / ``model.safetensors``).
        data: the labelled images; its class folders must be classes of the run (a subset will do).
        output_dir: where ``evaluation.json``, ``predictions.csv`` and the figures go; default ``<run>/evaluation``.
        device: evaluation device.
        batch_size: images per forward pass (each view of each).

    Returns:
        What ``evaluation.json`` holds: accuracy and balanced accuracy with the run's test-time averaging and (for a
        run of several views) with the identity view alone, per-class precision/recall/F1/support, the confusion
        matrix, the classes without images, the files skipped and the paths written.

    Raises:
        CnnlabError: a run of another task, a `data` that is not such a folder (a class folder the run does not
            know, no usable image), an `output_dir` that cannot be written or lies inside `data`.
    """
    from cnnlab.train.saved import saved_meta, spec_path

    meta = saved_meta(run)
    task = meta.get("task", "mnist")
    if task != "transfer":
        raise CnnlabError(
            f"{run} is {'an' if task == 'mnist' else 'a'} {task} run: --data scores a `cnnlab train transfer` run on "
            "a folder of labelled images; "
            + (
                "an MNIST run is scored on the MNIST test set (leave out --data; --data-dir names the MNIST root)"
                if task == "mnist"
                else f"its own test set was scored once, in {spec_path(run).parent / 'report.md'}"
            )
        )
    run_dir = spec_path(run).parent
    out = Path(output_dir) if output_dir is not None else run_dir / "evaluation"
    root = Path(data)
    if not root.is_dir():
        raise CnnlabError(
            f"--data {data} {why_not_a_folder(data)}; pass a folder with one sub-folder of images per class, named "
            f"as the run's classes ({listed(list(meta.get('classes', [])), 10)})"
        )
    check_output_outside_data(out, root)  # the figures would be read as images of the folder next time
    check_writable(out / "evaluation.json", shown=str(out))  # before a single image is classified
    predictor = load_predictor(str(run), device)
    assert predictor.cfg is not None  # a transfer run records its preprocessing (load_predictor checks)
    images = scan_folder(root, min_per_class=0, known_classes=predictor.classes)
    if not len(images):
        found = f" ({describe_skipped([s.reason for s in images.skipped])})" if images.skipped else ""
        raise CnnlabError(f"--data {data} holds no usable image in its class folders{found}")
    network = predictor.model.model if isinstance(predictor.model, ViewAverage) else predictor.model
    per_view = view_logits(
        network,
        predictor.views,
        images,
        predictor.cfg,
        device=next(network.parameters()).device,
        batch_size=batch_size,
    )
    logits = per_view.mean(1)
    targets = torch.tensor(images.labels)
    classes = images.classes
    scores = classification_test_report(logits, targets, images.paths, classes, out, title=f"{root.name} (evaluate)")
    counts = images.class_counts()
    result: dict[str, Any] = {
        "run": str(run_dir),
        "task": "transfer",
        "data": str(root),
        "views": list(predictor.views),
        **scores,
        "absent_classes": [name for name, count in counts.items() if count == 0],
        "skipped": [dataclasses.asdict(entry) for entry in images.skipped],
    }
    if len(predictor.views) > 1:
        single = classification_summary(targets.tolist(), per_view[:, 0].argmax(1).tolist(), classes)
        result["single_view"] = {key: single[key] for key in ("accuracy", "balanced_accuracy")}
    probabilities = logits.softmax(1)
    predictions = out / "predictions.csv"
    with (
        written_then_renamed(predictions) as partial,
        open(partial, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as f,
    ):
        writer = csv.writer(f)
        writer.writerow(["path", "label", "predicted", *classes])
        for path, label, row in zip(images.paths, images.labels, probabilities.tolist(), strict=True):
            writer.writerow([path, classes[label], classes[max(range(len(row)), key=row.__getitem__)], *row])
    result["files"] = {
        "evaluation": str(out / "evaluation.json"),
        "predictions": str(predictions),
        "confusion_matrix": str(out / "confusion_matrix.png"),
        "highest_loss": str(out / "highest_loss.png"),
    }
    write_text_whole(out / "evaluation.json", json.dumps(result, indent=1))
    return result


def evaluation_lines(result: dict[str, Any]) -> list[str]:
    """What `cnnlab evaluate RUN --data DIR` prints of `evaluate_folder`'s result, scores to four places."""
    views = result["views"]
    lines = [f"{result['run']} on {result['data']}: {result['count']} images"]
    for entry in result["skipped"]:
        lines.append(f"skipped {entry['path']}: {entry['reason']}")
    if result["skipped"]:
        lines.append(describe_skipped([entry["reason"] for entry in result["skipped"]]))
    averaged = f"averaged over {len(views)} views ({', '.join(views)})" if len(views) > 1 else "one view"
    lines.append(f"accuracy {result['accuracy']:.4f}, balanced accuracy {result['balanced_accuracy']:.4f} ({averaged})")
    if "single_view" in result:
        single = result["single_view"]
        lines.append(
            f"accuracy {single['accuracy']:.4f}, balanced accuracy {single['balanced_accuracy']:.4f} "
            "(the identity view alone, no averaging)"
        )
    width = max(len("class"), *(len(name) for name in result["per_class"]))
    lines.append(f"{'class':<{width}}  precision  recall  f1      support")
    for name, row in result["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['precision']:.4f}     {row['recall']:.4f}  {row['f1']:.4f}  {row['support']}"
        )
    if result["absent_classes"]:
        absent = result["absent_classes"]
        lines.append(f"no images of {listed(absent, 10)} in {result['data']} (support 0: not scored)")
    files = result["files"]
    lines.append(f"confusion matrix: {files['confusion_matrix']}")
    lines.append(f"predictions:      {files['predictions']}")
    lines.append(f"evaluation:       {files['evaluation']}")
    return lines
