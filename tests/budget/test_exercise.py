"""The chapter's exercise 2: three stride-2 'same' convolutions on a 200x300 RGB image."""

import math
import re

import pytest
from torch import nn

from cnnlab.budget import budget
from cnnlab.errors import CnnlabError

EXERCISE = ["conv 100 k3 s2 same", "conv 200 k3 s2 same", "conv 400 k3 s2 same"]


@pytest.fixture(scope="module")
def report():
    return budget(EXERCISE, input_shape=(3, 200, 300), batch_size=50, dtype="float32")


def test_parameters(report):
    assert report.params == 903_400
    assert [row.params for row in report.layers] == [2_800, 180_200, 720_400]


def test_output_shapes(report):
    assert [row.output_shape for row in report.layers] == [(100, 100, 150), (200, 50, 75), (400, 25, 38)]


def test_textbook_memory(report):
    assert [row.activation_bytes for row in report.layers] == [6_000_000, 3_000_000, 1_520_000]
    assert report.inference["params_bytes"] == 3_613_600
    assert report.inference["working_set_bytes"] == 9_000_000
    assert report.inference["total_bytes"] == 12_613_600  # ~12.6 MB
    training = report.training
    assert training["activations_bytes"] == 526_000_000
    assert training["inputs_bytes"] == 36_000_000
    assert training["activations_bytes"] + training["inputs_bytes"] + training["params_bytes"] == 565_613_600
    assert training["grads_bytes"] == 3_613_600
    assert training["optimizer_bytes"] == 2 * 3_613_600  # Adam: two moments


def test_macs_and_flops(report):
    # conv MACs = output values x k_h x k_w x c_in
    assert report.macs == 100 * 100 * 150 * 27 + 200 * 50 * 75 * 900 + 400 * 25 * 38 * 1800
    assert report.flops == 2 * report.macs


def test_explain_shows_the_derivation(report):
    from cnnlab.budget.explain import explain

    text = explain(report)
    for fragment in ("100 x (3 x 3 x 3 + 1) = 2,800", "903,400", "ceil(75 / 2) = 38", "12,613,600", "565,613,600"):
        assert fragment in text


def test_explains_size_arithmetic_gives_its_result_for_dilated_kernels_too():
    """With a dilated kernel the sum read 'floor((9 + 2 - 3) / 1) + 1 = 7', which is 9: the dilation was left out."""
    from cnnlab.budget.explain import explain

    spec = ["conv 8 k3 d2 p1", "conv 4 k3x5 d2x3 s2", "maxpool k3 s2 p1", "conv 4 k2 s1"]
    text = explain(budget(spec, input_shape=(3, 19, 40)))
    rules = re.findall(r"(?:height|width): floor\((.*)\) \+ 1 = (\d+)", text)
    assert len(rules) == 8
    for expression, result in rules:  # floor((a + b - c) / s) evaluated on its own numbers
        assert eval(expression.replace(" x ", " * ").replace("/", "//")) + 1 == int(result), expression  # noqa: S307
    assert "floor((19 + 2 - 2 x (3 - 1) - 1) / 1) + 1 = 17" in text
    # a ceil-mode pool rounds up, and says where PyTorch's last-window rule takes one off
    text = explain(budget(["maxpool k3 s2 ceil", "maxpool k2 s2 p1 ceil"], input_shape=(3, 14, 14)))
    assert "height: ceil((14 + 0 - 3) / 2) + 1 = 7" in text
    assert "height: ceil((7 + 2 - 2) / 2) + 1 - 1 (window 5 would start at 8, past the input and its left" in text


def test_explain_says_the_pixels_a_same_layer_pads_on_each_side_as_the_layer_pads_them():
    """--explain gave out = ceil(in / stride) for 'same' but not the padding; an odd total (k8: 7) is split unevenly.

    The pads it states, applied by hand to the input before an unpadded op, give the built layer's own output.
    """
    import torch
    import torch.nn.functional as F

    from cnnlab.budget.explain import explain
    from cnnlab.budget.spec import spec_from_strings

    spec = ["conv 4 k8 same", "conv 4 k3 s2 same", "maxpool k3 s2 same", "maxpool k2 s2 same"]
    text = explain(budget(spec, input_shape=(3, 15, 76)))
    assert "height: same: ceil(15 / 1) = 15; pads 3 before and 4 after" in text
    stated = re.findall(r"(height|width): same: ceil\(\d+ / \d+\) = \d+; pads (\d+) before and (\d+) after", text)
    assert len(stated) == 2 * len(spec)
    layers, module = spec_from_strings(spec, (3, 15, 76))
    x = torch.randn(1, 3, 15, 76)
    for index, (layer, child) in enumerate(zip(layers, module, strict=True)):
        (_, top, bottom), (_, left, right) = stated[2 * index : 2 * index + 2]
        padding = tuple(int(p) for p in (left, right, top, bottom))
        if layer.kind == "conv":
            by_hand = F.conv2d(F.pad(x, padding), child.weight, child.bias, layer.stride)
        else:
            by_hand = F.max_pool2d(F.pad(x, padding, value=float("-inf")), layer.kernel, layer.stride)
        x = child(x)
        assert torch.allclose(by_hand, x, atol=1e-6), (layer.source, padding)
    assert (
        "width: same: ceil(76 / 2) = 38; pads 1 before and 1 after (PyTorch's symmetric padding=1; Keras pads 0" in text
    )


def test_explains_layer_macs_add_up_to_the_total():
    """A dense layer's MACs were counted in the total but not shown: 17,496 of conv beside a total of 17,576."""
    from cnnlab.budget.explain import explain

    report = budget(["conv 8 k3 same", "maxpool k2", "flatten", "dense 10 relu", "dense 3"], input_shape=(3, 9, 9))
    text = explain(report)
    shown = [int(value.replace(",", "")) for value in re.findall(r"    MACs = .* = ([\d,]+)$", text, re.MULTILINE)]
    assert shown == [8 * 81 * 27, 128 * 10, 10 * 3]
    assert sum(shown) == report.macs


@pytest.mark.parametrize("relu", [False, True])
def test_realistic_estimate_matches_measurement(relu):
    layers = [f"{line} relu" if relu else line for line in EXERCISE]
    report = budget(layers, input_shape=(3, 200, 300), batch_size=4, measure=True)
    measured = report.measured
    assert abs(report.realistic["saved_for_backward_bytes"] / measured["saved_for_backward_bytes"] - 1) < 0.02
    assert abs(report.realistic["peak_bytes"] / measured["peak_live_bytes"] - 1) < 0.02
    # PyTorch keeps the input of each conv, not the last output: 36 + 300 + 150 MB at batch 50 without ReLU.
    per_sample = 720_000 + 6_000_000 + 3_000_000 + (1_520_000 if relu else 0)
    assert report.realistic["saved_for_backward_bytes"] == 4 * per_sample


def test_json_keys(report):
    data = report.to_dict()
    assert {"params", "trainable_params", "macs", "layers", "inference", "training"} <= set(data)
    assert set(data["layers"][0]) >= {"name", "type", "output_shape", "params", "macs", "activation_bytes"}
    assert set(data["inference"]) == {"params_bytes", "working_set_bytes", "total_bytes"}
    assert set(data["training"]) == {
        "batch_size",
        "params_bytes",
        "grads_bytes",
        "optimizer_bytes",
        "inputs_bytes",
        "activations_bytes",
        "total_bytes",
    }


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_depth_chooses_the_rows_not_the_memory_figures(report, depth):
    """--depth summed the textbook activations over the rows shown: at depth 0 the exercise kept only its output."""
    shown = budget(EXERCISE, input_shape=(3, 200, 300), batch_size=50, depth=depth)
    assert shown.to_dict()["inference"] == report.to_dict()["inference"]
    assert shown.to_dict()["training"] == report.to_dict()["training"]
    assert shown.training["activations_bytes"] == 526_000_000
    assert shown.sequential


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_depth_leaves_a_zoo_models_memory_figures_alone(depth):
    leaves = budget("resnet18", batch_size=2)
    shown = budget("resnet18", batch_size=2, depth=depth)
    assert len(shown.layers) < len(leaves.layers)
    for view in ("inference", "training", "realistic"):
        assert shown.to_dict()[view] == leaves.to_dict()[view], view
    assert leaves.training["activations_bytes"] == 2 * 20_680_608  # every leaf's output, ReLUs folded in


@pytest.mark.parametrize("model", ["resnet18", nn.Conv2d(3, 8, 3)], ids=["depth-0", "one-layer"])
def test_a_row_that_is_the_whole_model_has_its_macs(model):
    """The one row of --depth 0, or of a model that is a single layer, showed 0 MACs beside the total."""
    report = budget(model, input_shape=(3, 64, 64), depth=0)
    assert len(report.layers) == 1
    assert report.layers[0].macs == report.macs > 0


class _Listed(nn.Module):
    """Blocks kept in a ModuleList (as unet keeps its encoders), and an auxiliary head that eval mode skips."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), nn.Conv2d(4, 2, 1)])
        self.aux = nn.Linear(2, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_members_of_a_module_list_are_the_rows_at_its_depth():
    """At --depth 1 unet's 'encoders' (a ModuleList, never called itself) was a row with no output, 0 MACs and 4
    activation bytes: one value of an empty shape."""
    report = budget(_Listed(), input_shape=(3, 8, 8), depth=1)
    rows = {row.name: row for row in report.layers}
    assert list(rows) == ["blocks.0", "blocks.1", "aux"]
    assert rows["blocks.0"].macs + rows["blocks.1"].macs == report.macs == 4 * 27 * 64 + 2 * 4 * 64
    assert (rows["blocks.1"].output_shape, rows["blocks.1"].activation_bytes) == ((2, 8, 8), 2 * 64 * 4)
    assert (rows["aux"].output_shape, rows["aux"].activation_bytes) == ((), 0)  # not called: no output
    from cnnlab.budget.explain import explain

    assert "aux (Linear): output - (never called), params 6" in explain(report)  # was "output , params 6"
    assert [row.name for row in budget(_Listed(), input_shape=(3, 8, 8), depth=2).layers][:2] == [
        "blocks.0.0",
        "blocks.0.1",
    ]


class _CalledInParts(nn.Module):
    """A head run as a slice made in forward (alexnet's ``self.classifier[:-1](x)``), and a trunk whose layers are
    called one by one, never the trunk itself (as fcn8s runs its backbone's stages)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1))
        self.flatten = nn.Flatten()
        self.head = nn.Sequential(nn.Dropout(), nn.Linear(4 * 64, 8), nn.Linear(8, 2))

    def forward(self, x):
        x = self.flatten(self.trunk[1](self.trunk[0](x)))
        return self.head[-1](self.head[:-1](x))


def test_layers_called_through_a_slice_or_without_their_parent_have_their_macs():
    """alexnet's first two dense layers (run through a slice made in forward) showed 0 MACs, 54 M missing from the
    rows; at --depth 1 fcn8s's backbone (its stages called one by one) showed 0 of its 142 M."""
    trunk, dense = 4 * 27 * 64 + 4 * 4 * 64, 4 * 64 * 8 + 8 * 2
    leaves = {row.name: row.macs for row in budget(_CalledInParts(), input_shape=(3, 8, 8)).layers}
    assert leaves == {"trunk.0": 4 * 27 * 64, "trunk.1": 4 * 4 * 64, "flatten": 0, "head.0": 0, "head.1": 4 * 64 * 8,
                      "head.2": 8 * 2}  # fmt: skip
    report = budget(_CalledInParts(), input_shape=(3, 8, 8), depth=1)
    assert {row.name: row.macs for row in report.layers} == {"trunk": trunk, "flatten": 0, "head": dense}
    assert report.macs == trunk + dense


class _Shared(nn.Module):
    """One convolution and one pooling called twice each (as unet calls its one pooling after every encoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.conv(self.pool(self.conv(x))))


def test_a_module_called_twice_keeps_both_outputs_in_the_textbook():
    """Only a module's first call was counted: the textbook kept one of the two conv outputs and one of the pools'."""
    report = budget(_Shared(), input_shape=(4, 8, 8), batch_size=3)
    rows = {row.name: row for row in report.layers}
    assert rows["conv"].output_shape == (4, 8, 8) and rows["pool"].output_shape == (4, 4, 4)  # the first call's
    assert rows["conv"].activation_bytes == (4 * 8 * 8 + 4 * 4 * 4) * 4
    assert rows["pool"].activation_bytes == (4 * 4 * 4 + 4 * 2 * 2) * 4
    assert report.training["activations_bytes"] == 3 * (4 * 8 * 8 + 4 * 4 * 4 + 4 * 4 * 4 + 4 * 2 * 2) * 4


def test_grouped_and_depthwise_convs_are_sized_and_explained_as_torch_counts_them():
    """A spec had no groups ('gN' was "cannot understand"), so a depthwise layer could not be sized or explained:
    params, MACs and each sum's terms must equal a grouped nn.Conv2d and the trace's aten-level count."""
    from cnnlab.budget.explain import explain
    from cnnlab.budget.spec import layer_macs

    spec = ["conv 16 k3 s2 same", "conv 32 k3 g4 same relu", "conv 32 k3 s2 g32 same", "conv 8 k1", "gap", "dense 5"]
    report = budget(spec, input_shape=(3, 15, 17))
    grouped = nn.Conv2d(16, 32, 3, groups=4)
    depthwise = nn.Conv2d(32, 32, 3, groups=32)
    assert [row.params for row in report.layers if row.type == "Conv2d"][1:3] == [
        sum(p.numel() for p in grouped.parameters()),  # 32 x (3 x 3 x 16 / 4 + 1) = 1,184
        sum(p.numel() for p in depthwise.parameters()),  # 32 x (3 x 3 + 1) = 320
    ]
    assert [layer_macs(layer) for layer in report.spec_layers if layer.kind == "conv"] == [
        row.macs for row in report.layers if row.type == "Conv2d"
    ]  # analytic == traced (FlopCounterMode), layer by layer
    assert report.layers[1].macs == 32 * 8 * 9 * 9 * 4  # output values x k_h x k_w x c_in / groups
    text = explain(report)
    assert "groups 4: each filter sees 16 / 4 = 4 input channels" in text
    assert "params = filters x (k_h x k_w x c_in / groups + 1) = 32 x (3 x 3 x 16 / 4 + 1) = 1,184" in text
    assert "groups 32: each filter sees 32 / 32 = 1 input channel (depthwise)" in text
    assert "MACs = output values x k_h x k_w x c_in / groups = 640 x 9 = 5,760" in text
    shown = [int(value.replace(",", "")) for value in re.findall(r"    MACs = .* = ([\d,]+)$", text, re.MULTILINE)]
    assert sum(shown) == report.macs
    with pytest.raises(CnnlabError, match=r"g4 must divide both the 6 input channels and the 8 filters"):
        budget(["conv 8 k3 g4"], input_shape=(6, 8, 8))


def _sums_in(text: str) -> list[tuple[list[int], int]]:
    """Each '... = a + b - c = result' of an explanation (a 'total = ...' line joined to its '= result' line), as its
    signed terms and its result; an elided sum ('+ ... (N more)') is left out, its terms being partly unshown."""
    text = re.sub(r"\n +(?== )", " ", text)
    sums = []
    for line in text.splitlines():
        pieces = line.split(" = ")
        if len(pieces) < 3 or "..." in line:
            continue
        terms, result = re.sub(r" \([a-z]+\)", "", pieces[-2]), pieces[-1]  # 'optimizer state (adam) 7,227,200'
        if not re.search(r"\d \+ |\d - ", terms) or re.search(r"/|\(", terms):
            continue
        signed = re.findall(r"(^|[+-]) *[a-z ]*?([\d,]+(?: x [\d,]+)*)", terms)  # a term may be a product: 41 x 8
        values = [
            math.prod(int(factor.replace(",", "")) for factor in value.split(" x ")) * (-1 if sign == "-" else 1)
            for sign, value in signed
        ]
        sums.append((values, int(re.match(r"[\d,]+", result).group().replace(",", ""))))
    return sums


def test_every_sum_in_an_explanation_adds_up_and_the_saved_list_gives_its_total():
    """Section 6 gave 'saved for backward: 22,218,240 bytes' for resnet18 and listed layers adding up to 21,616,128:
    the input batch was in the total, not in the list; bytes saved by a functional F.relu between modules were in
    neither the list nor the layer table's column; 'total = 9,408 + ... + ...' did not say how many terms it left
    out. With --memory it derived nothing about the plan: now each remedy's largest batch is worked out from its fixed
    and per-sample bytes."""
    from cnnlab.budget.explain import explain

    class FunctionalRelus(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(2, 2, 1) for _ in range(14))

        def forward(self, x):
            for conv in self.convs:
                x = nn.functional.relu(conv(x))  # a ReLU outside every module: its saved output is no row's
            return x

    for report in (
        budget(EXERCISE, input_shape=(3, 20, 30), batch_size=5, memory_limit="40MB"),
        budget(nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 2)), input_shape=(2, 4, 4)),
        budget(FunctionalRelus(), input_shape=(2, 4, 4), batch_size=3),
    ):
        text = explain(report)
        section = text[text.index("saved for backward:") : text.index("peak of live tensors during")]
        listed = [int(v.replace(",", "")) for v in re.findall(r"^      .*?([\d,]+) bytes$", section, re.MULTILINE)]
        real = report.realistic
        assert sum(listed) == real["saved_for_backward_bytes"]
        sums = _sums_in(text)
        # RAM, the textbook's subtotal and total, the saved bytes, the table's activations kept for backward
        assert len(sums) >= 5
        for values, result in sums:
            assert sum(values) == result, (values, result)
        # the table's rows, 'activations kept for backward', appear as they are there
        assert f"= {real['activations_bytes']:,}" in section
        if report.plan:  # each remedy's answer fits and the batch after it does not, by sums that add up
            plan = text[text.index("Largest training batch within") : text.index("Assumptions")]
            limit = report.plan["limit_bytes"]
            for row in report.plan["remedies"]:
                best, fixed, per_sample = row["max_batch"], row["fixed_bytes"], row["per_sample_bytes"]
                assert best > 0 and f"{row['remedy']}: largest batch {best:,}\n" in plan
                fits, over = fixed + best * per_sample, fixed + (best + 1) * per_sample
                assert fits <= limit < over
                assert f"= {fixed:,} + {best:,} x {per_sample:,} = {fits:,} <= {limit:,}\n" in plan
                assert f"= {fixed:,} + {best + 1:,} x {per_sample:,} = {over:,} > {limit:,}\n" in plan
            assert len(_sums_in(plan)) == 2 * len(report.plan["remedies"]) == 10
    assert "functional ops" in section and "input batch" in section
    assert "total = " + " + ".join(["6"] * 12) + " + ... (2 more)\n" in text  # 14 convs of 6 parameters
    # the layer table's saved column, short of the memory table's figure by what functional calls saved, says so
    from cnnlab.budget.render import layer_table

    caption = str(layer_table(report).caption)
    assert "save 5,376 bytes more: 0 + 5,376 = 5,376, the activations kept" in caption
    # it said the input batch "is saved too ... when the first layer needs it" where no layer saves it: the trace knows
    assert caption.startswith("The input batch is saved too (384 bytes), by the layer that takes it.")
    unsaved = budget(nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 1)), input_shape=(2, 4, 4), batch_size=3)
    assert unsaved.realistic["saved_for_backward_bytes"] == unsaved.realistic["activations_bytes"] == 384
    assert str(layer_table(unsaved).caption) == "No layer saves the input batch (384 bytes) for backward."
