"""How `cnnlab fcn scan` and a canvas segmenter (`cnnlab train segment` without --data, as `cnnlab explain` and an
export's record prepare its input) read a photo of a page of digits on paper of any grey: pages of MNIST test digits
drawn as photos through `cnnlab.fcn.scan.scan_tensor`.

What it measures, on pages of MNIST's test digits at their own size (dark ink of grey 0.1 on paper of grey G, lit 15%
less at the bottom right than at the top left, normal noise of sigma 0.02, seeded; saved as PNG and read back), and
on the same pages clean (light digits on black, as the canvases are):
- segmenter: foreground IoU of its mask (any digit class) against the digits' known ink (MNIST pixels >= 64, the
  canvases' own truth), and the share of the known ink given the right digit, over --pages 96x96 pages of 1-5 digits
  (`make_canvases`);
- scanner: a 416x496 page of 100 digits (the first 10 test digits of each class, 28 px cells 40 px apart, each cell's
  corner on the network's stride of 8) and a blank band 80 px wide on its right: the share of digits whose own window
  is scored their class, and the share of the blank band's windows the heatmap draws as holding a digit (3% stroke).
--shading S makes the light fall by S instead of 15%. Run it with PYTHONPATH pointing at another checkout's src to
compare preparations on the same pages.

Run: .venv/bin/python benchmarks/scan_paper_grey.py --segmenter RUN --scanner FCN [--papers 0.5 0.7 0.95] [--shading S]
(RUN: a `cnnlab train segment` canvas run; FCN: a `cnnlab fcn convert` folder; MNIST under $CNNLAB_DATA)
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

INK = 0.1  # the ink's grey
SHADING = 0.15  # the light falls by this fraction from the top-left corner to the bottom-right one
NOISE = 0.02  # the camera's noise (sigma, in grey levels / 255)
BLANK = 80  # the scanner page's blank band, px wide, on its right
ROWS = 10  # the scanner page's rows: the first ROWS test digits of each class, one class a column


def photographed(
    canvas: np.ndarray, paper: float | None, rng: np.random.Generator, folder: Path, shading: float = SHADING
) -> Image.Image:
    """A uint8 light-on-black canvas as a PNG photo of dark ink on paper of grey `paper` (None: the canvas itself), lit
    `shading` less at the bottom right than at the top left, read back as RGB."""
    if paper is None:
        page = Image.fromarray(canvas)
    else:
        ink = canvas.astype(np.float64) / 255
        rows, cols = np.mgrid[0 : canvas.shape[0], 0 : canvas.shape[1]]
        light = 1 - shading * (0.6 * cols / canvas.shape[1] + 0.4 * rows / canvas.shape[0])
        page = (paper * (1 - ink) + INK * ink) * light + rng.normal(0, NOISE, canvas.shape)
        page = Image.fromarray((page.clip(0, 1) * 255).round().astype(np.uint8))
    page.save(folder / "page.png")
    with Image.open(folder / "page.png") as image:
        return image.convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segmenter", type=Path, help="a `cnnlab train segment` run on the MNIST canvases")
    parser.add_argument("--scanner", type=Path, help="a `cnnlab fcn convert` folder")
    parser.add_argument("--pages", type=int, default=50, help="segmenter pages (default 50)")
    parser.add_argument("--papers", type=float, nargs="+", default=[0.5, 0.7, 0.95], help="paper greys")
    parser.add_argument("--shading", type=float, default=SHADING, help="the light's fall (default 0.15)")
    parser.add_argument("--data-dir", default=os.environ.get("CNNLAB_DATA", "data"), help="MNIST root")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from cnnlab.data.mnist import load_mnist
    from cnnlab.data.segmentation import make_canvases
    from cnnlab.fcn.scan import load_fully_convolutional, scan, scan_tensor
    from cnnlab.train.saved import load_model

    splits = load_mnist(args.data_dir, val_size=0)
    digits, labels = splits.test_images, splits.test_labels
    papers: list[float | None] = [None, *args.papers]
    results: dict[str, object] = {"shading": args.shading}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary, torch.inference_mode():
        folder = Path(temporary)
        if args.segmenter:
            model = load_model(args.segmenter).eval()
            pages = make_canvases(digits, labels, torch.arange(len(labels)), args.pages, 96, (1, 5), seed=7)
            for paper in papers:
                rng = np.random.default_rng(0)
                inter = union = right = ink_pixels = 0
                for canvas, truth in zip(pages.images[:, 0].numpy(), pages.masks.numpy(), strict=True):
                    picture = scan_tensor(photographed(canvas, paper, rng, folder, args.shading))
                    predicted = model(picture[None])[0].argmax(0).numpy()
                    inter += int(((predicted > 0) & (truth > 0)).sum())
                    union += int(((predicted > 0) | (truth > 0)).sum())
                    right += int(((predicted == truth) & (truth > 0)).sum())
                    ink_pixels += int((truth > 0).sum())
                name = "clean" if paper is None else f"paper_{paper:g}"
                results[f"segmenter/{name}"] = {"foreground_iou": inter / union, "ink_right_class": right / ink_pixels}
        if args.scanner:
            converted = load_fully_convolutional(args.scanner).eval()
            stride = converted.output_geometry()[1][0]
            height, width = 16 + 40 * ROWS, 16 + 40 * 10 + BLANK
            canvas = np.zeros((height, width), dtype=np.uint8)
            places = []
            for digit in range(10):
                for row, index in enumerate((labels == digit).nonzero()[:ROWS, 0].tolist()):
                    top, left = 16 + 40 * row, 16 + 40 * digit
                    canvas[top : top + 28, left : left + 28] = digits[index, 0].numpy()
                    places.append((top // stride, left // stride, digit))
            for paper in papers:
                rng = np.random.default_rng(0)
                result = scan(converted, scan_tensor(photographed(canvas, paper, rng, folder, args.shading)), refine=1)
                found = sum(int(result.probabilities[:, row, col].argmax()) == digit for row, col, digit in places)
                first_blank = -(-(width - BLANK) // stride)  # the first column whose window lies in the blank band
                drawn = result.ink[:, first_blank:] >= 0.03
                name = "clean" if paper is None else f"paper_{paper:g}"
                right, blank = found / len(places), float(drawn.float().mean())
                results[f"scanner/{name}"] = {"digits_right": right, "blank_drawn": blank}
    write_results(results, start, args.json)


if __name__ == "__main__":
    main()
