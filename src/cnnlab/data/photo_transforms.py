"""The photo input pipeline of fine-tuning: augmentation for training only, checks that catch mis-scaled inputs.

- `build_train_transform`: torchvision.transforms.v2 augmentation (random resized crop to the weights' input size,
  a random label-preserving view, small rotation, colour jitter) followed by the record's scaling and normalisation.
  Evaluation uses `cnnlab.data.transforms.build_eval_transform` unchanged (resize, centre crop, same normalisation).
- `InputCheck`: looks at the first batch reaching the model and warns when its values could not come from images
  normalised with the record's mean/std (e.g. 0..255 pixels, [0, 1] pixels for a model expecting [-1, 1]), or when
  the images are much smaller than the weights were trained at.
- `save_preview_grid`: a PNG of augmented training samples, un-normalised, to look at before training.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from cnnlab.data.transforms import _interpolation, build_eval_transform
from cnnlab.files import written_then_renamed
from cnnlab.layers.views import apply_view
from cnnlab.models._pretrained import PretrainedCfg

__all__ = [
    "InputCheck",
    "InputStatisticsWarning",
    "RandomView",
    "build_eval_transform",
    "build_train_transform",
    "save_preview_grid",
]


class RandomView:
    """One of the label-preserving `views` (`cnnlab.layers.views`), chosen uniformly per image: the flips (and, for
    data with no up or down, the rotations) that the run's test-time augmentation averages over."""

    def __init__(self, views: Sequence[str]) -> None:
        self.views = tuple(views)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        name = self.views[int(torch.randint(len(self.views), ()))]
        return apply_view(image, name)


def build_train_transform(
    cfg: PretrainedCfg,
    *,
    scale: tuple[float, float] = (0.5, 1.0),
    rotation_degrees: float = 10.0,
    color_jitter: float = 0.2,
    views: Sequence[str] = ("identity", "hflip"),
) -> v2.Compose:
    """Training augmentation ending in ``cfg``'s scaling and normalisation (so train and eval inputs match in range).

    Args:
        cfg: the weights' record (input size, interpolation, mean, std).
        scale: area range of `v2.RandomResizedCrop` (kept mild: fine-tuning sets are small and objects may be small);
            (1.0, 1.0) only resizes.
        rotation_degrees: rotation uniformly in [-d, d].
        color_jitter: brightness, contrast and saturation jitter strength (0: off).
        views: label-preserving flips and rotations (`cnnlab.layers.views`), one drawn per image: ``hflip`` for
            photos, all 8 for images with no up or down (solar cells, microscopy).
    """
    size = cfg.input_size[1:]
    steps: list[Any] = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=scale, interpolation=_interpolation(cfg), antialias=True),
        RandomView(views),
    ]
    if rotation_degrees > 0:
        steps.append(v2.RandomRotation(rotation_degrees))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(cfg.mean), std=list(cfg.std))]
    return v2.Compose(steps)


class InputStatisticsWarning(UserWarning):
    """Inputs reaching a pretrained model do not look preprocessed the way its weights expect."""


def input_problems(inputs: torch.Tensor, cfg: PretrainedCfg) -> list[str]:
    """Reasons why a float batch [N, C, H, W] does not look like images preprocessed with ``cfg`` (empty: fine).

    A pixel in [0, 1] normalised with the record can only take values in [(0 - mean) / std, (1 - mean) / std] per
    channel; values well outside that range, or a batch with no negative values where the range is mostly negative,
    mean the scaling is wrong. Images under half the record's input size are flagged too.
    """
    problems = []
    x = inputs.detach().float()
    mean = torch.tensor(cfg.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, device=x.device).view(1, -1, 1, 1)
    low, high = float((-mean / std).min()), float(((1 - mean) / std).max())
    margin = 0.1 * (high - low)
    observed_low, observed_high = float(x.min()), float(x.max())
    channel_mean = x.mean(dim=(0, 2, 3)).tolist()
    channel_std = x.std(dim=(0, 2, 3)).tolist()
    stats = f"mean {[round(v, 2) for v in channel_mean]}, std {[round(v, 2) for v in channel_std]}"
    if observed_low < low - margin or observed_high > high + margin:
        problems.append(
            f"input values span [{observed_low:.2f}, {observed_high:.2f}] ({stats}), outside [{low:.2f}, "
            f"{high:.2f}], the range of [0, 1] pixels normalised with the weights' mean {cfg.mean} and std {cfg.std}; "
            "build the preprocessing from the weights' record (build_eval_transform)"
        )
    elif observed_low >= 0.0 and low < -0.5:
        problems.append(
            f"input values span [{observed_low:.2f}, {observed_high:.2f}] ({stats}) with no negative value, although "
            f"normalised inputs range down to {low:.2f}: the inputs look like unnormalised [0, 1] pixels"
        )
    expected_h, expected_w = cfg.input_size[1:]
    if x.ndim == 4 and (x.shape[-2] < expected_h / 2 or x.shape[-1] < expected_w / 2):
        problems.append(
            f"inputs are {x.shape[-2]}x{x.shape[-1]} but the weights were trained at {expected_h}x{expected_w}; "
            "resize the images up to the record's input size"
        )
    return problems


class InputCheck:
    """A batch transform (engine signature) that checks the first batch it sees with `input_problems` and warns.

    Args:
        cfg: the weights' record.
        where: a name for the data ("training", "validation") used in the warning.
    """

    def __init__(self, cfg: PretrainedCfg, where: str) -> None:
        self.cfg = cfg
        self.where = where
        self.checked = False
        self.problems: list[str] = []

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.checked and isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
            self.checked = True
            self.problems = input_problems(inputs, self.cfg)
            for problem in self.problems:
                warnings.warn(f"{self.where} inputs: {problem}", InputStatisticsWarning, stacklevel=2)
        return inputs, targets


def save_preview_grid(
    images: Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    cfg: PretrainedCfg,
    columns: int = 8,
) -> Path:
    """Save normalised image tensors [C, H, W] (as the model sees them) un-normalised into a PNG grid, written whole
    or not at all (`written_then_renamed`): saved at `path` itself, a run killed while it wrote left a truncated PNG
    that the run's report and the lab showed as a broken image."""
    from torchvision.utils import make_grid, save_image

    mean = torch.tensor(cfg.mean).view(-1, 1, 1)
    std = torch.tensor(cfg.std).view(-1, 1, 1)
    pixels = [(image.detach().cpu().float() * std + mean).clamp(0, 1) for image in images]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_then_renamed(path) as temporary:
        save_image(make_grid(pixels, nrow=columns, padding=2, pad_value=1.0), temporary, format="png")
    return path
