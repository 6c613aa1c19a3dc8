"""How `cnnlab predict` reads a photo of a digit on paper of any grey: MNIST's own test digits drawn as photos (dark
ink on paper of grey G, enlarged, lit unevenly, with a camera's noise) through `cnnlab.data.mnist.mnist_preprocess`.

What it measures: the accuracy of one trained MNIST run on the first N test digits, raw (the run's own test pass) and
as photos on each paper grey: each digit enlarged to 196 px (bilinear), ink of grey 0.1 on paper of grey G, lit 15%
less at the bottom right than at the top left, plus normal noise of sigma 0.02 (seeded), saved as PNG and read back.
With --table G the photo lies on a table of grey G that shows 30 px round it (noise of sigma 0.02 too). With --shadow F
a sharp-edged shadow (a hand's, lit F of the rest) covers the photo beyond a straight line drawn at random (seeded: its
slant within 60 degrees of either diagonal, covering 25-60% of the photo), and as many blank pages, shadowed so too,
are prepared: `blank_refused` counts those refused ("no digit found", as they should be). A digit the
preparation refuses ("no digit found") counts as wrong. Run it with PYTHONPATH pointing at another
checkout's src to compare preparations on the same digits.

Run: .venv/bin/python benchmarks/mnist_paper_grey.py RUN [--images 1000] [--papers 0.5 0.6 0.7 0.8 0.95] [--table G]
[--shadow F]
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

SIDE = 196  # 7 x 28: the photo's side in pixels
INK = 0.1  # the ink's grey
SHADING = 0.15  # the light falls by this fraction from the top-left corner to the bottom-right one
NOISE = 0.02  # the camera's noise (sigma, in grey levels / 255)
TABLE_MARGIN = 30  # --table: px of the table round the photo


def shadow_line(rng: np.random.Generator) -> tuple[float, float, float]:
    """A shadow's edge for --shadow: (a, b, c), the shadow where a * row + b * col > c (rows and columns in [0, 1))."""
    angle = rng.uniform(-np.pi / 3, np.pi / 3) + (np.pi / 4 if rng.random() < 0.5 else 3 * np.pi / 4)
    a, b = float(np.cos(angle)), float(np.sin(angle))
    rows, cols = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    along = np.sort((a * rows + b * cols).ravel())
    return a, b, float(along[int(len(along) * (1 - rng.uniform(0.25, 0.6)))])


def photographed(
    digit: np.ndarray,
    paper: float,
    rng: np.random.Generator,
    table: float | None = None,
    shadow: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    """A 28x28 light-on-black MNIST digit as a photo of dark ink on paper of grey `paper` (lying on a table of grey
    `table`, when given; under a shadow (light, a, b, c) where a * row + b * col > c, when given)."""
    ink = np.asarray(Image.fromarray(digit).resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32) / 255
    rows, cols = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    light = 1 - SHADING * (0.6 * cols + 0.4 * rows)
    if shadow is not None:
        shade, a, b, c = shadow
        light = np.where(a * rows + b * cols > c, light * shade, light)
    page = (paper * (1 - ink) + INK * ink) * light + rng.normal(0, NOISE, (SIDE, SIDE))
    if table is not None:
        side = SIDE + 2 * TABLE_MARGIN
        around = table + rng.normal(0, NOISE, (side, side))
        around[TABLE_MARGIN:-TABLE_MARGIN, TABLE_MARGIN:-TABLE_MARGIN] = page
        page = around
    return Image.fromarray((page.clip(0, 1) * 255).round().astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished `cnnlab train mnist` run folder")
    parser.add_argument("--images", type=int, default=1000, help="the first N MNIST test digits (default 1000)")
    parser.add_argument("--papers", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.95], help="paper greys")
    parser.add_argument("--table", type=float, help="the photo lies on a table of this grey")
    parser.add_argument("--shadow", type=float, help="a sharp shadow lit this share covers part of each photo")
    parser.add_argument("--data-dir", default=os.environ.get("CNNLAB_DATA", "data"), help="MNIST root")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from cnnlab import load_model
    from cnnlab.data.mnist import load_mnist, mnist_preprocess
    from cnnlab.errors import CnnlabError

    model = load_model(args.run).eval()
    splits = load_mnist(args.data_dir, val_size=0)
    digits, labels = splits.test_images[: args.images, 0], splits.test_labels[: args.images]

    def predicted(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model(chunk).argmax(1) for chunk in batch.split(500)])

    results: dict[str, object] = {"run": str(args.run), "images": len(labels), "table": args.table}
    results["shadow"] = args.shadow
    results["raw_test_tensors"] = float((predicted(digits[:, None].float() / 255) == labels).float().mean())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for paper in args.papers:
            rng = np.random.default_rng(0)  # the same noise for every paper, and for every checkout compared
            shadow_rng = np.random.default_rng(1)  # the shadows' edges: drawn apart from the noise
            prepared, refused = [], torch.zeros(len(labels), dtype=torch.bool)
            blank_refused = 0
            for index, digit in enumerate(digits.numpy()):
                shadow = None if args.shadow is None else (args.shadow, *shadow_line(shadow_rng))
                path = Path(folder) / f"{paper}-{index}.png"
                photographed(digit, paper, rng, args.table, shadow).save(path)
                with Image.open(path) as image:
                    try:
                        prepared.append(mnist_preprocess(image))
                    except CnnlabError:
                        prepared.append(torch.zeros(1, 28, 28))
                        refused[index] = True
                if shadow is not None:  # a blank page under the same shadow: "no digit found" is right
                    photographed(np.zeros_like(digit), paper, rng, args.table, shadow).save(path)
                    with Image.open(path) as image:
                        try:
                            mnist_preprocess(image)
                        except CnnlabError:
                            blank_refused += 1
            right = (predicted(torch.stack(prepared)) == labels) & ~refused
            scores = {"accuracy": float(right.float().mean()), "refused": int(refused.sum())}
            results[f"paper_{paper:g}"] = scores if args.shadow is None else {**scores, "blank_refused": blank_refused}
    write_results(results, start, args.json)


if __name__ == "__main__":
    main()
