"""Recorded figures of every registered model, so that `cnnlab zoo` lists the zoo without building or tracing it.

Counting MACs means tracing each model (inception_v3, xception and resnet152 take the longest), which takes about 5 s
on two CPU cores for the whole zoo, where the bare ``import torch, torchvision`` takes 3-4 s. The figures only change
when a model's code does, so they are counted once and recorded in ``zoo_figures.json`` beside this file: per model,
the default input size, the parameter count, the MACs of one sample at that size, the published top-1 and where its
pretrained weights come from.

This module only reads the records. Counting and writing them needs the MAC counter, which sits in the layer above
(`cnnlab.budget.zoo_figures`); regenerate the file after adding or changing a model with::

    python -m cnnlab.budget.zoo_figures --write

tests/models/test_figures.py counts every registered model afresh and fails, naming that command, when a model has no
record or its record differs.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

FIGURES_FILE = Path(__file__).with_name("zoo_figures.json")
REGENERATE = "python -m cnnlab.budget.zoo_figures --write"

__all__ = ["FIGURES_FILE", "REGENERATE", "ModelFigures", "recorded_figures"]


@dataclass(frozen=True)
class ModelFigures:
    """What `cnnlab zoo` shows of one model.

    Attributes:
        input_size: default (C, H, W) of one sample.
        params: parameters at the default number of classes.
        macs: multiply-accumulates of one sample at `input_size`, counted by `cnnlab.budget.count_macs`.
        published_top1: the pretrained weights' published ImageNet top-1 (%), None without weights or a figure.
        weights_source: where the pretrained weights come from (``package:<module>`` or a URL), None without weights.
    """

    input_size: tuple[int, ...]
    params: int
    macs: int
    published_top1: float | None
    weights_source: str | None

    @classmethod
    def from_json(cls, record: dict) -> ModelFigures:
        return cls(**{**record, "input_size": tuple(record["input_size"])})


@functools.cache
def recorded_figures() -> dict[str, ModelFigures]:
    """The records in ``zoo_figures.json`` by model name (empty when the file is missing)."""
    if not FIGURES_FILE.is_file():
        return {}
    records = json.loads(FIGURES_FILE.read_text())["models"]
    return {name: ModelFigures.from_json(record) for name, record in records.items()}
