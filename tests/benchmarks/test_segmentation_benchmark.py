"""benchmarks/segmentation.py's `--model-kwargs`: the command behind BENCHMARKS' wider U-Net row, which used to be a
Python call that no command reproduced."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from benchmark_script import load_benchmark


def _script() -> ModuleType:
    return load_benchmark("segmentation")


def test_model_kwargs_reach_every_trained_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = _script()
    made: list[tuple[int, int, int]] = []
    trained: list[tuple[str, Any]] = []
    test = {"miou": 0.5, "miou_with_bg": 0.5, "pixel_accuracy": 0.9, "boundary_f1": 0.8}

    def train(recipe: str, **options: Any) -> dict[str, Any]:
        trained.append((recipe, options.get("model_kwargs")))
        return {"test": test, "params": 1, "train_seconds": 0.0}

    monkeypatch.setattr(script, "make_digit_segmentation", lambda data_dir, sizes: made.append(sizes))
    monkeypatch.setattr(script, "train_segmentation", train)
    argv = ["segmentation.py", "--train-canvases", "4000", "--models", "quick", "unet", "--output", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--model-kwargs", '{"widths": [12, 24, 64, 128, 256]}'])
    script.main()
    assert made == [(4000, 500, 1000)]
    assert trained == [("quick", {"widths": [12, 24, 64, 128, 256]}), ("unet", {"widths": [12, 24, 64, 128, 256]})]

    trained.clear()
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    assert trained == [("quick", None), ("unet", None)]  # the recipes' own models
