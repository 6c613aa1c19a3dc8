"""TensorFlow/Keras "same" padding for convolutions and pooling.

Keras' ``padding="same"`` gives ``out = ceil(in / stride)`` in every spatial dimension. The total padding needed is
``max((out - 1) * stride + (kernel - 1) * dilation + 1 - in, 0)``; TF puts ``total // 2`` before and the remainder
after, so an odd total pads one more on the bottom/right. PyTorch's symmetric ``padding=`` cannot express this when
the total is odd or when stride > 1, so weights converted from TF (EfficientNet-Lite, Xception ports) and shape
arithmetic that follows the Keras rule need these layers.

The padding is computed from the input's shape at run time (Python integers from ``x.shape``, never from tensor
values), so the layers work on the meta device, under ``FlopCounterMode`` and with ``torch.compile``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AvgPool2dSame", "Conv2dSame", "MaxPool2dSame", "pad_same", "same_padding_amounts"]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def same_padding_amounts(size: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """Padding (before, after) along one dimension under the TF "same" rule.

    Args:
        size: input length along the dimension.
        kernel_size: kernel length.
        stride: stride.
        dilation: dilation of the kernel.

    Returns:
        ``(before, after)`` with ``before = total // 2``, so the output length is ``ceil(size / stride)``.
    """
    # ceil division in integers, on non-negative numbers only: a traced size (ONNX, TorchScript) stays dynamic, and
    # ONNX divides integers towards zero, so -(-size // stride) was one short for an odd size (wrong padding)
    out = (size + stride - 1) // stride
    total = (out - 1) * stride + (kernel_size - 1) * dilation + 1 - size
    # a size traced by torch.jit is a tensor: clamp it in the graph, where max() would freeze the traced size's branch
    total = total.clamp(min=0) if isinstance(total, torch.Tensor) else max(total, 0)
    return total // 2, total - total // 2


def pad_same(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    value: float = 0.0,
) -> torch.Tensor:
    """Pad the last two dimensions of ``x`` (N x C x H x W) by the TF "same" rule, filling with ``value``."""
    height, width = x.shape[-2:]
    top, bottom = same_padding_amounts(height, kernel_size[0], stride[0], dilation[0])
    left, right = same_padding_amounts(width, kernel_size[1], stride[1], dilation[1])
    if torch.jit.is_tracing() or top or bottom or left or right:  # traced: pad always (by 0 where none is needed)
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class Conv2dSame(nn.Conv2d):
    """A 2-D convolution with TF/Keras "same" padding: output size ``ceil(input / stride)``.

    Takes the arguments of `torch.nn.Conv2d` except ``padding`` (always "same" in the TF sense), so its state dict is
    that of an ``nn.Conv2d`` and converted TF weights load directly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MaxPool2dSame(nn.Module):
    """Max pooling with TF "same" padding; the padding is -inf, so it never wins the max (as in TF)."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=same"


class AvgPool2dSame(nn.Module):
    """Average pooling with TF "same" padding: each window averages only its real (unpadded) elements.

    This is TF's behaviour and PyTorch's ``count_include_pad=False``, extended to the asymmetric padding of the TF rule.
    """

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        window_means = F.avg_pool2d(pad_same(x, self.kernel_size, self.stride), self.kernel_size, self.stride)
        # Fraction of each window that is real input: a pooled mask of ones, padded with zeros the same way.
        mask = x.new_ones((1, 1, height, width))
        real_fraction = F.avg_pool2d(pad_same(mask, self.kernel_size, self.stride), self.kernel_size, self.stride)
        return window_means / real_fraction

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=same"
