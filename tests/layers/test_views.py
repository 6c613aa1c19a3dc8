"""The label-preserving views: each a bijection of the pixels, the 8 of the dihedral group distinct, and the test-time
average of a classifier over them exportable and equal to the mean of its per-view logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.layers.views import VIEW_SETS, VIEWS, ViewAverage, apply_view, parse_views


def test_every_view_is_a_bijection_of_the_pixels() -> None:
    side = 5
    image = torch.arange(side * side, dtype=torch.float32).reshape(1, 1, side, side)  # every pixel a distinct value
    for name in VIEWS:
        seen = apply_view(image, name)
        assert seen.shape == image.shape, name
        assert sorted(seen.flatten().tolist()) == sorted(image.flatten().tolist()), name  # a permutation


def test_the_eight_dihedral_views_are_distinct() -> None:
    image = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    seen = {tuple(apply_view(image, name).flatten().tolist()) for name in VIEW_SETS["dihedral"]}
    assert len(VIEW_SETS["dihedral"]) == 8 and len(seen) == 8


def test_views_form_the_dihedral_group() -> None:
    image = torch.randn(3, 6, 6)
    rot90 = apply_view(image, "rot90")
    torch.testing.assert_close(apply_view(apply_view(image, "rot90"), "rot90"), apply_view(image, "rot180"))
    torch.testing.assert_close(apply_view(apply_view(rot90, "rot90"), "rot180"), image)  # four quarter turns
    torch.testing.assert_close(apply_view(image, "rot90"), torch.rot90(image, 1, dims=(-2, -1)))  # torch agrees
    torch.testing.assert_close(apply_view(image, "rot270"), torch.rot90(image, -1, dims=(-2, -1)))


def test_parse_views() -> None:
    assert parse_views("hflip") == ("identity", "hflip")
    assert parse_views("none") == ("identity",)
    assert parse_views("vflip,hflip") == ("identity", "vflip", "hflip")  # identity first: the single-view prediction
    with pytest.raises(CnnlabError, match="unknown view"):
        parse_views("hflip,sideways")
    # a set inside a list, and any case: "unknown view(s) dihedral" and "unknown view(s) HFLIP" before
    assert parse_views("dihedral,hflip") == parse_views("dihedral") and len(parse_views("dihedral")) == 8
    assert parse_views("HFLIP") == parse_views("hflip") and parse_views("Vflip,None") == ("identity", "vflip")


def test_view_average_is_the_mean_of_the_per_view_logits() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
    images = torch.randn(2, 3, 8, 8)
    model(images)
    averaged = ViewAverage(model, VIEW_SETS["dihedral"])(images)
    expected = torch.stack([model(apply_view(images, name)) for name in VIEW_SETS["dihedral"]]).mean(0)
    torch.testing.assert_close(averaged, expected)
    assert not torch.allclose(averaged, model(images))  # this model is not invariant: the views change its logits
