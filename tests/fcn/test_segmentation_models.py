"""FCN-32s/16s/8s and U-Net: any input size (padded, then cropped back), both upsampling modes, gradients."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models
from cnnlab.models.segmentation import FCN, Upsample, bilinear_kernel, pad_to_multiple


def test_registered():
    assert {"fcn32s", "fcn16s", "fcn8s", "unet", "unet_encoder"} <= set(list_models())


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
