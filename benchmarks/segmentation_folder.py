"""From-scratch U-Net vs U-Net on a pretrained EfficientNet-Lite0 encoder, trained from segmentation folders.

Both folders come from `cnnlab data segmentation-demo` (seed 0): ``digits`` (grey 64x64 canvases of 1-5 MNIST
digits) and ``rgb`` (MNIST digits in random colours and sizes on crops of sample photographs, 64-112 px). Each model
is trained by `cnnlab.tasks.segment_folder.train_segmentation_folder`, the path `cnnlab train segment --data` takes,
with the model recipe's optimiser and schedule, on the same saved split (70/15/15, split seed 0), once per seed.
Measured: test mIoU over the 10 digit classes (background excluded), mIoU with background, pixel accuracy,
parameters and training seconds. The test images are evaluated once per run, after training.

Short runs (a few hundred steps), far from converged: the figures compare the two starts, they are not the best
either model reaches. Hardware of the published figures: 2 CPU cores shared with other jobs, OMP_NUM_THREADS=1.

    OMP_NUM_THREADS=1 python benchmarks/segmentation_folder.py --data-dir $CNNLAB_DATA --count 600 --epochs 6
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from cnnlab.data.segmentation_demo import DEMO_VARIANTS, write_segmentation_demo
from cnnlab.tasks.segment_folder import MODELS, train_segmentation_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST root")
    parser.add_argument("--output", default="runs/bench-segment-folder")
    parser.add_argument("--count", type=int, default=600, help="image + mask pairs per folder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--variants", nargs="+", default=list(DEMO_VARIANTS), choices=DEMO_VARIANTS)
    parser.add_argument("--models", nargs="+", default=["unet", "unet-lite0"], choices=MODELS.names())
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--background-weight", type=float, default=None, help="background's loss weight (the built-in canvases: 0.2)"
    )
    args = parser.parse_args()

    output = Path(args.output)
    rows = []
    for variant in args.variants:
        folder = output / "data" / f"{variant}-{args.count}"
        if not (folder / "classes.json").is_file():
            write_segmentation_demo(folder, variant, args.count, args.data_dir, seed=0)
        for model in args.models:
            for seed in args.seeds:
                summary = train_segmentation_folder(
                    str(folder),
                    model,
                    output=str(output),
                    name=f"{variant}-{args.count}-{model}-seed{seed}",
                    seed=seed,
                    background_weight=args.background_weight,
                    overrides={"epochs": args.epochs},
                    overwrite=True,
                    progress=False,
                )
                test = summary["test"]
                rows.append(
                    {
                        "data": variant,
                        "model": model,
                        "seed": seed,
                        "background_weight": args.background_weight,
                        "params": summary["params"],
                        "miou_digits": test["miou"],
                        "miou_with_bg": test["miou_with_bg"],
                        "pixel_accuracy": test["pixel_accuracy"],
                        "boundary_f1": test["boundary_f1"],
                        "steps": summary["steps"],
                        "train_seconds": summary["train_seconds"],
                        "images": summary["images"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                output.mkdir(parents=True, exist_ok=True)  # after every run: a stopped benchmark keeps its rows
                (output / "segmentation_folder_benchmark.json").write_text(json.dumps(rows, indent=1))
    header = "data | model | seeds | steps | params | test mIoU | mIoU with bg | pixel acc. | boundary F1 | train s"
    print(f"| {header} |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (variant, model), group in itertools.groupby(rows, key=lambda row: (row["data"], row["model"])):
        group = list(group)
        cells = [_mean_std([row[key] for row in group], digits) for key, digits in _COLUMNS]
        seeds = " ".join(str(row["seed"]) for row in group)
        first = group[0]
        print(f"| {variant} | {model} | {seeds} | {first['steps']:,} | {first['params']:,} | {' | '.join(cells)} |")


_COLUMNS = [("miou_digits", 3), ("miou_with_bg", 3), ("pixel_accuracy", 4), ("boundary_f1", 4), ("train_seconds", 0)]


def _mean_std(values: list[float | None], digits: int) -> str:
    """``mean ± std`` (sample std) over the seeds that measured it; the value alone for one. A boundary F1 may be None
    (not measurable: no class boundary to score): "-" when no seed measured it, else "(k of n seeds)" is added."""
    measured = [value for value in values if value is not None]
    if not measured:
        return "-"
    if len(measured) == 1:
        text = f"{measured[0]:.{digits}f}"
    else:
        text = f"{statistics.mean(measured):.{digits}f} ± {statistics.stdev(measured):.{digits}f}"
    return text if len(measured) == len(values) else f"{text} ({len(measured)} of {len(values)} seeds)"


if __name__ == "__main__":
    main()
