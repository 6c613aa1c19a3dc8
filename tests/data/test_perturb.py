"""Test-time perturbations: identity at zero, exact shift directions, rotation sense, scaling about the centre."""

import pytest
import torch

from cnnlab.data.perturb import rotate, scale, shift


def dot_image(row: int, col: int, size: int = 9) -> torch.Tensor:
    image = torch.zeros(2, 1, size, size)
    image[:, 0, row, col] = 1.0
    return image


def peak(image: torch.Tensor) -> tuple[int, int]:
    index = int(image[0, 0].argmax())
    return divmod(index, image.shape[-1])


def test_zero_changes_are_the_identity():
    images = torch.rand(3, 2, 12, 12)
    assert torch.equal(shift(images, 0, 0), images)
    torch.testing.assert_close(rotate(images, 0.0), images, atol=1e-5, rtol=0)
    torch.testing.assert_close(scale(images, 1.0), images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dx,dy", [(2, 0), (-3, 0), (0, 1), (0, -4), (2, -1), (-1, 3)])
def test_shift_moves_content_right_and_down(dx, dy):
    shifted = shift(dot_image(4, 4), dx, dy)
    assert peak(shifted) == (4 + dy, 4 + dx)
    assert float(shifted.sum()) == 2.0  # exact: no interpolation, nothing lost inside the frame


def test_shift_fills_the_vacated_border_and_drops_what_leaves():
    images = torch.ones(1, 1, 5, 5)
    shifted = shift(images, 2, 0, fill=-1.0)
    assert torch.all(shifted[..., :, :2] == -1.0) and torch.all(shifted[..., :, 2:] == 1.0)
    assert torch.all(shift(images, 5, 0) == 0.0)  # moved entirely out of the frame
    assert shift(images[0], 1, 1).shape == (1, 5, 5)  # a single [C, H, W] image keeps its shape


def test_rotation_is_counter_clockwise_on_screen():
    right_of_centre = dot_image(4, 7)
    assert peak(rotate(right_of_centre, 90)) == (1, 4)  # now above the centre (row 0 is the top)
    assert peak(rotate(right_of_centre, -90)) == (7, 4)  # clockwise: below


def test_scale_magnifies_about_the_centre():
    image = torch.zeros(1, 1, 21, 21)
    image[0, 0, 10, 13] = 1.0  # 3 pixels right of the centre
    assert peak(scale(image, 2.0)) == (10, 16)  # 6 pixels right
    with pytest.raises(ValueError):
        scale(image, 0.0)
