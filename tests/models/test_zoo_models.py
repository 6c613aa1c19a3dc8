"""Every registered model: builds, trains one step without NaN, gives every parameter a gradient, has its published
parameter count, and offers the shared classifier surface."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models, model_family, model_info

ALL_MODELS = [n for n in list_models() if model_family(n) != "segmentation"]  # dense predictors: tests/fcn/
PUBLISHED = [n for n in ALL_MODELS if model_info(n) is not None]  # cnnlab's own designs have no published figures
# Small inputs keep the suite fast; Inception-v3 needs at least 75 pixels, AlexNet 63, unpadded AlexNet-2012 67.
SMALL_SIDE = {"inception_v3": 80, "alexnet": 64, "alexnet_2012": 67}


@functools.cache
def _built(name: str) -> nn.Module:
    """One default instance per model (construction dominates the run time); copy it before changing it."""
    torch.manual_seed(0)
    return create_model(name)


def _small_input(model: nn.Module, name: str, batch: int = 2) -> torch.Tensor:
    channels, default_side = model.default_input_size[0], model.default_input_size[-1]
    side = SMALL_SIDE.get(name, min(32, default_side))
    return torch.randn(batch, channels, side, side)


def test_registry_holds_all_families():
    expected = {
        "lenet5", "alexnet", "alexnet_2012", "googlenet", "inception_v3", "resnet18", "resnet34", "resnet50",
        "resnet101", "resnet152", "seresnet50", "xception", "efficientnet_lite0", "efficientnet_lite1",
        "efficientnet_lite2", "efficientnet_lite3", "efficientnet_lite4",
    }  # fmt: skip
    assert expected <= set(ALL_MODELS)


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count_is_the_published_one(name: str):
    model = _built(name)
    assert sum(p.numel() for p in model.parameters()) == model_info(name).published_params


@pytest.mark.parametrize("name", PUBLISHED)
def test_each_count_names_its_source_or_says_why_it_has_none(name: str):
    """`cnnlab zoo show` prints the one or the other beside the count."""
    info = model_info(name)
    assert bool(info.params_source) != bool(info.params_note), (info.params_source, info.params_note)


# The reference implementations the counts credited to timm come from (timm is a development dependency).
TIMM_REFERENCES = {
    "seresnet50": "seresnet50",
    "xception": "legacy_xception",
    **{f"efficientnet_lite{i}": f"tf_efficientnet_lite{i}" for i in range(5)},
}


@pytest.mark.parametrize("name", sorted(TIMM_REFERENCES))
def test_count_credited_to_timm_is_what_timm_builds(name: str):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):  # no weights, no memory
        reference = timm.create_model(TIMM_REFERENCES[name])
    assert sum(p.numel() for p in reference.parameters()) == model_info(name).published_params
    assert f"timm {TIMM_REFERENCES[name]} " in model_info(name).params_source


def test_googlenet_with_the_papers_5x5_branches_has_the_count_its_record_gives():
    with torch.device("meta"):
        model = create_model("googlenet", large_kernel_size=5)
    assert f"give {sum(p.numel() for p in model.parameters()):,}" in model_info("googlenet").params_source


def test_mnist_baseline_is_the_books_convnet_layer_by_layer():
    """Chollet, Deep Learning with Python (2017), listing 5.3: Keras' model.summary() of the same five layers."""
    model = _built("mnist_baseline")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [sum(p.numel() for p in m.parameters()) for m in layers] == [320, 18_496, 36_928, 36_928, 650]


@pytest.mark.parametrize("name", [n for n in PUBLISHED if model_info(n).published_params_aux])
def test_parameter_count_with_auxiliary_heads_is_the_published_one(name: str):
    model = create_model(name, aux_logits=True)
    assert sum(p.numel() for p in model.parameters()) == model_info(name).published_params_aux


# ResNet-101/152 repeat ResNet-50's Bottleneck code with more blocks; their backward pass is the slowest (slow suite).
HEAVY = {"resnet101", "resnet152"}
BACKWARD_CASES = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in ALL_MODELS]


@pytest.mark.parametrize("name", BACKWARD_CASES)
def test_forward_backward_reaches_every_parameter(name: str):
    model = _built(name).train()  # only gradients and BN statistics change; no other test reads them
    model.zero_grad(set_to_none=True)
    x = _small_input(model, name)
    logits = model(x)
    assert logits.shape == (2, model.num_classes)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([1, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_classifier_surface(name: str):
    with torch.device("meta"):  # shapes only: fast at any size
        model = create_model(name).eval()
    x = torch.empty(1, *model.default_input_size, device="meta")
    features = model.forward_features(x)
    assert features.ndim == 4
    assert model.forward_head(features, pre_logits=True).shape == (1, model.num_features)
    assert isinstance(model.get_classifier(), nn.Linear)
    assert model.get_classifier().in_features == model.num_features
    model.reset_classifier(5)
    assert model(x).shape == (1, 5)
    assert model.get_classifier().out_features == 5 and model.num_classes == 5
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)
    assert len(model.default_input_size) == 3


@pytest.mark.parametrize("name", ALL_MODELS)
def test_runs_on_the_meta_device_at_its_default_size(name: str):
    with torch.device("meta"):
        model = create_model(name)
    out = model.eval()(torch.empty(1, *model.default_input_size, device="meta"))
    assert out.shape == (1, model.num_classes)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_models_carry_their_record(name: str):
    info = model_info(name)
    assert info.paper and info.innovation and info.innovation_code


def test_in_chans_changes_the_stem():
    model = create_model("resnet18", in_chans=1)
    assert model.default_input_size == (1, 224, 224)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1000)


def test_auxiliary_heads_only_in_training():
    model = create_model("googlenet", aux_logits=True, num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    logits, aux = model.forward_with_aux(x)
    assert logits.shape == (2, 4) and [a.shape for a in aux] == [(2, 4), (2, 4)]
    model.eval()
    assert model.forward_with_aux(x)[1] == []


def test_models_without_weights_say_so():
    with pytest.raises(CnnlabError, match="no pretrained weights"):
        create_model("alexnet_2012", pretrained=True)
