"""Probe: does averaging several finished `cnnlab train transfer` runs beat one run? Chosen on validation.

The runs must share one split (the same data and ``split_seed``; the training seed may differ). For each run the
validation images of its ``split.csv`` are classified with the run's own recorded preprocessing and view averaging
(`cnnlab.tasks.predict`, the path `cnnlab predict` takes), so validation and test probabilities are made alike; the
test probabilities are the run's own ``test_predictions.csv``. The script prints each run's validation accuracy, that
of the average of every run, and how many validation images every run gets wrong (what no average can fix); with
``--test``, once the choice is made, the test accuracy of that average.

With ``--tune-bias`` (one run or several) it also probes a post-hoc prior shift: one offset per class added to the
log-probabilities of the average, searched on a grid to maximise validation accuracy (the first class fixed at 0,
ties to the smallest offsets), then applied unchanged to the test probabilities.

With ``--sizes 192,224`` (multi-scale test-time averaging) each run is a member once per input size: at a size other
than its recorded one, its validation and test images are classified with the record's preprocessing at that size
(the network is convolutional up to its global pooling, so it takes any size).

    OMP_NUM_THREADS=2 python benchmarks/transfer_ensemble.py RUN RUN RUN --output DIR

Probabilities the script makes are kept in DIR (one CSV per run, part and size), so a second call is quick.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score


def _split_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "split.csv", newline="") as f:
        return list(csv.DictReader(f))


def _probabilities(
    run: Path, classes: list[str], output: Path, size: int | None = None, part: str = "val"
) -> tuple[list[str], np.ndarray]:
    """`part`'s probabilities from the run's own predictor (at input side `size`; None: the recorded one)."""
    key = hashlib.sha1(str(run.resolve()).encode()).hexdigest()[:10]
    saved = output / f"{part}-{run.name}-{key}{'' if size is None else f'-{size}px'}.csv"
    if not saved.exists():
        from cnnlab.tasks.predict import load_predictor, predict_images

        paths = [row["path"] for row in _split_rows(run) if row["split"] == part]
        from cnnlab.errors import CnnlabError

        try:
            predictor = load_predictor(str(run))
        except CnnlabError as error:  # e.g. a probe's backbone that cnnlab's zoo does not register
            raise SystemExit(f"{run}: {error}") from error
        if size is not None:
            predictor.cfg = predictor.cfg.with_input(size)
        started = time.perf_counter()
        predicted = predict_images(predictor, paths, top_k=len(predictor.classes), batch_size=32)
        print(f"  {run.name}: {len(paths)} {part} images at {predictor.cfg.input_size[1]} px in "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        with open(saved, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", *predictor.classes])
            for row in predicted:
                if "error" in row:
                    raise SystemExit(f"{row['image']}: {row['error']}")
                by_label = {entry["label"]: entry["probability"] for entry in row["top"]}
                writer.writerow([row["image"], *(by_label[c] for c in predictor.classes)])
    return _read_probabilities(saved, classes)


def _read_probabilities(path: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["path"] for r in rows], np.array([[float(r[c]) for c in classes] for r in rows])


def _labels(run: Path, part: str) -> dict[str, str]:
    return {row["path"]: row["label"] for row in _split_rows(run) if row["split"] == part}


def _tune_bias(probabilities: np.ndarray, truth: np.ndarray, step: float = 0.1, limit: float = 1.5) -> np.ndarray:
    """Per-class offsets on log-probabilities (the first class's fixed at 0) that maximise accuracy on `truth`."""
    grid = np.round(np.arange(-limit, limit + step / 2, step), 6)
    logp = np.log(np.clip(probabilities, 1e-12, None))
    best: tuple[float, float, tuple[float, ...]] = (-1.0, 0.0, ())
    for offsets in itertools.product(grid, repeat=probabilities.shape[1] - 1):
        bias = np.array((0.0, *offsets))
        candidate = (float(((logp + bias).argmax(1) == truth).mean()), -float(np.abs(bias).sum()), tuple(bias))
        best = max(best, candidate)
    return np.array(best[2])


def _shifted(probabilities: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probabilities, 1e-12, None)) + bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished transfer runs on one split")
    parser.add_argument("--output", type=Path, required=True, help="folder for the validation probabilities")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test", action="store_true", help="read the test set (once the choice is made)")
    parser.add_argument("--sizes", help="input sides, comma-separated: each run is a member once per size")
    parser.add_argument("--tune-bias", action="store_true", help="also probe per-class offsets chosen on validation")
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)

    meta = json.loads((args.runs[0] / "model.json").read_text())["meta"]
    classes = list(meta["classes"])
    val_truth, test_truth = _labels(args.runs[0], "val"), _labels(args.runs[0], "test")
    for run in args.runs[1:]:
        if _labels(run, "val") != val_truth or _labels(run, "test") != test_truth:
            raise SystemExit(f"{run} was trained on another split than {args.runs[0]}")

    members = []
    for run in args.runs:
        recorded = int(json.loads((run / "model.json").read_text())["meta"]["preprocessing"]["input_size"][1])
        for size in [int(s) for s in args.sizes.split(",")] if args.sizes else [recorded]:
            other = None if size == recorded else size
            val_paths, val_p = _probabilities(run, classes, args.output, other)
            test_paths, test_p = _read_probabilities(run / "test_predictions.csv", classes)
            if other is not None and args.test:  # in the order of the run's own test predictions
                paths, probabilities = _probabilities(run, classes, args.output, other, part="test")
                test_p = probabilities[[paths.index(path) for path in test_paths]]
            label = run if other is None else Path(f"{run}@{size}px")
            members.append((label, val_paths, val_p, test_paths, test_p))
    val_paths, test_paths = members[0][1], members[0][3]
    if any(m[1] != val_paths or m[3] != test_paths for m in members):
        raise SystemExit("the runs list their images in different orders")
    y_val = np.array([classes.index(val_truth[p]) for p in val_paths])
    y_test = np.array([classes.index(test_truth[p]) for p in test_paths])

    figures: dict[str, object] = {"runs": [str(r) for r in args.runs], "members": []}
    for run, _, val_p, _, _ in members:
        accuracy = accuracy_score(y_val, val_p.argmax(1))
        figures["members"].append({"run": str(run), "val_accuracy": accuracy})  # type: ignore[union-attr]
        print(f"val {accuracy:.4f}  {run}")
    val_mean = np.mean([m[2] for m in members], axis=0)
    figures["val_accuracy"] = accuracy_score(y_val, val_mean.argmax(1))
    right = np.stack([m[2].argmax(1) == y_val for m in members])  # [runs, images]
    figures["val_wrong_for_every_run"] = float(1 - right.any(0).mean())
    print(
        f"average of {len(members)}: val {figures['val_accuracy']:.4f}; wrong for every run: "
        f"{int((~right.any(0)).sum())} of {len(y_val)} ({figures['val_wrong_for_every_run']:.1%})"
    )
    bias = None
    if args.tune_bias:
        bias = _tune_bias(val_mean, y_val)
        figures["bias"] = dict(zip(classes, bias.tolist(), strict=True))
        figures["val_accuracy_with_bias"] = accuracy_score(y_val, _shifted(val_mean, bias).argmax(1))
        print(f"with per-class offsets {np.round(bias, 2).tolist()}: val {figures['val_accuracy_with_bias']:.4f}")
    if not args.test:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return
    test_mean = np.mean([m[4] for m in members], axis=0)
    figures["test_accuracy"] = accuracy_score(y_test, test_mean.argmax(1))
    figures["test_balanced_accuracy"] = balanced_accuracy_score(y_test, test_mean.argmax(1))
    if len(classes) == 4:  # the authors' binary task read off the 4 ordered classes
        figures["binary_accuracy"] = float(np.mean((test_mean[:, 2:].sum(1) >= 0.5) == (y_test >= 2)))
    print(
        f"average of {len(members)}: test {figures['test_accuracy']:.4f}, balanced "
        f"{figures['test_balanced_accuracy']:.4f}, binary reading {figures.get('binary_accuracy', float('nan')):.4f}"
    )
    if bias is not None:
        figures["test_accuracy_with_bias"] = accuracy_score(y_test, _shifted(test_mean, bias).argmax(1))
        print(f"with the offsets: test {figures['test_accuracy_with_bias']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
