"""Scanning large images with a converted classifier: per-location class scores drawn as heatmaps.

The converted network scores every training-sized window of the image in one pass (the shared convolutions are
computed once, which is why an FCN is far cheaper than cropping windows and classifying each). Output location (i, j)
scores the window whose top-left corner is near (i * stride down, j * stride across), the two strides measured apart
(`FullyConvolutional.output_geometry`); its centre is drawn at (i * stride down + window height / 2, ...); the map
holds every window that fits in the image. A trunk with padding (mnist_net) also sees a few pixels outside each
window, where the classifier saw zeros, so the scores equal the crop's only for a trunk without padding (on random
noise, a one-epoch mnist_net_small's differ by up to 0.13 in probability; on a canvas of MNIST test digits, 0.14). A
layer that looks at the whole map (a squeeze-and-excitation block's global pool) makes every location's scores depend
on the whole image: no shared pass can give each window its own pool, so `scan` warns (`ScanNotLocalWarning`) that
such a network's scores are not per-window.
A classifier trained on single centred digits has no "nothing here" class, so windows with almost no stroke are
shown as empty rather than with the (meaningless) class the classifier picks for them.

A large image is scanned in tiles of about `TILE_PIXELS`, each with a margin that covers the receptive field of the
locations it keeps (`tile_margin`), so memory is bounded by the tile, not the image, and the scores are those of one
pass over the whole image.

Converted models are saved as ``fcn.safetensors`` (converted weights) + ``fcn.json`` (the source classifier's
architecture record, the training input size and the pooling mode); loading rebuilds the classifier, converts it
again and loads the saved weights, so no pickle is involved.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.errors import CnnlabError
from cnnlab.fcn.convert import FullyConvolutional, to_fully_convolutional
from cnnlab.train.progress import ProgressBar

__all__ = [
    "LARGE_SCAN_BYTES",
    "MEMORY_SHARE",
    "TILE_PIXELS",
    "ScanCheck",
    "ScanNotLocalWarning",
    "ScanResult",
    "check_scan_memory",
    "heatmap_path",
    "is_converted",
    "is_heatmap",
    "load_fully_convolutional",
    "load_scan_image",
    "geometry_text",
    "pair_text",
    "refine_factors",
    "save_fully_convolutional",
    "save_heatmap",
    "scan",
    "scan_canvas_demo",
    "scan_preparation_record",
    "scan_tensor",
    "tile_margin",
]

FCN_WEIGHTS = "fcn.safetensors"
FCN_SPEC = "fcn.json"
# A window is drawn as empty when under 3% of its middle (12 px of the central 20x20, the box MNIST centres its digits
# in, 20/28 of the window) is stroke, at least half as bright as full ink. The rule was a mean intensity under 0.06,
# which blanked thin digits: 24.8% of MNIST's test "1"s (3.3% of all its test digits) have a mean below 0.06, the
# faintest 0.032, so a "1" scored p = 0.98 showed nothing. Every one of the 10,000 test digits has at least 17 stroke
# pixels in the middle (60,000 training digits: 15; the 1st percentile of test "1"s, 26), blank paper has none, even
# noisy or tinted grey (under half the ink's brightness), and a window with only a sliver of a neighbouring digit at
# its edge has few.
_STROKE = 0.5
_MIDDLE = 20 / 28
_MIN_STROKE = 0.03
# A page's paper goes to 0 from its median (`scan_tensor`), its grain above left faint: a canvas segmenter's foreground
# IoU on pages of MNIST test digits photographed on paper of grey 0.5, 0.7 and 0.95 lit 15% unevenly was 0.95-0.96
# (clean canvases 0.96) against 0.87-0.90 from the median + 3 deviations, one digit's paper level (`fitted_ink`),
# which cut the strokes' faint edges where the light fell (benchmarks/scan_paper_grey.py)
PAGE_PAPER_MADS = 0
# Light paper lit unevenly is flattened before the paper is told from the ink (`data.mnist.flattened_light`): its
# light estimated by a grey closing 41 px square (1.5 MNIST cells: it covers a digit, whose strokes it removes) and
# divided out, when the light falls below 2/3 of its brightest. Pages of 100 MNIST test digits whose light fell 75%
# corner to corner had 57% of their digits read right and 58% of a blank band drawn as digits (paper 0.7 / 0.95);
# flattened: 100%, 0% (benchmarks/scan_paper_grey.py --shading 0.75)
FLATTEN_SIZE = 41  # `cnnlab.data.mnist.flattened_light`'s square, for a page of MNIST-sized digits
_SHOWN_PIXELS = 1600  # the heatmap's panels are a few hundred pixels wide: larger pictures are averaged down
# and so are the score maps: a default scan of a 24 MP photo (2 px apart) has 2,000 x 3,000 locations, which
# matplotlib interpolated in each of 11 panels (50 s and 1 GB to draw; 1.6 s at 8 px apart)
_SHOWN_LOCATIONS = 512
_WIDE = 3  # an image wider (taller) than this many heights (widths) gets its panels stacked across (down) the page
_PAGE_INCHES = 12.0  # the stacked panels' length along the strip
_STRIP_INCHES = 1.0  # their least breadth


class ScanNotLocalWarning(UserWarning):
    """The scanned network has a layer over its whole feature map: its scores are not the classifier's per window."""


@dataclass
class ScanResult:
    """Class probabilities at every scanned location.

    Attributes:
        probabilities: float [classes, H', W'] softmax over classes at each location.
        ink: float [H', W'] share of the middle of each location's input window (its central `_MIDDLE`) that is
            stroke: pixels at least `_STROKE`, half as bright as full ink (0..1).
        window: window height in input pixels (the classifier's training size).
        stride: input pixels between neighbouring locations down the image (and across it, unless `stride_width`).
        window_width: its width, where it differs from the height (None: a square window).
        stride_width: input pixels between neighbouring locations across the image, where it differs from `stride`
            (a network whose layers stride further along one axis, such as MaxPool2d((2, 1))).
    """

    probabilities: torch.Tensor
    ink: torch.Tensor
    window: int
    stride: int
    window_width: int | None = None
    stride_width: int | None = None

    @property
    def window_size(self) -> tuple[int, int]:
        """(height, width) of each location's window, in input pixels."""
        return self.window, self.window_width or self.window

    @property
    def steps(self) -> tuple[int, int]:
        """(down, across): input pixels between neighbouring locations."""
        return self.stride, self.stride_width or self.stride


def refine_factor(refine: int | None, stride: int) -> int:
    """The shift-and-stitch factor for a network of `stride`: `refine`, or by default its largest divisor up to 4.

    Shifts of stride / refine pixels tile the stride evenly only when `refine` divides it: with 3 and a stride of 8
    the shifts were 0, 2 and 4 px, and the interleaved map placed locations 0, 2, 4, 8, 10, ... px as if they were
    2 px apart.

    Raises:
        CnnlabError: `refine` is not a divisor of `stride`.
    """
    divisors = [factor for factor in range(1, stride + 1) if stride % factor == 0]
    if refine is None:
        return max(factor for factor in divisors if factor <= 4)
    if refine not in divisors:
        raise CnnlabError(
            f"--refine {refine} must divide the network's stride of {stride} px, so that the shifted scans tile it "
            f"evenly: use {', '.join(map(str, divisors))}"
        )
    return refine


def refine_factors(refine: int | None, strides: tuple[int, int]) -> tuple[int, int]:
    """The shift-and-stitch factors (down, across) for a network of `strides` (down, across): by default each axis'
    `refine_factor`; a given `refine` applies to both axes, so it must divide both strides.

    Raises:
        CnnlabError: `refine` does not divide both strides.
    """
    if refine is None or strides[0] == strides[1]:
        return refine_factor(refine, strides[0]), refine_factor(refine, strides[1])
    common = [factor for factor in range(1, min(strides) + 1) if strides[0] % factor == 0 == strides[1] % factor]
    if refine not in common:
        raise CnnlabError(
            f"--refine {refine} must divide the network's strides of {strides[0]} px down and {strides[1]} px across, "
            f"so that the shifted scans tile them evenly: use {', '.join(map(str, common))}, or leave --refine out "
            f"for {'x'.join(map(str, refine_factors(None, strides)))} (down x across)"
        )
    return refine, refine


def pair_text(pair: tuple[int, int]) -> str:
    """``28`` for (28, 28), ``20x36`` for (20, 36): a size or step as height x width, one number where they agree."""
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def geometry_text(window: tuple[int, int], stride: tuple[int, int]) -> str:
    """How `cnnlab fcn` names a network's windows and their spacing: ``28px window, every 2px``, or, where height and
    width differ, ``20x36px window, every 2x1px (height x width)``: it printed the heights alone ("20px windows")."""
    square = window[0] == window[1] and stride[0] == stride[1]
    return f"{pair_text(window)}px window, every {pair_text(stride)}px" + ("" if square else " (height x width)")


# Input pixels scanned at once: a tile this large holds a few hundred MB of activations in the MNIST networks,
# where a 6000x4000 photo scanned whole held 6.6 GB (mnist_net).
TILE_PIXELS = 2**21


@torch.inference_mode()
def tile_margin(model: FullyConvolutional) -> int | None:
    """Input pixels a tile needs on each side of the locations whose scores it keeps, so that a scan tile by tile
    gives the whole image's scores; None for a network that is not local (a layer that looks at the whole map, such
    as a squeeze-and-excitation block), which is scanned whole.

    The margin bounds how far an input pixel reaches: each kernel widens an output's field by (k - 1) x dilation
    times its layer's spacing, and its padding moves the field by at most its width on each side. The spacing of
    each convolution and pooling is measured from two probes whose heights and widths differ by multiples of the
    strides (its input grows by the difference over its spacing), along each axis apart. Layers of other kinds are
    assumed to act on each location alone, which a scan of a random image in tiles, compared with the whole scan,
    checks (its brightness varies across the image, so that a layer over the whole map gives each tile other
    numbers).
    """
    window, stride = model.output_geometry()
    channels = model.input_size[0]
    reference = next(model.parameters(), torch.empty(0))
    sizes: dict[nn.Module, list[tuple[int, int]]] = {}
    handles = [
        module.register_forward_pre_hook(
            lambda module, args: sizes.setdefault(module, []).append(tuple(args[0].shape[-2:]))
        )
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))
    ]
    growth = (8 * stride[0], 8 * stride[1])
    try:
        for grown in (0, 1):
            size = (window[0] + grown * growth[0], window[1] + grown * growth[1])
            model(torch.zeros(1, channels, *size, dtype=reference.dtype, device=reference.device))
    finally:
        for handle in handles:
            handle.remove()
    reach = [0, 0]  # down, across: each axis' spacing measured on its own (a MaxPool2d((2, 1)) spaces them apart)
    for module, seen in sizes.items():
        for axis in (0, 1):
            spacing = growth[axis] // max(1, seen[-1][axis] - seen[0][axis])
            kernel = _along(module.kernel_size, axis)
            dilation = _along(getattr(module, "dilation", 1), axis)
            padding = kernel if isinstance(module.padding, str) else _along(module.padding, axis)
            reach[axis] += ((kernel - 1) * dilation + 2 * padding) * spacing
    # a multiple of both strides, so that a tile starts on every layer's grid along either axis
    multiple = math.lcm(*stride)
    margin = -(-max(*reach, *window) // multiple) * multiple
    generator = torch.Generator().manual_seed(0)
    tile = (max(1, margin // stride[0]), max(1, margin // stride[1]))  # three tiles a side: the middle one has a
    # full margin on every side; sides from the window's height and width: a square from the height alone was
    # narrower than a window trained wider than tall, and the probe crashed (a kernel larger than its input)
    sides = tuple(window[axis] + 2 * margin + 2 * tile[axis] * stride[axis] for axis in (0, 1))
    # Noise whose brightness ramps across the image: each tile's mean differs from the whole image's. Uniform noise
    # has about the same mean everywhere, so a squeeze-and-excitation block (its gates from the map's mean) gave
    # every tile nearly the whole image's gates, passed as local, and a real image was scanned in tiles whose
    # scores were not the single pass's (a two-tone image: 2e-3 apart).
    rows_ramp, cols_ramp = torch.linspace(0.1, 1.0, sides[0]), torch.linspace(1.0, 0.1, sides[1])
    probe = torch.rand(channels, *sides, generator=generator) * (rows_ramp[:, None] + cols_ramp[None, :]) / 2
    probe = probe.to(reference.dtype)
    whole = _scores_in_tiles(model, probe, None, stride)
    tiled = _scores_in_tiles(model, probe, margin, stride, tile=tile)
    exact = whole.shape == tiled.shape and torch.allclose(whole, tiled, rtol=1e-4, atol=1e-4)
    return margin if exact else None


def _warn_not_local(model: FullyConvolutional) -> None:
    """Say that a network with a layer over its whole map scores the whole image at every location, naming the
    layers that pool globally where it can (a squeeze-and-excitation block: the classifier pooled its training-sized
    window; on a scan it pools the whole image, so a digit's scores change with what else the image holds)."""
    from cnnlab.errors import listed
    from cnnlab.layers import SqueezeExcite

    pooling = (SqueezeExcite, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    names = [name for name, module in model.trunk.named_modules() if isinstance(module, pooling)]
    names = [name for name in names if not any(name.startswith(f"{other}.") for other in names)]  # outermost
    which = f" ({listed(names, 3)})" if names else ""
    warnings.warn(
        f"a layer of this network pools its whole feature map{which}, as a squeeze-and-excitation block does: on "
        "an image larger than its input it pools the whole image, so each location's scores are not the "
        "classifier's on its window (they change with the rest of the image); the image is scanned in one pass",
        ScanNotLocalWarning,
        stacklevel=3,
    )


def _along(value: int | tuple[int, ...], axis: int) -> int:
    """A layer's kernel size, dilation or padding along `axis` (0: height, 1: width)."""
    return int(value[axis] if isinstance(value, tuple) else value)


def _scores_in_tiles(
    model: FullyConvolutional,
    image: torch.Tensor,
    margin: int | None,
    stride: tuple[int, int],
    tile: int | tuple[int, int] | None = None,
    advance: Callable[[], None] | None = None,
) -> torch.Tensor:
    """``model(image)``, float [classes, H', W'] on the CPU, computed over tiles of the image.

    Output location (i, j) scores the window whose top-left corner is at (i * stride[0], j * stride[1]) and depends
    on input pixels within `margin` of it, so a tile that starts `margin` before the first location it keeps (a
    multiple of the strides, so every layer's grid lines up with the whole image's) and ends `margin` after the
    last computes those locations exactly; at the image's edges a tile stops where the image does.

    Args:
        margin: from `tile_margin`; None scans the image whole.
        stride: (down, across) between neighbouring locations.
        tile: locations kept from each tile along each side, or (down, across) (default: `_tile_size`).
        advance: called after each tile (a progress bar's).

    The image is cast to the network's dtype (a network converted in float16 or bfloat16 was given float32 tiles: a
    dtype error), and its scores brought back as float32.
    """
    reference = next(model.parameters())

    def run(part: torch.Tensor) -> torch.Tensor:
        scores = model(part[None].to(device=reference.device, dtype=reference.dtype)).float().cpu()[0]
        if advance is not None:
            advance()
        return scores

    tiles = _tile_size(image.shape[1:], margin, stride, tile)
    if tiles is None or margin is None:
        return run(image)
    return _piecewise(
        lambda band: _piecewise(run, band, 2, margin, stride[1], tiles[1]), image, 1, margin, stride[0], tiles[0]
    )


def _tile_size(
    size: tuple[int, ...], margin: int | None, stride: tuple[int, int], tile: int | tuple[int, int] | None = None
) -> tuple[int, int] | None:
    """Locations kept per tile (down, across) for an image of `size` (H, W): `tile`, else as many as keep a tile
    near `TILE_PIXELS` and at least twice the margin (the overlap at most doubles each side); None scans it whole."""
    if margin is None or (tile is None and size[0] * size[1] <= TILE_PIXELS):
        return None
    if tile is not None:
        return (tile, tile) if isinstance(tile, int) else tile
    side = math.isqrt(TILE_PIXELS) - 2 * margin
    return max(2 * margin // stride[0], side // stride[0]), max(2 * margin // stride[1], side // stride[1])


def _tile_count(size: tuple[int, ...], margin: int | None, stride: tuple[int, int]) -> int:
    """Forward passes `_scores_in_tiles` makes over an image of `size` (H, W)."""
    tiles = _tile_size(size, margin, stride)
    if tiles is None or margin is None:
        return 1
    down, across = (len(list(_spans(size[axis], margin, stride[axis], tiles[axis]))) for axis in (0, 1))
    return down * across


def _spans(length: int, margin: int, stride: int, count: int) -> Iterator[tuple[int, int, int, int | None]]:
    """(start, stop, skip, keep) of each piece along an axis of `length` input pixels: the input it reads, and from
    its output the locations skip .. skip + keep - 1 (keep None: all from skip on, in the last piece, which ends with
    the image as the whole scan does)."""
    first = 0
    while True:
        start, end = max(0, first * stride - margin), (first + count) * stride + margin
        last = end >= length
        yield start, min(end, length), first - start // stride, None if last else count
        if last:
            return
        first += count


def _piecewise(run: Callable, image: torch.Tensor, axis: int, margin: int, stride: int, count: int) -> torch.Tensor:
    """``run(image)`` computed in pieces along `axis` (1: rows, 2: columns), `count` output locations each."""
    pieces = []
    for start, stop, skip, keep in _spans(image.shape[axis], margin, stride, count):
        scores = run(image.narrow(axis, start, stop - start))
        pieces.append(scores.narrow(axis, skip, scores.shape[axis] - skip if keep is None else keep))
    return torch.cat(pieces, axis)


# What a scan holds besides one tile's working set: each shift's score map and its pieces while they are joined, the
# stitched map, its trimmed copy and its softmax come to about six float32 copies of the classes' scores at every
# location, and the stroke map to 9 bytes a pixel (the image's mean over its channels, the mask, the mask as floats).
# Fitted to the peak memory (RSS) of scans of 6 and 24 MP images 2 px apart (an 8 px stride at --refine 4): the
# estimate is within 5% of the 0.52 and 1.78 GB measured; of docs/BENCHMARKS.md's 24 MP scans at --refine 1 it is
# 12% (mnist_net) and 47% (mnist_baseline) above, where a tile's working set is the larger share.
_SCORE_COPIES = 6
_STROKE_BYTES_PER_PIXEL = 9
# Of the memory available, the most a scan may take: the heatmap and the rest of the process need some too.
MEMORY_SHARE = 0.8
LARGE_SCAN_BYTES = 10**9  # a scan that needs more says so before it starts


@dataclass
class _ScanCost:
    """What a scan's memory depends on: the network's input, classes and strides (down, across), the largest tile
    it reads at once, the working set of a forward pass, a line in the input's pixels, and the device it runs on."""

    channels: int
    input_size: tuple[int, int]
    classes: int
    stride: tuple[int, int]
    tile: tuple[int, int]
    pass_fixed_bytes: float
    pass_bytes_per_pixel: float
    device: torch.device = torch.device("cpu")

    def bytes(self, height: int, width: int, step: tuple[int, int]) -> int:
        """Peak bytes of a scan of a `height` x `width` image with locations `step` (down, across) px apart, the
        image included."""
        return self.held_bytes(height, width, step) + self.pass_bytes(height, width)

    def held_bytes(self, height: int, width: int, step: tuple[int, int]) -> int:
        """What the scan holds in RAM whatever the device: the image, its stroke map and the score maps."""
        rows, cols = (height - self.input_size[0]) // step[0] + 1, (width - self.input_size[1]) // step[1] + 1
        scores = _SCORE_COPIES * self.classes * 4 * max(0, rows) * max(0, cols)
        return int(self.channels * 4 * height * width + _STROKE_BYTES_PER_PIXEL * height * width + scores)

    def pass_bytes(self, height: int, width: int) -> int:
        """One tile's forward pass, on the network's device."""
        return int(
            self.pass_fixed_bytes + self.pass_bytes_per_pixel * min(height, self.tile[0]) * min(width, self.tile[1])
        )


@torch.inference_mode()
def _scan_cost(model: FullyConvolutional, height: int, width: int, margin: int | None) -> _ScanCost:
    """The memory figures of `model` scanning a `height` x `width` image in tiles for `margin` (None: whole).

    A forward pass's working set, the largest input and output of one layer together (in inference mode the rest
    is freed as it goes), is measured on two small inputs and is a line in the input's pixels. (The meta device, or
    `LiveTensorTracker`'s dispatch mode, would count it for any size, but their first use imported torch._dynamo: 5 s.)
    """
    channels, input_height, input_width = model.input_size
    window, stride = model.output_geometry()
    tile = _tile_size((height, width), margin, stride)
    reads = (height, width)
    if tile is not None and margin is not None:  # a tile reads `tile` locations and a margin on each side
        reads = (min(height, tile[0] * stride[0] + 2 * margin), min(width, tile[1] * stride[1] + 2 * margin))
    reference = next(model.parameters(), torch.empty(0))
    largest = [0]

    def held(module: nn.Module, args: tuple, output: Any) -> None:
        tensors = [item for item in (*args, output) if isinstance(item, torch.Tensor)]
        largest[0] = max(largest[0], sum(tensor.numel() * tensor.element_size() for tensor in tensors))

    leaves = [module for module in model.modules() if not any(module.children())]
    handles = [module.register_forward_hook(held) for module in leaves]
    peaks, sizes = [], [(input_height + grown * stride[0], input_width + grown * stride[1]) for grown in (4, 12)]
    try:
        for size in sizes:  # the window's own shape grown: squares of its height were narrower than a wide window
            largest[0] = 0
            classes = model(torch.zeros(1, channels, *size, dtype=reference.dtype, device=reference.device))
            peaks.append(largest[0])
    finally:
        for handle in handles:
            handle.remove()
    classes = classes.shape[1]
    pixels = [rows * cols for rows, cols in sizes]
    per_pixel = max(0.0, (peaks[1] - peaks[0]) / (pixels[1] - pixels[0]))
    fixed = max(0.0, peaks[0] - per_pixel * pixels[0])
    return _ScanCost(channels, (input_height, input_width), classes, stride, reads, fixed, per_pixel, reference.device)


def _gigabytes(size: float) -> str:
    return f"{size / 1e9:.1f} GB"


def _check_scan_memory(cost: _ScanCost, height: int, width: int, refine: tuple[int, int]) -> int:
    """The bytes of RAM a scan of a `height` x `width` image at `refine` needs (`_ScanCost.bytes`; on a CUDA
    device, `_ScanCost.held_bytes`, its forward passes checked against the GPU's free memory instead).

    Raises:
        CnnlabError: more than `MEMORY_SHARE` of the memory available, naming the finest --refine that fits, else the
            largest image that fits at --refine 1. A 100 MP photo at the default 2 px apart needed about 7 GB.
    """
    from cnnlab.train.device import available_memory_bytes

    stride = cost.stride
    step = (stride[0] // refine[0], stride[1] // refine[1])
    in_ram = cost.bytes
    if cost.device.type == "cuda":  # a tile's pass runs on the GPU; the image and score maps stay in RAM
        _check_gpu_memory(cost, height, width)
        in_ram = cost.held_bytes
    needed = in_ram(height, width, step)
    available = available_memory_bytes()
    if available is None or needed <= MEMORY_SHARE * available:
        return needed
    limit = MEMORY_SHARE * available
    finer = [factor for factor in range(max(refine) - 1, 0, -1) if stride[0] % factor == 0 == stride[1] % factor]
    fits = [(factor, in_ram(height, width, (stride[0] // factor, stride[1] // factor))) for factor in finer]
    fits = [(factor, size) for factor, size in fits if size <= limit]
    if fits:
        factor, size = fits[0]
        apart = pair_text((stride[0] // factor, stride[1] // factor))
        remedy = f"pass --refine {factor} (locations {apart} px apart: about {_gigabytes(size)})"
    else:
        scale, size = 1.0, needed
        while size > limit and scale > 0.01:
            scale *= 0.95
            size = in_ram(int(height * scale), int(width * scale), stride)
        remedy = (
            f"crop or downscale the image to {int(width * scale)}x{int(height * scale)} or less, and pass "
            f"--refine 1 (locations {pair_text(stride)} px apart: about {_gigabytes(size)})"
        )
    refined = f"--refine {refine[0]}" if refine[0] == refine[1] else f"refined {refine[0]} down, {refine[1]} across"
    raise CnnlabError(
        f"scanning this {width}x{height} image with locations {pair_text(step)} px apart ({refined}) needs "
        f"about {_gigabytes(needed)} of memory, more than {MEMORY_SHARE:.0%} of the {_gigabytes(available)} "
        f"available; {remedy}"
    )


def _check_gpu_memory(cost: _ScanCost, height: int, width: int) -> None:
    """Refuse a scan whose forward pass over one tile needs more than `MEMORY_SHARE` of the memory free on its CUDA
    device (`torch.cuda.mem_get_info`): the host's RAM was checked, and the GPU ran out in the first tile."""
    free = torch.cuda.mem_get_info(cost.device)[0]
    needed = cost.pass_bytes(height, width)
    if needed <= MEMORY_SHARE * free:
        return
    whole = cost.tile[0] >= height and cost.tile[1] >= width
    remedy = "crop or downscale the image, " if whole else ""
    raise CnnlabError(
        f"scanning this {width}x{height} image on {cost.device} needs about {_gigabytes(needed)} of GPU memory for "
        f"{'its forward pass' if whole else 'each tile'}, more than {MEMORY_SHARE:.0%} of the "
        f"{_gigabytes(free)} free there; free some of the GPU's memory, {remedy}or pass --device cpu"
    )


@dataclass(frozen=True)
class ScanCheck:
    """What `check_scan_memory` found from an image file's header, before it was decoded: a scan of this size fits.

    Attributes:
        width: the image's width in pixels (after its EXIF orientation).
        height: its height.
        margin: the network's `tile_margin`, measured for the check (seconds for mnist_net), which `scan` reuses.
    """

    width: int
    height: int
    margin: int | None


@contextlib.contextmanager
def _decoding_allowed(pixels: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`) raised to `pixels` (None: off) for the block only,
    then restored: an image over twice the guard (179 MP) was refused ("downscale it first") though the scan had
    estimated its memory and found it fits."""
    from PIL import Image

    guard = Image.MAX_IMAGE_PIXELS
    if guard is not None:
        Image.MAX_IMAGE_PIXELS = None if pixels is None else max(guard, pixels)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = guard


def check_scan_memory(
    model: FullyConvolutional, path: str | os.PathLike[str], refine: int | None = None
) -> ScanCheck | None:
    """Refuse, before the image file at `path` is decoded, a scan of it that would not fit in memory (as `scan`
    does once it has the image), by the size its header gives; an image of at most `TILE_PIXELS` is left to `scan`
    (decoding a 100 MP image took 16 s and 1.3 GB, only for the scan to be refused).

    Returns:
        The size checked, for `load_scan_image` to decode an image over Pillow's decompression-bomb guard (179 MP):
        its estimate counts the decoded image; and the tile margin measured, for `scan`. None where nothing was
        checked (a small or unreadable image).

    Raises:
        CnnlabError: as `scan`, for the memory.
    """
    from PIL import Image

    from cnnlab.data.folder import turned_by_exif

    try:
        with _decoding_allowed(None), Image.open(path) as opened:  # the header only: its size, whatever it is
            width, height = opened.size
            turned = turned_by_exif(opened)
        if turned:
            width, height = height, width
    except OSError:
        return None  # said in the words every command uses, when the image is read
    channels, input_height, input_width = model.input_size
    guarded = Image.MAX_IMAGE_PIXELS is not None and height * width > 2 * Image.MAX_IMAGE_PIXELS
    if (height * width <= TILE_PIXELS and not guarded) or height < input_height or width < input_width:
        return None
    stride, margin = model.output_geometry().stride, tile_margin(model)
    _check_scan_memory(_scan_cost(model, height, width, margin), height, width, refine_factors(refine, stride))
    return ScanCheck(width, height, margin)


@torch.inference_mode()
def scan(
    model: FullyConvolutional,
    image: torch.Tensor,
    refine: int | None = None,
    progress: bool = False,
    log: Callable[[str], Any] | None = None,
    checked: ScanCheck | None = None,
) -> ScanResult:
    """Run a converted classifier over a [C, H, W] float image (at least the training size).

    Args:
        model: the converted classifier.
        image: float [C, H, W], scaled as the classifier's training images.
        refine: shift-and-stitch factor (Long et al. 2015, section 3.2), a divisor of the network's stride (of
            both, where its strides down and across differ): the image is also scanned shifted by multiples of
            stride / refine pixels and the outputs interleaved, so locations are stride / refine apart; 1 keeps the
            network's own stride. Default: each stride's largest divisor up to 4 (`refine_factors`).
        progress: show a progress bar over the forward passes (one per tile and shift) on a terminal.
        log: told the memory a scan needs, before it starts, when that is over `LARGE_SCAN_BYTES`.
        checked: `check_scan_memory`'s answer for this model and image: its tile margin is used, not measured again.

    Returns:
        One location for every window that fits, stride / refine pixels apart: (H - window) // step + 1 rows and
        as many columns for the width (with the window's width and the step across), as float32 probabilities
        whatever the network's dtype (a float16 or bfloat16 one is given its tiles in its dtype).

    Raises:
        CnnlabError: the image does not fit the model, the model does not score training-sized windows (a
            global-pool head converted with pool="none"), or the scan would need more than `MEMORY_SHARE` of the
            memory available (estimated before it starts, `_check_scan_memory`).
    """
    channels, height, width = model.input_size
    if image.ndim != 3 or image.shape[0] != channels:
        raise CnnlabError(f"the image is shaped {tuple(image.shape)}; this model scans [{channels}, H, W] images")
    if image.shape[1] < height or image.shape[2] < width:
        raise CnnlabError(
            f"the image is {image.shape[2]}x{image.shape[1]}, smaller than the classifier's {width}x{height} input, "
            "so no window fits in it: a scan looks for digits in a larger image; `cnnlab predict --model RUN IMAGE` "
            "classifies a photo of one digit at any size"
        )
    model.eval()
    reference = next(model.parameters(), torch.empty(0))
    cells = model(torch.zeros(1, channels, height, width, dtype=reference.dtype, device=reference.device)).shape[-2:]
    if tuple(cells) != (1, 1):  # its locations were drawn as windows, shifted and cut to the windows that fit
        raise CnnlabError(
            f"this network gives a {cells[1]}x{cells[0]} map at its {width}x{height} input size (a global-pool head "
            f"converted with pool='none'): its locations are feature-map cells, not {width}x{height} windows, which "
            "a scan scores; convert it with pool='window'"
        )
    stride = model.output_geometry().stride
    refines = refine_factors(refine, stride)
    step = (stride[0] // refines[0], stride[1] // refines[1])
    margin = checked.margin if checked is not None else tile_margin(model)
    if margin is None:
        _warn_not_local(model)
    needed = _check_scan_memory(_scan_cost(model, *image.shape[1:], margin), *image.shape[1:], refines)
    if log is not None and needed > LARGE_SCAN_BYTES:
        apart = pair_text(step)
        log(f"scanning {image.shape[2]}x{image.shape[1]} ({apart} px apart) needs about {_gigabytes(needed)} of memory")
    shifts = {
        (dy, dx): image[:, dy * step[0] :, dx * step[1] :] for dy in range(refines[0]) for dx in range(refines[1])
    }
    shifts = {key: part for key, part in shifts.items() if part.shape[1] >= height and part.shape[2] >= width}
    passes = sum(_tile_count(part.shape[1:], margin, stride) for part in shifts.values())
    description = f"scanning {image.shape[2]}x{image.shape[1]}"
    with ProgressBar(passes, description, enabled=progress) as bar:
        shifted_scores = {  # classes x H' x W' each
            key: _scores_in_tiles(model, part, margin, stride, advance=bar.advance) for key, part in shifts.items()
        }
    # Location k along an axis scores the window at k * step, for every k whose window fits in the image; shift dy's
    # output i is location i * refine + dy. The shifts' maps differ in length, and trimming all to the shortest lost
    # the last full windows (60x45 at refine 4 gave 16x8 of the 17x9 locations).
    rows, cols = (image.shape[1] - height) // step[0] + 1, (image.shape[2] - width) // step[1] + 1
    classes = shifted_scores[0, 0].shape[0]
    scores = torch.full((classes, rows, cols), float("nan"))
    for (dy, dx), value in shifted_scores.items():
        place = scores[:, dy :: refines[0], dx :: refines[1]]  # a view: writing it fills the stitched map
        # a padded trunk also scores windows that run off the bottom and right edges; they are not kept
        kept = value[:, : place.shape[1], : place.shape[2]]
        place[:, : kept.shape[1], : kept.shape[2]] = kept
    # locations no shift computed (a network whose map stops short of the last windows) are dropped at the ends
    # and score evenly elsewhere
    if len(model.head) and isinstance(model.head[-1], nn.Softmax):
        # a head converted from a classifier that ends in a softmax gives probabilities: their log's softmax gives
        # them back (a softmax of the probabilities themselves flattened every location towards 1 / classes)
        scores = scores.log()
    computed = ~scores[0].isnan()
    valid_rows = int(computed.any(1).nonzero().max()) + 1
    valid_cols = int(computed.any(0).nonzero().max()) + 1
    scores = scores[:, :valid_rows, :valid_cols].nan_to_num(0.0)
    inset_rows, inset_cols = round(height * (1 - _MIDDLE) / 2), round(width * (1 - _MIDDLE) / 2)
    stroke = (image.float().mean(0) >= _STROKE).float()[inset_rows:, inset_cols:]
    middle = (height - 2 * inset_rows, width - 2 * inset_cols)
    ink = F.avg_pool2d(stroke[None, None], middle, step)[0, 0, :rows, :cols]
    window_width = width if width != height else None
    stride_width = step[1] if step[1] != step[0] else None
    probabilities = scores.softmax(0)
    return ScanResult(probabilities, ink[:valid_rows, :valid_cols], height, step[0], window_width, stride_width)


HEATMAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".pdf", ".svg")


def heatmap_path(output: str | os.PathLike[str] | None, image: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Where `cnnlab fcn scan` writes the heatmap of ``image``, checked before the scan runs.

    None gives ``IMAGE-heatmap.png`` beside the image; a folder, or a name without a suffix (a folder to make),
    gives that name inside it (matplotlib wrote ``/tmp.png`` for ``-o /tmp`` and reported ``/tmp``). A heatmap an
    earlier scan wrote there (`is_heatmap`) is replaced; any other file only with `overwrite`.

    Raises:
        CnnlabError: a suffix matplotlib cannot write, the image being scanned (`-o scan.png` for `scan.png`
            replaced the user's image with its heatmap), a file that no scan wrote, without `overwrite`, or a
            folder to write in that is a file.
    """
    name = f"{Path(image).stem}-heatmap.png"
    if output is None:
        path = Path(image).with_name(name)
    else:
        path = Path(output)
        if path.is_dir() or not path.suffix:
            path = path / name
    if path.suffix.lower() not in HEATMAP_SUFFIXES:
        known = ", ".join(HEATMAP_SUFFIXES)
        raise CnnlabError(f"--output {output}: cannot write a {path.suffix} image; end it in {known}")
    # `-o notes` (a file without a suffix, read as a folder to make) failed only when the heatmap was written
    _refuse_file_for_folder(path.parent, f"--output {output}", "name a heatmap file (such as h.png) or a folder")
    if path.exists() and Path(image).exists() and os.path.samefile(path, image):
        raise CnnlabError(
            f"--output {output} is the image being scanned, which the heatmap would replace; name another file, or "
            f"leave --output out for {name} beside it"
        )
    if path.is_file() and not overwrite and not is_heatmap(path):  # -o notes.png replaced the user's own file
        raise CnnlabError(
            f"{path} is a file that `cnnlab fcn scan` did not write, which the heatmap would replace; name another "
            "--output, or pass --overwrite to replace it"
        )
    return path


# Written into every heatmap's metadata (PNG, PDF and SVG "Creator"; JPEG, WebP and TIFF EXIF "ImageDescription"),
# so that a later scan knows the file at its --output is a heatmap of its own, which it replaces without asking.
HEATMAP_MARK = "cnnlab fcn scan heatmap"
_LARGEST_HEATMAP = 64 * 2**20  # bytes: a heatmap is a figure a few hundred pixels high; a larger file is not one


def is_heatmap(path: str | os.PathLike[str]) -> bool:
    """Whether the file at `path` is a heatmap that `save_heatmap` wrote (its metadata holds `HEATMAP_MARK`)."""
    path = Path(path)
    try:
        if path.stat().st_size > _LARGEST_HEATMAP:
            return False
        return HEATMAP_MARK.encode() in path.read_bytes()
    except OSError:
        return False


def _heatmap_metadata(suffix: str) -> dict[str, Any]:
    """`savefig` keywords that write `HEATMAP_MARK` into a heatmap of this file suffix."""
    if suffix in (".png", ".pdf", ".svg"):
        return {"metadata": {"Creator": HEATMAP_MARK}}
    from PIL import Image

    exif = Image.Exif()
    exif[0x010E] = HEATMAP_MARK  # ImageDescription
    return {"pil_kwargs": {"exif": exif.tobytes()}}


def save_heatmap(
    image: torch.Tensor,
    result: ScanResult,
    path: str | os.PathLike[str],
    class_names: list[str] | None = None,
    title: str = "",
) -> Path:
    """Write the heatmap PNG: the image with the most likely class at each confident location, and one probability
    map per class, each drawn over the image at the locations' window centres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, rows, cols = result.probabilities.shape
    names = class_names or [str(i) for i in range(classes)]
    height, width = image.shape[1:]
    picture = image.float().mean(0)
    shrink = max(1, math.ceil(max(height, width) / _SHOWN_PIXELS))
    if shrink > 1:  # matplotlib held float64 RGBA copies of a 24 MP picture in every panel (1.7 GB)
        picture = F.avg_pool2d(picture[None, None], shrink, ceil_mode=True)[0, 0]
    picture = picture.numpy()
    step_y, step_x = result.steps  # a network may stride further down than across
    half_y, half_x = result.window_size[0] / 2, result.window_size[1] / 2  # a window's centre
    empty_locations = result.ink < _MIN_STROKE
    probabilities, best, confidence, empty, factor = _shown_maps(result.probabilities, empty_locations)
    cell_y, cell_x = factor * step_y, factor * step_x  # input pixels between the shown cells' centres
    start_y, start_x, (shown_rows, shown_cols) = half_y - step_y / 2, half_x - step_x / 2, probabilities.shape[1:]
    extent = (start_x, start_x + shown_cols * cell_x, start_y + shown_rows * cell_y, start_y)
    shown = min(classes, 10)
    columns = 1 + -(-shown // 2)
    stretch, stretched = 1.0, "height"  # how much longer than the image's shape says each image panel is drawn
    main_title = "most likely class (p >= 0.5)"
    if height > _WIDE * width:
        # A tall strip (3000 x 29 px) was as thin a line in the grid, standing: the panels go side by side down the
        # page, at least _STRIP_INCHES wide, stretched in width if need be (the notes say by how much).
        natural = _PAGE_INCHES * width / height
        strip = max(natural, _STRIP_INCHES)
        stretch, stretched = strip / natural, "width"
        widths = [strip, 2.6] + [strip] * (2 * columns - 2)
        figure, side_by_side = plt.subplots(
            1, len(widths), figsize=(sum(widths) + 0.6 * len(widths) + 0.4, _PAGE_INCHES + 1),
            gridspec_kw={"width_ratios": widths},
        )  # fmt: skip
        axes = np.asarray(side_by_side).reshape(columns, 2).T  # the grid's [row, column] order: main, notes, classes
        main_title = "most likely class\n(p >= 0.5)"  # on one line it ran over the panels beside it
    elif width > _WIDE * height:
        # A strip (29 x 3000 px) in the grid's 3.2-inch panels was a line 2 px tall: the panels go one under the other
        # across the page, at least _STRIP_INCHES tall, stretched in height if need be (the notes say by how much).
        natural = _PAGE_INCHES * height / width
        strip = max(natural, _STRIP_INCHES)
        stretch = strip / natural
        heights = [strip, 2.6] + [strip] * (2 * columns - 2)
        figure, stacked = plt.subplots(
            len(heights), 1, figsize=(_PAGE_INCHES + 1, sum(heights) + 0.45 * len(heights) + 0.4),
            gridspec_kw={"height_ratios": heights},
        )  # fmt: skip
        axes = np.asarray(stacked).reshape(columns, 2).T  # the grid's [row, column] order: main, notes, classes
    else:
        figure, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.2), squeeze=False)
    main = axes[0, 0]
    main.imshow(picture, cmap="gray", extent=(0, width, height, 0))
    overlay, legend = _class_overlay(best, empty | (confidence < 0.5), names)
    main.imshow(overlay, extent=extent, interpolation="nearest")
    confidence_location, best_location = result.probabilities.max(0)
    spread = (result.window_size[0] // step_y, result.window_size[1] // step_x)
    for i, j in _label_places(confidence_location.numpy(), empty_locations.numpy(), spread):
        main.text(half_x + j * step_x, half_y + i * step_y, names[best_location[i, j]], color="white", fontsize=7,
                  ha="center", va="center")  # fmt: skip
    main.set_title(main_title, fontsize=9)
    main.set_xlabel("x (px of the image)", fontsize=7)
    main.set_ylabel("y (px of the image)", fontsize=7)
    axes[1, 0].axis("off")
    # What the panels show, which the figure did not say: the scale of the heat, where a location is drawn, and why
    # some are blank; the axes are in pixels of the scanned image.
    axes[1, 0].text(  # in the panel's own coordinates: its data limits are the image's, set below
        0,
        0.42,
        f"{_grid_text(result)}\n{rows}x{cols} locations, each drawn at\n"
        f"its window's centre; blank: under {_MIN_STROKE:.0%} of\nthe window's middle is stroke\n"
        "grey: the image as scanned"
        + _unscanned_text(result, height, width)
        + (f"\nthe panels stretched {stretch:.0f}x in {stretched}" if stretch > 1.05 else ""),
        fontsize=8,
        va="center",
        transform=axes[1, 0].transAxes,
    )
    peaks = result.probabilities.reshape(classes, -1).amax(1).numpy()
    order = np.argsort(-peaks)[:shown] if classes > 10 else range(shown)
    for slot, index in enumerate(order):
        axis = axes[slot % 2, 1 + slot // 2]
        axis.imshow(picture, cmap="gray", extent=(0, width, height, 0))
        heat = axis.imshow(
            probabilities[index], cmap="magma", vmin=0, vmax=1, alpha=0.6, extent=extent, interpolation="bilinear"
        )
        axis.set_title(f"p(class {names[index]})", fontsize=9)
    for axis in axes.flat:
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        if stretch > 1:
            axis.set_aspect("auto")  # the strip fills its panel's length
        if axis is not main:  # the class panels show the same pixels (their ticks tripled the time to draw)
            axis.set_xticks([])
            axis.set_yticks([])
    main.tick_params(labelsize=6)
    for slot in range(shown, 2 * (columns - 1)):  # an odd number of classes leaves one panel empty
        axes[slot % 2, 1 + slot // 2].axis("off")
    if legend:  # which colour is which class: the names written on the panel mark only the most confident places
        axes[1, 0].legend(
            handles=legend,
            title="most likely class (p >= 0.5)",
            loc="upper left",
            bbox_to_anchor=(0.0, 1.02),
            ncol=min(5, len(legend)),
            fontsize=7,
            title_fontsize=7,
            handlelength=1,
            columnspacing=0.8,
            alignment="left",
            frameon=False,
        )
    scale = axes[1, 0].inset_axes((0.05, 0.12, 0.9, 0.06))
    figure.colorbar(heat, cax=scale, orientation="horizontal").set_label("p(class) in the class panels", fontsize=8)
    scale.tick_params(labelsize=6)
    if title:  # 0.12 in from the top, as matplotlib's y=0.98 puts it on the grid's 6.2 in: a strip's page is
        # taller, and its 2% (0.38 in) moved the title down onto the panel under it, which tight_layout does not count
        figure.suptitle(title, fontsize=10, y=1 - 0.12 / figure.get_figheight())
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Encoding a large scan's figure takes a while: written in place, a stop during it left a truncated image at
    # `path`, over the heatmap an earlier scan had written there.
    from cnnlab.files import written_then_renamed

    with written_then_renamed(path) as partial:
        suffix = path.suffix.lower()
        figure.savefig(partial, dpi=80, format=suffix.lstrip("."), **_heatmap_metadata(suffix))
    plt.close(figure)
    return path


def _grid_text(result: ScanResult) -> str:
    """A scan's windows and their spacing as the heatmap's notes name them: ``window 28px, stride 2px``, or, where
    the height and width differ, ``window 20x36px, stride 2x1px (height x width)``, as `geometry_text` orders them
    (a window 20 px tall and 36 wide was written 36x20, width x height, over "{rows}x{cols} locations")."""
    window, steps = result.window_size, result.steps
    square = window[0] == window[1] and steps[0] == steps[1]
    return f"window {pair_text(window)}px, stride {pair_text(steps)}px" + ("" if square else " (height x width)")


def _unscanned_text(result: ScanResult, height: int, width: int) -> str:
    """The notes' line on the image's right and bottom edges that no window reaches, or "" where windows reach
    both: an image whose size is not the window plus a multiple of the step keeps only the windows that fit, so
    the last few pixels lie in none, which the map, ending at the last centre, did not say."""
    rows, cols = result.probabilities.shape[1:]
    (window_y, window_x), (step_y, step_x) = result.window_size, result.steps
    right, bottom = width - (cols - 1) * step_x - window_x, height - (rows - 1) * step_y - window_y
    edges = [f"the right {right} px"] * (right > 0) + [f"the bottom {bottom} px"] * (bottom > 0)
    return f"\nin no window: {', '.join(edges)}" if edges else ""


_OVERLAY_ALPHA = 0.45


def _class_overlay(best: np.ndarray, hidden: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[Any]]:
    """The main panel's overlay, float RGBA [rows, cols, 4], one colour per class at each location not `hidden`,
    and its legend's handles, one per class drawn (in class order).

    Up to 10 classes take tab10's colour of their index, so a digit has the same colour in every scan (gold for
    tab10's grey, which left class 7 unseen over the grey picture). With more, tab10 gave every class from the 10th
    on the 10th's colour: the classes drawn at the most locations take tab20's 18 colours that are not grey, and the
    rest one grey, "other classes".
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    drawn, locations = np.unique(best[~hidden], return_counts=True)
    if len(names) <= 10:
        palette = [*plt.get_cmap("tab10").colors]
        palette[7] = (1.0, 0.85, 0.0)
        colours = {int(index): palette[int(index)][:3] for index in drawn}
    else:
        palette = [colour for slot, colour in enumerate(plt.get_cmap("tab20").colors) if slot not in (14, 15)]
        ranked = drawn[np.argsort(-locations, kind="stable")]
        colours = {int(index): palette[rank][:3] for rank, index in enumerate(ranked[: len(palette)])}
    other = (0.5, 0.5, 0.5)
    overlay = np.zeros((*best.shape, 4))
    overlay[~hidden] = (*other, _OVERLAY_ALPHA)
    for index, colour in colours.items():
        overlay[(best == index) & ~hidden] = (*colour, _OVERLAY_ALPHA)
    legend = [Patch(facecolor=colours[index], alpha=_OVERLAY_ALPHA, label=names[index]) for index in sorted(colours)]
    if len(drawn) > len(colours):
        legend.append(Patch(facecolor=other, alpha=_OVERLAY_ALPHA, label="other classes"))
    return overlay, legend


def _shown_maps(
    probabilities: torch.Tensor, empty: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(per-class heat, most likely class, its probability, empty, cell side in locations) as drawn: at most
    `_SHOWN_LOCATIONS` cells a side.

    A larger map is reduced by whole cells of locations: the heat is each cell's mean (empty locations count as 0),
    and the class is that of its most confident location that is not empty (a cell with none is empty).
    """
    classes, rows, cols = probabilities.shape
    heat = torch.where(empty, 0.0, probabilities)
    confidence, best = probabilities.max(0)
    factor = -(-max(rows, cols) // _SHOWN_LOCATIONS)
    if factor > 1:
        heat = F.avg_pool2d(heat[None], factor, ceil_mode=True)[0]
        ranked = torch.where(empty, -1.0, confidence)[None, None]
        confidence, where = F.max_pool2d(ranked, factor, ceil_mode=True, return_indices=True)
        confidence = confidence[0, 0]
        best = best.flatten()[where[0, 0].flatten()].reshape(confidence.shape)
        empty = confidence < 0
    return heat.numpy(), best.numpy(), confidence.numpy(), empty.numpy(), factor


def _label_places(confidence: np.ndarray, empty: np.ndarray, spread: int | tuple[int, int]) -> list[tuple[int, int]]:
    """Where the heatmap writes a class name: locations with confidence >= 0.9 that are the most confident within
    `spread` locations (a window's height and width, or one number for both) around them, so each digit gets about
    one label (every confident location was labelled: a pile of names on each digit, tens of thousands on a photo)."""
    down, across = (spread, spread) if isinstance(spread, int) else spread
    reach_y, reach_x = down // 2, across // 2  # the rectangle's maximum as a row's then a column's: 15x faster
    peaks = F.max_pool2d(torch.from_numpy(confidence)[None, None], (1, 2 * reach_x + 1), 1, (0, reach_x))
    peaks = F.max_pool2d(peaks, (2 * reach_y + 1, 1), 1, (reach_y, 0))[0, 0]
    chosen = (confidence >= 0.9) & ~empty & (confidence >= peaks.numpy())
    rows, cols = np.nonzero(chosen)
    places, taken = [], set()
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):  # ties on a plateau: the first of each cell
        cell = (i // max(1, down), j // max(1, across))
        if cell not in taken:
            taken.add(cell)
            places.append((i, j))
    return places


def load_scan_image(
    path: str | os.PathLike[str], channels: int = 1, invert: bool | None = None, checked: ScanCheck | None = None
) -> torch.Tensor:
    """Read an image file as float [channels, H, W] in [0, 1], decoding it once (`scan_tensor`).

    The file is read as every cnnlab command reads one (`data.folder.load_image`): a 16-bit scan is scaled to 8 bits
    (Pillow's own conversion clipped it, all white), a transparent background is white, EXIF orientation applied.

    Args:
        path: the image.
        channels: 1 (grayscale) or 3 (RGB).
        invert: turn dark-on-light into light-on-dark (MNIST's polarity), True or False and nothing more; None
            prepares the page as `scan_tensor` says: the paper told from the ink at the image's border, inverted when
            light, stretched to black and the ink to white, for an RGB network too (it was grayscale only: white paper
            scanned by an RGB network was neither inverted nor, being all "stroke", left blank), which gets the
            prepared grey on each of its channels.
        checked: `check_scan_memory`'s answer for this file: an image of that size is decoded even over Pillow's
            decompression-bomb guard (179 MP), which is raised for this call only.
    """
    from PIL import Image

    from cnnlab.data.folder import decode_image, to_rgb

    with warnings.catch_warnings():  # Pillow's "could be decompression bomb DOS attack" over 89 MP: the scan takes
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # any size, and refuses what will not fit
        # decoded once: checked (check_image) then loaded (load_image), a 100 MP image was decoded twice, 16 s
        with _decoding_allowed(checked.width * checked.height) if checked else contextlib.nullcontext():
            decoded, _, reason = decode_image(path)  # in every command's words: "zero-byte file", "corrupt or ..."
    if decoded is None:
        raise CnnlabError(f"cannot read image {path}: {reason}")
    return scan_tensor(to_rgb(decoded), channels, invert)


def scan_tensor(image: Any, channels: int = 1, invert: bool | None = None) -> torch.Tensor:
    """A decoded 8-bit RGB PIL image (`data.folder.to_rgb`) as `load_scan_image` reads a file: float [channels, H, W]
    in [0, 1], light digits on black as MNIST's are.

    With `invert` None, the page's paper is told from its ink as `cnnlab predict` tells one digit's
    (`cnnlab.data.mnist.paper_and_ink`, on the grey image, for an RGB network too): Otsu's threshold, the paper being
    what holds the image's border, and a table round a photographed page goes to 0; dark ink on light paper is inverted
    whatever the paper's grey, the paper's median goes to 0 (`PAGE_PAPER_MADS`) and the ink's level to 1. Before, a mean
    above 0.5 inverted and nothing was stretched: a page of MNIST digits photographed on paper of grey 0.7 kept its
    paper at 0.3, which a canvas segmenter took for ink (foreground IoU 0.37, now 0.95), and on grey 0.5 it was not
    inverted at all, the paper read as the digits (IoU 0.003, now 0.95; `fcn scan` read 14% of the digits right, now
    100%; benchmarks/scan_paper_grey.py).

    Kept as they were: an image already light on exact black (its paper's median 0, as the canvases are) is left as
    read, and an image of one grey is inverted when its mean is above `INVERT_ABOVE_MEAN`. A page whose darkest
    strokes stand out by `INK_ABOVE` or less from its paper's median + `PAPER_MADS` deviations (`fitted_ink`'s blank
    page) is not stretched, which would make its grain ink. `invert` True or False inverts, or not, and nothing else.

    An RGB network (`channels` 3) gets the prepared grey on each channel, as an MNIST digit is made RGB: its colours
    were stretched by the grey's paper and ink levels, so coloured paper was black in grey but not in every colour
    (yellow paper: its blue channel at 0.49, the scan's stroke level 0.5, as if the page were ink).
    """
    from cnnlab.data.mnist import INK_ABOVE, INVERT_ABOVE_MEAN, flattened_paper_and_ink

    if channels == 3 and invert is None:  # the grey prepared once: its paper and ink levels are the grey's
        return scan_tensor(image, 1, None).expand(3, -1, -1).contiguous()

    # bytes to floats in torch: numpy's asarray(dtype=float32) of the image took 3.4 s of a 100 MP image's 7.8
    pixels = np.array(image.convert("L") if channels == 1 else image)
    tensor = torch.from_numpy(pixels)[None] if pixels.ndim == 2 else torch.from_numpy(pixels).permute(2, 0, 1)
    tensor = tensor.contiguous().float().div_(255.0)
    if invert is not None:
        return tensor.neg_().add_(1.0) if invert else tensor  # in place: the image is the scan's largest tensor
    levels = pixels if pixels.ndim == 2 else np.array(image.convert("L"))
    if int(levels.max()) == int(levels.min()):  # one grey: no paper to tell from ink
        return tensor.neg_().add_(1.0) if float(tensor.mean()) > INVERT_ABOVE_MEAN else tensor
    flat, found = flattened_paper_and_ink(levels, FLATTEN_SIZE)
    if flat is not levels:  # light paper lit unevenly: its light divided out
        levels, tensor = flat, torch.from_numpy(flat)[None].float().div_(255.0)
    paper_level = found.paper_level(PAGE_PAPER_MADS)
    if not found.paper_is_light and paper_level <= 0.0 and found.surroundings is None:  # light on exact black
        return tensor  # already: the canvases' own form
    if found.paper_is_light:
        tensor = tensor.neg_().add_(1.0)
    tensor = tensor.sub_(paper_level)
    if found.ink_level - found.paper_level() > INK_ABOVE:  # not a blank page
        tensor = tensor.div_(found.ink_level - paper_level)
    if found.surroundings is not None:  # the table around a photographed page goes to the paper's black
        tensor[:, torch.from_numpy(found.surroundings)] = 0.0
    return tensor.clamp_(0.0, 1.0)


def scan_preparation_record() -> dict[str, Any]:
    """`scan_tensor` (with `invert` None, for one grey channel) step by step, with its numbers, as `cnnlab export`
    writes it beside a digit scanner or a canvas segmenter: enough to prepare their input exactly without cnnlab."""
    from cnnlab.data.mnist import (
        FLATTEN_BELOW,
        INK_ABOVE,
        INVERT_ABOVE_MEAN,
        PAPER_MADS,
        flatten_step,
        paper_and_ink_record,
    )

    return {
        "grey": "the decoded RGB image as PIL Image.convert('L') (L = R*299/1000 + G*587/1000 + B*114/1000), as "
        "float32 / 255, at its own size (not resized)",
        **paper_and_ink_record(),
        "paper_mads": PAGE_PAPER_MADS,  # the page's paper goes to 0 from its median
        "blank_paper_mads": PAPER_MADS,
        "ink_above": INK_ABOVE,
        "invert_above_mean": INVERT_ABOVE_MEAN,
        "flatten": flatten_step("s = flatten_size"),
        "flatten_size": FLATTEN_SIZE,
        "flatten_below": FLATTEN_BELOW,
        "one_grey": "an image of one grey level is inverted (grey = 1 - grey) when its mean is above "
        "invert_above_mean, and is otherwise left as read",
        "as_read": "an image whose paper is dark (the pixels <= t), not on a table, and whose paper_level is at most 0 "
        "(light on exact black, as MNIST's digits and the canvases are) is left as read",
        "stretch": "otherwise, grey inverted first when the paper is light: grey = clip((grey - paper_level) / "
        "(ink_level - paper_level), 0, 1) as float32; a blank page, whose ink_level is at most ink_above above "
        "median(b) + blank_paper_mads * 1.4826 * median(|b - median(b)|), is not divided: grey = clip(grey - "
        "paper_level, 0, 1); then 0 on the table, if any",
    }


def save_fully_convolutional(
    model: FullyConvolutional, directory: str | os.PathLike[str], source: dict[str, Any], pool: str
) -> Path:
    """Save a converted model: ``fcn.safetensors`` and ``fcn.json`` (source architecture record, input size, pool,
    and the SHA-256 of the weights file, so that a stop between the two files, new weights beside the old record, is
    refused on load rather than scanned with)."""
    from cnnlab.files import written_then_renamed
    from cnnlab.train.saved import save_weights

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    digest = save_weights(model, directory / FCN_WEIGHTS)  # never half a file, as `save_model`
    source = dict(source)
    if "run" in source:  # relative, so that a run moved or copied with its fcn folder inside is still found
        source["run"] = os.path.relpath(Path(source["run"]).resolve(), directory.resolve())
    record = {"format": "cnnlab-fcn-1", "source": source, "input_size": list(model.input_size), "pool": pool,
              "fcn_weights_sha256": digest}  # fmt: skip
    with written_then_renamed(directory / FCN_SPEC) as spec:
        spec.write_text(json.dumps(record, indent=1))
    return directory / FCN_WEIGHTS


def _refuse_file_for_folder(folder: Path, option: str, remedy: str) -> None:
    """Refuse `folder` where it, or a folder above it, is a file: checked before the work, which it would end.

    Raises:
        CnnlabError: naming the file.
    """
    blocking = next((part for part in (folder, *folder.parents) if part.exists() and not part.is_dir()), None)
    if blocking is not None:
        raise CnnlabError(f"{option}: {blocking} is a file, where a folder is needed; {remedy}")


def converted_folder(run: str | os.PathLike[str], output: str | os.PathLike[str] | None) -> Path:
    """Where `cnnlab fcn convert RUN` saves the converted network: `output`, or ``RUN/fcn``.

    Raises:
        CnnlabError: `output` holds a saved model (a run folder, RUN itself): its fcn.json beside the model made
            the run read as a converted network, which `fcn convert` then refused to convert; or it is a file, or
            inside one (that failed once the network was converted, exit code 1).
    """
    from cnnlab.train.saved import ENSEMBLE_SPEC, MODEL_SPEC

    run = Path(run)
    if output is None:
        return (run if run.is_dir() else run.parent) / "fcn"
    target = Path(output)
    _refuse_file_for_folder(
        target, f"--output {output}", "the converted network is a folder (fcn.json, fcn.safetensors)"
    )
    held = [name for name in (MODEL_SPEC, ENSEMBLE_SPEC) if (target / name).is_file()]
    if held:
        raise CnnlabError(
            f"--output {output} holds a saved model ({held[0]}): the converted network goes in a folder of its own, "
            f"such as the default {(run if run.is_dir() else run.parent) / 'fcn'}"
        )
    return target


def load_fully_convolutional(path: str | os.PathLike[str], device: str = "cpu") -> FullyConvolutional:
    """Load a converted model saved by `save_fully_convolutional` (a directory, its ``fcn.json`` or its
    ``fcn.safetensors``)."""
    from cnnlab.models import create_model
    from cnnlab.train.saved import load_weights

    path = Path(path)
    spec_path = converted_spec(path)
    if not spec_path.is_file():
        raise CnnlabError(f"no {FCN_SPEC} at {path}; convert a run first with `cnnlab fcn convert RUN`")
    record = json.loads(spec_path.read_text())
    source = record["source"]
    _refuse_retrained_source(spec_path.parent, source)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in source.get("kwargs", {}).items()}
    classifier = create_model(source["arch"], **kwargs)
    converted = to_fully_convolutional(classifier, tuple(record["input_size"]), pool=record.get("pool", "window"))
    remedy = "convert the run again with `cnnlab fcn convert RUN`"
    weights = spec_path.parent / FCN_WEIGHTS
    state = load_weights(weights, remedy=remedy)  # a damaged or missing file: one line, no traceback
    _refuse_other_weights(weights, record.get("fcn_weights_sha256"), remedy)
    converted.load_state_dict(state)
    return converted.to(device).eval()


def _refuse_other_weights(weights: Path, recorded: str | None, remedy: str) -> None:
    """Refuse fcn.safetensors that are not the ones its fcn.json was written with: `fcn convert` stopped between the
    two files (new weights, old record), or one file of another conversion copied in. A record from before the
    digest was written is taken as it is."""
    from cnnlab.files import file_sha256

    if recorded is not None and file_sha256(weights) != recorded:
        raise CnnlabError(
            f"{weights} is not the file {weights.parent / FCN_SPEC} was written with (its SHA-256 differs: a "
            f"conversion stopped between the two files, or one was copied from elsewhere); {remedy}"
        )


def _refuse_retrained_source(folder: Path, source: dict[str, Any]) -> None:
    """Refuse a converted network whose run was trained again since it was converted (`train --overwrite` keeps
    the run's fcn folder): the scan used the old weights under the run's name. A folder copied without its run,
    or converted before the digest was recorded, is taken as it is."""
    from cnnlab.files import file_sha256
    from cnnlab.train.saved import MODEL_WEIGHTS

    if "run" not in source or "weights_sha256" not in source:
        return
    run = (folder / source["run"]).resolve()
    weights = run / MODEL_WEIGHTS
    if weights.is_file() and file_sha256(weights) != source["weights_sha256"]:
        raise CnnlabError(
            f"{folder} was converted from {run} before that run was trained again: its weights are not the run's "
            f"now; convert it again with `cnnlab fcn convert {run}`"
        )


def load_converted_or_run(
    path: str | os.PathLike[str], pool: str = "window", device: str | torch.device = "cpu"
) -> tuple[FullyConvolutional, dict]:
    """A converted model from an FCN directory, or a classifier run directory converted on the fly (on the CPU, where
    `to_fully_convolutional` checks it), on `device`: `scan` sends each tile there and brings its scores back.

    Returns:
        (model, source architecture record).
    """
    path = Path(path)
    if is_converted(path):
        source = json.loads(converted_spec(path).read_text())["source"]
        return load_fully_convolutional(path, device=str(device)), source
    converted, source = convert_run(path, pool)
    return converted.to(device), source


def is_converted(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder `cnnlab fcn convert` wrote, or its fcn.json or fcn.safetensors (the weights file was
    taken for a run's and refused as "no saved model at FOLDER/model.json", though its folder loads)."""
    path = Path(path)
    return (path / FCN_SPEC).is_file() or path.name in (FCN_SPEC, FCN_WEIGHTS)


def converted_spec(path: str | os.PathLike[str]) -> Path:
    """The fcn.json that describes the converted network at `path`: a folder's, the one beside its fcn.safetensors,
    or `path` itself."""
    path = Path(path)
    if path.is_dir():
        return path / FCN_SPEC
    return path.with_name(FCN_SPEC) if path.name == FCN_WEIGHTS else path


def convert_run(path: str | os.PathLike[str], pool: str = "window") -> tuple[FullyConvolutional, dict]:
    """The classifier saved at `path` (a run directory or its ``model.json``), made fully convolutional.

    Returns:
        (model, source architecture record).

    Raises:
        CnnlabError: `path` is converted already, a segmentation or transfer run, an ensemble, or not a saved
            classifier.
    """
    from cnnlab.train.saved import (
        ENSEMBLE_SPEC,
        IMAGE_CLASSIFIER,
        SEGMENTER,
        ensemble_members,
        load_model_and_digest,
        read_record,
        saved_meta,
        spec_path,
    )

    path = Path(path)
    if is_converted(path):  # converting it again nested a copy in <path>/fcn
        raise CnnlabError(f"{path} holds a converted network already; scan with it: `cnnlab fcn scan {path} IMAGE`")
    meta = saved_meta(path)  # in the current layout, whichever it was saved in
    if meta.get("kind", "").endswith("segmenter"):  # "cannot find the head of UNet" said nothing useful
        use = (
            "; `cnnlab predict --model RUN IMAGE...` segments images of any size"
            if meta["kind"] == SEGMENTER
            else f"; `cnnlab explain {path} IMAGE` gives each class's share of an image's pixels"
        )
        raise CnnlabError(
            f"{path} is a segmentation run: its network is fully convolutional already, one class score per pixel{use}"
        )
    if meta.get("kind") == IMAGE_CLASSIFIER:  # a transfer run: its converted network scored unnormalised 224 px windows
        record = meta["preprocessing"] if isinstance(meta.get("preprocessing"), dict) else {}
        crop = "x".join(map(str, list(record.get("input_size", []))[1:])) or "its input size"
        raise CnnlabError(
            f"{path} is a transfer run: its preprocessing (resize and crop to {crop}, the weights' mean and std) "
            "and its view averaging happen outside the network, so a converted copy would "
            "score windows unlike any it was trained on; `cnnlab fcn` scans with MNIST runs, and `cnnlab predict` "
            "classifies crops of a large photo"
        )
    spec = spec_path(path)
    if spec.name == ENSEMBLE_SPEC:  # checked before any member is loaded
        members = ensemble_members(spec)
        raise CnnlabError(
            f"{path} is an ensemble of {len(members)} networks, which has no single head to convert: convert one "
            f"member, e.g. `cnnlab fcn convert {members[0]}`"
        )
    classifier, digest = load_model_and_digest(spec)
    source = read_record(spec)
    record = {"arch": source["arch"], "kwargs": source.get("kwargs", {}), "run": str(spec.parent.resolve())}
    return to_fully_convolutional(classifier, pool=pool), {**record, "weights_sha256": digest}


def scan_canvas_demo(
    model: nn.Module, out_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None, seed: int = 0
) -> Path:
    """Build a 84 x 168 canvas of four MNIST test digits, scan it with the converted `model`, write the heatmap.

    Args:
        model: an MNIST classifier (converted here) or an already converted `FullyConvolutional`.
        out_dir: where ``fcn_scan.png`` goes.
        data_dir: MNIST root.
        seed: picks the digits and their places.

    Returns:
        The PNG path.
    """
    from cnnlab.data.mnist import _load_split, find_mnist_dir
    from cnnlab.data.segmentation import TEST_ID_OFFSET, make_canvases

    converted = model if isinstance(model, FullyConvolutional) else to_fully_convolutional(model)
    digits, labels = _load_split(find_mnist_dir(data_dir), "test")
    ids = torch.arange(len(labels)) + TEST_ID_OFFSET
    canvas = make_canvases(digits, labels, ids, 1, size=(84, 168), digits_per_canvas=(4, 4), seed=seed)
    image = canvas.images[0].float() / 255.0
    # sorted: in the order drawn they read as if left to right, which they are not (9, 5, 4, 5 for 5, 4, 9, 5)
    shown = sorted(int(labels[i - TEST_ID_OFFSET]) for i in canvas.source_ids[0] if i >= 0)
    result = scan(converted, image)
    title = f"digits on the canvas, in any order: {', '.join(map(str, shown))}"
    return save_heatmap(image, result, Path(out_dir) / "fcn_scan.png", [str(d) for d in range(10)], title)
