"""The named blocks: LRN against PyTorch's, separable-conv parameter count, SE as a channel-wise scale, and shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.layers import (
    BasicBlock,
    Bottleneck,
    ConvBnAct,
    InceptionModule,
    LocalResponseNorm,
    SeparableConv2d,
    SqueezeExcite,
)


@pytest.mark.parametrize(
    ("size", "alpha", "beta", "k"),
    [(5, 1e-4, 0.75, 2.0), (4, 1e-2, 0.5, 1.0), (1, 0.3, 1.0, 1.0), (7, 5e-4, 0.75, 2.0)],
)
def test_lrn_matches_torch(size: int, alpha: float, beta: float, k: float):
    torch.manual_seed(0)
    x = torch.randn(2, 9, 5, 4, dtype=torch.float64) * 3  # large values so the normalisation really bites
    ours = LocalResponseNorm(size, alpha, beta, k)(x)
    reference = nn.LocalResponseNorm(size, alpha, beta, k)(x)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ours, x / k**beta)  # the neighbours changed the result


def test_lrn_has_no_parameters():
    assert sum(p.numel() for p in LocalResponseNorm(5).parameters()) == 0


@pytest.mark.parametrize(("c_in", "c_out", "k"), [(32, 64, 3), (728, 728, 3), (16, 8, 5)])
def test_separable_conv_parameter_count(c_in: int, c_out: int, k: int):
    separable = SeparableConv2d(c_in, c_out, k, padding=k // 2)
    assert sum(p.numel() for p in separable.parameters()) == c_in * k * k + c_in * c_out
    standard = nn.Conv2d(c_in, c_out, k, bias=False)
    assert sum(p.numel() for p in separable.parameters()) < sum(p.numel() for p in standard.parameters())
    assert separable(torch.randn(1, c_in, 9, 9)).shape == (1, c_out, 9, 9)


def test_squeeze_excite_scales_each_channel_by_one_gate_in_0_1():
    torch.manual_seed(0)
    se = SqueezeExcite(32, reduction=4)
    x = torch.randn(3, 32, 6, 5).abs() + 0.1  # non-zero so the ratio is defined
    ratio = se(x) / x
    # One factor per (sample, channel): constant over space, strictly inside (0, 1).
    per_channel = ratio[..., :1, :1]
    torch.testing.assert_close(ratio, per_channel.expand_as(ratio))
    assert (per_channel > 0).all() and (per_channel < 1).all()
    assert not torch.allclose(per_channel[:, 0], per_channel[:, 1])  # channels get different gates


def test_squeeze_excite_gates_depend_on_the_input():
    torch.manual_seed(0)
    se = SqueezeExcite(16, reduction=4)
    x = torch.randn(1, 16, 4, 4)
    gates_a = se(x.abs() + 0.1) / (x.abs() + 0.1)
    gates_b = se(-x.abs() - 0.1) / (-x.abs() - 0.1)
    assert not torch.allclose(gates_a, gates_b)


def test_residual_blocks_shapes_and_identity_path():
    x = torch.randn(2, 64, 8, 8)
    assert BasicBlock(64, 64)(x).shape == (2, 64, 8, 8)
    downsample = nn.Sequential(nn.Conv2d(64, 512, 1, stride=2, bias=False), nn.BatchNorm2d(512))
    assert Bottleneck(64, 128, stride=2, downsample=downsample)(x).shape == (2, 512, 4, 4)
    # With the residual branch's last BN at zero the unit is relu(x): the shortcut carries the signal.
    block = BasicBlock(64, 64).eval()
    nn.init.zeros_(block.bn2.weight)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_inception_module_concatenates_its_branches():
    module = InceptionModule(192, 64, 96, 128, 16, 32, 32)
    assert module.out_channels == 256
    assert module(torch.randn(1, 192, 28, 28)).shape == (1, 256, 28, 28)


def test_conv_bn_act_same_padding_follows_tf():
    block = ConvBnAct(3, 8, 3, stride=2, same_padding=True)
    assert block(torch.randn(1, 3, 224, 224)).shape == (1, 8, 112, 112)
    assert block(torch.randn(1, 3, 225, 225)).shape == (1, 8, 113, 113)
