"""Test segmentation-folder runs on the built-in path's own test canvases, so the two paths share one test set.

A run of `benchmarks/segmentation_folder.py` on the ``digits`` demo folder is tested on its own split (canvases of
MNIST training digits). The built-in `cnnlab train segment` recipes test on 1,000 canvases of MNIST *test* digits
(`make_digit_segmentation`, seed 0). This script loads each folder run's saved model (`load_segmenter`) and scores it
on those 1,000 canvases with the built-in report (`evaluate_segmentation`): test mIoU over the 10 digit classes,
background excluded, and boundary F1 at 2 px. The grey canvases go in as the folder run saw its grey PNGs: three equal
channels in [0, 1], then the run's recorded normalisation.

    OMP_NUM_THREADS=1 python benchmarks/segmentation_folder_crosstest.py --data-dir $CNNLAB_DATA RUN_DIR...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from cnnlab.data.segmentation import make_digit_segmentation
from cnnlab.layers.normalize import Normalize
from cnnlab.tasks.segment_predict import load_segmenter
from cnnlab.tasks.segmentation import evaluate_segmentation


class _GreyToRun(nn.Module):
    """Grey [N, 1, H, W] in [0, 1] -> the folder run's RGB input (three equal channels, its normalisation)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x.expand(-1, 3, -1, -1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories of segmentation-folder runs on the digits folder")
    parser.add_argument("--data-dir", default=None, help="MNIST root")
    parser.add_argument("--test-canvases", type=int, default=1000, help="the built-in recipes' test size")
    args = parser.parse_args()

    test = make_digit_segmentation(args.data_dir, sizes=(1, 1, args.test_canvases), seed=0).test
    rows = []
    for run in args.runs:
        segmenter = load_segmenter(run)
        if segmenter.classes[0] != "background" or segmenter.classes[1:] != [str(d) for d in range(10)]:
            raise SystemExit(f"{run}: classes {segmenter.classes} are not background + the 10 digits")
        model = _GreyToRun(segmenter.model, segmenter.mean, segmenter.std).eval()
        report, _ = evaluate_segmentation(model, test.images, test.masks)
        own = json.loads((Path(run) / "results.json").read_text())["test"]
        rows.append(
            {
                "run": run,
                "builtin_test_miou": report["miou"],
                "builtin_test_boundary_f1": report["boundary_f1"],
                "own_test_miou": own["miou"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
