"""Transfer-learning benchmark on ELPV (4 classes): features-only vs fine-tuning EfficientNet-Lite0 (ImageNet).

What it measures: test accuracy, balanced accuracy and wall time of `cnnlab.tasks.transfer.train_transfer` on the
ELPV solar-cell images (PyPI `elpv-dataset`), stratified 75/25 train/test as in the literature, with 15% of all
images (20% of the training part) held out of training for validation, which alone picks the best epoch. The test
set is evaluated once per run. One run per mode (seed 0); the wall time includes decoding, feature extraction,
training and the test pass.

Usage:
    python benchmarks/transfer.py --mode features                       # frozen backbone, cached features
    python benchmarks/transfer.py --mode finetune --finetune-epochs 5   # then unfreeze everything
    python benchmarks/transfer.py --mode finetune --unfreeze 3 --image-size 160   # cheaper CPU variant
    python benchmarks/transfer.py --mode step-time --steps 3   # full fine-tuning speed only: img/s, epoch estimate

Results go to stdout as one JSON line and to docs/BENCHMARKS.md by hand (section "Transfer learning").
"""

from __future__ import annotations

import argparse
import json
import platform
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("features", "finetune", "step-time"), default="features")
    parser.add_argument("--steps", type=int, default=3, help="step-time: timed training steps (after one warm-up)")
    parser.add_argument("--head-epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--unfreeze", type=int, default=0, help="top N blocks in phase 2 (0: all)")
    parser.add_argument("--finetune-lr", type=float, default=None, help="phase-2 peak lr (default: TransferConfig's)")
    parser.add_argument("--layer-decay", type=float, default=None, help="phase-2 lr factor per block going down")
    parser.add_argument("--bn-train", action="store_true", help="phase 2 updates batch-norm running statistics")
    parser.add_argument("--bn-adapt", action="store_true", help="AdaBN: batch-norm statistics of the training images")
    parser.add_argument("--crop-scale", type=float, default=None, help="smallest area a random training crop keeps")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--crop-pct", type=float, default=None, help="evaluation centre-crop fraction (1.0: none)")
    parser.add_argument("--class-weight", choices=("balanced",), default=None, help="class-weighted cross-entropy")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="runs/bench")
    args = parser.parse_args()
    if not elpv_available():
        raise SystemExit("the benchmark needs the ELPV images: pip install elpv-dataset")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "step-time":
        print(json.dumps(step_time(args.batch_size, args.image_size or 224, args.steps)))
        return
    finetune = args.mode == "finetune"
    tuned = {
        key: value
        for key, value in (
            ("finetune_lr", args.finetune_lr),
            ("layer_decay", args.layer_decay),
            ("crop_scale", args.crop_scale),
            ("crop_pct", args.crop_pct),
            ("class_weight", args.class_weight),
        )
        if value is not None
    }
    config = TransferConfig(
        data="elpv",
        arch="efficientnet_lite0",
        image_size=args.image_size,
        val_fraction=0.15,
        test_fraction=0.25,
        batch_size=args.batch_size,
        head_epochs=args.head_epochs,
        finetune_epochs=args.finetune_epochs if finetune else 0,
        unfreeze=args.unfreeze,
        vertical_flip=True,  # solar cells have no up and down
        patience=8,
        workers=args.workers,
        device=args.device,
        output=args.output,
        name=f"elpv-{args.mode}-u{args.unfreeze}-s{args.image_size or 224}"
        + ("-balanced" if args.class_weight else "")
        + (f"-c{args.crop_pct:g}" if args.crop_pct else "")
        + ("-adabn" if args.bn_adapt else ""),
        overwrite=True,
        progress=False,
        bn_train=args.bn_train,
        bn_adapt=args.bn_adapt,
        **tuned,
    )
    started = time.perf_counter()
    summary = train_transfer(config)
    record = {
        "mode": args.mode,
        "unfreeze": args.unfreeze if finetune else None,
        "options": {**tuned, "bn_train": args.bn_train, "bn_adapt": args.bn_adapt},
        "image_size": args.image_size or 224,
        "head_epochs_run": summary["phases"].get("head", {}).get("epochs_run"),
        "finetune_epochs_run": summary["phases"].get("finetune", {}).get("epochs_run"),
        "test_accuracy": round(summary["test"]["accuracy"], 4),
        "test_balanced_accuracy": round(summary["test"]["balanced_accuracy"], 4),
        "test_images": summary["test"]["count"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "phase_seconds": {k: round(v["wall_seconds"], 1) for k, v in summary["phases"].items()},
        "device": str(torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"),
        "threads": torch.get_num_threads(),
        "run_dir": summary["run_dir"],
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
