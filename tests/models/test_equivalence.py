"""Proof of exactness: the state dicts of torchvision's and timm's reference models load into cnnlab's models (with the
documented key mapping where names differ) and give the same eval-mode outputs within 1e-5.

Weights are random (no download); BN running statistics are randomised too so normalisation is really exercised.
Everything runs in float64 on small inputs to keep the comparison exact and fast.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from cnnlab.models import create_model
from cnnlab.models.xception import xception_key_map


def _randomise_bn_statistics(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def _assert_equivalent(
    reference: nn.Module,
    name: str,
    side: int,
    key_map: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    **kwargs: object,
) -> None:
    torch.manual_seed(0)
    _randomise_bn_statistics(reference)
    reference = reference.double().eval()
    ours = create_model(name, **kwargs).double().eval()
    state = reference.state_dict()
    ours.load_state_dict(key_map(state) if key_map else state, strict=True)
    x = torch.randn(2, 3, side, side, dtype=torch.float64)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_alexnet_matches_torchvision():
    _assert_equivalent(tvm.alexnet(), "alexnet", 96)


def test_googlenet_matches_torchvision():
    _assert_equivalent(tvm.googlenet(aux_logits=False, init_weights=False), "googlenet", 96)


def test_googlenet_auxiliary_heads_match_torchvision():
    reference = tvm.googlenet(aux_logits=True, init_weights=False).double().eval()
    ours = create_model("googlenet", aux_logits=True).double().eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 512, 14, 14, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.aux1(x), reference.aux1(x), rtol=0, atol=1e-5)


def test_inception_v3_matches_torchvision():
    _assert_equivalent(tvm.inception_v3(aux_logits=False, init_weights=False), "inception_v3", 96)


def test_inception_v3_auxiliary_head_matches_torchvision():
    reference = tvm.inception_v3(aux_logits=True, init_weights=False).double().eval()
    ours = create_model("inception_v3", aux_logits=True).double().eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 768, 17, 17, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.AuxLogits(x), reference.AuxLogits(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_resnet_matches_torchvision(name: str):
    _assert_equivalent(getattr(tvm, name)(), name, 64)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet101", "resnet152"])
def test_deep_resnet_matches_torchvision(name: str):
    _assert_equivalent(getattr(tvm, name)(), name, 64)


def test_seresnet50_matches_timm():
    timm = pytest.importorskip("timm")
    _assert_equivalent(timm.create_model("seresnet50", pretrained=False), "seresnet50", 64)


def test_xception_matches_timm_legacy_xception():
    timm = pytest.importorskip("timm")
    _assert_equivalent(timm.create_model("legacy_xception", pretrained=False), "xception", 64, xception_key_map)


def test_xception_key_map_renames_only_separable_depthwise_convs():
    state = {"conv1.weight": 1, "block1.rep.0.conv1.weight": 2, "conv3.conv1.weight": 3, "block2.skip.weight": 4}
    assert xception_key_map(state) == {  # type: ignore[arg-type]
        "conv1.weight": 1,
        "block1.rep.0.depthwise.weight": 2,
        "conv3.depthwise.weight": 3,
        "block2.skip.weight": 4,
    }
