"""FCN-32s/16s/8s and U-Net: any input size (padded, then cropped back), both upsampling modes, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models
from cnnlab.models.segmentation import (
    FCN,
    ClassifierPriorUNet,
    DigitPrior,
    Upsample,
    bilinear_kernel,
    pad_to_multiple,
)


def test_registered():
    assert {"fcn32s", "fcn16s", "fcn8s", "unet", "unet_encoder", "unet_classifier_prior"} <= set(list_models())


CASES = [("fcn32s", "transposed"), ("fcn8s", "bilinear"), ("unet", "transposed"), ("unet", "bilinear")]


@pytest.mark.parametrize(("name", "upsample"), CASES)
def test_odd_sized_inputs_give_full_resolution_maps_and_every_parameter_learns(name: str, upsample: str):
    torch.manual_seed(0)
    kwargs = {"backbone": "resnet18"} if name.startswith("fcn") else {"widths": (4, 8, 16)}
    model = create_model(name, num_classes=5, upsample=upsample, **kwargs)
    x = torch.rand(2, 1, 45, 71)  # not a multiple of the stride
    out = model(x)
    assert out.shape == (2, 5, 45, 71)
    F.cross_entropy(out, torch.randint(0, 5, (2, 45, 71))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad
    assert torch.isfinite(out).all()


def test_unet_coarse_scores_add_stride_8_and_4_logits_that_learn():
    torch.manual_seed(0)
    model = create_model("unet", num_classes=5, widths=(4, 8, 16, 32, 64), coarse_scores=True)
    assert sorted(model.coarse) == ["0", "1"]  # decoder levels 0 and 1 output strides 8 and 4
    x = torch.rand(2, 1, 45, 71)
    out = model(x)
    assert out.shape == (2, 5, 45, 71)
    F.cross_entropy(out, torch.randint(0, 5, (2, 45, 71))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.coarse.parameters())
    plain = create_model("unet", num_classes=5, widths=(4, 8, 16, 32, 64))
    assert len(plain.coarse) == 0


def test_half_resolution_unet_runs_at_half_size_and_returns_full_resolution_maps():
    torch.manual_seed(0)
    model = create_model("unet", num_classes=5, widths=(4, 8, 16), input_stride=2)
    assert model.output_stride == 8
    assert [tuple(m.shape[-2:]) for m in model.encode(torch.rand(1, 1, 32, 48))] == [(16, 24), (8, 12), (4, 6)]
    x = torch.rand(2, 1, 45, 71)  # padded to 48 x 72, cropped back
    out = model(x)
    assert out.shape == (2, 5, 45, 71) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.randint(0, 5, (2, 45, 71))).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # the refinement sees the full-resolution image: a one-pixel change moves that pixel's logits
    model.eval()
    changed = x.clone()
    changed[0, 0, 20, 30] += 1.0
    delta = (model(changed) - model(x)).abs().sum(1)[0]
    assert delta[20, 30] > 0
    with pytest.raises(CnnlabError, match="input_stride must be 1 or 2"):
        create_model("unet", input_stride=4)


@pytest.mark.parametrize("input_stride", [1, 2])
def test_offset_head_adds_two_channels_in_training_only(input_stride: int):
    model = create_model("unet", num_classes=5, widths=(4, 8, 16), offset_head=True, input_stride=input_stride)
    x = torch.rand(2, 1, 45, 71)
    assert model.train()(x).shape == (2, 7, 45, 71)
    assert model.eval()(x).shape == (2, 5, 45, 71)


def test_encoder_unet_taps_strides_2_to_16_and_returns_full_resolution_maps():
    torch.manual_seed(0)
    model = create_model("unet_encoder", num_classes=5, decoder_widths=(16, 8, 8, 8, 4))
    assert model.taps == {2: "relu", 4: "layer1", 8: "layer2", 16: "layer3"}  # resnet18's last map at each stride
    x = torch.rand(2, 1, 45, 71)  # not a multiple of 32
    out = model(x)
    assert out.shape == (2, 5, 45, 71) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.randint(0, 5, (2, 45, 71))).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    with pytest.raises(CnnlabError, match="decoder_widths needs 5 values"):
        create_model("unet_encoder", decoder_widths=(8, 8))
    with pytest.raises(CnnlabError, match="stride-32"):
        create_model("unet_encoder", encoder="mnist_net_small")


def test_fcn16s_fuses_the_stride_16_skip():
    model = create_model("fcn16s")
    assert model.score16 is not None and model.score8 is None


def test_transposed_convolution_starts_as_bilinear_interpolation():
    x = torch.rand(1, 3, 6, 7)
    up = Upsample(3, 2, "transposed")
    fixed = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    learned = up(x)
    assert learned.shape == fixed.shape
    # identical away from the border (the transposed conv pads with zeros, interpolate replicates the edge)
    assert torch.allclose(learned[..., 2:-2, 2:-2], fixed[..., 2:-2, 2:-2], atol=1e-6)
    assert bilinear_kernel(1, 2)[0, 0, 1].tolist() == [0.1875, 0.5625, 0.5625, 0.1875]


def test_padding_to_a_multiple():
    padded, size = pad_to_multiple(torch.ones(1, 1, 33, 64), 32)
    assert padded.shape[-2:] == (64, 64) and size == (33, 64)
    assert padded[..., 33:, :].abs().sum() == 0


def test_bad_options_are_refused():
    with pytest.raises(CnnlabError, match="skips"):
        FCN(skips=4)
    with pytest.raises(CnnlabError, match="upsample"):
        create_model("unet", upsample="nearest")
    with pytest.raises(CnnlabError, match="stride-32"):
        create_model("fcn8s", backbone="mnist_net_small")


def _window_image(top: int, left: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A size x size image that is zero except for a random 28x28 window at (top, left); and that window."""
    window = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    image = torch.zeros(1, 1, size, size)
    image[..., top : top + 28, left : left + 28] = window
    return image, window


@pytest.mark.parametrize("centre", [(32, 24), (36, 28), (16, 48), (36, 24), (20, 44)])
def test_digit_prior_at_a_pixel_is_the_classifier_on_the_window_centred_there(centre: tuple[int, int]) -> None:
    from cnnlab.fcn import to_fully_convolutional

    torch.manual_seed(0)
    # A stride-8 classifier with valid convolutions only: a window inside a larger black image and the window
    # alone give it the same numbers (a "same"-padded net would see its own zero padding in one case and
    # activations of the black border in the other), so the prior must reproduce it to rounding.
    classifier = nn.Sequential(nn.Conv2d(1, 8, 8, stride=8), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 3 * 3, 10)).eval()
    prior = DigitPrior("mnist_net_small", refine=2)  # same stride (8) and window (28) as this classifier
    prior.fcn = to_fully_convolutional(classifier, input_size=(1, 28, 28))
    y, x = centre  # multiples of the step (4 px); (36, 28), (36, 24), (20, 44) come from shifted passes
    image, window = _window_image(y - 14, x - 14)
    with torch.no_grad():
        expected = classifier(window).softmax(1)[0]
    probabilities = prior(image)[0]
    torch.testing.assert_close(probabilities[:, y, x], expected, atol=1e-5, rtol=1e-4)
    # one refined step (4 px) away, the window is another one: the check above can tell the positions apart
    assert (probabilities[:, y + 4, x] - expected).abs().max() > 1e-3


def test_digit_prior_loads_a_trained_classifier() -> None:
    torch.manual_seed(0)
    classifier = create_model("mnist_net_small").eval()
    prior = DigitPrior("mnist_net_small", refine=2)
    prior.load_classifier(classifier)
    window = torch.rand(3, 1, 28, 28)
    with torch.no_grad():  # at the training size the converted network is the classifier
        torch.testing.assert_close(prior.fcn(window).flatten(1), classifier(window), atol=1e-5, rtol=1e-4)


def test_digit_prior_is_frozen_and_keeps_any_input_size() -> None:
    model = ClassifierPriorUNet(widths=(8, 16, 32))
    model.train()
    assert not model.prior.training and model.unet.training  # batch norm of the classifier stays in eval mode
    assert all(not p.requires_grad for p in model.prior.parameters())
    for height, width in [(64, 64), (61, 67), (28, 28), (33, 90)]:
        probabilities = model.prior(torch.rand(2, 1, height, width))
        assert probabilities.shape == (2, 10, height, width)
        torch.testing.assert_close(probabilities.sum(1), torch.ones(2, height, width))
        assert model(torch.rand(2, 1, height, width)).shape == (2, 11, height, width)
    model(torch.rand(2, 1, 64, 64)).square().mean().backward()
    assert all(p.grad is None for p in model.prior.parameters())
    assert model.unet.encoders[0][0].conv.weight.grad is not None
    with pytest.raises(CnnlabError, match="refine must divide"):
        DigitPrior(refine=3)
