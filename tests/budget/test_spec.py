"""Spec parsing and shape arithmetic, checked against real PyTorch modules."""

import json
import math
import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlab.budget.spec import build_module, infer_shapes, load_spec_file, parse_size, parse_spec, spec_from_strings
from cnnlab.errors import CnnlabError


@pytest.mark.parametrize("size", [5, 7, 28, 32, 75])
@pytest.mark.parametrize("kernel", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("padding", ["valid", "same", "p1"])
def test_conv_shapes_match_pytorch(size, kernel, stride, padding):
    line = f"conv 4 k{kernel} s{stride} {padding}"
    if padding == "valid" and kernel > size:
        return
    layers, module = spec_from_strings([line], (2, size, size + 1))
    out = module(torch.zeros(1, 2, size, size + 1))
    assert tuple(out.shape[1:]) == layers[0].output_shape
    if padding == "same":
        assert layers[0].output_shape[1:] == (math.ceil(size / stride), math.ceil((size + 1) / stride))
    else:  # an independent reference: PyTorch's own Conv2d with the same explicit padding
        pad = 0 if padding == "valid" else 1
        reference = nn.Conv2d(2, 4, kernel, stride, padding=pad)(torch.zeros(1, 2, size, size + 1))
        assert tuple(reference.shape[1:]) == layers[0].output_shape


@pytest.mark.parametrize(
    "options,torch_options",
    [  # the layer string, and nn.ConvTranspose2d's arguments written out independently
        ("k3 s2", {"kernel_size": 3, "stride": 2}),
        ("k3 s2 p1 op1", {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}),
        ("k4 s2 p1", {"kernel_size": 4, "stride": 2, "padding": 1}),
        (
            "k3x5 s2x3 p1x2 op1x2 nobias",
            {"kernel_size": (3, 5), "stride": (2, 3), "padding": (1, 2), "output_padding": (1, 2), "bias": False},
        ),
        ("k3 s2 d2 op1 g2", {"kernel_size": 3, "stride": 2, "dilation": 2, "output_padding": 1, "groups": 2}),
        ("k2 s2 same", {"kernel_size": 2, "stride": 2}),  # same: out = in x s
        ("k3 s2 same", {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}),
        ("k4 s2 same", {"kernel_size": 4, "stride": 2, "padding": 1}),
        ("k1 s3 same", {"kernel_size": 1, "stride": 3, "output_padding": 2}),
    ],
)
def test_transposed_conv_shapes_params_and_macs_equal_pytorch(options, torch_options):
    from torch.utils.flop_counter import FlopCounterMode

    from cnnlab.budget.explain import _spec_layer_lines
    from cnnlab.budget.spec import layer_macs, parameter_counts

    layers, built = spec_from_strings([f"tconv 6 {options}"], (4, 7, 9))  # odd sizes
    reference = nn.ConvTranspose2d(4, 6, **torch_options)
    x = torch.zeros(1, 4, 7, 9)
    with FlopCounterMode(display=False) as flops:
        expected = reference(x)
    layer = layers[0]
    assert layer.output_shape == tuple(expected.shape[1:]) == tuple(built(x).shape[1:])
    if "same" in options:  # Keras' Conv2DTranspose: the input times the stride
        stride = 2 if "s2" in options else 3
        assert layer.output_shape[1:] == (7 * stride, 9 * stride)
    assert parameter_counts(layer)[0] == sum(p.numel() for p in reference.parameters())
    assert layer_macs(layer) == flops.get_total_flops() // 2
    rule = _spec_layer_lines(layer, 4)[1]  # the height's output-size rule, with its numbers
    assert rule.startswith("    height: ") and rule.endswith(f" + 1 = {layer.output_shape[1]}") and "(7 - 1) x " in rule


@pytest.mark.parametrize(
    "line,fragment",
    [
        ("tconv 4 k3 s2 op2", "output padding 2 must be smaller than the stride 2 or the dilation 1"),
        ("deconv 4 k3 s2 same op1", "'same' chooses the output padding"),
        ("tconv 4 k3 s1 p5", "pad less"),
        ("tconv 4 k3 op1x", "cannot read 'op1x'"),
        ("conv 4 k3 s2 op1", "conv takes no 'op1'"),
    ],
)
def test_a_transposed_conv_that_cannot_be_built_is_refused_naming_it(line, fragment):
    with pytest.raises(CnnlabError, match=rf"layer 1:\w+ \('{re.escape(line)}'\): .*{re.escape(fragment)}"):
        infer_shapes(parse_spec([line]), (4, 3, 3))


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
@pytest.mark.parametrize("size", [4, 7, 75])
@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2), (3, 1), (2, 1)])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_pool_shapes_match_pytorch(kind, size, kernel, stride, padding):
    layers, module = spec_from_strings([f"{kind} k{kernel} s{stride} {padding}"], (3, size, size))
    out = module(torch.randn(1, 3, size, size))
    assert tuple(out.shape[1:]) == layers[0].output_shape
    if padding == "same":
        assert layers[0].output_shape[1] == math.ceil(size / stride)


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
def test_ceil_pool_shapes_match_pytorch_on_odd_sizes(kind):
    """'ceil' was "cannot understand": GoogLeNet's and Caffe-era pools (ceil_mode=True) could not be written."""
    reference_class = nn.MaxPool2d if kind == "maxpool" else nn.AvgPool2d
    rounded_up = dropped = 0
    for size in (5, 7, 9, 13, 15):
        for kernel, stride, pad in ((3, 2, 0), (2, 2, 1), (3, 2, 1), (5, 3, 2), (4, 3, 2)):
            layers, module = spec_from_strings([f"{kind} k{kernel} s{stride} p{pad} ceil"], (2, size, size + 2))
            assert isinstance(module[0], reference_class) and module[0].ceil_mode
            x = torch.zeros(1, 2, size, size + 2)
            expected = tuple(reference_class(kernel, stride, pad, ceil_mode=True)(x).shape[1:])
            assert layers[0].output_shape == expected == tuple(module(x).shape[1:]), (size, kernel, stride, pad)
            floor = (size + 2 * pad - kernel) // stride + 1
            rounded_up += expected[1] > floor
            dropped += expected[1] < -(-(size + 2 * pad - kernel) // stride) + 1  # the last-window rule applied
    assert rounded_up and dropped  # both of PyTorch's rules were exercised
    assert parse_spec([{"type": kind, "kernel": 3, "stride": 2, "ceil_mode": True}])[0].ceil_mode  # a spec file's


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
def test_same_ceil_pools_are_sized_as_pytorch_pools_them(kind):
    """'same ceil' was refused ("'same' already gives ceil(in / stride)"), but PyTorch pools padding=(k - 1) // 2 with
    ceil_mode=True one larger than 'same' alone (k3 s2: 14 -> 8, not 7); an even kernel's TF split changes nothing."""
    reference_class = nn.MaxPool2d if kind == "maxpool" else nn.AvgPool2d
    larger = 0
    for size in (1, 2, 5, 14, 15):
        for kernel, stride in ((3, 2), (5, 3), (3, 1), (2, 2), (4, 3), (1, 2)):
            layers, module = spec_from_strings([f"{kind} k{kernel} s{stride} same ceil"], (2, size, size + 3))
            x = torch.zeros(1, 2, size, size + 3)
            shape = tuple(module(x).shape[1:])
            assert layers[0].output_shape == shape, (size, kernel, stride)
            if kernel % 2:  # PyTorch's own pool, with the symmetric padding 'same' gives an odd kernel
                pad = (kernel - 1) // 2
                assert shape == tuple(reference_class(kernel, stride, pad, ceil_mode=True)(x).shape[1:])
            else:
                assert shape[1:] == (math.ceil(size / stride), math.ceil((size + 3) / stride))
            larger += shape[1] > math.ceil(size / stride)
    assert larger  # some sizes round up past 'same'
    from cnnlab.budget.explain import _spec_layer_lines

    layers, _ = spec_from_strings([f"{kind} k3 s2 same ceil"], (2, 14, 15))
    text = "\n".join(_spec_layer_lines(layers[0], 4))  # the rule that gives 8, not same's ceil(14 / 2) = 8
    assert "height: same, then ceil: pads 1 before and 1 after, ceil((14 + 2 - 3) / 2) + 1 = 8" in text
    assert "(same alone: ceil(14 / 2) = 7)" in text


@pytest.mark.parametrize(
    "line,kernel,stride",
    [
        ("maxpool k1", (1, 1), (1, 1)),  # was a 2x2 pooling of stride 2: a 1x1 kernel was taken for no kernel
        ("avgpool k1x3", (1, 3), (1, 3)),
        ("maxpool", (2, 2), (2, 2)),
        ("maxpool s1", (2, 2), (1, 1)),  # was a 1x1 kernel: the 2x2 default applied only without a stride
        ("avgpool k3", (3, 3), (3, 3)),
    ],
)
def test_pool_kernel_and_stride_default_only_when_not_given(line, kernel, stride):
    layer = infer_shapes(parse_spec([line]), (2, 9, 9))[0]
    assert (layer.kernel, layer.stride) == (kernel, stride)
    module = build_module([layer])
    assert tuple(module(torch.zeros(1, 2, 9, 9)).shape[1:]) == layer.output_shape


def test_same_stride_two_turns_75_into_38():
    layers = infer_shapes(parse_spec(["conv 8 k3 s2 same"]), (3, 75, 75))
    assert layers[0].output_shape == (8, 38, 38)


def test_several_layers_in_one_argument_are_the_same_network_as_one_per_argument():
    # The help lists the grammar separated by commas, and users wrote "conv 64 k7 s2 same, maxpool k3 s2, dense 10"
    # as one argument: it was read as one conv layer that "cannot understand 'maxpool'".
    apart = infer_shapes(parse_spec(["conv 64 k7 s2 same relu", "maxpool k3 s2", "gap", "dense 10"]), (3, 64, 64))
    for together in (
        "conv 64 k7 s2 same relu, maxpool k3 s2, gap, dense 10",
        "conv 64 k7 s2 same, relu; maxpool k3 s2; gap; dense 10",  # an activation after a conv stays the conv's own
        "conv 64, k7, s2, same, relu, pool k3 s2, gap, fc 10",  # commas between a layer's words, aliases
    ):
        layers = infer_shapes(parse_spec([together]), (3, 64, 64))
        assert [(layer.kind, layer.name, layer.output_shape) for layer in layers] == [
            (layer.kind, layer.name, layer.output_shape) for layer in apart
        ], together
    assert [layer.name for layer in apart] == ["1:conv", "1:relu", "2:maxpool", "3:gap", "4:dense"]
    with pytest.raises(CnnlabError, match="layer 2:maxpool .* cannot understand 'relu6'"):
        parse_spec(["conv 8 k3; maxpool k2 relu6"])


_layer = st.one_of(
    st.builds(
        lambda f, k, s, p: f"conv {f} k{k} s{s} {p}",
        st.integers(1, 8),
        st.integers(1, 3),
        st.integers(1, 2),
        st.sampled_from(["same", "valid"]),
    ),
    st.sampled_from(["relu", "bn", "maxpool k2 s2 same", "avgpool k2 s1 same", "dropout 0.3", "tanh"]),
)


@settings(max_examples=40, deadline=None)
@given(convs=st.lists(_layer, min_size=1, max_size=5), units=st.lists(st.integers(1, 16), max_size=2))
def test_parameter_counts_equal_pytorch(convs, units):
    lines = [*convs, "flatten", *(f"dense {u}" for u in units)]
    try:
        layers, module = spec_from_strings(lines, (3, 16, 16))
    except CnnlabError as error:  # strides can shrink the map below a later valid kernel: rightly rejected
        if "does not fit" not in str(error):
            raise
        assume(False)
    from cnnlab.budget.spec import parameter_counts

    assert sum(parameter_counts(layer)[0] for layer in layers) == sum(p.numel() for p in module.parameters())
    out = module.eval()(torch.randn(2, 3, 16, 16))
    assert tuple(out.shape[1:]) == layers[-1].output_shape


def test_yaml_and_json_files(tmp_path):
    yaml_file = tmp_path / "net.yaml"
    yaml_file.write_text(
        "input: 3x200x300\nlayers:\n  - conv 100 k3 s2 same\n  - {type: conv, filters: 200, kernel: 3, "
        "stride: 2, padding: same}\n"
    )
    shape, layers = load_spec_file(yaml_file)
    assert shape == (3, 200, 300)
    assert [layer.filters for layer in layers] == [100, 200]
    json_file = tmp_path / "net.json"
    json_file.write_text('["conv 8 k3", "flatten", "dense 10"]')
    assert len(load_spec_file(json_file)[1]) == 3
    json_file.write_bytes('["conv 8 k3", "flatten", "dense 10"]'.encode("utf-8-sig"))  # an editor's byte-order mark
    assert len(load_spec_file(json_file)[1]) == 3
    binary = tmp_path / "photo.yaml"
    binary.write_bytes(b"\xff\xd8\xff\xe0 a JPEG by another name")
    with pytest.raises(CnnlabError, match="is not UTF-8 text"):  # was a UnicodeDecodeError traceback
        load_spec_file(binary)


@pytest.mark.parametrize(
    "lines,shape,fragment",
    [
        (["conv 8 k3", "bogus 3"], (3, 8, 8), "layer 2"),
        (["conv -4 k3"], (3, 8, 8), "layer 1"),
        (["conv 8 k9 valid"], (3, 8, 8), "layer 1"),
        (["conv 8 k3", "dense 10"], (3, 8, 8), "dense"),
        (["conv 8 k3", "flatten", "dense 10 in=99"], (3, 8, 8), "layer 3"),
    ],
)
def test_bad_specs_name_the_layer(lines, shape, fragment):
    with pytest.raises(CnnlabError, match=fragment):
        infer_shapes(parse_spec(lines), shape)


def test_parse_size():
    assert parse_size("3x200x300") == (3, 200, 300)
    with pytest.raises(CnnlabError):
        parse_size("3x-2x4")


def test_layers_split_word_by_word_are_refused_with_the_quoted_form():
    """An unquoted `conv 8 k3` reaches the parser as three layers; the error must not blame `conv` for its count."""
    with pytest.raises(CnnlabError, match=r'one quoted argument, e.g. "conv 8 k3 same" "maxpool k2" "dense 10"'):
        parse_spec(["conv", "8", "k3", "same", "maxpool", "k2", "dense", "10"])
    assert [layer.kind for layer in parse_spec(["conv 8 k3", "maxpool", "dropout 0.5", "dense 10"])] == [
        "conv",
        "maxpool",
        "dropout",
        "dense",
    ]


def test_a_yaml_syntax_error_says_where(tmp_path):
    """The message was YAML's first line alone, "while parsing a flow sequence", with no line number."""
    spec = tmp_path / "net.yaml"
    spec.write_text("input: 3x32x32\nlayers:\n  - conv 8 k3\n  - [dense 10\n")
    with pytest.raises(CnnlabError, match=r"net\.yaml': expected ',' or '\]'.* at line 5, column 1"):
        load_spec_file(spec)


@pytest.mark.parametrize(
    "line,fragment",
    [
        # float() refused what the pattern let through: a ValueError traceback
        ("dropout 1.2.3", r"the dropout rate '1\.2\.3' must be a number in \[0, 1\)"),
        ("dropout .", r"the dropout rate '\.' must be a number in \[0, 1\)"),
        ("dropout 1", r"the dropout rate '1' must be a number in \[0, 1\)"),
        ("conv 8.5 k3", r"the number of filters '8\.5' must be a positive whole number, e.g. 'conv 64'"),
        ("dense 1.2.3", r"the number of units '1\.2\.3' must be a positive whole number"),
        ("lrn 0", r"the window size '0' must be a positive whole number"),
        ("conv 8 k0", r"cannot read 'k0': the kernel is one or two positive whole numbers"),
        ("conv 8 k3 s0", r"cannot read 's0': the stride is one or two positive"),
        ("conv 8 k3x5x7", r"cannot read 'k3x5x7': the kernel is one or two"),
        ("conv 8 k3xx5", r"cannot read 'k3xx5'"),
        ("maxpool kx", r"cannot read 'kx'"),
    ],
)
def test_a_number_that_cannot_be_read_is_named(line, fragment):
    with pytest.raises(CnnlabError, match=rf"layer 1:\w+ \('{re.escape(line)}'\): {fragment}"):
        parse_spec([line])


@pytest.mark.parametrize(
    "line,pads", [("maxpool k2 p2", "p1x1"), ("avgpool k3x1 p1", "p1x0"), ("maxpool k1 s1 p1", "p0x0")]
)
def test_pooling_padded_beyond_half_its_window_is_refused_naming_the_layer(line, pads):
    """PyTorch refuses it when the module runs; the budget said 'spec does not run on input ...' without the layer."""
    with pytest.raises(CnnlabError, match=rf"layer 2:\w+ \('{re.escape(line)}'\): padding .* use {pads} or 'same'"):
        infer_shapes(parse_spec(["conv 4 k1", line]), (3, 9, 9))
    half = infer_shapes(parse_spec(["conv 4 k1", line.replace(line.split()[-1], pads)]), (3, 9, 9))
    assert tuple(build_module(half)(torch.zeros(1, 3, 9, 9)).shape[1:]) == half[-1].output_shape


def test_small_numbers_that_are_valid_are_read():
    """p0 is PyTorch's padding=0 (it was refused as unreadable); a rate in scientific notation is a number too."""
    padded = infer_shapes(parse_spec(["conv 8 k3 p0", "conv 8 k3 p1x0"]), (3, 8, 8))
    assert [layer.output_shape for layer in padded] == [(8, 6, 6), (8, 6, 4)]
    assert parse_spec(["dropout 1e-3"])[0].rate == 0.001


@pytest.mark.parametrize(
    "line,fragment",
    [
        # each was ignored: 'dense 10 k5 s3 same' built the plain dense layer's 7,850 parameters
        ("dense 10 k5 s3 same", r"dense takes no 'k5', 's3', 'same'; it takes units \(10\), an activation"),
        ("maxpool k2 relu", r"maxpool takes no 'relu'; it takes kN \(kernel\), sN \(stride\), pN \(padding\)"),
        ("maxpool k2 d2", r"maxpool takes no 'd2'"),  # the pooling modules are built without dilation
        ("flatten 3", r"flatten takes no '3'; give it alone, e.g. 'flatten'"),
        ("bn in=3", r"bn takes no 'in=3'"),
        ("dropout 0.5 k3", r"dropout takes no 'k3'; it takes a rate \(0\.5\)"),
        # the second one won without a word
        ("conv 8 16", r"'8' and '16' both set the number of filters; give one"),
        ("conv 8 k3 k5", r"'k3' and 'k5' both set the kernel"),
        ("conv 8 same p1", r"'same' and 'p1' both set the padding"),
        ("conv 8 k3 relu tanh", r"'relu' and 'tanh' both set the activation"),
    ],
)
def test_an_option_a_layer_does_not_take_is_refused(line, fragment):
    with pytest.raises(CnnlabError, match=rf"layer 1:\w+ \('{re.escape(line)}'\): {fragment}"):
        parse_spec([line])


def test_a_declared_conv_input_is_checked_against_the_channels():
    """in= was checked for dense only: 'conv 8 k3 in=3' on a 1-channel input built a 1-channel conv."""
    with pytest.raises(CnnlabError, match=r"layer 1:conv .*declared in=3 but the input has 1 channel$"):
        infer_shapes(parse_spec(["conv 8 k3 in=3"]), (1, 28, 28))
    with pytest.raises(CnnlabError, match=r"layer 2:conv .*declared in=3 but the previous layer gives 8 channels"):
        infer_shapes(parse_spec(["conv 8 k3 in=1", "conv 4 k3 in=3"]), (1, 28, 28))
    layers = infer_shapes(parse_spec(["conv 8 k3 in=1", "conv 4 k3 in=8", "flatten", "dense 10 in=2304"]), (1, 28, 28))
    assert layers[-1].output_shape == (10,)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_spec_file_takes_lists_for_its_input_and_a_kernels_sides(tmp_path, suffix):
    """`kernel: [3, 5]` became the word 'k[3,5]' ("cannot understand 'k[3'"), `input: [3, 20, 30]` was unreadable."""
    spec = tmp_path / f"net{suffix}"
    conv = {"type": "conv", "filters": 8, "kernel": [3, 5], "stride": [1, 2], "padding": [1, 0], "dilation": 1}
    if suffix == ".json":
        spec.write_text(json.dumps({"input": [3, 20, 30], "layers": [conv, "flatten"]}))
    else:
        spec.write_text(
            "input: [3, 20, 30]\nlayers:\n  - {type: conv, filters: 8, kernel: [3, 5], stride: [1, 2], "
            "padding: [1, 0], dilation: 1}\n  - flatten\n"
        )
    shape, layers = load_spec_file(spec)
    assert shape == (3, 20, 30)
    layers = infer_shapes(layers, shape)
    reference = nn.Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(1, 0))
    assert layers[0].output_shape == tuple(reference(torch.zeros(1, 3, 20, 30)).shape[1:])
    assert sum(p.numel() for p in build_module(layers).parameters()) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize(
    "text,fragment",
    [
        (
            "input: [3, 20, 'a']\nlayers: [conv 8 k3]\n",
            r"input \[3, 20, 'a'\] must be the shape of one sample .* or \[3, 200",
        ),
        ("input: [3, 0, 30]\nlayers: [conv 8 k3]\n", r"input \[3, 0, 30\] must be the shape of one sample"),
        (
            "input: 3x20x30\nlayers:\n  - {type: conv, filters: 8, kernel: [3, 5, 7]}\n",
            r"kernel \[3, 5, 7\] must be one",
        ),
        (
            "input: 3x20x30\nlayers:\n  - {type: conv, filters: 8, stride: 1.5}\n",
            r"stride 1.5 must be one or two whole",
        ),
    ],
)
def test_a_spec_file_says_which_form_it_expects(tmp_path, text, fragment):
    spec = tmp_path / "net.yaml"
    spec.write_text(text)
    with pytest.raises(CnnlabError, match=fragment):
        load_spec_file(spec)
