"""Residual units (He et al., 2015): the block learns a correction F(x) that is added to its input, y = relu(F(x) + x).

The identity path lets gradients and signals pass through hundreds of layers unchanged, so depth stops hurting
optimisation. Where the block changes resolution or width, the shortcut is a strided 1x1 conv + BN (``downsample``).
An optional attention module (e.g. `SqueezeExcite`) rescales F(x) before the sum, which is all SE-ResNet adds.

Submodule names follow torchvision (``conv1``, ``bn1``, ..., ``downsample``) and timm (``se``) so their weights load.
Strides sit on the 3x3 convolution of the bottleneck ("ResNet v1.5", as in torchvision).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck"]


def _attention(attn_layer: Callable[[int], nn.Module] | None, channels: int) -> nn.Module | None:
    return attn_layer(channels) if attn_layer is not None else None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18/34). Output channels: ``planes``.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the first conv (2 at the start of a stage).
        downsample: the projection shortcut, required when stride or width change.
        attn_layer: optional channel-attention constructor called with ``planes`` (e.g. ``SqueezeExcite``).
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        attn_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = _attention(attn_layer, planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a shortcut (ResNet-50/101/152). Output channels: ``planes * 4``.

    Args:
        inplanes: input channels.
        planes: bottleneck width; the block outputs ``planes * expansion`` channels.
        stride: stride of the 3x3 conv.
        downsample: the projection shortcut, required when stride or width change.
        attn_layer: optional channel-attention constructor called with ``planes * expansion``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        attn_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.se = _attention(attn_layer, width)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + shortcut)
