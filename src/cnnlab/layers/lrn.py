"""Local response normalisation (Krizhevsky et al., 2012, section 3.3): AlexNet's cross-channel "lateral inhibition".

Each activation is divided by a power of the summed squares of its neighbours across ``size`` adjacent channels at the
same pixel, so a strongly responding feature map damps its neighbours. It has no parameters and normalises with
nothing learned or batch-dependent, which is why batch normalisation (2015) replaced it: BN also standardises, but
learns a scale and shift and smooths optimisation. See docs/ZOO.md for when LRN is still worth adding.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LocalResponseNorm"]


class LocalResponseNorm(nn.Module):
    """``b_c = a_c / (k + alpha / size * sum_{c' near c} a_{c'}^2) ** beta``, PyTorch's (and Caffe's) convention.

    The window spans channels ``c - size // 2`` to ``c + (size - 1) // 2``, truncated at the edges. The paper writes
    ``alpha`` without the division by ``size``: the paper's alpha=1e-4 is ``alpha=5e-4`` here for ``size=5``.

    Args:
        size: number of neighbouring channels summed over (the paper's n).
        alpha: scale of the summed squares (divided by ``size``).
        beta: exponent.
        k: additive constant (2 in the paper).
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        squares = x.pow(2)  # N x C x H x W
        # Pad the channel axis so every channel has a full window, then sum each window of `size` channels.
        padded = F.pad(squares, (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))
        window_sums = padded.unfold(1, self.size, 1).sum(dim=-1)  # N x C x H x W
        return x / (self.k + self.alpha / self.size * window_sums).pow(self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
