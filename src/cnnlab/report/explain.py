"""What a CNN sees: first-layer filters, feature maps of chosen layers and Grad-CAM (Selvaraju et al., 2017).

Works on any `nn.Module` that takes an image batch [N, C, H, W] and returns logits [N, K], or per-pixel logits
[N, K, H, W] (a segmenter): layers are found by running one forward pass with hooks, so no model needs to declare
anything.

- `first_conv_filters(model, image)` / `filter_grid(weight)`: the first convolution's kernels as one image grid.
- `feature_maps(model, image, layers)`: the outputs of named modules for one image.
- `grad_cam(model, image, layer=None, class_index=None)`: the class-discriminative map. The gradients of the class
  score with respect to a layer's feature maps, averaged over space, weight those maps; the ReLU of the weighted sum
  is upsampled to the input's size and scaled to [0, 1]. Default layer: the last module whose output is still a
  spatial map larger than 1x1 (the deepest features before global pooling / the classifier), an adaptive pool that
  enlarges its input not counting (AlexNet's ``avgpool`` below 224 px only repeats cells). For a segmenter the
  class score is its logit summed over the pixels predicted as that class (every pixel when there are none), as
  Seg-Grad-CAM does (Vinogradova et al., 2020), and the default layer is the decoder's last map at a quarter of the
  input's side (stride 4), else the last at the coarsest resolution (FCN's trunk): its last maps are at the input's
  size. On a U-Net trained on the digit canvases, the stride-4 decoder map covered the explained digit in each of
  four images tried, where the bottleneck's 4x4 map (Seg-Grad-CAM's choice) lit empty corners or nothing.
- `mean_grad_cam(members, image, class_index)`: an ensemble's Grad-CAM: each member's at its own layer (default: its
  deepest map), for the ensemble's class, scaled to peak 1 and averaged, as the ensemble weighs its members equally.
  Grad-CAM of the ensemble's own output (the log of the mean probability) would reach every member through its
  softmax, whose gradient vanishes for a confident member: the members sure of the class would count least.
- `plot_filters`, `plot_feature_maps`, `plot_grad_cam`: the PNGs `cnnlab explain` writes.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError, listed
from cnnlab.files import save_figure_whole

__all__ = [
    "GradCam",
    "class_shares",
    "feature_maps",
    "filter_grid",
    "first_conv_filters",
    "grad_cam",
    "mean_grad_cam",
    "no_maps_message",
    "plot_feature_maps",
    "plot_filters",
    "plot_grad_cam",
    "spatial_layers",
]


def first_conv_filters(model: nn.Module, image: torch.Tensor | None = None) -> tuple[str, torch.Tensor]:
    """The name and weights [out, in, kh, kw] of the first `nn.Conv2d` to run on `image` (one preprocessed image
    [C, H, W]), else, with no image or where none runs, the first in registration order.

    A network named by code may register a convolution before its stem (a shortcut, a spare head): the first
    registered one was shown as the "first-layer filters", though the image never met it first.

    Raises:
        CnnlabError: the model has no 2-D convolution (a dense network has no filters to show).
    """
    convolutions = {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    ran: list[str] = []
    if image is not None and convolutions:
        handles = [module.register_forward_pre_hook(lambda *_args, name=name: ran.append(name))
                   for name, module in convolutions.items()]  # fmt: skip
        _run_hooked(model, image, handles)
    for name in [*ran[:1], *convolutions]:
        return name, convolutions[name].weight.detach().float().cpu()
    raise CnnlabError(f"{type(model).__name__} has no Conv2d layer, so there are no filters to show")


def filter_grid(weight: torch.Tensor, max_filters: int = 64, padding: int = 1) -> torch.Tensor:
    """Tile conv kernels into one image [rows*(kh+p), cols*(kw+p), 3] in [0, 1], each kernel scaled on its own.

    Kernels with 3 input channels are shown as RGB; any other count as the mean over input channels, in grey.
    """
    weight = weight[:max_filters].float()
    count, in_channels, kh, kw = weight.shape
    kernels = weight if in_channels == 3 else weight.mean(1, keepdim=True).expand(count, 3, kh, kw)
    flat = kernels.reshape(count, -1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    kernels = ((flat - low) / (high - low).clamp_min(1e-12)).reshape(count, 3, kh, kw)
    cols = int(count**0.5 + 0.999)
    rows = -(-count // cols)
    grid = torch.ones(rows * (kh + padding) - padding, cols * (kw + padding) - padding, 3)
    for index in range(count):
        r, c = divmod(index, cols)
        top, left = r * (kh + padding), c * (kw + padding)
        grid[top : top + kh, left : left + kw] = kernels[index].permute(1, 2, 0)
    return grid


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if name and not any(True for _ in m.children())]


def _is_map(output: Any) -> bool:
    """A module's output that counts as spatial maps: 4-D, with H and W above 1."""
    return isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1


def _enlarges(module: nn.Module, inputs: Any, output: Any) -> bool:
    """An adaptive pool whose output is taller or wider than its input: it repeats its input's cells, adding nothing
    (AlexNet's ``avgpool`` turns the 1x1 or 3x3 maps of a small input into 6x6)."""
    pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    if not isinstance(module, pools) or not inputs or not isinstance(inputs[0], torch.Tensor):
        return False
    return any(out > size for out, size in zip(output.shape[-2:], inputs[0].shape[-2:], strict=True))


def spatial_layers(model: nn.Module, image: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Leaf modules whose output is a 4-D map with H, W > 1, in the order they run, with the output shapes.

    An adaptive pool that enlarges its input is left out: its maps repeat the previous layer's cells (AlexNet's
    ``avgpool`` at any input below 224 px), so it is no deeper feature map and its Grad-CAM is the previous map's
    blown up, or nothing where that map was 1x1.

    Args:
        model: the network (run in eval mode; its train/eval flags are restored).
        image: one preprocessed image [C, H, W].
    """
    seen: list[tuple[str, tuple[int, ...]]] = []
    names = set()

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if _is_map(output) and not _enlarges(module, inputs, output):
                if name in names:  # a module called twice (a shared ReLU): keep its last call
                    seen[:] = [entry for entry in seen if entry[0] != name]
                names.add(name)
                seen.append((name, tuple(output.shape[1:])))

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in _leaf_modules(model)]
    _run_hooked(model, image, handles)
    return seen


def _run_hooked(model: nn.Module, image: torch.Tensor, handles: list[Any]) -> None:
    """Run `model` once on one preprocessed image [C, H, W] in eval mode without gradients (batch norm must not
    update its statistics from this one image), then remove the hooks' `handles` and give every module its mode."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            model(image.unsqueeze(0).to(_device(model)))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.train(mode)


def no_maps_message(model: nn.Module, image: torch.Tensor, consequence: str, name: str | None = None) -> str:
    """Why `model` has no layer `spatial_layers` lists on `image`: a dense network, or an input so small that every
    4-D output is a single cell or line (a network named by code at ``--input 1x8x8``), which then says so.

    Args:
        model: the network.
        image: one preprocessed image [C, H, W].
        consequence: what follows for the caller ("so Grad-CAM has no layer").
        name: what to call the model (the lab's: the run it loaded); default its class's name.
    """
    shapes: list[tuple[int, ...]] = []

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            shapes.append(tuple(output.shape[-2:]))

    _run_hooked(model, image, [module.register_forward_hook(keep) for _, module in _leaf_modules(model)])
    name = name or type(model).__name__
    if not shapes:
        return f"{name} produces no spatial feature maps (is it a dense network?), {consequence}"
    height, width = max(shapes, key=lambda shape: shape[0] * shape[1])
    size = "x".join(map(str, image.shape))
    return (
        f"{name}'s feature maps on a {size} input are at most {height}x{width}, too small to show where (2x2 at "
        f"least), {consequence}: give it a larger input"
    )


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not name.strip():  # "" names the model itself, whose output is its logits, not maps
        known = [n for n, _ in model.named_modules() if n]
        raise CnnlabError(
            f"a layer name is empty; name one of the model's layers ({listed(known, 6)}; --list-layers lists "
            f"all {len(known)})"
        )
    if name not in modules:
        raise CnnlabError(unknown_layer_message(model, name))
    return modules[name]


def unknown_layer_message(model: nn.Module, name: str) -> str:
    """ "model has no layer 'x'", the closest names (of every module, blocks too: ``layer4`` names one) and how to see
    them all: eight names of hundreds, cut off in the middle of the first block, helped no one find ``layer4.2``."""
    known = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if len(known) <= 8:
        every = f"its {len(known)} layers: {', '.join(known)}"
    else:
        every = f"--list-layers lists its {len(known)} layers with their output sizes"
    if close:
        guess = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
        return f"model has no layer {name!r}; did you mean {guess}? {every}"
    begin = f"its layers begin {listed(known, 6)}; " if len(known) > 8 else ""
    return f"model has no layer {name!r}; {begin}{every}"


@dataclass
class LayerOutput:
    """One module of a network as it ran on an image: its name (what ``--layer`` and ``--cam-layer`` take), its type,
    what it output: the shape without the batch, the type of a non-tensor (a tuple) or "did not run", and whether
    that is feature maps (4-D with H, W > 1: what `feature_maps` and `grad_cam` can show)."""

    name: str
    type: str
    output: str
    maps: bool


def layer_outputs(model: nn.Module, image: torch.Tensor) -> list[LayerOutput]:
    """Every module of `model` (blocks and their parts) with its output on one preprocessed image [C, H, W], in the
    order they start running (a block before its parts), then the modules that did not run; a module called twice
    shows its last output."""
    order: dict[str, None] = {}
    outputs: dict[str, str] = {}
    maps: dict[str, bool] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def enter(_module: nn.Module, _inputs: Any, name: str = name) -> None:
            order.setdefault(name)

        def leave(_module: nn.Module, _inputs: Any, output: Any, name: str = name) -> None:
            is_tensor = isinstance(output, torch.Tensor)
            outputs[name] = "x".join(map(str, output.shape[1:])) if is_tensor else f"a {type(output).__name__}"
            maps[name] = _is_map(output)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    _run_hooked(model, image, handles)
    modules = dict(model.named_modules())
    names = list(order) + [name for name in modules if name and name not in order]
    return [
        LayerOutput(name, type(modules[name]).__name__, outputs.get(name, "did not run"), maps.get(name, False))
        for name in names
    ]


def _refuse_unless_maps(model: nn.Module, image: torch.Tensor, name: str, output: Any, deepest: bool) -> None:
    """Raise unless `output` (what layer `name` returned for a batch of one, None when it did not run) is maps
    [1, C, h, w] of more than one cell, naming layers that have maps: the deepest (for Grad-CAM) or the default feature
    layers. A global pool's [1, C, 1, 1] says nothing of where: its Grad-CAM was one colour over the whole image, as if
    every pixel were evidence, and each of its maps one flat square."""
    if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2:].numel() > 1:
        return
    if output is None:
        what = "did not run when the model ran on the image, so it has no output"
    elif isinstance(output, torch.Tensor) and output.ndim == 4:
        what = f"outputs {list(output.shape)} for one image, a single cell (a global pool's), not maps of where"
    elif isinstance(output, torch.Tensor):
        what = f"outputs {list(output.shape)} for one image, not feature maps [1, C, h, w]"
    else:
        what = f"outputs a {type(output).__name__}, not feature maps [1, C, h, w]"
    spatial = [layer for layer, _ in spatial_layers(model, image)]
    if not spatial:
        raise CnnlabError(f"layer {name!r} {what}, and {type(model).__name__} has no layer with maps to show")
    if deepest:
        advice = f"pick a layer with maps, such as the deepest: {', '.join(reversed(spatial[-3:]))}"
    else:
        advice = f"pick a layer with maps, such as {', '.join(default_feature_layers(model, image))}"
    raise CnnlabError(f"layer {name!r} {what}; {advice} ({len(spatial)} layers have maps)")


def _refuse_unused(model: nn.Module, image: torch.Tensor, name: str) -> None:
    """Raise for a Grad-CAM layer that runs but whose maps the class score does not depend on (a side branch, an
    auxiliary head, a part run without gradients), naming the deepest layers the logits do depend on."""
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(layer: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if _is_map(output):
                outputs.pop(layer, None)  # a module called twice: its last call, in running order
                outputs[layer] = output

        return hook

    handles = [module.register_forward_hook(hook_for(layer)) for layer, module in _leaf_modules(model)]
    try:
        with torch.enable_grad():
            logits = model(image.unsqueeze(0).to(_device(model)).requires_grad_(True))
            tracked = {layer: output for layer, output in outputs.items() if output.requires_grad}
            grads = torch.autograd.grad(logits.sum(), list(tracked.values()), allow_unused=True) if tracked else []
    finally:
        for handle in handles:
            handle.remove()
    feeding = [layer for layer, grad in zip(tracked, grads, strict=True) if grad is not None]
    advice = f"pick a layer on the way to the logits, such as the deepest: {', '.join(reversed(feeding[-3:]))}"
    raise CnnlabError(
        f"layer {name!r} runs, but the class score does not depend on its output, so Grad-CAM has no gradient to "
        f"weight its maps with; {advice if feeding else 'no layer with maps leads to the logits'}"
    )


def default_feature_layers(model: nn.Module, image: torch.Tensor, count: int = 3) -> list[str]:
    """`count` layers spread from shallow to deep: the first learned layer's maps and the last module at each spatial
    resolution (the end of each stage), evenly sampled.

    Layers before the first one with parameters (a normalisation inside the network) output the image itself, not
    features, and are passed over. A block that computes its strided shortcut before its main path (whose first
    convolution still runs at the larger resolution) makes the resolutions go A, B, A, B: the first B and the second A
    are that block's inside, and A's stage ends where the block starts (ResNet-50's stage 1 ended at
    ``layer2.0.bn1`` inside stage 2's first block, and stage 2 at its shortcut's batch norm).
    """
    layers = spatial_layers(model, image)
    if not layers:
        raise CnnlabError(no_maps_message(model, image, "so it has no feature maps to show"))
    modules = dict(model.named_modules())
    learned = [i for i, (name, _) in enumerate(layers) if any(True for _ in modules[name].parameters())]
    layers = layers[learned[0] :] if learned else layers
    # the last module of each run at one resolution
    runs: list[tuple[str, tuple[int, ...]]] = []
    for name, shape in layers:
        if runs and runs[-1][1][1:] == shape[1:]:
            runs[-1] = (name, shape)
        else:
            runs.append((name, shape))
    stage_ends: list[tuple[str, tuple[int, ...]]] = []
    index = 0
    while index < len(runs):
        stage_ends.append(runs[index])
        follows = [shape[1:] for _, shape in runs[index : index + 4]]
        index += 3 if len(follows) == 4 and follows[0] == follows[2] and follows[1] == follows[3] else 1
    candidates = [layers[0]] + stage_ends if layers[0] not in stage_ends else stage_ends
    if len(candidates) <= count:
        return [name for name, _ in candidates]
    picks = [round(i * (len(candidates) - 1) / (count - 1)) for i in range(count)]
    return [candidates[i][0] for i in sorted(set(picks))]


def feature_maps(model: nn.Module, image: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The outputs [C, h, w] (CPU, float) of the named modules for one preprocessed image [C, H, W].

    Raises:
        CnnlabError: a name is empty or unknown, or its module's output is not maps (a classifier's vector).
    """
    captured: dict[str, Any] = {}
    handles = []
    for name in layers:

        def hook(_module: nn.Module, _inputs: Any, output: Any, name: str = name) -> None:
            # A copy: an in-place op after the layer (ReLU(inplace=True) after a batch norm) rewrites its output.
            captured[name] = output.detach().clone() if isinstance(output, torch.Tensor) else output

        handles.append(_module(model, name).register_forward_hook(hook))
    _run_hooked(model, image, handles)
    for name in layers:  # a vector (the classifier's, a flatten's) has no maps to plot
        _refuse_unless_maps(model, image, name, captured.get(name), deepest=False)
    return {name: captured[name].detach()[0].float().cpu().clone() for name in layers}


@dataclass
class GradCam:
    """A Grad-CAM result.

    Attributes:
        heatmap: [H, W] in [0, 1], the input's spatial size (all zeros when no location supports the class).
        class_index: the class explained.
        probability: softmax probability of that class (a segmenter: the share of the pixels predicted as it).
        layer: the module whose feature maps were used (an ensemble's: the name in each member, or the members'
            names joined by " / " where they differ).
        layer_heatmap: [h, w] the map at the layer's own resolution, before upsampling (not normalised; an ensemble's:
            the mean of its members' maps each scaled to peak 1, at the largest member's resolution).
        members: how many members' Grad-CAMs `heatmap` averages (1: a single network's).
    """

    heatmap: torch.Tensor
    class_index: int
    probability: float
    layer: str
    layer_heatmap: torch.Tensor
    members: int = 1

    @property
    def where(self) -> str:
        """Where the maps come from, as a person reads it: "features.5", or "features.5, mean of 2 members"."""
        return self.layer if self.members == 1 else f"{self.layer}, mean of {self.members} members"


def class_shares(logits: torch.Tensor) -> torch.Tensor:
    """[K] the share of the argmax over K in logits [1, K] or [1, K, H, W]: a segmenter's pixel shares (CPU)."""
    predicted = logits.argmax(1).flatten().cpu()
    return torch.bincount(predicted, minlength=logits.shape[1]).float() / predicted.numel()


def _segmenter_padded_size(layers: list[tuple[str, tuple[int, ...]]], image: torch.Tensor) -> tuple[int, int] | None:
    """The size of a segmenter's last maps, its input's padded to its stride (the input's own when it is a multiple),
    or None for a classifier, whose last maps are smaller than its input."""
    height, width = image.shape[-2:]
    last = tuple(layers[-1][1][1:]) if layers else (0, 0)
    return (last[0], last[1]) if last[0] >= height and last[1] >= width else None


def _segmenter_cam_layer(layers: list[tuple[str, tuple[int, ...]]], size: tuple[int, int]) -> str:
    """The last map at stride 4 that runs after the coarsest map (a decoder's), else the last at the coarsest."""
    areas = [h * w for _, (_, h, w) in layers]
    bottom = max(i for i, area in enumerate(areas) if area == min(areas))
    quarter = (-(-size[0] // 4), -(-size[1] // 4))  # a padded input's maps round up
    decoder = [name for name, shape in layers[bottom + 1 :] if tuple(shape[1:]) == quarter]
    return decoder[-1] if decoder else layers[bottom][0]


def _default_cam_layer(model: nn.Module, image: torch.Tensor) -> tuple[str, tuple[int, int] | None]:
    """The layer `grad_cam` uses when none is named (see its doc), and a segmenter's input size padded to its stride
    (None for a classifier)."""
    layers = spatial_layers(model, image)
    if not layers:
        raise CnnlabError(no_maps_message(model, image, "so Grad-CAM has no layer"))
    padded = _segmenter_padded_size(layers, image)
    return (layers[-1][0] if padded is None else _segmenter_cam_layer(layers, padded)), padded


def default_cam_layer(model: nn.Module, image: torch.Tensor) -> str:
    """The layer `grad_cam` weighs when none is named: the deepest map, a segmenter's decoder map at stride 4."""
    return _default_cam_layer(model, image)[0]


def grad_cam(
    model: nn.Module, image: torch.Tensor, layer: str | None = None, class_index: int | None = None
) -> GradCam:
    """Grad-CAM of `class_index` (default: the predicted class) for one preprocessed image [C, H, W].

    Args:
        model: returns logits [1, K] for a batch of one (or [1, K, H, W]: a segmenter).
        image: the preprocessed image.
        layer: name of the module whose output maps are weighted (default: the deepest spatial map, see module doc).
        class_index: class to explain (default: the predicted one; a segmenter's: the one with the most pixels).

    Raises:
        CnnlabError: `layer` is empty or unknown or its output is not maps, or `class_index` is not a class.
    """
    padded = None  # a segmenter's input size padded to its stride, which its maps cover
    if layer is None:
        layer, padded = _default_cam_layer(model, image)
    target = _module(model, layer)
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        captured.append(output)
        # The rest of the model runs on a copy, so that an in-place op after the layer (ReLU(inplace=True) after a
        # batch norm) leaves the layer's own maps and gradients, not the op's, to weight and sum.
        return output.clone() if isinstance(output, torch.Tensor) else None

    handle = target.register_forward_hook(keep)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.enable_grad():
            batch = image.unsqueeze(0).to(_device(model)).requires_grad_(True)  # a graph even for frozen weights
            logits = model(batch)
            if logits.ndim not in (2, 4):
                wanted = "logits [N, K] or [N, K, H, W] (K classes)"
                raise CnnlabError(f"Grad-CAM needs {wanted}; the model returned {tuple(logits.shape)}")
            predicted = logits.detach().argmax(1)[0]  # the class, or the class of each pixel
            shares = class_shares(logits.detach())
            index = int(shares.argmax()) if class_index is None else class_index
            if not 0 <= index < logits.shape[1]:
                raise CnnlabError(f"class index {index} is outside the model's {logits.shape[1]} classes")
            if logits.ndim == 2:
                score = logits[0, index]
            else:  # the class's pixels, or all of them where none is predicted as it
                region = predicted == index
                score = logits[0, index][region].sum() if bool(region.any()) else logits[0, index].sum()
            activations = captured[-1] if captured else None
            _refuse_unless_maps(model, image, layer, activations, deepest=True)  # its gradients are averaged over h, w
            assert activations is not None  # _refuse_unless_maps raised otherwise
            used = activations.requires_grad  # False: computed without a graph (e.g. under torch.no_grad)
            (gradients,) = torch.autograd.grad(score, activations, allow_unused=True) if used else (None,)
            if gradients is None:  # PyTorch said "One of the differentiated Tensors appears to not have been used"
                _refuse_unused(model, image, layer)
    finally:
        handle.remove()
        for module, mode in modes.items():
            module.train(mode)
    if logits.ndim == 4 and padded is None:  # a segmenter explained at a layer the caller named
        padded = _segmenter_padded_size(spatial_layers(model, image), image)
    weights = gradients.mean(dim=(2, 3), keepdim=True)  # 1 x C x 1 x 1: each map's importance for the class
    cam = F.relu((weights * activations).sum(1, keepdim=True)).detach().float()  # 1 x 1 x h x w
    height, width = image.shape[-2:]
    # A segmenter's maps cover the input padded at the bottom and right: upsampled to that, then the image cropped
    # out, so that the map lies on the pixels it was computed from rather than stretched over them.
    size = padded or (height, width)
    upsampled = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0, :height, :width]
    peak = float(upsampled.max())
    heatmap = upsampled / peak if peak > 0 else upsampled
    probability = float(logits.detach().float().softmax(1)[0, index]) if logits.ndim == 2 else float(shares[index])
    return GradCam(heatmap.cpu(), index, probability, layer, cam[0, 0].cpu())


def mean_grad_cam(
    members: Sequence[nn.Module], image: torch.Tensor, class_index: int | None = None, layer: str | None = None
) -> GradCam:
    """An ensemble's Grad-CAM: its members' (see `grad_cam`), each scaled to peak 1, averaged and scaled to peak 1.

    Args:
        members: the networks whose softmax probabilities the ensemble averages (`cnnlab.train.saved.Ensemble`).
        image: the preprocessed image [C, H, W].
        class_index: class to explain (default: the ensemble's prediction, the argmax of the mean probability).
        layer: a module name within each member (default: each member's own deepest map).

    Returns:
        `probability` is the ensemble's (the members' mean), `members` their count.

    Raises:
        CnnlabError: as `grad_cam`, naming the member.
    """
    if class_index is None:
        with torch.inference_mode():
            batch = image.unsqueeze(0)
            mean = torch.stack([m(batch.to(_device(m))).float().softmax(1).cpu() for m in members]).mean(0)
        class_index = int(mean.argmax(1)[0])
    cams = []
    for number, member in enumerate(members):
        try:
            cams.append(grad_cam(member, image, layer=layer, class_index=class_index))
        except CnnlabError as error:
            raise CnnlabError(f"member {number} of the ensemble: {error}") from error
    heatmap = torch.stack([cam.heatmap for cam in cams]).mean(0)
    peak = float(heatmap.max())
    heatmap = heatmap / peak if peak > 0 else heatmap
    size = max((tuple(cam.layer_heatmap.shape) for cam in cams), key=lambda shape: shape[0] * shape[1])
    scaled = []
    for cam in cams:
        top = float(cam.layer_heatmap.max())
        own = cam.layer_heatmap / top if top > 0 else cam.layer_heatmap
        if tuple(own.shape) != size:
            own = F.interpolate(own[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        scaled.append(own)
    names = list(dict.fromkeys(cam.layer for cam in cams))  # the members' layers in order, each once
    probability = sum(cam.probability for cam in cams) / len(cams)
    return GradCam(heatmap, class_index, probability, " / ".join(names), torch.stack(scaled).mean(0), len(cams))


# ---------------------------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_filters(
    model: nn.Module,
    path: str | os.PathLike[str],
    max_filters: int = 64,
    of: str = "",
    image: torch.Tensor | None = None,
) -> Path:
    """Save the first convolution's kernels (the first to run on `image`, see `first_conv_filters`) as an image grid;
    returns `path`. `of` names whose they are in the title (an ensemble's member)."""
    name, weight = first_conv_filters(model, image)
    grid = filter_grid(weight, max_filters)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 6))
    axis.imshow(grid.numpy(), interpolation="nearest")
    out, inp, kh, kw = weight.shape
    groups = model.get_submodule(name).groups
    if groups > 1 and inp == 1:  # a depthwise conv's kernel sees one channel: "grey" read as a grey-scale input
        colour = "depthwise, one per input channel"
    elif groups > 1:
        colour = f"{groups} groups, mean over {inp} input channels"
    else:
        colour = "RGB" if inp == 3 else ("grey" if inp == 1 else f"mean over {inp} input channels")
    title = f"first-layer filters: {name} ({min(out, max_filters)} of {out}, {kh}x{kw}, {colour})"
    axis.set_title(f"{title}\nof {of}" if of else title, fontsize=10 if of else None)
    axis.axis("off")
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=110)
    plt.close(figure)
    return Path(path)


def plot_feature_maps(
    maps: dict[str, torch.Tensor], path: str | os.PathLike[str], per_layer: int = 8, of: str = ""
) -> Path:
    """One row per layer: its `per_layer` most active channels (highest mean activation); returns `path`. `of` names
    whose they are in the title (an ensemble's member)."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(maps), per_layer, figsize=(1.6 * per_layer, 1.9 * len(maps)), squeeze=False)
    for row, (name, tensor) in enumerate(maps.items()):
        strongest = tensor.mean(dim=(1, 2)).argsort(descending=True)[:per_layer]
        for col in range(per_layer):
            axis = axes[row][col]
            axis.axis("off")
            if col < len(strongest):
                axis.imshow(tensor[int(strongest[col])].numpy(), cmap="viridis")
                axis.set_title(f"ch {int(strongest[col])}", fontsize=7)
        axes[row][0].text(-0.1, 0.5, f"{name}\n{tuple(tensor.shape)}", transform=axes[row][0].transAxes,
                          ha="right", va="center", fontsize=7)  # fmt: skip
    figure.suptitle(f"feature maps{f' of {of}' if of else ''} (most active channels per layer)")
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=110)
    plt.close(figure)
    return Path(path)


def plot_grad_cam(
    display: torch.Tensor,
    cam: GradCam,
    label: str,
    path: str | os.PathLike[str],
    pixel_share: bool = False,
    predicted: tuple[str, float] | None = None,
) -> Path:
    """The image, the heatmap and their overlay side by side; `display` is [H, W, 3] in [0, 1]; returns `path`.
    With `pixel_share` (a segmenter) the class's score is its share of the pixels. `predicted`: the class the model
    gives with its score, when the one explained is another (asked for), which the title then says."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.6 if predicted is None else 3.9))  # room for a second line
    image = display.numpy()
    axes[0].imshow(image)
    axes[0].set_title("input (as the model sees it)", fontsize=9)
    axes[1].imshow(cam.heatmap.numpy(), cmap="jet", vmin=0, vmax=1)
    shape = tuple(cam.layer_heatmap.shape)
    where = f"{cam.layer} {shape}" if cam.members == 1 else f"{cam.layer} {shape}, mean of {cam.members} members"
    axes[1].set_title(f"Grad-CAM at {where}", fontsize=9)
    axes[2].imshow(image)
    axes[2].imshow(cam.heatmap.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    share = " of the pixels" if pixel_share else ""
    title = f"{label} ({cam.probability:.1%}{share})"
    if predicted is not None:  # the figure alone must not pass an asked-for class off as the prediction
        title += f", as asked;\nthe model's class: {predicted[0]} ({predicted[1]:.1%}{share})"
    axes[2].set_title(title, fontsize=9)
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=110)
    plt.close(figure)
    return Path(path)
