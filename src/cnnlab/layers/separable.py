"""Depthwise separable convolution (Sifre 2014; Chollet, Xception, 2017; Howard et al., MobileNet, 2017).

A standard k x k convolution mixes space and channels at once: ``k*k*C_in*C_out`` weights. The separable version
splits it into a depthwise k x k convolution (one filter per input channel, ``k*k*C_in``) and a pointwise 1x1
convolution that mixes channels (``C_in*C_out``): about ``1/C_out + 1/k^2`` of the weights and MACs.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SeparableConv2d"]


class SeparableConv2d(nn.Module):
    """Depthwise k x k convolution followed by a pointwise 1x1 convolution, with no norm or activation between them
    (Keras ``SeparableConv2D``, as used by Xception).

    Args:
        in_channels: input channels (also the depthwise conv's groups).
        out_channels: output channels of the pointwise conv.
        kernel_size: depthwise kernel size.
        stride: depthwise stride.
        padding: depthwise zero padding.
        dilation: depthwise dilation.
        bias: whether both convs have a bias (Xception: no, a BN follows).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride, padding, dilation, groups=in_channels, bias=bias
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))
