"""Where a trained digit segmenter errs: isolated digits or touching ones; and whether re-reading isolated digits
with an MNIST classifier helps.

Validation canvases only (500 canvases of 64x64, built from the 5,000 held-out MNIST training digits; seed 0, as
`cnnlab train segment` builds them). The predicted ink (any class but background) is split into 8-connected
components. A component whose bounding box fits in 20x20 pixels is one isolated digit (MNIST digits fit in 20x20);
larger ones are digits that touch or overlap. For each kind, the script counts components whose majority of
pixels carries the ground truth's majority digit.

With `--classifier RUN` (a saved MNIST model; the MNIST validation split is this validation pool, so a
`cnnlab train mnist` model never trained on these digits) it also re-reads every component whose box fits in
`--max-box` pixels: the image masked to the component (dilated by one pixel, minus other components), a 28x28 crop
centred on its intensity-weighted centre of mass (how MNIST centres its digits), and the component takes the digit
maximising the product of the segmenter's mean probability over it and the classifier's. Reports val mIoU before
and after. This is an experiment, not a library feature: on the runs measured it did not help (docs/BENCHMARKS.md).

    python benchmarks/segmentation_errors.py runs/segment/NAME --classifier runs/mnist/ens5/seed0 --max-box 20 24
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from scipy import ndimage

from cnnlab.data.segmentation import make_digit_segmentation
from cnnlab.tasks.segmentation import evaluate_segmentation
from cnnlab.train.saved import load_model

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
ISOLATED_BOX = 20


def _components(foreground: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(pixel mask, bounding-box side) of every 8-connected component of a boolean H x W map."""
    labels, _ = ndimage.label(foreground, structure=EIGHT_CONNECTED)
    found = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            found.append((labels == index, max(box[0].stop - box[0].start, box[1].stop - box[1].start)))
    return found


def error_locations(predicted: torch.Tensor, masks: torch.Tensor) -> dict[str, int]:
    """Components of predicted ink, isolated (box <= 20 px) or not, and how many of each are right by majority."""
    counts = {"isolated": 0, "isolated_right": 0, "touching": 0, "touching_right": 0}
    for prediction, truth in zip(predicted.numpy(), masks.numpy(), strict=True):
        for own, side in _components(prediction > 0):
            kind = "isolated" if side <= ISOLATED_BOX else "touching"
            digit = np.bincount(truth[own], minlength=11).argmax()
            counts[kind] += 1
            counts[f"{kind}_right"] += int((prediction[own] == digit).mean() > 0.5)
    return counts


def _crop(image: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    """`size` x `size` window of a C x H x W image at (top, left), zero outside the image."""
    _, height, width = image.shape
    window = image.new_zeros(image.shape[0], size, size)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + size, height), min(left + size, width)
    if y1 > y0 and x1 > x0:
        window[:, y0 - top : y1 - top, x0 - left : x1 - left] = image[:, y0:y1, x0:x1]
    return window


class ComponentRelabel(torch.nn.Module):
    """The segmenter, with every component of predicted ink that fits in `max_box` re-read by `classifier`."""

    def __init__(self, segmenter: torch.nn.Module, classifier: torch.nn.Module, max_box: int, window: int = 28):
        super().__init__()
        self.segmenter, self.classifier, self.max_box, self.window = segmenter, classifier, max_box, window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = self.segmenter(x).float().log_softmax(1)  # N x 11 x H x W
        foreground = (log_probs.argmax(1) > 0).numpy()
        crops, targets = [], []
        for n in range(len(x)):
            for own, side in _components(foreground[n]):
                if side > self.max_box:
                    continue
                keep = ndimage.binary_dilation(own, structure=EIGHT_CONNECTED) & ~(foreground[n] & ~own)
                masked = x[n] * torch.from_numpy(keep).to(x.dtype)  # C x H x W
                weights = masked.sum(0)
                total = weights.sum().clamp_min(1e-6)
                centre_y = float((weights.sum(1) * torch.arange(weights.shape[0])).sum() / total)
                centre_x = float((weights.sum(0) * torch.arange(weights.shape[1])).sum() / total)
                half = self.window / 2
                crops.append(_crop(masked, round(centre_y + 0.5 - half), round(centre_x + 0.5 - half), self.window))
                targets.append((n, torch.from_numpy(own)))
        if not crops:
            return log_probs
        read = self.classifier(torch.stack(crops)).float().log_softmax(1)  # M x 10
        out = log_probs.clone()
        for (n, own), digit_log_probs in zip(targets, read, strict=True):
            segmenter_vote = log_probs[n, 1:][:, own].exp().mean(1).clamp_min(1e-12).log()  # 10
            out[n, 0][own] = -30.0
            out[n, 1:][:, own] = (segmenter_vote + digit_log_probs).log_softmax(0)[:, None]
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a `cnnlab train segment` run directory")
    parser.add_argument("--classifier", default=None, help="a saved MNIST model run, to try re-reading digits")
    parser.add_argument("--max-box", type=int, nargs="+", default=[ISOLATED_BOX])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    val = make_digit_segmentation(args.data_dir, sizes=(1, 500, 1)).val
    segmenter = load_model(args.run)
    with torch.inference_mode():
        report, predicted = evaluate_segmentation(segmenter, val.images, val.masks)
        result: dict[str, object] = {"run": args.run, "val_miou": report["miou"]}
        result.update(error_locations(predicted.long(), val.masks.long()))
        if args.classifier:
            classifier = load_model(args.classifier)
            for box in args.max_box:
                relabelled, _ = evaluate_segmentation(
                    ComponentRelabel(segmenter, classifier, box), val.images, val.masks
                )
                result[f"val_miou_relabelled_box{box}"] = relabelled["miou"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
