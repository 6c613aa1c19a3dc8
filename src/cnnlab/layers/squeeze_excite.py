"""Squeeze-and-excitation (Hu et al., 2018): channel-wise recalibration learned from global context.

"Squeeze" averages each channel over space; "excite" passes the channel vector through a two-layer bottleneck MLP
ending in a sigmoid; the input is then scaled channel by channel by these gates. Only the scale changes, never the
spatial pattern, so the block can be dropped into any architecture (SE-ResNet adds it before the residual sum).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """SE block: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``.

    The two "fully connected" layers are 1x1 convolutions with bias (named ``fc1``/``fc2``, as in timm, so timm's
    SE-ResNet weights load unchanged).

    Args:
        channels: input (and output) channels.
        reduction: bottleneck ratio r of the paper; the hidden width is ``channels // reduction``.
        hidden_channels: explicit hidden width, overriding ``reduction``.
        act_layer: activation between the two layers.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        hidden_channels: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        hidden = hidden_channels or max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        squeezed = x.mean((2, 3), keepdim=True)  # N x C x 1 x 1
        gates = self.gate(self.fc2(self.act(self.fc1(squeezed))))  # N x C x 1 x 1, each in (0, 1)
        return x * gates
