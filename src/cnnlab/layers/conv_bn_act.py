"""Convolution, batch norm, activation: the unit almost every post-2015 CNN is built from."""

from __future__ import annotations

from torch import Tensor, nn

from cnnlab.layers.padding import Conv2dSame

__all__ = ["ConvBnAct"]


class ConvBnAct(nn.Module):
    """``conv -> BatchNorm -> activation`` with a bias-free convolution (the BN shift replaces the bias).

    The submodules are named ``conv``, ``bn`` and ``act``, the names torchvision's Inception ``BasicConv2d`` uses, so
    those state dicts load without renaming.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel size, an int or (height, width).
        stride: stride.
        padding: zero padding; ``None`` pads ``kernel_size // 2`` (size-preserving at stride 1 for odd kernels).
            Ignored when ``same_padding`` is set.
        groups: convolution groups (``in_channels`` for a depthwise conv).
        bn_eps: batch-norm epsilon (1e-3 for TF-trained and Inception weights, 1e-5 for PyTorch-trained ones).
        act_layer: activation class, or None for no activation.
        same_padding: use TF "same" padding (`Conv2dSame`), needed by weights converted from TensorFlow.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        groups: int = 1,
        bn_eps: float = 1e-5,
        act_layer: type[nn.Module] | None = nn.ReLU,
        same_padding: bool = False,
    ) -> None:
        super().__init__()
        if same_padding:
            self.conv: nn.Conv2d = Conv2dSame(in_channels, out_channels, kernel_size, stride, groups=groups, bias=False)
        else:
            if padding is None:
                padding = (
                    kernel_size // 2 if isinstance(kernel_size, int) else (kernel_size[0] // 2, kernel_size[1] // 2)
                )
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.act = act_layer(inplace=True) if act_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))
