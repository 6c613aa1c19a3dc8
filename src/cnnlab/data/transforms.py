"""Image preprocessing built from a pretrained-weights record, never retyped by hand.

`build_eval_transform` turns a `PretrainedCfg` into the evaluation pipeline those weights were measured with:
resize the shorter side, centre crop, scale to [0, 1], normalise with the record's mean and std.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from cnnlab.errors import CnnlabError
from cnnlab.models._pretrained import PretrainedCfg

__all__ = ["RESIZE_ANTIALIAS", "build_eval_transform", "preprocessing_description", "resize_description"]

# The evaluation resize antialiases (torchvision's default for tensors): bicubic or bilinear filters widened by the
# downscale factor, as PIL's resize does. Plain bicubic (cv2.INTER_CUBIC, ONNX Resize, F.interpolate without
# antialias) differs: 0.027 in a top-1 probability of efficientnet_lite0 on skimage's chelsea, a 1.17x downscale.
RESIZE_ANTIALIAS = True

_INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def _interpolation(cfg: PretrainedCfg) -> InterpolationMode:
    try:
        return _INTERPOLATIONS[cfg.interpolation]
    except KeyError:
        raise CnnlabError(
            f"unknown interpolation {cfg.interpolation!r} in the weights record of {cfg.file_name}; "
            f"expected one of {sorted(_INTERPOLATIONS)}"
        ) from None


def build_eval_transform(cfg: PretrainedCfg) -> v2.Compose:
    """The evaluation preprocessing of ``cfg``'s weights.

    Accepts a PIL image, an H x W x C uint8 numpy array or a C x H x W uint8 tensor, and returns a float32
    C x H x W tensor of ``cfg.input_size``.
    """
    crop = cfg.input_size[1:]
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(cfg.resize_size, interpolation=_interpolation(cfg), antialias=RESIZE_ANTIALIAS),
            v2.CenterCrop(crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(cfg.mean), std=list(cfg.std)),
        ]
    )


def preprocessing_description(cfg: PretrainedCfg) -> str:
    """One line a person can check, e.g. ``"resize shorter side to 256 (bicubic, antialiased), centre crop 224x224,
    scale to [0, 1], normalise mean (0.498, 0.498, 0.498) std (0.502, 0.502, 0.502)"``."""
    mean = ", ".join(f"{value:.3f}" for value in cfg.mean)
    std = ", ".join(f"{value:.3f}" for value in cfg.std)
    _, height, width = cfg.input_size
    antialiased = ", antialiased" if RESIZE_ANTIALIAS else ""
    return (
        f"resize shorter side to {cfg.resize_size} ({cfg.interpolation}{antialiased}), centre crop {height}x{width}, "
        f"scale to [0, 1], normalise mean ({mean}) std ({std})"
    )


def resize_description(cfg: PretrainedCfg) -> str:
    """Exactly what `build_eval_transform` does to resize, for a record a deployment reproduces it from."""
    return (
        f"torchvision.transforms.v2.Resize({cfg.resize_size}, interpolation={cfg.interpolation}, "
        f"antialias={RESIZE_ANTIALIAS}) on the decoded uint8 RGB image as a [3, H, W] tensor: the shorter side becomes "
        f"{cfg.resize_size}, the longer int({cfg.resize_size} * longer / shorter); computed in float32, rounded and "
        "clamped back to uint8"
    )
