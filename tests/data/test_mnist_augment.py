"""Batched on-device augmentation: identity at zero strength, per-image randomness, geometry of the shift."""

from __future__ import annotations

import torch

from cnnlab.data.augment import RandomAffine, random_affine


def _digits(n: int = 8) -> torch.Tensor:
    images = torch.zeros(n, 1, 28, 28)
    images[:, :, 10:18, 12:16] = 1.0  # a bar in the middle, away from the border
    return images


def test_zero_strength_is_identity() -> None:
    images = torch.rand(4, 1, 28, 28)
    out, targets = RandomAffine(degrees=0, scale=0, shift=0)(images, torch.arange(4))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    assert torch.equal(targets, torch.arange(4))


def test_each_image_gets_its_own_transform() -> None:
    images = _digits().repeat(1, 1, 1, 1)
    out = random_affine(images, RandomAffine(degrees=15, scale=0.1, shift=3), torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    distinct = {tuple(o.flatten().round(decimals=3).tolist()) for o in out}
    assert len(distinct) == len(images)  # same input, eight different outputs


def test_pure_shift_moves_the_centre_of_mass_by_at_most_shift_pixels() -> None:
    images = _digits(64)
    out = random_affine(images, RandomAffine(degrees=0, scale=0, shift=2), torch.Generator().manual_seed(1))
    grid = torch.arange(28.0)

    def centre(x: torch.Tensor) -> torch.Tensor:
        mass = x.sum((1, 2, 3))
        return torch.stack([(x.sum(3)[:, 0] * grid).sum(1) / mass, (x.sum(2)[:, 0] * grid).sum(1) / mass], 1)

    moved = centre(out) - centre(images)
    assert moved.abs().max() <= 2.0 + 1e-3
    assert moved.abs().max() > 1.0  # and it does move
    torch.testing.assert_close(out.sum((1, 2, 3)), images.sum((1, 2, 3)), rtol=1e-4, atol=1e-3)  # no ink lost


def test_elastic_option_changes_the_output() -> None:
    images = _digits(4)
    plain = random_affine(images, RandomAffine(degrees=0, scale=0, shift=0), torch.Generator().manual_seed(2))
    elastic = random_affine(
        images, RandomAffine(degrees=0, scale=0, shift=0, elastic_alpha=1.0), torch.Generator().manual_seed(2)
    )
    assert not torch.allclose(plain, elastic, atol=1e-3)
