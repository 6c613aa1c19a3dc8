"""Inception modules: parallel branches of different receptive fields, concatenated along channels.

- `InceptionModule` is GoogLeNet's (Szegedy et al., 2014): 1x1, 1x1->3x3, 1x1->"5x5" and pool->1x1 branches. The
  1x1 "bottleneck" convolutions before the large kernels cut the input channels, which is what makes the module
  cheap: GoogLeNet has 12x fewer parameters than AlexNet yet is deeper and more accurate.
- `InceptionA` .. `InceptionE` are Inception-v3's (Szegedy et al., 2015, "Rethinking the Inception architecture"):
  5x5 factorised into two 3x3s, n x n into 1 x n then n x 1, and grid reduction by parallel stride-2 conv and pool
  branches (`InceptionB`, `InceptionD`) instead of a pool that would create a representational bottleneck.

Submodule names follow torchvision so its state dicts load unchanged. Every convolution is a `ConvBnAct` with
BN epsilon 1e-3 (torchvision's ``BasicConv2d``).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.layers.conv_bn_act import ConvBnAct

__all__ = ["InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "InceptionModule", "inception_conv"]

inception_conv = partial(ConvBnAct, bn_eps=1e-3)


class InceptionModule(nn.Module):
    """GoogLeNet's Inception module; output channels ``ch1x1 + ch3x3 + ch5x5 + pool_proj``.

    Args:
        in_channels: input channels.
        ch1x1: channels of the 1x1 branch.
        ch3x3_reduce: 1x1 bottleneck width before the 3x3.
        ch3x3: channels of the 3x3 branch.
        ch5x5_reduce: 1x1 bottleneck width before the "5x5".
        ch5x5: channels of the "5x5" branch.
        pool_proj: channels of the 1x1 after the 3x3 max pool.
        large_kernel_size: kernel of the "5x5" branch. The paper uses 5; torchvision's GoogLeNet (and the published
            count 6,624,904 and its ImageNet weights) uses 3, a long-standing quirk kept for weight compatibility.
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3_reduce: int,
        ch3x3: int,
        ch5x5_reduce: int,
        ch5x5: int,
        pool_proj: int,
        large_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.branch1 = inception_conv(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            inception_conv(in_channels, ch3x3_reduce, kernel_size=1),
            inception_conv(ch3x3_reduce, ch3x3, kernel_size=3),
        )
        self.branch3 = nn.Sequential(
            inception_conv(in_channels, ch5x5_reduce, kernel_size=1),
            inception_conv(ch5x5_reduce, ch5x5, kernel_size=large_kernel_size),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            inception_conv(in_channels, pool_proj, kernel_size=1),
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)  # N x out_channels x H x W


class InceptionA(nn.Module):
    """Inception-v3 35x35 module: the 5x5 branch kept, and a second 5x5 receptive field as two stacked 3x3s."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = inception_conv(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = inception_conv(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = inception_conv(48, 64, kernel_size=5)
        self.branch3x3dbl_1 = inception_conv(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = inception_conv(64, 96, kernel_size=3)
        self.branch3x3dbl_3 = inception_conv(96, 96, kernel_size=3)
        self.branch_pool = inception_conv(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """Inception-v3 grid reduction 35 -> 17: stride-2 conv branches beside a stride-2 max pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = inception_conv(in_channels, 384, kernel_size=3, stride=2, padding=0)
        self.branch3x3dbl_1 = inception_conv(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = inception_conv(64, 96, kernel_size=3)
        self.branch3x3dbl_3 = inception_conv(96, 96, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """Inception-v3 17x17 module: 7x7 receptive fields factorised into 1x7 and 7x1 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = inception_conv(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = inception_conv(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = inception_conv(c7, c7, kernel_size=(1, 7))
        self.branch7x7_3 = inception_conv(c7, 192, kernel_size=(7, 1))
        self.branch7x7dbl_1 = inception_conv(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = inception_conv(c7, c7, kernel_size=(7, 1))
        self.branch7x7dbl_3 = inception_conv(c7, c7, kernel_size=(1, 7))
        self.branch7x7dbl_4 = inception_conv(c7, c7, kernel_size=(7, 1))
        self.branch7x7dbl_5 = inception_conv(c7, 192, kernel_size=(1, 7))
        self.branch_pool = inception_conv(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """Inception-v3 grid reduction 17 -> 8."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = inception_conv(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = inception_conv(192, 320, kernel_size=3, stride=2, padding=0)
        self.branch7x7x3_1 = inception_conv(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = inception_conv(192, 192, kernel_size=(1, 7))
        self.branch7x7x3_3 = inception_conv(192, 192, kernel_size=(7, 1))
        self.branch7x7x3_4 = inception_conv(192, 192, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """Inception-v3 8x8 module: 3x3 split into parallel 1x3 and 3x1 whose outputs are concatenated (wider, not deeper,
    at the coarsest grid)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = inception_conv(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = inception_conv(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = inception_conv(384, 384, kernel_size=(1, 3))
        self.branch3x3_2b = inception_conv(384, 384, kernel_size=(3, 1))
        self.branch3x3dbl_1 = inception_conv(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = inception_conv(448, 384, kernel_size=3)
        self.branch3x3dbl_3a = inception_conv(384, 384, kernel_size=(1, 3))
        self.branch3x3dbl_3b = inception_conv(384, 384, kernel_size=(3, 1))
        self.branch_pool = inception_conv(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)
