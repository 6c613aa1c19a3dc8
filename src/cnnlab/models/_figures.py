"""Recorded figures of every registered model, so that `cnnlab zoo` lists the zoo without building or tracing it.

Counting MACs means tracing each model (inception_v3, xception and resnet152 take the longest), and `cnnlab zoo`
used to count all of them at every call: about 5 s on two CPU cores, where the bare ``import torch, torchvision``
takes 3-4 s. The figures only change when a model's code does, so they are counted once and recorded in
``zoo_figures.json`` beside this file: per model, the default input size, the parameter count, the MACs of one sample
at that size (`cnnlab.budget.count_macs`), the published top-1 and where its pretrained weights come from.

tests/models/test_figures.py counts every registered model afresh and fails, naming the command below, when a model
has no record or its record differs. To regenerate the file after adding or changing a model::

    python -m cnnlab.models._figures --write

Records of models no longer registered are ignored (the zoo lists the registry), and a model without a record is
counted on the fly, slowly, rather than left out.
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

FIGURES_FILE = Path(__file__).with_name("zoo_figures.json")
REGENERATE = "python -m cnnlab.models._figures --write"

__all__ = ["FIGURES_FILE", "REGENERATE", "ModelFigures", "count_figures", "model_figures", "recorded_figures"]


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


def count_figures(name: str) -> ModelFigures:
    """Build `name` on the meta device (no weights are allocated) and count its figures."""
    import torch

    from cnnlab.budget import count_macs
    from cnnlab.models._registry import create_model

    with torch.device("meta"):
        model = create_model(name)
    input_size = tuple(model.default_input_size)
    cfg = model.pretrained_cfg
    return ModelFigures(
        input_size=input_size,
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model, input_size),
        published_top1=cfg.published_top1 if cfg is not None else None,
        weights_source=cfg.source if cfg is not None else None,
    )


@functools.cache
def recorded_figures() -> dict[str, ModelFigures]:
    """The records in ``zoo_figures.json`` by model name (empty when the file is missing)."""
    if not FIGURES_FILE.is_file():
        return {}
    records = json.loads(FIGURES_FILE.read_text())["models"]
    return {name: ModelFigures.from_json(record) for name, record in records.items()}


def model_figures(name: str) -> ModelFigures:
    """The recorded figures of a registered model, counted afresh when it has no record yet."""
    recorded = recorded_figures().get(name)
    return recorded if recorded is not None else count_figures(name)


def write_figures(path: Path = FIGURES_FILE) -> dict[str, ModelFigures]:
    """Count every registered model and write the records (sorted by name, one line per model)."""
    from cnnlab.models import list_models

    figures = {name: count_figures(name) for name in list_models()}
    about = f"Figures `cnnlab zoo` lists, counted by cnnlab.models._figures. Regenerate with: {REGENERATE}"
    records = ",\n".join(f"  {json.dumps(name)}: {json.dumps(asdict(record))}" for name, record in figures.items())
    path.write_text(f'{{\n "about": {json.dumps(about)},\n "models": {{\n{records}\n }}\n}}\n')
    recorded_figures.cache_clear()
    return figures


def main(argv: list[str] | None = None) -> int:
    """``--write`` regenerates the file; ``--check`` exits 1 when any registered model's record is missing or stale."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"count every registered model and write {FIGURES_FILE}")
    action.add_argument("--check", action="store_true", help="compare the records with fresh counts")
    args = parser.parse_args(argv)
    if args.write:
        figures = write_figures()
        print(f"wrote the figures of {len(figures)} models to {FIGURES_FILE}")
        return 0
    from cnnlab.models import list_models

    stale = [name for name in list_models() if recorded_figures().get(name) != count_figures(name)]
    if stale:
        print(f"missing or stale records: {', '.join(stale)}; regenerate with `{REGENERATE}`")
        return 1
    print(f"the records of all {len(list_models())} registered models equal fresh counts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
