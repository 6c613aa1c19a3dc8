"""Input normalisation as a layer: ``(x - mean) / std`` per channel, with mean and std saved with the weights.

A model that normalises its own input is never fed data scaled the wrong way: the MNIST networks take images in
[0, 1] and normalise inside, and an exported classifier carries its weights' record's mean and std in the graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """`(x - mean) / std` per channel, with mean and std stored as buffers (saved with the weights).

    Args:
        mean: one value for every channel, or one per channel.
        std: the same for the standard deviation.
    """

    def __init__(self, mean: float | tuple[float, ...], std: float | tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
