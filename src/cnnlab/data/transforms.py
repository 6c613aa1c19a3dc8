"""Image preprocessing built from a pretrained-weights record, never retyped by hand.

`build_eval_transform` turns a `PretrainedCfg` into the evaluation pipeline those weights were measured with:
resize the shorter side, centre crop, scale to [0, 1], normalise with the record's mean and std.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from cnnlab.errors import CnnlabError
from cnnlab.models._pretrained import PretrainedCfg

__all__ = ["build_eval_transform", "preprocessing_description"]

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
            v2.Resize(cfg.resize_size, interpolation=_interpolation(cfg), antialias=True),
            v2.CenterCrop(crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(cfg.mean), std=list(cfg.std)),
        ]
    )


def preprocessing_description(cfg: PretrainedCfg) -> str:
    """One line a person can check, e.g. ``"resize shorter side to 256 (bicubic), centre crop 224x224, scale to
    [0, 1], normalise mean (0.498, 0.498, 0.498) std (0.502, 0.502, 0.502)"``."""
    mean = ", ".join(f"{value:.3f}" for value in cfg.mean)
    std = ", ".join(f"{value:.3f}" for value in cfg.std)
    _, height, width = cfg.input_size
    return (
        f"resize shorter side to {cfg.resize_size} ({cfg.interpolation}), centre crop {height}x{width}, "
        f"scale to [0, 1], normalise mean ({mean}) std ({std})"
    )
