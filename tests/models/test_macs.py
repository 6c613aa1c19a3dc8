"""MACs counted by cnnlab.budget on the zoo's models agree with torchvision's published figures within 1%."""

from __future__ import annotations

import pytest

from cnnlab.models import create_model, model_info

budget = pytest.importorskip("cnnlab.budget")


@pytest.mark.parametrize("name", ["resnet50", "resnet18", "alexnet", "googlenet", "inception_v3"])
def test_macs_match_torchvision_published_figures(name: str):
    count_macs = getattr(budget, "count_macs", None)
    if count_macs is None:
        pytest.skip("cnnlab.budget.count_macs is not available yet")
    model = create_model(name).eval()
    published = model_info(name).published_gmacs * 1e9
    assert count_macs(model, model.default_input_size) == pytest.approx(published, rel=0.01)


@pytest.mark.parametrize("name", ["resnet50", "alexnet", "googlenet", "inception_v3"])
def test_recorded_figures_equal_torchvision_metadata(name: str):
    import torchvision.models as tvm

    weights = {
        "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V2,
        "alexnet": tvm.AlexNet_Weights.IMAGENET1K_V1,
        "googlenet": tvm.GoogLeNet_Weights.IMAGENET1K_V1,
        "inception_v3": tvm.Inception_V3_Weights.IMAGENET1K_V1,
    }
    info = model_info(name)
    assert info.published_gmacs == weights[name].meta["_ops"]
    assert weights[name].meta["num_params"] in (info.published_params, info.published_params_aux)
