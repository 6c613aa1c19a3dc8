"""Count the figures `cnnlab zoo` lists and keep their record (cnnlab/models/zoo_figures.json) true.

The records are read by `cnnlab.models._figures`; counting them needs `count_macs`, which is why this half lives in
the budget layer. After adding or changing a model::

    python -m cnnlab.budget.zoo_figures --write     # count every registered model, rewrite the records
    python -m cnnlab.budget.zoo_figures --check     # exit 1 when a record is missing or stale

Records of models no longer registered are ignored (the zoo lists the registry); `cnnlab zoo` counts a model without
a record on the fly with `count_figures`, slowly, rather than leave it out.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from cnnlab.models._figures import FIGURES_FILE, REGENERATE, ModelFigures, recorded_figures

__all__ = ["count_figures", "write_figures"]


def count_figures(name: str) -> ModelFigures:
    """Build `name` on the meta device (no weights are allocated) and count its figures."""
    import torch

    from cnnlab.budget.trace import count_macs
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


def write_figures(path: Path = FIGURES_FILE) -> dict[str, ModelFigures]:
    """Count every registered model and write the records (sorted by name, one line per model)."""
    from cnnlab.models import list_models

    figures = {name: count_figures(name) for name in list_models()}
    about = f"Figures `cnnlab zoo` lists, counted by cnnlab.budget.zoo_figures. Regenerate with: {REGENERATE}"
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
