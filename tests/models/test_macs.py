"""MACs counted by cnnlab.budget on the zoo's models agree with torchvision's published figures within 0.03%."""

from __future__ import annotations

import pytest
import torch

from cnnlab.models import create_model, model_info

budget = pytest.importorskip("cnnlab.budget")

TORCHVISION_WEIGHTS = {
    "alexnet": "AlexNet_Weights.IMAGENET1K_V1",
    "googlenet": "GoogLeNet_Weights.IMAGENET1K_V1",
    "inception_v3": "Inception_V3_Weights.IMAGENET1K_V1",
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V2",
    "resnet152": "ResNet152_Weights.IMAGENET1K_V2",
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_WEIGHTS))
def test_macs_match_torchvision_published_figures(name: str):
    """docs/ZOO.md says within 0.03% (torchvision rounds to 1 M MACs; alexnet's 0.714 G is the loosest, 0.026%).
    This was 1%, and five of the eight models."""
    with torch.device("meta"):  # shapes only: the count needs no weights
        model = create_model(name).eval()
    published = model_info(name).published_gmacs * 1e9
    assert budget.count_macs(model, model.default_input_size) == pytest.approx(published, rel=3e-4)


@pytest.mark.parametrize("name", sorted(TORCHVISION_WEIGHTS))
def test_recorded_figures_equal_torchvision_metadata(name: str):
    """Every count and MAC figure credited to torchvision is its metadata's, and the record names that metadata."""
    import torchvision.models as tvm

    enum_name, member = TORCHVISION_WEIGHTS[name].split(".")
    meta = getattr(getattr(tvm, enum_name), member).meta
    info = model_info(name)
    assert info.published_gmacs == meta["_ops"]
    assert meta["num_params"] in (info.published_params, info.published_params_aux)
    assert f"({TORCHVISION_WEIGHTS[name]} metadata" in info.params_source


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite4"])
def test_efficientnet_lite_macs_are_what_timm_builds(name: str):
    """Google's README gives Lite0 407 M MAdds where cnnlab counts 385.2 M (docs/ZOO.md): the reference build of the
    same TF architecture counts what cnnlab counts, so the gap is the counting convention, not the architecture."""
    import torch

    from cnnlab.models._figures import recorded_figures

    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        reference = timm.create_model(f"tf_{name}").eval()
    recorded = recorded_figures()[name]
    assert budget.count_macs(reference, recorded.input_size) == recorded.macs
