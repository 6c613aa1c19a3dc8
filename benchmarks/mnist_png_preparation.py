"""How `cnnlab predict` prepares a picture of one digit: MNIST's own test digits, saved as PNG files, through the
product's preparation (ink fitted in 20x20, centre of mass at (14, 14)) against a peer that centres the ink's bounding
box instead, and against the raw 28x28 digits the run was tested on.

What it measures: the accuracy of one trained MNIST run on the first N test digits three ways: the raw tensors (what
the run's own test pass sees), each digit saved as a PNG and read back through `cnnlab.data.mnist.mnist_preprocess`
(what `cnnlab predict digit.png` does), and the same PNGs through the box-centring peer written here. Optionally the
digits drawn dark on white and enlarged (`--scale`), as a scan or a photo of paper gives them.

Run: .venv/bin/python benchmarks/mnist_png_preparation.py RUN [--images 2000] [--scale 10] [--json out.json]
(RUN: a finished `cnnlab train mnist` run folder, e.g. runs/mnist/quick; MNIST under $CNNLAB_DATA)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from results_file import write_results


def centre_the_box(image: Image.Image) -> torch.Tensor:
    """The peer: the product's ink, fitted in 20x20 (`fitted_ink`), with its bounding box centred in 28x28 rather
    than its centre of mass put at (14, 14)."""
    from cnnlab.data.mnist import fitted_ink

    small = fitted_ink(image)
    canvas = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    return torch.from_numpy(canvas).unsqueeze(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished `cnnlab train mnist` run folder")
    parser.add_argument("--images", type=int, default=2000, help="the first N MNIST test digits (default 2000)")
    parser.add_argument("--scale", type=int, default=0, help="also draw each digit dark on white, N times larger")
    parser.add_argument("--data-dir", default=os.environ.get("CNNLAB_DATA", "data"), help="MNIST root")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from cnnlab import load_model
    from cnnlab.data.mnist import load_mnist, mnist_preprocess

    model = load_model(args.run).eval()
    splits = load_mnist(args.data_dir, val_size=0)
    digits, labels = splits.test_images[: args.images], splits.test_labels[: args.images]

    def accuracy(batch: torch.Tensor) -> float:
        with torch.inference_mode():
            predicted = torch.cat([model(chunk).argmax(1) for chunk in batch.split(500)])
        return float((predicted == labels).float().mean())

    results: dict[str, object] = {
        "run": str(args.run),
        "images": len(labels),
        "raw_test_tensors": accuracy(digits.float() / 255),
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        variants = {"light_on_black_28px": lambda d: Image.fromarray(d.numpy())}
        if args.scale:
            size = 28 * args.scale
            variants[f"dark_on_white_{size}px"] = lambda d: Image.fromarray(255 - d.numpy()).resize(
                (size, size), Image.BILINEAR
            )
        for name, draw in variants.items():
            paths = []
            for index, digit in enumerate(digits[:, 0]):
                path = Path(folder) / f"{name}-{index}.png"
                draw(digit).save(path)
                paths.append(path)
            for method, prepare in (("centre_of_mass", mnist_preprocess), ("box_centre_peer", centre_the_box)):
                batch = []
                for path in paths:
                    with Image.open(path) as image:
                        batch.append(prepare(image))
                results[f"{name}/{method}"] = accuracy(torch.stack(batch))
    write_results(results, start, args.json)


if __name__ == "__main__":
    main()
