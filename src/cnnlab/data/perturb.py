"""Deterministic test-time perturbations of image batches: shift, rotate, scale.

Used by the robustness experiments (`cnnlab experiment cnn-vs-dense`, `pool-vs-stride`) to ask how a trained
network copes with a digit moved, turned or resized. Unlike `cnnlab.data.augment` (random, for training) every
image of the batch gets the same, exactly specified change, and the directions are fixed conventions:

- `shift(images, dx, dy)`: content moves `dx` pixels to the right and `dy` pixels down (negative: left / up);
  pixels that enter the frame are filled with `fill`. Integer shifts are exact (no interpolation).
- `rotate(images, degrees)`: content turns counter-clockwise as displayed (row 0 at the top) about the image
  centre; bilinear interpolation, `fill` outside.
- `scale(images, factor)`: content is magnified about the image centre (`factor` > 1 enlarges, < 1 shrinks).

All functions take float batches [N, C, H, W] (or a single [C, H, W] image) and return the same shape, dtype and
device. MNIST's background is 0, so the default fill of 0 adds background.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["rotate", "scale", "shift"]


def _as_batch(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if images.ndim == 3:
        return images.unsqueeze(0), True
    if images.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W] or [C, H, W], got shape {tuple(images.shape)}")
    return images, False


def shift(images: torch.Tensor, dx: int, dy: int, fill: float = 0.0) -> torch.Tensor:
    """Move the content `dx` pixels right and `dy` pixels down (exact; vacated pixels get `fill`).

    Args:
        images: [N, C, H, W] or [C, H, W].
        dx: pixels to the right (negative: to the left).
        dy: pixels down (negative: up).
        fill: value of the pixels that enter the frame.
    """
    batch, single = _as_batch(images)
    height, width = batch.shape[-2:]
    out = torch.full_like(batch, fill)
    if abs(dx) < width and abs(dy) < height:
        # Destination rows/columns [dst0, dst1) receive source rows/columns [src0, src1).
        src_y0, src_y1 = max(0, -dy), height - max(0, dy)
        src_x0, src_x1 = max(0, -dx), width - max(0, dx)
        out[..., src_y0 + dy : src_y1 + dy, src_x0 + dx : src_x1 + dx] = batch[..., src_y0:src_y1, src_x0:src_x1]
    return out[0] if single else out


def _affine(images: torch.Tensor, matrix: torch.Tensor, fill: float) -> torch.Tensor:
    batch, single = _as_batch(images)
    n, _, height, width = batch.shape
    theta = matrix.to(device=batch.device, dtype=batch.dtype).unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    if fill == 0.0:
        out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    else:  # sample (x - fill) with zero padding, then add fill back: outside pixels become `fill`
        out = F.grid_sample(batch - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return out[0] if single else out


def rotate(images: torch.Tensor, degrees: float, fill: float = 0.0) -> torch.Tensor:
    """Turn the content `degrees` counter-clockwise (as displayed) about the centre; bilinear, `fill` outside."""
    batch, _ = _as_batch(images)
    height, width = batch.shape[-2:]
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # affine_grid maps output coordinates (x right, y down, in [-1, 1] per axis) to input coordinates. For a
    # counter-clockwise turn on screen (y down) the output pixel at p reads the input at [[cos, -sin], [sin, cos]] p
    # in pixel units; the aspect ratio converts between the two axes' normalised units.
    aspect = width / height
    matrix = torch.tensor([[cos, -sin / aspect, 0.0], [sin * aspect, cos, 0.0]])
    return _affine(images, matrix, fill)


def scale(images: torch.Tensor, factor: float, fill: float = 0.0) -> torch.Tensor:
    """Magnify the content by `factor` about the centre (> 1 enlarges, < 1 shrinks); bilinear, `fill` outside."""
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    matrix = torch.tensor([[1.0 / factor, 0.0, 0.0], [0.0, 1.0 / factor, 0.0]])
    return _affine(images, matrix, fill)
