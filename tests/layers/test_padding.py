"""TF/Keras "same" padding: output sizes, asymmetric placement, -inf max padding, valid-only averaging."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlab.layers import AvgPool2dSame, Conv2dSame, MaxPool2dSame
from cnnlab.layers.padding import same_padding_amounts


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 23),
    width=st.integers(1, 23),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    dilation=st.integers(1, 2),
)
def test_conv_output_is_ceil_of_input_over_stride(height: int, width: int, kernel: int, stride: int, dilation: int):
    conv = Conv2dSame(2, 3, kernel, stride=stride, dilation=dilation)
    out = conv(torch.randn(1, 2, height, width))
    assert out.shape == (1, 3, math.ceil(height / stride), math.ceil(width / stride))


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 17), width=st.integers(1, 17), kernel=st.integers(1, 5), stride=st.integers(1, 3))
def test_pools_output_is_ceil_of_input_over_stride(height: int, width: int, kernel: int, stride: int):
    x = torch.randn(2, 3, height, width)
    expected = (2, 3, math.ceil(height / stride), math.ceil(width / stride))
    assert MaxPool2dSame(kernel, stride)(x).shape == expected
    avg = AvgPool2dSame(kernel, stride)(x)
    assert avg.shape == expected
    assert torch.isfinite(avg).all()


def test_padding_amounts_put_the_odd_pixel_after():
    # in=4, k=3, s=2: out=2, total = (2-1)*2 + 3 - 4 = 1 -> (0 before, 1 after), as TF does.
    assert same_padding_amounts(4, 3, 2) == (0, 1)
    # in=5, k=4, s=1: total 3 -> (1, 2).
    assert same_padding_amounts(5, 4, 1) == (1, 2)
    # in=7, k=1, s=2: no padding at all.
    assert same_padding_amounts(7, 1, 2) == (0, 0)


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
def test_stride_one_matches_pytorch_same_padding(kernel: int):
    # PyTorch's padding="same" (stride 1 only) also puts the extra pixel at the end, so the two must agree exactly.
    torch.manual_seed(0)
    ours = Conv2dSame(3, 4, kernel)
    reference = nn.Conv2d(3, 4, kernel, padding="same")
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(ours(x), reference(x))


def test_strided_conv_equals_explicit_asymmetric_pad():
    torch.manual_seed(0)
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    x = torch.randn(1, 1, 4, 6)
    # height: in 4 -> pad (0, 1); width: in 6 -> out 3, total (3-1)*2+3-6 = 1 -> (0, 1)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)


def test_max_pool_pads_with_minus_infinity():
    # All values negative: zero padding would win the max in the last window, -inf padding must not.
    x = -torch.arange(1.0, 5.0).reshape(1, 1, 1, 4)  # [-1, -2, -3, -4]
    out = MaxPool2dSame((1, 3), (1, 2))(x)  # windows [-1,-2,-3] and [-3,-4,pad]
    assert out.flatten().tolist() == [-1.0, -3.0]


def test_avg_pool_averages_only_real_elements():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    out = AvgPool2dSame((1, 3), (1, 2))(x)  # windows [1,2,3] -> 2 and [3,4,pad] -> 3.5 (not 7/3)
    torch.testing.assert_close(out.flatten(), torch.tensor([2.0, 3.5]))


def test_avg_pool_matches_count_include_pad_false_when_padding_is_symmetric():
    # k=3, s=1 pads one on each side, which PyTorch can express: both must agree.
    x = torch.randn(2, 3, 7, 5)
    reference = F.avg_pool2d(x, 3, 1, padding=1, count_include_pad=False)
    torch.testing.assert_close(AvgPool2dSame(3, 1)(x), reference)


def test_layers_run_on_the_meta_device():
    x = torch.empty(1, 3, 225, 225, device="meta")
    conv = Conv2dSame(3, 8, 3, stride=2).to("meta")
    assert conv(x).shape == (1, 8, 113, 113)
    assert MaxPool2dSame(3, 2)(x).shape == (1, 3, 113, 113)
    assert AvgPool2dSame(3, 2)(x).shape == (1, 3, 113, 113)


@pytest.mark.parametrize("traced_at", [8, 9])
def test_a_traced_layer_pads_every_input_size_as_the_eager_one(traced_at: int) -> None:
    """`cnnlab export` traces at one size and segmenters run at others: odd and even sizes need different padding
    (a 2x2 pool pads odd sizes only; a 1x1 stride-2 conv would crop even ones if the traced amount went negative)."""
    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(1, 2, 1, stride=2), Conv2dSame(2, 2, 3, stride=2), MaxPool2dSame(2, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no branch frozen at the traced size
        traced = torch.jit.trace(model, torch.randn(1, 1, traced_at, traced_at))
    for size in (8, 9, 13, 16):
        x = torch.randn(1, 1, size, size)
        torch.testing.assert_close(traced(x), model(x))


def test_an_onnx_export_pads_odd_and_even_sizes_as_the_eager_layer(tmp_path) -> None:
    """ONNX divides integers towards zero: the ceil division written as -(-size // stride) padded an odd size as if it
    were one smaller, so EfficientNet-Lite at 240 px (15x15 maps) exported 0.5% off, and segmenters at odd sizes."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(1, 2, 3, stride=2), Conv2dSame(2, 2, 5, stride=2), MaxPool2dSame(3, 2)).eval()
    path = tmp_path / "same.onnx"
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.14's deprecation of the TorchScript-based exporter
        torch.onnx.export(
            model, (torch.randn(1, 1, 16, 16),), str(path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": axes, "y": axes}, dynamo=False,
        )  # fmt: skip
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in (15, 16, 29, 30):
        x = torch.randn(1, 1, size, size)
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), expected)
