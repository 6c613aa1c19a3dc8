"""`budget()`: parameters, MACs and memory of a CNN, in the textbook view and the realistic view, optionally measured.

Two views of memory, each component shown separately:

- **textbook**: every layer's output is stored once for backward; one prediction needs the parameters plus the two
  largest consecutive activations (a sequential network can drop a layer's input once its output exists); training a
  batch needs the parameters, the batch, all activations, the gradients and the optimizer state.
- **realistic**: what PyTorch's autograd really keeps, counted by tracing one training step on the meta device (no
  memory allocated): the distinct tensors saved for backward (a conv keeps its input, a ReLU its output, max pooling
  its input and int64 indices, batch norm its input and per-channel statistics, CPU dropout a float mask), and the
  peak of all live tensors during forward, backward and the optimizer step.

`measure=True` runs the same step for real and reports the measured bytes beside the estimate with their ratio.
"""

from __future__ import annotations

import collections.abc
import contextlib
import inspect
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.budget.detection import DenseDetection, check_channels, detection_info, is_detection_network
from cnnlab.budget.python_model import user_code_line
from cnnlab.budget.spec import LayerSpec, build_module, infer_shapes, load_spec_file, parse_spec
from cnnlab.budget.trace import Row, TraceResult, optimizer_copies, resolve_dtype, trace
from cnnlab.errors import CnnlabError, first_line
from cnnlab.train.device import parse_device, resolve_device
from cnnlab.train.saved import ENSEMBLE_SPEC, MODEL_SPEC, Ensemble

_VIEW_TYPES = ("Flatten", "Identity", "Unflatten")
# The textbook treats an activation as part of its layer (applied in place), not as a second stored output.
_ACTIVATION_TYPES = ("ReLU", "ReLU6", "Tanh", "Sigmoid", "GELU", "SiLU", "LeakyReLU", "ELU", "Softmax", "Hardswish")


def textbook_outputs(rows: list[Row]) -> list[int]:
    """Per-sample output bytes the textbook counts: every layer, activations folded into their layer, views free."""
    return [row.activation_bytes for row in rows if row.type not in _VIEW_TYPES + _ACTIVATION_TYPES]


@dataclass
class BudgetReport:
    """Everything `cnnlab budget` prints; `to_dict()` gives the stable JSON keys."""

    model_name: str
    input_shape: tuple[int, ...]
    batch_size: int
    dtype: str
    optimizer: str
    params: int
    trainable_params: int
    buffers: int
    macs: int
    output_shape: tuple[int, ...]
    layers: list[Row]
    sequential: bool
    inference: dict[str, int]
    training: dict[str, int]
    realistic: dict[str, int]
    measured: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    device: str = "cpu"  # the device type the training figures are for: its optimizer step (see `budget`)
    spec_layers: list[LayerSpec] | None = field(default=None, repr=False)
    # per-sample output bytes of each layer the textbook counts (`textbook_outputs`), whatever rows `layers` holds
    textbook_layer_bytes: list[int] = field(default_factory=list, repr=False)
    # modules (name -> parameters) that run in training mode only (auxiliary heads), and those whose parameters get
    # no gradient in a training step (never called, or cut off from the output): see `TraceResult`
    training_only: dict[str, int] = field(default_factory=dict)
    no_gradient: dict[str, int] = field(default_factory=dict)
    # batch norms that saw one value per channel in the training step (a 1x1 map at batch 1): PyTorch refuses that
    # step, so it was traced with the check lifted (see `trace._OneValueBatchNorm`)
    one_value_batch_norms: list[str] = field(default_factory=list)
    # the module depth `layers` was traced at when --depth chose it (None: leaves, or a spec's own layers), and the
    # per-sample activation bytes of those default rows, which the textbook figures sum whatever rows `layers` holds
    depth: int | None = None
    figure_activation_bytes: int = 0
    # parameters no row holds (qualified name -> values): on a module above the rows, in `params` but in no row
    unlisted_params: dict[str, int] = field(default_factory=dict)
    # a torchvision detection network (`cnnlab.budget.detection.detection_info`): sized at its transform's resized
    # shape, its backbone and dense heads exactly, its per-box heads per box
    detection: dict[str, Any] | None = None
    # the recurrent modules (qualified name -> LSTM, GRU or RNN): their fused kernels' workspace is not sized
    recurrent: dict[str, str] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        """Floating-point operations of one forward pass per sample: FLOPs = 2 x MACs."""
        return 2 * self.macs

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: stable keys, bytes as integers, shapes as lists (without the batch dimension)."""
        return {
            "model": self.model_name,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "optimizer": self.optimizer,
            "device": self.device,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "buffers": self.buffers,
            "macs": self.macs,
            "flops": self.flops,
            "output_shape": list(self.output_shape),
            "layers": [
                {
                    "name": row.name,
                    "type": row.type,
                    "output_shape": list(row.output_shape),
                    "params": row.params,
                    "trainable_params": row.trainable_params,
                    "macs": row.macs,
                    "activation_bytes": row.activation_bytes,
                    "saved_bytes": row.saved_bytes,
                }
                for row in self.layers
            ],
            "training_only_modules": dict(self.training_only),
            "no_gradient_modules": dict(self.no_gradient),
            "one_value_batch_norms": list(self.one_value_batch_norms),
            "inference": dict(self.inference),
            "training": dict(self.training),
            "realistic": dict(self.realistic),
            **({"measured": dict(self.measured)} if self.measured is not None else {}),
            **({"plan": self.plan} if self.plan is not None else {}),
            **({"detection": self.detection} if self.detection is not None else {}),
            # the JSON's word for the recurrent note's "not sized"
            **({"recurrent": {"modules": dict(self.recurrent), "workspace_sized": False}} if self.recurrent else {}),
        }


def parse_memory(text: str) -> int:
    """Parse a memory size into bytes: ``"8GiB"``, ``"16 GiB"``, ``"512MB"``, ``"1.5G"``, ``"2PiB"``, ``"4096"``.

    A prefix k, M, G, T, P or E (any case, spaces around it allowed) followed by ``iB`` is binary and by ``B`` decimal;
    alone (``16G``) it is binary. No prefix is bytes (``4096``, ``4096B``, ``4096 bytes``). P and E were refused (a
    plan for a huge input needs them).
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtpe])\s*(i?)(b?)|(b|bytes?)?)\s*", str(text).lower())
    if not match:
        raise CnnlabError(f"cannot read memory size {text!r}; write e.g. 8GiB, 512MB, 16G or 1PiB")
    value, prefix, binary, byte, _ = match.groups()
    power = "kmgtpe".index(prefix) + 1 if prefix else 0
    base = 1000 if (prefix and byte and not binary) else 1024
    return int(float(value) * base**power)


# Files a TARGET may name by mistake for a run's folder (weights, checkpoints, exports).
_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".onnx", ".pkl", ".py", ".txt")


def check_zoo_input(name: str, shape: tuple[int, ...], default: tuple[int, ...]) -> None:
    """Refuse an input a zoo model cannot take, in its terms (the traced error said "Invalid channel dimensions")."""
    example = "x".join(map(str, default))
    given = "x".join(map(str, shape))
    if len(shape) != len(default):
        raise CnnlabError(
            f"{name} takes one sample as {len(default)} sizes (channels x height x width, e.g. {example}); "
            f"--input {given} has {len(shape)}"
        )
    if shape[0] != default[0]:
        raise CnnlabError(
            f"{name} takes {default[0]}-channel input (e.g. {example}); --input {given} has {shape[0]} "
            + ("channel" if shape[0] == 1 else "channels")
        )


def resolve_model(
    model: nn.Module | str | list[str] | Path, input_shape: tuple[int, ...] | None, on_meta: bool = False
) -> tuple[str, nn.Module, tuple[int, ...], list[LayerSpec] | None]:
    """Turn a module, a zoo name, a run, layer strings or a spec file into (name, module, input shape, spec).

    Args:
        model: an `nn.Module`, a zoo model name, a saved run (its folder, ``model.json`` or ``ensemble.json``),
            layer strings, or a YAML/JSON spec file.
        input_shape: one sample's shape; zoo models, runs and spec files may give their own.
        on_meta: build a zoo model on the meta device: the estimates never need its weights, and initialising them
            takes seconds for a large model (1.6 s for resnet152 on two cores).
    """
    if isinstance(model, nn.Module):
        if input_shape is None:
            input_shape = getattr(model, "default_input_size", None)
        if input_shape is None:
            raise CnnlabError("give the input shape of one sample, e.g. input_shape=(3, 224, 224)")
        return type(model).__name__, model, tuple(input_shape), None
    if isinstance(model, (list, tuple)):
        from cnnlab.models import is_model

        named = [str(line).strip() for line in model if is_model(str(line).strip())]
        if named:  # read as layer strings, 'resnet18 resnet50' asked for --input, then called resnet18 a layer type
            raise CnnlabError(
                f"{named[0]} is a zoo model, not a layer: budget one model per command (`cnnlab budget {named[0]}`)"
            )
        parsed = parse_spec(list(model))  # before the input is asked for: what is no spec is said so first
        if input_shape is None:
            raise CnnlabError("a layer spec needs --input, the shape of one sample, e.g. --input 3x200x300")
        layers = infer_shapes(parsed, tuple(input_shape))
        return "spec", _built(layers, on_meta), tuple(input_shape), layers
    text = str(model)
    if Path(text).is_dir() or Path(text).name in (MODEL_SPEC, ENSEMBLE_SPEC):
        return _resolve_run(text, input_shape, on_meta)
    if text.lower().endswith((".yaml", ".yml", ".json")) or Path(text).is_file():
        file_shape, layers = load_spec_file(text)
        shape = tuple(input_shape) if input_shape is not None else file_shape
        if shape is None:
            raise CnnlabError(f"{text}: give the input shape with --input or an 'input:' key in the file")
        layers = infer_shapes(layers, shape)
        return Path(text).stem, _built(layers, on_meta), shape, layers
    # a zoo name has no folder and is no file: "unknown model 'runs/mnist/a'; did you mean ..."
    if "/" in text or "\\" in text or Path(text).suffix.lower() in _FILE_SUFFIXES:
        raise CnnlabError(
            f"{text}: no such file or folder; give a run's folder (or its model.json), a YAML/JSON spec file, or a zoo "
            "model's name (`cnnlab zoo` lists them)"
        )
    from cnnlab.models import create_model, is_model

    if not is_model(text) and _is_layer_string(text):  # one layer of one word: 'gap' was "unknown model 'gap'"
        return resolve_model([text], input_shape, on_meta)
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        built = create_model(text)
    return text, built, _input_shape(text, input_shape, getattr(built, "default_input_size", None)), None


def _is_layer_string(text: str) -> bool:
    """Whether `text` reads as a layer of the spec (``gap``, ``maxpool``, ``relu``)."""
    try:
        parse_spec([text])
    except CnnlabError:
        return False
    return True


def _built(layers: list[LayerSpec], on_meta: bool) -> nn.Module:
    """The module of a spec, on the meta device with `on_meta`, as a zoo model is: its weights were allocated and
    initialised for real, so a spec of 9 billion parameters (``conv 10 k3`` on a 10^8-channel input) failed with
    "DefaultCPUAllocator: can't allocate memory" instead of being sized, and one that fitted took its gigabytes."""
    try:
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            return build_module(layers)
    except (RuntimeError, TypeError) as error:  # a weight torch cannot size: it was a traceback
        if "overflow" not in str(error).lower():
            raise
        sizes = re.search(r"sizes=(\[[^\]]*\])", str(error))
        raise CnnlabError(
            f"spec on input {'x'.join(map(str, layers[0].input_shape))} is too large to size: one of its weights"
            + (f", sized {sizes.group(1)}," if sizes else "")
            + " would hold more values or bytes than PyTorch counts (2^63); enter a smaller input"
        ) from None


def _resolve_run(
    text: str, input_shape: tuple[int, ...] | None, on_meta: bool
) -> tuple[str, nn.Module, tuple[int, ...], None]:
    """A saved run's network (transfer, MNIST, segmentation or an ensemble), built from its record without its
    weights; its input shape is the run's own crop (transfer), else the architecture's default."""
    from cnnlab.train.saved import build_network, saved_meta

    with torch.device("meta") if on_meta else contextlib.nullcontext():
        built = build_network(text)
    first = built.members[0] if isinstance(built, Ensemble) else built
    preprocessing = saved_meta(text).get("preprocessing")
    default = tuple(preprocessing["input_size"]) if isinstance(preprocessing, dict) else None
    return text, built, _input_shape(text, input_shape, default or getattr(first, "default_input_size", None)), None


def _input_shape(name: str, given: tuple[int, ...] | None, default: tuple[int, ...] | None) -> tuple[int, ...]:
    """`given` (checked against the network's `default` when it has one), else `default`.

    Raises:
        CnnlabError: `given` has the wrong number of sizes or channels, or neither is known.
    """
    if given is not None and default is not None:
        check_zoo_input(name, tuple(given), tuple(default))
    shape = tuple(given) if given is not None else default
    if shape is None:
        raise CnnlabError(f"{name} has no default input size; give --input, e.g. 3x224x224")
    return tuple(shape)


def _build_views(
    layer_rows: list[Row],
    sequential: bool,
    input_shape: tuple[int, ...],
    dtype: torch.dtype,
    batch: int,
    params: int,
    trainable: int,
    buffers: int,
    copies: int,
    result: TraceResult,
    integer_buffer_bytes: int = 0,
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    size = dtype.itemsize
    input_bytes = math.prod(input_shape) * size
    params_bytes = params * size
    grads_bytes = trainable * size
    optimizer_bytes = copies * trainable * size
    outputs = textbook_outputs(layer_rows)
    if sequential:
        chain = [input_bytes, *outputs]
        working = max((a + b for a, b in zip(chain, chain[1:], strict=False)), default=input_bytes)
    else:
        working = result.inference_peak_bytes
    inference = {"params_bytes": params_bytes, "working_set_bytes": working, "total_bytes": params_bytes + working}
    # Without trainable parameters there is no backward: a training step is its forward pass, which keeps nothing.
    activations = batch * sum(outputs) if trainable else 0
    training = {
        "batch_size": batch,
        "params_bytes": params_bytes,
        "grads_bytes": grads_bytes,
        "optimizer_bytes": optimizer_bytes,
        "inputs_bytes": batch * input_bytes,
        "activations_bytes": activations,
        "total_bytes": params_bytes + grads_bytes + optimizer_bytes + batch * input_bytes + activations,
    }
    # integer buffers (batch norm's int64 num_batches_tracked, 8 bytes each) keep their dtype: they were left out of
    # this row, though the traced and measured peaks hold them
    buffers_bytes = buffers * size + integer_buffer_bytes
    saved_activations = result.saved_bytes - result.saved_input_bytes
    realistic = {
        "batch_size": batch,
        "params_bytes": params_bytes,
        "buffers_bytes": buffers_bytes,
        "grads_bytes": grads_bytes,
        "optimizer_bytes": optimizer_bytes,
        "inputs_bytes": batch * input_bytes,
        "activations_bytes": saved_activations,
        "saved_for_backward_bytes": result.saved_bytes,
        "total_bytes": params_bytes
        + buffers_bytes
        + grads_bytes
        + optimizer_bytes
        + batch * input_bytes
        + saved_activations,
        "peak_bytes": result.peak_live_bytes,
        "inference_working_set_bytes": result.inference_peak_bytes,
        "inference_total_bytes": params_bytes + buffers_bytes + result.inference_peak_bytes,
    }
    return inference, training, realistic


# What a forward raises on an input it cannot take: torch's errors, and the assertions with which torchvision's and
# timm's vision transformers check the image size (`torch._assert`; vit_b_16 at 32 px was a traceback).
FORWARD_ERRORS = (RuntimeError, ValueError, TypeError, AssertionError)
# What torch says when a forward reads a value of a meta tensor (.item(), .tolist(), .numpy(), nonzero).
_NO_VALUES = ("meta tensor", "meta device", "register_meta")
# What torch says when a map has shrunk below a kernel: convolution, max and average pooling.
# 3-D pooling (torchvision's s3d, a video network) says it as "input image (T: 2 H: 3 W: 3) smaller than kernel size".
_TOO_SMALL = (
    "Kernel size can't be greater than actual input size",
    "Output size is too small",
    "smaller than kernel size",
)


def _smallest_side(module: nn.Module, shape: tuple[int, ...], largest: int = 4096) -> int | None:
    """The smallest side S for which `module` (on the meta device, so nothing is computed) runs on C x S x S (a video
    network on C x T x S x S, its frames kept), above `shape`'s sides; None for a module with real weights, an input
    without two spatial sides, or when no side up to `largest` runs.

    For convolution and pooling layers the output size grows with the input's, so the sides that run are all those
    from S up (a network with fixed dense layers runs at one size only, which the search finds as well).
    """
    if any(parameter.device.type != "meta" for parameter in module.parameters()) or len(shape) < 3:
        return None

    def runs(side: int, modes: tuple[bool, ...]) -> bool:
        try:
            with torch.no_grad():
                for training_mode in modes:
                    module.train(training_mode)
                    # two samples in training: a batch norm on a 1x1 map of one would refuse it for another reason
                    module(torch.empty(2 if training_mode else 1, *shape[:-2], side, side, device="meta"))
        except FORWARD_ERRORS:
            return False
        return True

    def search(low: int, modes: tuple[bool, ...]) -> int | None:
        """The smallest side above `low` (which does not run) that runs in `modes`."""
        default = getattr(module, "default_input_size", None)  # where a fixed dense layer allows one size only
        high = default[-1] if default and default[-1] > low and runs(default[-1], modes) else low + 1
        while not runs(high, modes):
            low, high = high, high * 2
            if high > largest:
                return None
        while high - low > 1:  # low does not run, high does
            middle = (low + high) // 2
            low, high = (low, middle) if runs(middle, modes) else (middle, high)
        return high

    training = module.training
    try:
        side = search(min(shape[-2:]), (False,))  # the square of the smaller side does not run either
        # The budget traces a training step too, where a head that runs in training only (inception_v3's auxiliary
        # one, which needs 299 px) may need more: searched above the eval-mode answer, in both modes, only then.
        if side is None or runs(side, (True,)):
            return side
        return search(side, (False, True))
    finally:
        module.train(training)


def _first_convolution(module: nn.Module) -> tuple[str, nn.modules.conv._ConvNd] | None:
    """The first convolution registered in `module` (where the input's channels go), with its name."""
    return next(
        ((name, layer) for name, layer in module.named_modules() if isinstance(layer, nn.modules.conv._ConvNd)), None
    )


def _list_input(module: nn.Module) -> str | None:
    """The name of the forward's first parameter where it takes a list of images, else None: annotated as a list
    (torchvision's Faster R-CNN, FCOS and SSD: ``images: List[Tensor]``), or, unannotated, ``images`` followed by
    ``targets``, torchvision's detection signature (RetinaNet: ``forward(self, images, targets=None)``)."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a signature Python can read
        return None
    if not parameters:
        return None
    first, annotation = parameters[0], parameters[0].annotation
    if annotation is inspect.Parameter.empty:
        return first.name if first.name == "images" and any(p.name == "targets" for p in parameters[1:]) else None
    if isinstance(annotation, str):  # postponed annotations: "List[Tensor]", "list[torch.Tensor]"
        return first.name if re.match(r"^(typing\.)?(list|List|Sequence)\[", annotation.strip()) else None
    return first.name if typing.get_origin(annotation) in (list, collections.abc.Sequence) else None


def input_error(
    name: str, module: nn.Module, shape: tuple[int, ...], error: Exception, batch_size: int = 1
) -> CnnlabError:
    """torch's error for `module` run on one `shape` sample (a batch of `batch_size` in training mode), as one line
    that names the model and its input, with what to do where the cause is known: a forward that takes a list of
    images (a detection network), a map shrunk below a kernel (the smallest input that runs), fixed dense layers (their
    size), a batch norm on one value per channel, a step too large for torch's byte counts (the batch and input)."""
    reason = first_line(error).rstrip(".")
    if (images := _list_input(module)) is not None:  # torchvision detection: whatever it raised, this is the cause
        return CnnlabError(
            f"{name} takes a list of images ({images}, as detection networks do: each its own size, with their "
            "targets to train, and outputs that depend on the values, such as boxes kept after non-maximum "
            "suppression); the budget sizes torchvision's (a transform, a backbone and dense heads) and otherwise a "
            "network that maps one batch tensor to outputs of known shape: size its backbone (a FILE.py:NAME that "
            "returns the built network's .backbone)"
        )
    # torch's words read as if the layers did not fit the input at any batch: they do, at a smaller one
    overflowed = re.search(r"Storage size calculation overflowed with sizes=(\[[^\]]*\])", reason)
    if overflowed is not None:
        return CnnlabError(
            f"batch {batch_size:,} of input {'x'.join(map(str, shape))} is too large to size: one tensor of the step, "
            f"sized {overflowed.group(1)}, would hold more bytes than PyTorch counts (2^63); enter a smaller batch or "
            "input"
        )
    if any(words in reason for words in _NO_VALUES):  # the input is not the cause: another size fails alike
        reason = reason.split(". ")[0]  # torch's nonzero message goes on for three more sentences
        return CnnlabError(
            f"{name} reads its tensors' values in forward ({reason}): the budget traces it on the meta device, "
            "where tensors have shapes but no values, so a forward that branches on or converts them (.item(), "
            "float(x), .tolist(), .numpy(), nonzero) cannot be sized; make those steps independent of the values"
            f"{user_code_line(error)}"
        )
    hint = ""
    if "more than 1 value per channel" in reason:  # batch norm in training mode on a 1x1 map of one sample
        hint = (
            f"; at batch {batch_size} a batch norm sees one value per channel, which training cannot normalise: "
            "pass a larger --batch or --input"
        )
    default = getattr(module, "default_input_size", None)
    if ("same reduction dim" in reason or "cannot be multiplied" in reason) and default is not None:
        hint = (
            f"; its dense layers take a fixed number of inputs, sized for {'x'.join(map(str, default))}: use that "
            "--input, or scan larger images with a fully convolutional copy of a trained run (`cnnlab fcn convert`)"
        )
    if "channel" in reason and (first := _first_convolution(module)) is not None:  # meta: "Invalid channel dim..."
        layer_name, conv = first
        sizes = conv.weight.dim() - 1  # the channels, then the spatial sizes of one sample
        if len(shape) != sizes:
            hint = (
                f"; its first convolution ({layer_name}) takes one sample as {sizes} sizes, its {conv.in_channels} "
                f"channels first: --input {'x'.join(map(str, shape))} has {len(shape)}"
            )
        elif shape[0] != conv.in_channels:
            hint = f"; its first convolution ({layer_name}) takes {conv.in_channels}-channel input"
    if any(words in reason for words in _TOO_SMALL) and (side := _smallest_side(module, shape)) is not None:
        hint = f"; the smallest square input it takes is {'x'.join(map(str, (*shape[:-2], side, side)))}"
    where = user_code_line(error)  # the line of the user's own forward that raised it, where there is one
    return CnnlabError(f"{name} does not run on input {'x'.join(map(str, shape))}: {reason}{where}{hint}")


def budget(
    model: nn.Module | str | list[str] | Path,
    input_shape: tuple[int, ...] | None = None,
    batch_size: int = 1,
    dtype: str = "float32",
    optimizer: str = "adam",
    depth: int | None = None,
    measure: bool = False,
    device: str = "cpu",
    memory_limit: int | str | None = None,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> BudgetReport:
    """Size a CNN: per-layer table, parameters, MACs, and memory for inference and for training a mini-batch.

    Args:
        model: an `nn.Module`, a zoo model name, a saved run's folder (its network from its record, weights not
            read), a list of layer strings (see `cnnlab.budget.spec`) or a YAML/JSON spec.
        input_shape: one sample's shape (C, H, W); zoo models and runs default to their own.
        batch_size: the training mini-batch.
        dtype: float32, float16 or bfloat16 (parameters, activations and inputs).
        optimizer: sgd, momentum, adam or adamw (its state is 0, 1 or 2 copies of the trainable parameters).
        depth: table rows at this module depth; leaves when None (spec models show one row per spec layer).
        measure: also run one real training step on `device` and count what it saved and its peak.
        device: the device the training is for ("cpu", "cuda"; this machine need not have it unless `measure`): the
            estimate's optimizer steps as the engine's steps there (on CUDA torch's multi-tensor kernels, which hold
            a whole param group's temporaries at once), and `measure` runs there (CUDA adds
            `torch.cuda.max_memory_allocated`).
        memory_limit: bytes (or "8GiB") to plan for: the largest batch that fits, and with each remedy.
        name: what the report and its errors call the model (default: the module's class, the zoo name, the run's
            folder or "spec").
        log: called with a line before each slow optional step (the real step, the planning), so that a command
            that takes a minute on a large network says what it is doing.
    """
    target = resolve_device(device) if measure else parse_device(device)
    resolved_name, module, shape, spec_layers = resolve_model(model, input_shape, on_meta=not measure)
    name = name or resolved_name
    detection = None
    if is_detection_network(module):  # a list of images in, boxes out: sized at its own transform's output
        if len(shape) != 3:
            raise CnnlabError(
                f"{name} is a detection network: it takes each image as 3 sizes (channels x height x width, e.g. "
                f"3x800x800), which its own transform resizes; --input {'x'.join(map(str, shape))} has {len(shape)}"
            )
        check_channels(module, shape, name)
        try:
            detection = detection_info(module, shape)
        except FORWARD_ERRORS as error:
            raise input_error(name, module, shape, error, batch_size) from None
        module, shape = DenseDetection(module), tuple(detection["resized_shape"])
    torch_dtype = resolve_dtype(dtype)
    copies = optimizer_copies(optimizer)
    if batch_size < 1:
        raise CnnlabError(f"batch size {batch_size} must be at least 1")
    input_bytes = batch_size * math.prod(shape) * torch_dtype.itemsize
    if input_bytes >= 2**63:  # torch's words blamed the network: "spec does not run on input ...: Overflow when ..."
        raise CnnlabError(
            f"batch {batch_size:,} of input {'x'.join(map(str, shape))} is too large to size: the input batch alone "
            f"would hold {input_bytes:,} bytes, more than PyTorch counts (2^63); enter a smaller batch or input"
        )
    if depth is not None and depth < 0:  # it was taken as "leaves"
        raise CnnlabError(f"--depth {depth} must be >= 0 (0: the whole model in one row; default: leaf modules)")
    # The textbook figures count every layer once, at one fixed granularity: the spec's own layers, else the leaf
    # modules. --depth only chooses the table's rows; summed over those rows, --depth 0 took the network's output
    # for all its activations (resnet18: 4,000 bytes kept for backward instead of 20.7 MB).
    figure_depth = 1 if spec_layers is not None else None
    asked_depth = depth
    if depth is None:
        depth = figure_depth
    try:
        result = trace(module, shape, batch_size, torch_dtype, "meta", optimizer, depth, for_device=str(target))
        figure_rows = (
            result.rows
            if depth == figure_depth
            else trace(module, shape, 1, torch_dtype, "meta", optimizer, figure_depth, training=False).rows
        )
    except CnnlabError:
        raise
    except FORWARD_ERRORS as error:
        raise input_error(name, module, shape, error, batch_size) from None
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in module.buffers() if b.is_floating_point())
    integer_buffer_bytes = sum(b.numel() * b.element_size() for b in module.buffers() if not b.is_floating_point())
    sequential = isinstance(module, nn.Sequential) and all("." not in row.name for row in figure_rows)
    inference, training, realistic = _build_views(
        figure_rows,
        sequential,
        shape,
        torch_dtype,
        batch_size,
        params,
        trainable,
        buffers,
        copies,
        result,
        integer_buffer_bytes,
    )
    report = BudgetReport(
        model_name=name,
        input_shape=shape,
        batch_size=batch_size,
        dtype=str(torch_dtype).removeprefix("torch."),
        optimizer=optimizer,
        params=params,
        trainable_params=trainable,
        buffers=buffers,
        macs=result.macs,
        output_shape=result.output_shape,
        layers=result.rows,
        sequential=sequential,
        inference=inference,
        training=training,
        realistic=realistic,
        spec_layers=spec_layers,
        textbook_layer_bytes=textbook_outputs(figure_rows),
        device=target.type,
        training_only=result.training_only,
        no_gradient=result.no_gradient,
        one_value_batch_norms=result.one_value_batch_norms,
        depth=asked_depth,
        figure_activation_bytes=sum(row.activation_bytes for row in figure_rows),
        unlisted_params=result.unlisted_params,
        recurrent={key: type(layer).__name__ for key, layer in module.named_modules() if isinstance(layer, nn.RNNBase)},
    )
    if detection is not None:
        # the RoI heads are not called on the dense part: the detection note says what they cost, per box
        report.no_gradient = {
            module_name: count
            for module_name, count in report.no_gradient.items()
            if module_name != "roi_heads" and not module_name.startswith("roi_heads.")
        }
        detection["most_macs"] = report.macs + sum(
            head["macs_per_box"] * head["most_per_image"] for head in detection["per_box_heads"]
        )
        report.detection = detection
    if measure:
        if log is not None:
            log(f"measuring: one real training step of {name} at batch {batch_size} on {target}")
        report.measured = measure_step(module, shape, batch_size, torch_dtype, optimizer, device, realistic, depth)
    if memory_limit is not None:
        from cnnlab.budget.planner import plan_batch

        limit = parse_memory(memory_limit) if isinstance(memory_limit, str) else int(memory_limit)
        if log is not None:
            within = memory_limit if isinstance(memory_limit, str) else f"{limit:,} bytes"
            log(f"planning: the largest batch of {name} within {within}, as configured and with each remedy")
        report.plan = plan_batch(module, shape, torch_dtype, optimizer, limit, reference=result, for_device=str(target))
    return report


def measure_step(
    module: nn.Module,
    shape: tuple[int, ...],
    batch_size: int,
    dtype: torch.dtype,
    optimizer: str,
    device: str,
    realistic: dict[str, int],
    depth: int | None = None,
) -> dict[str, Any]:
    """Run one real training step and compare what it held with the realistic estimate; what each row at `depth`
    (the report's) saved, for `--explain` to set beside the estimate's."""
    device = str(resolve_device(device))  # unknown, or cuda without a GPU: one line naming what this machine has
    try:
        real = trace(module, shape, batch_size, dtype, device, optimizer, depth)
    except RuntimeError as error:  # a kernel this device lacks for the dtype (CPU LRN in float16), or memory
        reason = first_line(error)
        dtype_name = str(dtype).removeprefix("torch.")
        raise CnnlabError(
            f"--measure: one real {dtype_name} training step at batch {batch_size} failed on {device}: {reason}; "
            "the estimate needs no real step (leave out --measure), or measure another --dtype or --device"
        ) from None
    measured: dict[str, Any] = {
        "device": device,
        "saved_for_backward_bytes": real.saved_bytes,
        "peak_live_bytes": real.peak_live_bytes,
        "saved_ratio": _ratio(realistic["saved_for_backward_bytes"], real.saved_bytes),
        "peak_ratio": _ratio(realistic["peak_bytes"], real.peak_live_bytes),
        "saved_bytes_by_layer": {row.name: row.saved_bytes for row in real.rows if row.saved_bytes},
    }
    if real.cuda_max_allocated_bytes is not None:
        measured["cuda_max_allocated_bytes"] = real.cuda_max_allocated_bytes
        measured["cuda_ratio"] = _ratio(realistic["peak_bytes"], real.cuda_max_allocated_bytes)
    # An estimate over a real 0 has no finite ratio: it was float("inf"), which json.dumps writes as Infinity (not
    # JSON; strict parsers refuse the whole document). It is null, and a note beside it says why.
    for key, estimate in (("saved", "saved_for_backward_bytes"), ("peak", "peak_bytes"), ("cuda", "peak_bytes")):
        if f"{key}_ratio" in measured and measured[f"{key}_ratio"] is None:
            measured[f"{key}_ratio_note"] = (
                f"the real step held 0 bytes against an estimate of {realistic[estimate]:,}: no finite ratio"
            )
    return measured


def _ratio(estimate: int, measured: int) -> float | None:
    """estimate / measured to four places; None where `measured` is 0 and `estimate` is not (no finite ratio)."""
    if not measured:  # nothing saved (a network without trainable parameters): 0 of 0 is exact, and NaN is no JSON
        return 1.0 if not estimate else None
    return round(estimate / measured, 4)


__all__ = [
    "FORWARD_ERRORS",
    "BudgetReport",
    "budget",
    "check_zoo_input",
    "input_error",
    "measure_step",
    "parse_memory",
    "resolve_model",
]
