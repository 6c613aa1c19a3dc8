"""The second route for ELPV: a lightweight CNN trained from scratch on the grayscale cells at reduced resolution.

This is the CPU route of the 2023 lightweight-CNN paper (83.5% on 4 classes), measured on cnnlab's own split of ELPV:
the same stratified 75/25 train/test split (seed 0) and 15% validation as `benchmarks/transfer.py`, so the figures
sit beside the pretrained recipes'. Validation alone chooses the checkpoint; the test set is read once per run.

What runs: every image decoded once to grayscale at ``--size`` px (uint8, in memory); a VGG-style network (3x3
conv-BN-ReLU pairs, max pooling, global average pooling, dropout, a linear layer) trained by the cnnlab engine
(AdamW, one-cycle, label smoothing) on batches augmented on the fly: one of the 8 dihedral views per image, a small
random shift and zoom, and brightness/contrast jitter. Validation and test average the logits over the 8 views, and
the test also reports the identity view alone.

    OMP_NUM_THREADS=1 python benchmarks/transfer_scratch.py --seeds 0 --size 128 --epochs 30

Results: JSON lines on stdout and ``--results FILE``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers.views import VIEWS
from cnnlab.tasks.transfer import TransferConfig, load_images
from cnnlab.train import BestWeights, TensorBatches, TrainConfig, Trainer
from cnnlab.train.metrics import Accuracy, BalancedAccuracy, ViewAveraged

DIHEDRAL = tuple(VIEWS)


def decode(paths: list[str], size: int) -> torch.Tensor:
    """uint8 [N, 1, size, size]: each image as grayscale, resized with antialiasing."""
    from PIL import Image

    out = torch.empty(len(paths), 1, size, size, dtype=torch.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            small = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
        out[i, 0] = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).view(size, size)
    return out


def light_cnn(widths: tuple[int, ...], num_classes: int, dropout: float) -> nn.Sequential:
    """A 3x3 conv stem with stride 2, then per width two conv-BN-ReLU and a 2x2 max pool; GAP, dropout, linear."""

    def conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers: list[nn.Module] = conv(1, widths[0], 2)
    cin = widths[0]
    for width in widths:
        layers += [*conv(cin, width), *conv(width, width), nn.MaxPool2d(2)]
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


class Augment:
    """The training batch transform: uint8 -> float, a random dihedral view, shift/zoom and photometric jitter per
    image, then normalisation."""

    def __init__(self, mean: float, std: float, shift: float, zoom: float, jitter: float) -> None:
        self.mean, self.std, self.shift, self.zoom, self.jitter = mean, std, shift, zoom, jitter

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float().div_(255.0)
        n = len(x)
        choice = torch.randint(0, len(DIHEDRAL), (n,))
        out = torch.empty_like(x)
        for k, name in enumerate(DIHEDRAL):
            picked = choice == k
            if picked.any():
                out[picked] = VIEWS[name](x[picked])
        if self.shift or self.zoom:
            scale = 1.0 + (torch.rand(n) * 2 - 1) * self.zoom
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
            theta[:, :, 2] = (torch.rand(n, 2) * 2 - 1) * self.shift
            grid = F.affine_grid(theta, list(out.shape), align_corners=False)
            out = F.grid_sample(out, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.jitter:
            contrast = 1.0 + (torch.rand(n, 1, 1, 1) * 2 - 1) * self.jitter
            brightness = (torch.rand(n, 1, 1, 1) * 2 - 1) * self.jitter * 0.5
            centre = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - centre) * contrast + centre + brightness
        return (out - self.mean) / self.std, y


def all_views(x: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [8 N, ...], view-major (what `ViewAveraged` reads)."""
    return torch.cat([VIEWS[name](x).contiguous() for name in DIHEDRAL])


def run(args: argparse.Namespace, seed: int, data: dict[str, Any]) -> dict[str, Any]:
    from sklearn.metrics import balanced_accuracy_score

    mean, std = data["mean"], data["std"]

    def normalise(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x.float().div_(255.0) - mean) / std, y

    torch.manual_seed(seed)
    model = light_cnn(tuple(args.widths), 4, args.dropout)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer="adamw",
        weight_decay=args.weight_decay,
        schedule="onecycle",
        warmup_epochs=args.warmup,
        label_smoothing=0.1,
        channels_last=True,
        seed=seed,
        monitor="val_accuracy",
        output=args.output,
        task="transfer-scratch",
        name=f"{args.tag}size{args.size}-seed{seed}",
        overwrite=True,
        progress=False,
        num_threads=args.threads,
    )
    views = len(DIHEDRAL)
    trainer = Trainer(
        model,
        config,
        metrics={
            "accuracy": ViewAveraged(Accuracy(), views),
            "balanced_accuracy": ViewAveraged(BalancedAccuracy(4), views),
            "accuracy_single_view": ViewAveraged(Accuracy(), views, first_only=True),
        },
        train_transform=Augment(mean, std, args.shift, args.zoom, args.jitter),
        eval_transform=normalise,
        callbacks=[BestWeights()],
    )
    train_x, train_y = data["train"]
    val_x, val_y = data["val"]
    started = time.perf_counter()
    history = trainer.fit(
        TensorBatches(train_x, train_y, args.batch_size, drop_last=True),
        TensorBatches(all_views(val_x), val_y.repeat(views), 256),
    )
    train_seconds = time.perf_counter() - started
    for row in history:
        print(
            f"  epoch {int(row['epoch'])}: train acc {row.get('train_accuracy', float('nan')):.3f}, val acc "
            f"{row['val_accuracy']:.4f} (one view {row['val_accuracy_single_view']:.4f}), balanced "
            f"{row['val_balanced_accuracy']:.4f}",
            flush=True,
        )
    test_x, test_y = data["test"]
    per_view = torch.cat([o for o, _ in trainer.inference(TensorBatches(all_views(test_x), test_y.repeat(views), 256))])
    per_view = per_view.float().reshape(views, len(test_y), -1)
    averaged = per_view.mean(0)
    predicted, single = averaged.argmax(1), per_view[0].argmax(1)
    defective = averaged.softmax(1)[:, 2:].sum(1) >= 0.5
    return {
        "route": "scratch",
        "seed": seed,
        "size": args.size,
        "widths": list(args.widths),
        "epochs": args.epochs,
        "lr": args.lr,
        "params": sum(p.numel() for p in model.parameters()),
        "best_epoch": trainer.best_epoch,
        "best_val_accuracy": trainer.best_metric,
        "test_accuracy": float((predicted == test_y).float().mean()),
        "test_balanced_accuracy": float(balanced_accuracy_score(test_y, predicted)),
        "test_accuracy_single_view": float((single == test_y).float().mean()),
        "test_balanced_single_view": float(balanced_accuracy_score(test_y, single)),
        "binary_accuracy": float((defective == (test_y >= 2)).float().mean()),
        "train_seconds": round(train_seconds, 1),
        "decode_seconds": round(data["decode_seconds"], 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--size", type=int, default=128, help="input side in px (cells are 300x300)")
    parser.add_argument("--widths", nargs="+", type=int, default=[32, 64, 128, 256])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=2.0, help="one-cycle warm-up epochs")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--shift", type=float, default=0.06, help="largest random shift, fraction of the half-side")
    parser.add_argument("--zoom", type=float, default=0.08, help="largest random zoom in or out")
    parser.add_argument("--jitter", type=float, default=0.2, help="brightness/contrast jitter")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-train", type=int, default=None, help="probe on this many training images")
    parser.add_argument("--output", default="runs")
    parser.add_argument("--tag", default="")
    parser.add_argument("--results", default=None)
    args = parser.parse_args()

    images, split, source = load_images(TransferConfig(data="elpv", name="scratch-probe", output=args.output))
    started = time.perf_counter()
    data: dict[str, Any] = {}
    for part in ("train", "val", "test"):
        subset = images.subset(split[part])
        indices = list(range(len(subset)))[: args.max_train] if part == "train" and args.max_train else None
        paths = subset.paths if indices is None else [subset.paths[i] for i in indices]
        labels = subset.labels if indices is None else [subset.labels[i] for i in indices]
        data[part] = (decode(paths, args.size), torch.tensor(labels))
    data["decode_seconds"] = time.perf_counter() - started
    pixels = data["train"][0].float().div(255.0)
    data["mean"], data["std"] = float(pixels.mean()), float(pixels.std())
    print(f"split: {source}; " + ", ".join(f"{p} {len(data[p][1])}" for p in ("train", "val", "test")), flush=True)
    rows = []
    for seed in args.seeds:
        rows.append(run(args, seed, data))
        print(json.dumps(rows[-1]), flush=True)
        if args.results:
            Path(args.results).write_text(json.dumps(rows, indent=1))
    if len(rows) > 1:
        for key in ("test_accuracy", "test_balanced_accuracy", "binary_accuracy", "train_seconds"):
            values = [row[key] for row in rows]
            print(f"{key}: {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")


if __name__ == "__main__":
    main()
