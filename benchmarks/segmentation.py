"""FCN-32s vs FCN-8s vs U-Net on multi-digit MNIST canvases: what skip connections buy.

Measures, for each model trained with the same recipe settings and the same canvases (generated with seed 0):
test mIoU over the 10 digit classes (background excluded), mIoU with background, pixel accuracy, boundary F1 at a
2-pixel tolerance, parameter count and training seconds. One run per model (seed 0). The test canvases are built
only from MNIST test-set digits and are evaluated once per model, after training.

Hardware of the published figures: 2-core AMD EPYC, no GPU, shared with other jobs (timings pessimistic), 2026-11-22.

    python benchmarks/segmentation.py --data-dir ../shared/data --train-canvases 2000 --epochs 4

`--model-kwargs` passes constructor options to every model (a U-Net's widths: the wider U-Net of docs/BENCHMARKS.md is
`--models quick --train-canvases 4000 --epochs 3 --model-kwargs '{"widths": [12, 24, 64, 128, 256]}'`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cnnlab.data.segmentation import make_digit_segmentation
from cnnlab.tasks.segmentation import train_segmentation

MODELS = ("fcn32s", "fcn8s", "unet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output", default="runs/bench-segment")
    parser.add_argument("--train-canvases", type=int, default=2000)
    parser.add_argument("--val-canvases", type=int, default=500)
    parser.add_argument("--test-canvases", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="recipes of `cnnlab train segment`")
    parser.add_argument("--model-kwargs", type=json.loads, default=None, help="JSON: constructor options of the models")
    args = parser.parse_args()

    data = make_digit_segmentation(args.data_dir, sizes=(args.train_canvases, args.val_canvases, args.test_canvases))
    rows = []
    for recipe in args.models:
        summary = train_segmentation(
            recipe,
            output=args.output,
            name=recipe,
            data=data,
            overrides={"epochs": args.epochs},
            model_kwargs=args.model_kwargs,
            overwrite=True,
            progress=False,
        )
        test = summary["test"]
        rows.append(
            {
                "model": recipe,
                "params": summary["params"],
                "miou_digits": test["miou"],
                "miou_with_bg": test["miou_with_bg"],
                "pixel_accuracy": test["pixel_accuracy"],
                "boundary_f1_2px": test["boundary_f1"],
                "train_seconds": summary["train_seconds"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print("| model | params | test mIoU (digits, no bg) | mIoU with bg | pixel acc. | boundary F1 (2 px) | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['model']} | {row['params']:,} | {row['miou_digits']:.3f} | {row['miou_with_bg']:.3f} | "
            f"{row['pixel_accuracy']:.4f} | {_boundary_f1(row['boundary_f1_2px'])} | {row['train_seconds']:.0f} |"
        )
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "segmentation_benchmark.json").write_text(json.dumps(rows, indent=1))


def _boundary_f1(value: float | None) -> str:
    """A boundary F1 at three places, or "-" where it was not measurable (None: no class boundary to score)."""
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
