"""Turning a classifier into a fully convolutional network (Long, Shelhamer and Darrell, CVPR 2015, section 3.1).

A dense layer that reads a flattened C x h x w feature map is exactly a convolution with C x h x w kernels and
"valid" padding (Hands-On ML ch. 14: 200 units over 100 maps of 7x7 = 200 filters of 7x7x100); the dense layers after
it read a 1 x 1 map and become 1 x 1 convolutions. A global-average-pool head becomes a 1 x 1 convolution applied
*before* the pooling (both are linear, so they commute), and the pooling becomes an average over a window the size
of the training feature map, sliding with stride 1. At the training input size the converted network computes the
same numbers; on a larger image it returns one score vector per training-sized window: [N, classes, H', W'].

How the head is found: a zoo classifier's head is what `forward_head` runs; a `nn.Sequential`'s head starts at its
first child that flattens, pools globally or is dense, or that holds such a layer and does not return a map that grows
with its input (a head written as one block; a squeeze-excitation block pools globally only to scale the channels of
the map it returns, so it is a feature layer, as it is in a zoo classifier's `forward_features`). The head's
modules are recorded in call order with forward hooks, and the recording is only trusted when each module consumed
the previous one's output and replaying them reproduces the original output; otherwise (a functional op in the head,
a branch) conversion is refused.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from cnnlab.errors import CnnlabError

__all__ = ["FullyConvolutional", "OutputGeometry", "to_fully_convolutional", "training_input_size"]

# Layers that act on each element (or are the identity at inference): valid on maps of any size, kept as they are.
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
)
_HEAD_STARTERS = (nn.Flatten, nn.Linear, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_TOLERANCE = 1e-5


class _Features(nn.Module):
    """Runs a classifier's `forward_features` (its head modules replaced by identities so they hold no weights)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)  # type: ignore[operator]


class FullyConvolutional(nn.Module):
    """A converted classifier: `trunk` (the original feature extractor) then `head` (convolutions only).

    Attributes:
        trunk: the feature extractor, unchanged.
        head: the converted head; its output is [N, classes, H', W'].
        input_size: the (C, H, W) the classifier was trained on (its outputs are reproduced there).
        window_pooled: whether the head ends with a sliding average over the training feature-map size (a
            global-pool classifier converted with `pool="window"`).
    """

    def __init__(
        self, trunk: nn.Module, head: nn.Sequential, input_size: tuple[int, int, int], window_pooled: bool
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.input_size = tuple(input_size)
        self.window_pooled = window_pooled
        self._geometry: OutputGeometry | None = None  # `output_geometry`, measured once

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))  # N x classes x H' x W'

    @torch.no_grad()
    def output_geometry(self) -> OutputGeometry:
        """Where the output's locations are in the input: location (i, j) scores the window of `window` (the
        training input's height and width) whose top-left corner is near (i * stride[0], j * stride[1]).

        The output's height is floor((H + c) / stride) + b for an input H rows tall (each layer's is, and floors of
        floors nest), so the stride is the distance between two heights where it grows by one; the same holds for
        the width, on its own: a layer's output height depends on its input's height only. Both axes are measured
        (the width's was taken to be the height's: a network with MaxPool2d((2, 1)), 1 px apart across, was
        scanned as if 2 px apart), in the same probes: each grows the height as the height's search asks and the
        width as the width's does, so both cost the passes of one (`_stride_search`: 5 for resnet18 and
        efficientnet_lite0 at 224x224, 9-10 for googlenet, alexnet, inception_v3 and xception, 3-7 for the MNIST
        networks). Each probe is the training size grown along the axes searched. Measured once and kept.
        """
        if getattr(self, "_geometry", None) is None:
            channels, height, width = self.input_size
            reference = next(self.parameters(), torch.empty(0))
            was_training = self.training
            self.eval()

            def sizes_out(rows: int, cols: int) -> tuple[int, int]:
                probe = torch.zeros(1, channels, rows, cols, dtype=reference.dtype, device=reference.device)
                return tuple(self(probe).shape[-2:])  # type: ignore[return-value]

            # a network whose output never grows (an adaptive pool to 1x1 before the head) was searched forever;
            # the search stops at a stride far beyond any scan's (8 training sizes), where probes still fit in memory
            most = 8 * max(height, width, 128)
            try:
                strides = _search_in_step((height, width), sizes_out, lambda start: _stride_search(start, most))
            except _NoGrowth:
                raise CnnlabError(
                    f"the network's output does not grow with its input (not within {most:,} px more than its "
                    f"{height}x{width} training size), so it cannot be scanned: a layer such as an adaptive pool "
                    "gives every input the same output size"
                ) from None
            finally:
                self.train(was_training)
            self._geometry = OutputGeometry((height, width), strides)  # type: ignore[arg-type]
        return self._geometry  # type: ignore[return-value]


class OutputGeometry(NamedTuple):
    """Where a converted network's output locations lie in its input, in pixels.

    Attributes:
        window: (height, width) of the window each location scores: the classifier's training input size.
        stride: (down, across): input pixels between neighbouring locations along the height and the width.
    """

    window: tuple[int, int]
    stride: tuple[int, int]


# A search along one axis: a generator that yields the input length it wants measured next, is sent the output's
# length there, and returns what it found.
_Search = Generator[int, int, int]


class _NoGrowth(Exception):
    """The output did not grow within the most input pixels a search tries."""


def _next_growth(start: int, most: int) -> _Search:
    """The least input length over `start` at which the output grows (doubling, then halving), within `most` more.

    Raises:
        _NoGrowth: it does not grow within `start + most`.
    """
    base, high = (yield start), 1
    while (yield start + high) <= base:
        if high >= most:
            raise _NoGrowth
        high = min(2 * high, most)
    low = high // 2  # the output has not grown at `low` more (0: at none)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if (yield start + middle) > base else (middle, high)
    return start + high


def _stride_search(start: int, most: int) -> _Search:
    """The input pixels between two lengths at which the output grows by one, searched from `start`, the training
    length (`_NoGrowth` when it does not grow within `most` pixels more).

    From `start` the output grows by floor((phase + d) / stride) over d more pixels, for a phase of 0 to stride - 1
    that is unknown too. A probe one training length further leaves a few strides (29 to 37 for 32 at 224 px), each
    with a run of phases; each next probe is the one whose answer, at its worst, rules out the most (stride, phase)
    pairs per pixel it costs, until one stride is left. Searching the first growth (doubling, then halving) and the
    stride from there took 2 log2(stride) + 1 to 3 passes (googlenet 12); this 7 to 10 in fewer pixels. Where the
    first probe leaves over `_MOST_STRIDES` strides (a stride over about 45 at 224 px, 14 at 28), or an output
    does not grow as such a floor, the search goes growth by growth.
    """
    base = yield start
    at_once = (yield start + 1) - base  # a padded network (resnet's ceil(length / 32)) grows at once: phase known
    grown = (yield 2 * start) - base
    # floor((phase + start) / stride) = grown for a phase under the stride: start / (grown + 1) < stride and
    # (grown - 1) x stride < start; weighing steps between many strides is slow
    strides = range(start // (grown + 1) + 1, (start - 1) // (grown - 1) + 1) if grown > 1 else None
    if strides is None or len(strides) > _MOST_STRIDES:
        return (yield from _growth_search(start, most))
    candidates = _consistent({stride: (0, stride - 1) for stride in strides}, start, grown)
    candidates = _consistent(candidates, 1, at_once)
    while len(candidates) > 1:
        step = _informative_step(candidates, start)
        candidates = _consistent(candidates, step, (yield start + step) - base)
    if not candidates:  # an output that does not grow as floor((length + c) / stride) + b
        return (yield from _growth_search(start, most))
    return next(iter(candidates))


_Candidates = dict[int, tuple[int, int]]  # stride -> the least and the most phase it allows
_MOST_STRIDES = 24  # strides the first probe may leave for `_stride_search` to weigh steps between


def _consistent(candidates: _Candidates, step: int, grown: int) -> _Candidates:
    """The (stride, phase) pairs of `candidates` over which the output grows by `grown` in `step` more pixels."""
    kept = {}
    for stride, (low, high) in candidates.items():
        low, high = max(low, grown * stride - step), min(high, (grown + 1) * stride - step - 1)
        if low <= high:
            kept[stride] = (low, high)
    return kept


def _informative_step(candidates: _Candidates, start: int) -> int:
    """The step of 1 to `start` pixels whose least informative answer rules out the most pairs of `candidates`
    (the log of the share ruled out) per cost, one pass's fixed cost plus its pixels, in training-sized passes."""
    total = sum(high - low + 1 for low, high in candidates.values())
    best, chosen = 0.0, 1
    for step in range(1, start + 1):
        left: dict[int, int] = {}  # growth -> pairs that give it
        for stride, (low, high) in candidates.items():
            for grown in range((low + step) // stride, (high + step) // stride + 1):
                pairs = min(high, (grown + 1) * stride - step - 1) - max(low, grown * stride - step) + 1
                left[grown] = left.get(grown, 0) + pairs
        gain = math.log(total / max(left.values())) / (1 + ((start + step) / start) ** 2)
        if gain > best:
            best, chosen = gain, step
    return chosen


def _growth_search(start: int, most: int) -> _Search:
    """`_stride_search` by the growths themselves: the first after `start`, then the stride from there.

    From `first`, a length at which the output just grew, the output grows by floor(d / stride) over d more pixels,
    so each probe bounds the stride to (d / (grown + 1), d / grown]: the first, d = `start`, leaves a few strides
    (29 to 32 for a stride of 32 at 224 px); the next ones pick the least d that splits those most evenly.
    """
    first = yield from _next_growth(start, most)  # a length at which the output just grew
    base = yield first  # measured by that search: no pass
    # the growth before `first` was at or before `start`, so the stride is at least `first - start`; `most + 1`
    # stands for any stride over `most`
    low, high = first - start, most + 1
    while low < high:
        reach = min(most, max(start, 2 * low))  # probes up to twice the training size (or the least stride)
        step = reach if high > most else _splitting_step(low, high, reach)
        grown = (yield first + step) - base  # floor(step / stride)
        if grown:
            low, high = max(low, step // (grown + 1) + 1), min(high, step // grown)
        else:
            low = max(low, step + 1)
    if low > high:  # an output that does not grow as floor((length + c) / stride) + b: search the growth itself
        return (yield from _next_growth(first, most)) - first
    if low > most:
        raise _NoGrowth
    return low


_SPLIT_WORK = 10_000  # strides x steps weighed by `_splitting_step`; past it, a step that halves them


def _splitting_step(low: int, high: int, most: int) -> int:
    """The least d of `low`..`most` whose floor(d / stride) splits the strides `low`..`high` into the smallest
    largest group (it falls as the stride grows, so its groups are runs); over `_SPLIT_WORK`, one that halves them."""
    if (high - low + 1) * (most - low + 1) > _SPLIT_WORK:
        return (low + high) // 2
    best, chosen = high - low + 2, low
    for step in range(low, most + 1):
        largest = run = 0
        previous = None
        for stride in range(low, high + 1):
            grown = step // stride
            run = run + 1 if grown == previous else 1
            previous, largest = grown, max(largest, run)
            if largest >= best:  # no better than the best so far
                break
        if largest < best:
            best, chosen = largest, step
    return chosen


def _search_in_step(
    start: tuple[int, int],
    sizes_out: Callable[[int, int], tuple[int, int]],
    search: Callable[[int], _Search],
) -> tuple[int, int]:
    """`search` along the height and the width at once: each forward pass measures the height one asks for and the
    width the other asks for (an axis whose search ended, or whose length was measured before, stays at `start`)."""
    searches = [search(length) for length in start]
    known: list[dict[int, int]] = [{}, {}]  # per axis: input length -> output length
    found: list[int | None] = [None, None]
    asked: list[int | None] = [next(searches[0]), next(searches[1])]
    while any(value is None for value in found):
        if all(length is None or length in known[axis] for axis, length in enumerate(asked)):
            for axis, length in enumerate(asked):
                if length is not None:
                    try:
                        asked[axis] = searches[axis].send(known[axis][length])
                    except StopIteration as done:
                        found[axis], asked[axis] = done.value, None
            continue
        probe = tuple(length if length is not None and length not in known[axis] else start[axis]
                      for axis, length in enumerate(asked))  # fmt: skip
        for axis, length in enumerate(sizes_out(*probe)):
            known[axis][probe[axis]] = length
    return found[0], found[1]  # type: ignore[return-value]


def training_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """The (C, H, W) a classifier was built for: `default_input_size` of zoo models (None when unknown)."""
    size = getattr(model, "default_input_size", None)
    return tuple(int(v) for v in size) if size is not None else None  # type: ignore[return-value]


@dataclass
class _Call:
    name: str
    module: nn.Module
    input: Tensor
    output: Tensor


def _record_calls(root: nn.Module, prefix: str, run: object) -> list[_Call]:
    """Leaf modules of `root` in the order they ran during `run()`, with their input and output."""
    calls: list[_Call] = []
    handles = []
    for name, module in root.named_modules(prefix=prefix):
        if len(list(module.children())) == 0:

            def hook(mod: nn.Module, args: tuple, out: Tensor, name: str = name) -> None:
                calls.append(_Call(name, mod, args[0] if args else None, out))  # type: ignore[arg-type]

            handles.append(module.register_forward_hook(hook))
    try:
        run()  # type: ignore[operator]
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _split(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor, Tensor, list[_Call]]:
    """(trunk, trunk output, model output, recorded head calls) for a zoo classifier or a Sequential."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        features = model.forward_features(x)  # type: ignore[operator]
        output = model(x)
        calls = _record_calls(model, "", lambda: model.forward_head(features))  # type: ignore[operator]
        trunk_names = {call.name for call in _record_calls(model, "", lambda: model.forward_features(x))}  # type: ignore[operator]
        trunk = copy.deepcopy(model)
        for call in calls:
            if call.name not in trunk_names:  # a module shared with the trunk stays
                _set_submodule(trunk, call.name, nn.Identity())
        return _Features(trunk), features, output, calls
    if isinstance(model, nn.Sequential):
        children = list(model.named_children())
        start = _head_start([child for _, child in children], x)
        if start is None:
            raise CnnlabError(
                "this Sequential has no Flatten, Linear or global pooling layer: it is already fully convolutional"
            )
        trunk = nn.Sequential(*[copy.deepcopy(child) for _, child in children[:start]])
        features = trunk(x)
        head = nn.Sequential()
        for name, child in children[start:]:
            head.add_module(name, child)
        calls = _record_calls(head, "", lambda: head(features))
        return trunk, features, model(x), calls
    raise CnnlabError(
        f"cannot find the head of {type(model).__name__}: convert a cnnlab zoo classifier (forward_features / "
        "forward_head) or an nn.Sequential"
    )


def _holds_head_layer(module: nn.Module) -> bool:
    return any(isinstance(m, _HEAD_STARTERS) for m in module.modules())


def _head_start(children: list[nn.Module], x: Tensor) -> int | None:
    """Index of the first child of a Sequential that starts its head (None when none does).

    A child that flattens, pools globally or is dense starts it. A child that only holds such a layer starts it
    unless it returns a map that grows with its input: run at the training size and at twice it, a block that ends on
    pooling, flattening or dense layers gives a vector or a fixed-size map, while a squeeze-excitation block (a global
    pool inside, scaling the channels of the map it returns) gives a larger map, and belongs to the features.
    """
    first = next((i for i, child in enumerate(children) if _holds_head_layer(child)), None)
    if first is None or isinstance(children[first], _HEAD_STARTERS):
        return first
    small: Tensor = x[:1]
    large: Tensor | None = torch.rand(
        1, x.shape[1], 2 * x.shape[2], 2 * x.shape[3], generator=torch.Generator().manual_seed(0)
    ).to(device=x.device, dtype=x.dtype)
    for index, child in enumerate(children):
        if isinstance(child, _HEAD_STARTERS):
            return index
        small_out = child(small)
        try:
            large_out = child(large) if large is not None else None
        except (RuntimeError, ValueError):  # a layer that takes one size only: the head, or a trunk that cannot tell
            large_out = None
        if _holds_head_layer(child) and not _grows(small_out, large_out):
            return index
        small, large = small_out, large_out
    return None


def _grows(small: object, large: object) -> bool:
    """Whether `large` is a map larger than `small` along both sides (the same layer on a larger input)."""
    maps = isinstance(small, Tensor) and isinstance(large, Tensor) and small.ndim == large.ndim == 4
    return maps and large.shape[-2] > small.shape[-2] and large.shape[-1] > small.shape[-1]  # type: ignore[union-attr]


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def _linear_to_conv(linear: nn.Linear, in_shape: tuple[int, int, int]) -> nn.Conv2d:
    """A convolution computing `linear` on a C x h x w map flattened in (C, h, w) order, valid padding."""
    channels, height, width = in_shape
    if channels * height * width != linear.in_features:
        raise CnnlabError(
            f"dense layer reads {linear.in_features} features but receives a {channels}x{height}x{width} map"
        )
    conv = nn.Conv2d(channels, linear.out_features, (height, width), bias=linear.bias is not None)
    conv = conv.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(linear.out_features, channels, height, width))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def _convert_calls(calls: list[_Call], feature_shape: tuple[int, ...], pool: str) -> tuple[nn.Sequential, bool]:
    """Build the convolutional head from the recorded head calls."""
    layers: list[tuple[str, nn.Module]] = []
    shape = tuple(feature_shape[1:])  # (C, h, w) of the current map, as seen at the training size
    pending_flatten = False
    deferred_pool: tuple[int, int] | None = None  # window of a global average pool moved behind the 1x1 convs
    rest_is_linear = [
        all(isinstance(c.module, (nn.Linear, nn.Flatten, nn.Dropout, nn.Identity)) for c in calls[i:])
        for i in range(len(calls) + 1)
    ]
    for index, call in enumerate(calls):
        module, safe_name = call.module, call.name.replace(".", "_")
        if isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                raise CnnlabError(f"cannot convert layer {call.name!r} ({module!r}): only Flatten(1) is supported")
            pending_flatten = True
            continue
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            out_h, out_w = call.output.shape[-2:]
            in_h, in_w = shape[1], shape[2]
            if in_h % out_h or in_w % out_w:
                raise CnnlabError(
                    f"cannot convert layer {call.name!r} ({module!r}): its {in_h}x{in_w} input does not divide "
                    f"into {out_h}x{out_w} cells at the training size"
                )
            kernel = (in_h // out_h, in_w // out_w)
            is_avg = isinstance(module, nn.AdaptiveAvgPool2d)
            if is_avg and (out_h, out_w) == (1, 1) and rest_is_linear[index + 1]:
                deferred_pool = kernel  # 1x1 convs first, then the average (linear maps commute with it)
                shape = (shape[0], 1, 1)
                continue
            # A global pool slides by one feature-map step: each location pools one training-sized window, as the
            # classifier pools its whole map. With the cells' stride a global max pool scored a single window of a
            # larger image (1x1 where 7x7 fit); pools into several cells keep it, their cells being that far apart.
            stride = 1 if (out_h, out_w) == (1, 1) else kernel
            pool_layer = nn.AvgPool2d(kernel, stride=stride) if is_avg else nn.MaxPool2d(kernel, stride=stride)
            layers.append((safe_name, pool_layer))
            shape = (shape[0], out_h, out_w)
            continue
        if isinstance(module, nn.Linear):
            if call.input.ndim != 2:
                raise CnnlabError(
                    f"cannot convert layer {call.name!r}: a dense layer applied to a {call.input.ndim}-D tensor "
                    "(only dense layers on flattened maps can become convolutions)"
                )
            in_shape = shape if pending_flatten else (shape[0], 1, 1)
            layers.append((safe_name, _linear_to_conv(module, in_shape)))
            shape = (module.out_features, 1, 1)
            pending_flatten = False
            continue
        if isinstance(module, _ELEMENTWISE):
            layers.append((safe_name, copy.deepcopy(module)))
            continue
        if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
            layers.append((safe_name, _softmax_over_channels(call, module)))
            continue
        raise CnnlabError(
            f"cannot convert layer {call.name!r} ({type(module).__name__}) in the classifier head: only Flatten, "
            "Linear, adaptive pooling, dropout, element-wise activations and a softmax over the classes can be made "
            "convolutional"
        )
    if pool == "none" and deferred_pool is None:  # it was accepted, recorded in fcn.json, and changed nothing
        raise CnnlabError(
            "--pool none applies to a head that averages its map globally; this one has no global average pool "
            "(a dense layer reads the whole map), so its converted network is the same with the default, window"
        )
    window_pooled = False
    if deferred_pool is not None and pool == "window":
        layers.append(("global_pool", nn.AvgPool2d(deferred_pool, stride=1)))
        window_pooled = True
    head = nn.Sequential()
    for name, layer in layers:
        head.add_module(name, layer)
    return head, window_pooled


def _softmax_over_channels(call: _Call, module: nn.Softmax | nn.LogSoftmax) -> nn.Module:
    """`module` written over dim 1, where it normalises the classes (or channels) of its input, as on a map, where
    dim 1 holds them at every location; one over the batch or a spatial dimension is refused.

    ``dim=-1`` of a score vector [N, classes] is its classes, but on the map [N, classes, H', W'] the last dimension
    is the width; ``dim=None`` is torch's implicit choice, dim 1 for 2-D and 4-D inputs (warned at every call).
    """
    ndim, dim = call.input.ndim, module.dim
    if ndim in (2, 4) and (dim is None or dim % ndim == 1):
        return type(module)(dim=1)
    over = "the batch" if dim is not None and dim % ndim == 0 else "a spatial dimension"
    raise CnnlabError(
        f"cannot convert layer {call.name!r} ({module!r}): it normalises dim {dim} of its {ndim}-D input, {over}, "
        f"which on a score map is not the classes; only {type(module).__name__}(dim=1), over the classes, is the "
        "same on maps"
    )


def _check_chain(calls: list[_Call], features: Tensor, output: Tensor) -> None:
    previous = features
    for call in calls:
        if call.input is not previous:
            raise CnnlabError(
                f"cannot convert: head layer {call.name!r} ({type(call.module).__name__}) does not take the previous "
                "layer's output (the head uses a functional op or a branch); write the head as modules in sequence"
            )
        previous = call.output
    if not torch.equal(previous, output):
        raise CnnlabError(
            "cannot convert: the head's modules, applied in sequence, do not give the model's output (the forward "
            "applies a functional op after them)"
        )


@torch.no_grad()
def to_fully_convolutional(
    model: nn.Module, input_size: tuple[int, int, int] | None = None, pool: str = "window"
) -> FullyConvolutional:
    """Convert a classifier into a fully convolutional network with the same weights.

    Args:
        model: a cnnlab zoo classifier (`forward_features` / `forward_head`) or an `nn.Sequential`; left unchanged.
        input_size: the (C, H, W) it was trained on; default `model.default_input_size`.
        pool: for global-average-pool heads, "window" ends the network with an average over the training
            feature-map size (stride 1: one score per training-sized window, identical outputs at the training
            size) and "none" returns the scores of every feature-map location (a finer map; its mean over the
            locations is the classifier's output at the training size).

    Returns:
        The converted network, in eval mode, on the model's device: [N, classes, H', W'] for any input at least
        as large as `input_size`; at the training size H' = W' = 1 (window pooling or dense heads).

    Raises:
        CnnlabError: naming the layer that cannot be converted, or when the input size is unknown.
    """
    if pool not in ("window", "none"):
        raise CnnlabError(f"pool must be 'window' or 'none', not {pool!r}")
    size = tuple(input_size) if input_size is not None else training_input_size(model)
    if size is None or len(size) != 3:
        raise CnnlabError(
            f"the training input size of {type(model).__name__} is unknown ({size!r}); pass input_size=(C, H, W)"
        )
    was_training = model.training
    model.eval()
    try:
        reference = next(model.parameters())
        probe = torch.rand(2, *size, generator=torch.Generator().manual_seed(0))
        probe = probe.to(device=reference.device, dtype=reference.dtype)
        trunk, features, output, calls = _split(model, probe)
        if features.ndim != 4:
            raise CnnlabError(
                f"the feature extractor of {type(model).__name__} returns a {features.ndim}-D tensor, not a map"
            )
        _check_chain(calls, features, output)
        head, window_pooled = _convert_calls(calls, tuple(features.shape), pool)
        converted = FullyConvolutional(trunk, head, size, window_pooled).eval()  # type: ignore[arg-type]
        check = converted(probe)
        if output.ndim == 2 and check.shape[-2:] == (1, 1):
            difference = (check.flatten(1) - output).abs().max().item()
            if difference > _TOLERANCE * max(1.0, output.abs().max().item()):
                raise CnnlabError(f"conversion of {type(model).__name__} changed its outputs by {difference:.3g}")
        return converted
    finally:
        model.train(was_training)
