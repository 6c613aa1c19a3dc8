"""`--explain`: the arithmetic behind a budget, step by step, as a textbook derives it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from cnnlab.budget.core import BudgetReport
from cnnlab.budget.planner import LARGEST_PLANNED_BATCH
from cnnlab.budget.render import ratio_text, readable_bytes
from cnnlab.budget.spec import LayerSpec, layer_macs, parameter_counts
from cnnlab.budget.trace import optimizer_copies
from cnnlab.layers.padding import same_padding_amounts


def _n(value: int | float) -> str:
    return f"{value:,.0f}"


def _sum_text(values: Iterable[int], shown: int = 12) -> str:
    """The first `shown` terms of a sum; where it elides, how many terms it left out, so a reader knows the terms
    shown are not the whole sum."""
    values = list(values)
    hidden = len(values) - shown
    return " + ".join(_n(v) for v in values[:shown]) + (f" + ... ({hidden} more)" if hidden > 0 else "")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _transposed_size_lines(layer: LayerSpec) -> list[str]:
    """A tconv's output size per axis: ``(in - 1) x s - 2p + d x (k - 1) + op + 1``, and what `same` chose."""
    lines = []
    for axis, index in (("height", 0), ("width", 1)):
        size, out = layer.input_shape[1 + index], layer.output_shape[1 + index]
        kernel, stride, dilation = layer.kernel[index], layer.stride[index], layer.dilation[index]
        pad, output_pad = layer.pads[2 * index], layer.output_padding[index]
        rule = (
            f"(in - 1) x s - 2p + d x (k - 1) + op + 1 = ({size} - 1) x {stride} - 2 x {pad} + {dilation} x "
            f"({kernel} - 1) + {output_pad} + 1 = {out}"
        )
        if layer.padding == "same":
            rule = f"same: in x s = {size} x {stride} = {out}, with p = {pad} and op = {output_pad}: {rule}"
        lines.append(f"    {axis}: {rule}")
    return lines


def _spec_layer_lines(layer: LayerSpec, itemsize: int) -> list[str]:
    lines = [f"{layer.name}  ({layer.source})  input {_shape(layer.input_shape)}"]
    if layer.kind in ("conv", "maxpool", "avgpool"):
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.stride, layer.dilation
        top, bottom, left, right = layer.pads
        for axis, size, kernel, stride, dilation, (before, after), out in (
            ("height", layer.input_shape[1], kh, sh, dh, (top, bottom), layer.output_shape[1]),
            ("width", layer.input_shape[2], kw, sw, dw, (left, right), layer.output_shape[2]),
        ):
            pads = before + after
            # a dilated kernel spans dilation x (k - 1) + 1 pixels: with k alone the sum did not give its result
            span = f"{dilation} x ({kernel} - 1) - 1" if dilation > 1 else f"{kernel}"
            if layer.ceil_mode:
                rule = f"ceil(({size} + {pads} - {span}) / {stride}) + 1"
                if out - 1 < -(-(size + pads - dilation * (kernel - 1) - 1) // stride):  # PyTorch drops that window
                    rule += (
                        f" - 1 (window {out + 1} would start at {out * stride}, past the input and its left padding "
                        f"{size} + {before})"
                    )
                rule += f" = {out}"
                if layer.padding == "same":  # PyTorch's padding=(k - 1) // 2 with ceil_mode=True: may exceed same's
                    alone = -(-size // stride)
                    rule = f"same, then ceil: pads {before} before and {after} after, {rule} (same alone: " + (
                        f"ceil({size} / {stride}) = {alone})"
                        if alone != out
                        else f"ceil({size} / {stride}), the same: the padded input ends on a whole window)"
                    )
            elif layer.padding == "same":
                # the pixels padded each side, as the built layer pads: ceil(in / s) alone did not say them
                rule = f"same: ceil({size} / {stride}) = {out}; pads {before} before and {after} after"
                keras = same_padding_amounts(size, kernel, stride, dilation)
                if keras != (before, after):  # PyTorch's symmetric padding= stands in for TF's uneven split
                    shift = before - keras[0]
                    rule += (
                        f" (PyTorch's symmetric padding={before}; Keras pads {keras[0]} before and {keras[1]} after: "
                        f"the same size, windows start {shift} pixel{'s' * (shift != 1)} earlier)"
                    )
            else:
                rule = f"floor(({size} + {pads} - {span}) / {stride}) + 1 = {out}"
            lines.append(f"    {axis}: {rule}")
    if layer.kind == "tconv":
        lines.extend(_transposed_size_lines(layer))
    trainable, buffers = parameter_counts(layer)
    if layer.kind in ("conv", "tconv"):
        kh, kw = layer.kernel
        c_in = layer.input_shape[0]
        bias = " + 1" if layer.bias else ""
        # a filter of a grouped (depthwise) conv sees c_in / groups channels: "x c_in" gave neither figure
        per_filter, seen = ("c_in", f"{c_in}") if layer.groups == 1 else ("c_in / groups", f"{c_in} / {layer.groups}")
        if layer.groups > 1:
            lines.append(
                f"    groups {layer.groups}: each filter sees {c_in} / {layer.groups} = {c_in // layer.groups} input "
                f"channel{'s' * (c_in // layer.groups != 1)}" + (" (depthwise)" if layer.groups == c_in else "")
            )
        lines.append(
            f"    params = filters x (k_h x k_w x {per_filter}{bias}) = {layer.filters} x ({kh} x {kw} x {seen}{bias}) "
            f"= {_n(trainable)}"
        )
        if layer.kind == "conv":
            lines.append(
                f"    MACs = output values x k_h x k_w x {per_filter} = {_n(math.prod(layer.output_shape))} x "
                f"{kh * kw * c_in // layer.groups} = {_n(layer_macs(layer))}"
            )
        else:  # each input value is multiplied into k_h x k_w positions of each of its group's output maps
            per_value = "filters" if layer.groups == 1 else "filters / groups"
            lines.append(
                f"    MACs = input values x k_h x k_w x {per_value} = {_n(math.prod(layer.input_shape))} x "
                f"{kh * kw * layer.filters // layer.groups} = {_n(layer_macs(layer))}"
            )
    elif layer.kind == "dense":
        bias = " + 1" if layer.bias else ""
        lines.append(
            f"    params = units x (inputs{bias}) = {layer.filters} x ({layer.input_shape[0]}{bias}) = {_n(trainable)}"
        )
        # without it the layers' MACs did not add up to the total in section 3
        lines.append(f"    MACs = units x inputs = {layer.filters} x {layer.input_shape[0]} = {_n(layer_macs(layer))}")
    elif layer.kind == "bn":
        lines.append(
            f"    params = 2 x channels (scale, shift) = {_n(trainable)}; buffers (running mean, var) = {buffers}"
        )
    values = math.prod(layer.output_shape)
    lines.append(
        f"    output {_shape(layer.output_shape)} = {_n(values)} values x {itemsize} bytes "
        f"= {_n(values * itemsize)} bytes"
    )
    return lines


def explain(report: BudgetReport) -> str:
    """A multi-line derivation of the report's parameter, compute and memory figures."""
    itemsize = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}.get(report.dtype, 4)
    input_values = math.prod(report.input_shape)
    resized = f" (the {_shape(report.detection['given_shape'])} image, resized)" if report.detection else ""
    lines = [
        f"Budget of {report.model_name}, input {_shape(report.input_shape)}{resized}, {report.dtype} "
        f"({itemsize} bytes)",
        "",
    ]
    if report.detection is not None:  # the shape every figure is for was not derived: the transform's steps
        lines += [*_detection_transform_lines(report.detection), ""]
    lines.append("1. Layer by layer")
    if report.spec_layers is not None:
        for layer in report.spec_layers:
            lines.extend(_spec_layer_lines(layer, itemsize))
        spec_rows = [layer.name.replace(":", "_") for layer in report.spec_layers]
        # --depth 0: the table's one row is these layers' sum
        if report.depth is not None and [row.name for row in report.layers] != spec_rows:
            lines.append(f"the table's rows at --depth {report.depth} hold the layers above:")
            lines.extend(_row_lines(report))
    else:
        if report.depth is not None:  # said, so a reader does not take a block's sums for one layer's
            lines.append(
                f"    (rows at --depth {report.depth}, as the table: a module's params and MACs sum its parts)"
            )
        lines.extend(_row_lines(report))
        lines.append("    (layers without parameters or MACs omitted; the table shows all)")
    with_params = [row for row in report.layers if row.params]
    lines += ["", "2. Parameters"]
    # parameters a module above the rows holds were in the total but in no term: 'total = 224 + 72 = 312'
    unlisted = sum(report.unlisted_params.values())
    terms = _sum_text([row.params for row in with_params] + ([unlisted] if unlisted else []))
    if unlisted:
        lines.append(f"    held by no row above: {_unlisted_text(report.unlisted_params)}")
    lines.append(f"    total = {terms or '0 (no layer has parameters)'}")
    lines.append(f"          = {_n(report.params)} parameters ({_n(report.trainable_params)} trainable)")
    lines.append(
        f"    bytes = {_n(report.params)} x {itemsize} = {_n(report.inference['params_bytes'])} bytes "
        f"({readable_bytes(report.inference['params_bytes'])})"
    )
    lines += ["", "3. Compute"]
    lines.append(f"    {_n(report.macs)} multiply-accumulates (MACs) per image; FLOPs = 2 x MACs = {_n(report.flops)}")
    outside_macs = report.macs - sum(row.macs for row in report.layers)
    if outside_macs:  # a matmul in a forward counts in the total but in no row: section 1's MACs fell short of it
        lines.append(
            f"    = the rows' {_n(report.macs - outside_macs)} + calls outside the listed layers (functional ops in a "
            f"forward, e.g. x @ w) {_n(outside_macs)}"
        )
    lines.append("    counted: convolutions, linear layers, matmuls, attention; normalisation, activations, pooling,")
    lines.append("    upsampling, additions and concatenations count 0")
    if report.detection is not None:
        lines.extend(_detection_macs_lines(report))
    outputs = report.textbook_layer_bytes
    inference = report.inference
    lines += ["", "4. Inference, one instance (textbook view)"]
    if report.sequential:
        lines.append(f"    activations per layer: {_sum_text(outputs)}")
        lines.append(
            "    a sequential net can release a layer's input once its output is computed, so at most two consecutive"
        )
        lines.append(f"    activations live at once: the largest pair is {_n(inference['working_set_bytes'])} bytes")
    else:
        lines.append(
            f"    a general graph keeps several branches alive; the peak of live tensors is "
            f"{_n(inference['working_set_bytes'])} bytes"
        )
    lines.append(
        f"    RAM = parameters + working set = {_n(inference['params_bytes'])} + {_n(inference['working_set_bytes'])} "
        f"= {_n(inference['total_bytes'])} bytes ({readable_bytes(inference['total_bytes'])})"
    )
    training = report.training
    batch = training["batch_size"]
    lines += ["", f"5. Training on a mini-batch of {batch} (textbook view)"]
    if not report.trainable_params:
        lines.append("    no trainable parameters: nothing to train, so no backward, no gradients, no optimizer state;")
        lines.append(
            f"    a training step is the forward pass, which keeps no activations: parameters "
            f"{_n(training['params_bytes'])} + inputs {batch} x {_n(input_values)} values x {itemsize} = "
            f"{_n(training['total_bytes'])} bytes ({readable_bytes(training['total_bytes'])})"
        )
    else:
        _training_lines(lines, report, input_values, itemsize)
    real = report.realistic
    lines += ["", "6. What PyTorch really keeps (realistic view, traced on the meta device)"]
    lines.append(
        f"    saved for backward: {_n(real['saved_for_backward_bytes'])} bytes "
        f"({readable_bytes(real['saved_for_backward_bytes'])}), counted per distinct storage:"
    )
    lines.append("    a conv keeps its input, a ReLU its output (not its input), max pooling its input and int64")
    lines.append("    indices, batch norm its input; a layer whose output nobody saves costs nothing after backward.")
    _saved_lines(lines, report)
    lines.append(
        f"    peak of live tensors during forward, backward and the optimizer step: {_n(real['peak_bytes'])} bytes"
    )
    if report.measured:
        measured = report.measured
        lines += ["", f"7. Measured (one real training step on {measured['device']}), beside the estimate of 6"]
        # the estimates were not on these lines, and the ratio read "1.0" where the table gives "1.0000"
        lines.append(
            f"    saved for backward: estimate {_n(real['saved_for_backward_bytes'])}, measured "
            f"{_n(measured['saved_for_backward_bytes'])} bytes, "
            f"estimate/measured = {ratio_text(measured['saved_ratio'])}"
        )
        lines.append(
            f"    peak live tensors: estimate {_n(real['peak_bytes'])}, measured {_n(measured['peak_live_bytes'])} "
            f"bytes, estimate/measured = {ratio_text(measured['peak_ratio'])}"
        )
        if "cuda_max_allocated_bytes" in measured:
            lines.append(
                f"    torch.cuda.max_memory_allocated: {_n(measured['cuda_max_allocated_bytes'])} bytes, "
                f"estimate/measured = {ratio_text(measured['cuda_ratio'])}"
            )
    if report.plan:
        number = 8 if report.measured else 7
        _plan_lines(lines, report.plan, number)
    lines += ["", "Assumptions"]
    lines.append(f"    - every tensor is {report.dtype}; kB, MB, GB, TB = 10^3, 10^6, 10^9, 10^12 bytes")
    lines.append("    - textbook inference counts only activations and parameters (no framework workspace)")
    lines.append(
        "    - the training step backpropagates output.sum(): a real loss adds a few tensors of the output's size"
    )
    copies = optimizer_copies(report.optimizer)
    lines.append(f"    - optimizer state: {report.optimizer} keeps {copies} copies of the trainable parameters")
    if report.detection is not None:
        lines.append(
            "    - detection: the training step is the backbone's and dense heads' alone; torchvision's training-mode"
        )
        lines.append(
            "      forward (targets, sampled anchors and proposals, the per-box heads on them, its losses) is not sized"
        )
    return "\n".join(lines)


def _detection_transform_lines(info: dict[str, Any]) -> list[str]:
    """How a detection network's own transform turns the given image into the batch the figures are for (as
    torchvision's ``GeneralizedRCNNTransform`` does it in eval mode)."""
    transform, given = info["transform"], info["given_shape"]
    channels, height, width = given
    scaled_h, scaled_w = info["scaled_size"]
    lines = [f"0. The detection network's own transform ({info['network']}), before its layers"]
    normalised = f"    the {_shape(given)} image is normalised per channel (image_mean, image_std)"
    if channels != info["resized_shape"][0]:
        normalised += f": its {channels} channel is repeated into {info['resized_shape'][0]}"
    lines.append(normalised)
    if transform["fixed_size"]:
        lines.append(f"    resized to its fixed_size, whatever the image's: {height}x{width} -> {scaled_h}x{scaled_w}")
    else:
        low, high = transform["min_size"], transform["max_size"]
        scale = min(low / min(height, width), high / max(height, width))
        lines.append(
            f"    scale = min(min_size / shorter side, max_size / longer side) = min({low} / {min(height, width)}, "
            f"{high} / {max(height, width)}) = {scale:.6g}"
        )
        lines.append(
            f"    resized: {height} x {scale:.6g} and {width} x {scale:.6g}, rounded down: {height}x{width} -> "
            f"{scaled_h}x{scaled_w}"
        )
    padded = info["resized_shape"]
    if transform["size_divisible"] > 1:
        lines.append(
            f"    the batch is padded with zeros to a multiple of {transform['size_divisible']}: "
            f"{scaled_h}x{scaled_w} -> {padded[1]}x{padded[2]}"
        )
    lines.append(f"    every figure below is for one {_shape(padded)} input to the backbone and dense heads")
    return lines


def _detection_macs_lines(report: BudgetReport) -> list[str]:
    """Section 3's addition for a detection network: the dense MACs are the same for every image of its size; each
    R-CNN head that runs once per box adds its MACs per box, counted on one box's pooled features."""
    info = report.detection
    lines = ["    detection: these are its backbone's and dense heads' MACs, the same for every image of this size;"]
    if not info["per_box_heads"]:
        lines.append("    every head is dense (none runs once per box), so they are one image's, whatever it shows")
        return lines
    lines.append("    the heads that run once per kept box, counted on one box's pooled features, add per box:")
    extra = 0
    for head in info["per_box_heads"]:
        most = head["macs_per_box"] * head["most_per_image"]
        extra += most
        lines.append(
            f"      {' + '.join(head['modules'])} on {_shape(head['input_per_box'])}: {_n(head['macs_per_box'])} MACs "
            f"per {head['runs_on']} x up to {_n(head['most_per_image'])} per image = up to {_n(most)}"
        )
    lines.append(
        f"    one image: from {_n(report.macs)} (no box kept) to {_n(report.macs)} + {_n(extra)} = "
        f"{_n(info['most_macs'])} MACs (how many boxes are kept depends on the image's values)"
    )
    return lines


def _unlisted_text(unlisted: dict[str, int], shown: int = 6) -> str:
    """The parameters no row holds, named, with how many values each; and their sum."""
    names = ", ".join(f"{name} {_n(count)}" for name, count in list(unlisted.items())[:shown])
    more = f", ... ({len(unlisted) - shown} more)" if len(unlisted) > shown else ""
    return f"{names}{more} (a module above the rows holds them): {_n(sum(unlisted.values()))}"


def _row_lines(report: BudgetReport) -> list[str]:
    """The table's rows that hold parameters or MACs, with their figures."""
    lines = []
    for row in report.layers:
        if row.params or row.macs:
            # a module that runs in training mode only (an auxiliary head) has no eval-mode output: 'output ,'; one
            # never called has none in either mode ("not run in eval mode" was said of it too)
            missing = "- (not run in eval mode)" if row.name in report.training_only else "- (never called)"
            output = _shape(row.output_shape) or missing
            shared = (
                f" (+ {_n(row.shared_params)} shared with an earlier row, counted there)" if row.shared_params else ""
            )
            lines.append(
                f"{row.name} ({row.type}): output {output}, params {_n(row.params)}{shared}, MACs {_n(row.macs)}"
            )
    return lines


def _saved_lines(lines: list[str], report: BudgetReport) -> None:
    """Section 6's list: each layer's saved bytes, then what no layer saved (the input batch, functional calls between
    layers), and the sum of them, which is the total it began with. The input batch was in the total but not in the
    list (resnet18: 21,616,128 listed under a total of 22,218,240)."""
    real = report.realistic
    # with --measure, what the real step's same row saved, beside the estimate (a row either saves is listed)
    measured = (report.measured or {}).get("saved_bytes_by_layer")
    saved_rows = [row for row in report.layers if row.saved_bytes or (measured or {}).get(row.name)]
    for row in saved_rows:
        beside = "" if measured is None else f" (measured {_n(measured.get(row.name, 0))})"
        lines.append(f"      {row.name} ({row.type}) saves {_n(row.saved_bytes)} bytes{beside}")
    layers_total = sum(row.saved_bytes for row in saved_rows)
    # the table's "activations kept for backward" is everything saved but the input batch; what its layer rows do not
    # hold was saved by calls outside every listed layer (a functional F.relu in a block's forward)
    outside = real["activations_bytes"] - layers_total
    saved_input = real["saved_for_backward_bytes"] - real["activations_bytes"]
    parts = [f"layers {_n(layers_total)}"]
    if outside:
        lines.append(f"      calls outside the listed layers (functional ops in a forward) save {_n(outside)} bytes")
        parts.append(f"outside layers {_n(outside)}")
    if saved_input:
        lines.append(f"      the input batch, kept by the layer that takes it, {_n(saved_input)} bytes")
        parts.append(f"input batch {_n(saved_input)}")
    if len(parts) > 1:
        lines.append(f"    saved = {' + '.join(parts)} = {_n(real['saved_for_backward_bytes'])} bytes")
    if saved_input:
        lines.append(
            f"    the memory table gives the input batch its own row: activations kept for backward = "
            f"{_n(real['saved_for_backward_bytes'])} - {_n(saved_input)} = {_n(real['activations_bytes'])}"
        )


def _training_lines(lines: list[str], report: BudgetReport, input_values: int, itemsize: int) -> None:
    """Section 5 for a network with something to train: the textbook's sum of a training step's memory."""
    training = report.training
    batch = training["batch_size"]
    outputs = report.textbook_layer_bytes
    # the per-sample figure was in no table (resnet18: 20,680,608 beside a column of 29,915,040): derived from it.
    # At --depth the table's rows are whole modules, each counting its output alone: the column was theirs, and the
    # subtraction went negative (lenet5 --depth 1: "2,008 - -30,704")
    column = report.figure_activation_bytes
    if column != sum(outputs):
        source = (
            "the table's activation bytes"
            if report.depth is None or column == sum(row.activation_bytes for row in report.layers)
            else f"every layer's output bytes (not the table's rows at --depth {report.depth})"
        )
        lines.append(
            f"    per sample = {source} less its activation functions and views (in place, free) "
            f"= {_n(column)} - {_n(column - sum(outputs))} = {_n(sum(outputs))}"
        )
    lines.append(
        f"    activations: every layer's output is kept for backpropagation: {batch} x {_n(sum(outputs))} = "
        f"{_n(training['activations_bytes'])} bytes ({readable_bytes(training['activations_bytes'])})"
    )
    lines.append(
        f"    inputs: {batch} x {_n(input_values)} values x {itemsize} = {_n(training['inputs_bytes'])} bytes "
        f"({readable_bytes(training['inputs_bytes'])})"
    )
    lines.append(f"    parameters: {_n(training['params_bytes'])} bytes ({readable_bytes(training['params_bytes'])})")
    base = training["activations_bytes"] + training["inputs_bytes"] + training["params_bytes"]
    # both sums with their terms: the subtotal's were only on the lines above it, the total's first term unnamed
    lines.append(
        f"    subtotal (what the textbook adds up) = {_n(training['activations_bytes'])} + "
        f"{_n(training['inputs_bytes'])} + {_n(training['params_bytes'])} = {_n(base)} bytes ({readable_bytes(base)})"
    )
    lines.append(
        f"    total = subtotal {_n(base)} + gradients {_n(training['grads_bytes'])} + optimizer state "
        f"({report.optimizer}) {_n(training['optimizer_bytes'])} = {_n(training['total_bytes'])} bytes "
        f"({readable_bytes(training['total_bytes'])})"
    )


def _plan_lines(lines: list[str], plan: dict[str, Any], number: int) -> None:
    """The `--memory` plan's answers worked out: a step needs fixed bytes + per-sample bytes x batch, and the largest
    batch is the last whose sum is within the limit. Without it the explanation derived nothing about the plan."""
    limit = plan["limit_bytes"]
    lines += ["", f"{number}. Largest training batch within {_n(limit)} {'byte' if limit == 1 else 'bytes'} (--memory)"]
    lines.append("    a step needs fixed bytes (parameters, gradients, optimizer state: what does not grow with")
    lines.append("    the batch) + per-sample bytes x batch, the line through the planned step's peaks at its answer")
    lines.append("    and half of it; the largest batch is the last whose sum is within the limit:")
    for row in plan["remedies"]:
        fixed, per_sample, best = row["fixed_bytes"], row["per_sample_bytes"], row["max_batch"]
        lines.append(f"    {row['remedy']}: largest batch {_n(best)}")
        for batch in (best, best + 1) if best else (1,):
            need = fixed + per_sample * batch
            relation = f"<= {_n(limit)}" if need <= limit else f"> {_n(limit)}"
            lines.append(
                f"      batch {batch:,}: fixed + per sample x {batch:,} = {_n(fixed)} + {batch:,} x {_n(per_sample)} = "
                f"{_n(need)} {relation}"
            )
        if best >= LARGEST_PLANNED_BATCH:
            lines.append(f"      (the planner looks no further than batch {_n(LARGEST_PLANNED_BATCH)})")
        elif (best and fixed + per_sample * best > limit) or fixed + per_sample * (best + 1) <= limit:
            # the line is fitted through two peaks; where memory is not a line in the batch it is only near them
            lines.append("      (the line only approximates this step: the planner's answer is from its exact peaks)")
