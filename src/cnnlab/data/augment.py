"""Batched, on-device image augmentation: one `affine_grid` + `grid_sample` call per batch.

Every image of the batch gets its own random rotation, scale and shift (and, optionally, a smooth elastic
distortion, Simard et al. 2003), all sampled as tensors on the batch's device: no per-image Python, no PIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class RandomAffine:
    """Random rotation / scale / shift (and optional elastic distortion) for a batch [N, C, H, W] of floats.

    Args:
        degrees: rotation uniformly in [-degrees, degrees].
        scale: zoom factor uniformly in [1 - scale, 1 + scale].
        shift: translation uniformly in [-shift, shift] pixels, per axis.
        elastic_alpha: elastic displacement amplitude in pixels (0: off).
        elastic_grid: the elastic field is random on this coarse grid and smoothly (bicubic) upsampled, which
            replaces the Gaussian smoothing of Simard et al. at a fraction of the cost.
        probability: fraction of images that are transformed (the rest pass through unchanged).
    """

    degrees: float = 10.0
    scale: float = 0.1
    shift: float = 2.0
    elastic_alpha: float = 0.0
    elastic_grid: int = 4
    probability: float = 1.0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return random_affine(images, self), targets


def random_affine(
    images: torch.Tensor, options: RandomAffine, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply `options` to a batch of float images [N, C, H, W] (same device and dtype out)."""
    n, _, height, width = images.shape
    device = images.device

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=device, generator=generator) * (high - low) + low

    angle = uniform(-options.degrees, options.degrees, n) * (math.pi / 180.0)
    zoom = uniform(1.0 - options.scale, 1.0 + options.scale, n)
    # affine_grid maps output coordinates to input ones, in [-1, 1] units: 1 pixel = 2 / size.
    shift_x = uniform(-options.shift, options.shift, n) * (2.0 / width)
    shift_y = uniform(-options.shift, options.shift, n) * (2.0 / height)
    if options.probability < 1.0:
        keep = torch.rand(n, device=device, generator=generator) >= options.probability
        angle, shift_x, shift_y = (
            angle.masked_fill(keep, 0.0),
            shift_x.masked_fill(keep, 0.0),
            shift_y.masked_fill(keep, 0.0),
        )
        zoom = zoom.masked_fill(keep, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), [n, 1, height, width], align_corners=False)  # N x H x W x 2
    if options.elastic_alpha > 0:
        coarse = torch.randn(n, 2, options.elastic_grid, options.elastic_grid, device=device, generator=generator)
        field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)  # N x 2 x H x W
        scale = torch.tensor([2.0 / width, 2.0 / height], device=device).view(1, 2, 1, 1)
        grid = grid + (field * options.elastic_alpha * scale).permute(0, 2, 3, 1).to(grid.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
