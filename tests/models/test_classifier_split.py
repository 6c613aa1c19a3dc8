"""Splitting a classifier for partial fine-tuning: the two parts rejoin to the whole model, and bad cuts are refused."""

from __future__ import annotations

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, split_classifier, trainable_blocks


@pytest.mark.parametrize(("name", "top_blocks"), [("efficientnet_lite0", 6), ("resnet18", 3), ("mnist_net", 2)])
def test_lower_then_upper_is_the_model(name: str, top_blocks: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    size = (model.default_input_size[0], 64, 64) if name != "mnist_net" else model.default_input_size
    split = split_classifier(model, top_blocks, size)
    images = torch.randn(2, *size)
    with torch.no_grad():
        maps = split.lower(images)
        torch.testing.assert_close(split.upper.eval()(maps), model(images), rtol=1e-4, atol=1e-5)
    assert tuple(maps.shape[1:]) == split.feature_shape
    upper_parameters = {id(p) for p in split.upper.parameters()}
    blocks = trainable_blocks(model, size)
    top = dict(model.named_modules())[blocks[-1]]
    assert all(id(p) in upper_parameters for p in top.parameters())  # the model's own modules, not copies


def test_efficientnet_cut_is_where_the_maps_are_14_by_14() -> None:
    model = create_model("efficientnet_lite0", num_classes=4).eval()
    split = split_classifier(model, 6)
    assert split.cut == "blocks.10" and split.feature_shape == (112, 14, 14)
    pooled = split_classifier(model, 0)
    assert pooled.feature_shape == (1280,) and pooled.cut == ""


def test_a_cut_outside_the_backbone_is_refused() -> None:
    model = create_model("lenet5")
    blocks = len(trainable_blocks(model))
    with pytest.raises(CnnlabError, match=f"outside the backbone: LeNet5 has {blocks} blocks"):
        split_classifier(model, blocks + 1)


def test_blocks_are_counted_in_eval_mode_on_a_small_input_and_the_mode_is_kept() -> None:
    """At 32 px EfficientNet's last maps are 1x1: counting its blocks in training mode made batch norm refuse the
    one-sample probe, a ValueError at the end of `train transfer --image-size 32` (its next-recipe estimate)."""
    model = create_model("efficientnet_lite0", num_classes=2).train()
    frozen = next(module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)).eval()
    assert len(trainable_blocks(model, (3, 32, 32))) == 18
    assert model.training and all(module.training for module in model.modules() if module is not frozen)
    assert not frozen.training  # each module's own mode comes back, not the model's
