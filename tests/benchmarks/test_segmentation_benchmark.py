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


def test_model_kwargs_reach_every_trained_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _script()
    made: list[tuple[int, int, int]] = []
    trained: list[tuple[str, Any]] = []
    test = {"miou": 0.5, "miou_with_bg": 0.5, "pixel_accuracy": 0.9, "boundary_f1": 0.8}

    def train(recipe: str, **options: Any) -> dict[str, Any]:
        trained.append((recipe, options.get("model_kwargs")))
        # a boundary F1 may be None, not measurable (no class boundary to score): the table formatted it with :.3f
        return {"test": {**test, "boundary_f1": None if recipe == "unet" else 0.8}, "params": 1, "train_seconds": 0.0}

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
    table = capsys.readouterr().out
    assert "| quick | 1 | 0.500 | 0.500 | 0.9000 | 0.800 | 0 |" in table
    assert "| unet | 1 | 0.500 | 0.500 | 0.9000 | - | 0 |" in table


def test_the_folder_benchmark_averages_a_boundary_f1_over_the_seeds_that_measured_it() -> None:
    mean_std = load_benchmark("segmentation_folder")._mean_std
    assert mean_std([0.5, 0.7], 3) == "0.600 ± 0.141" and mean_std([0.5], 4) == "0.5000"
    assert mean_std([None, None], 4) == "-" and mean_std([0.5, None], 4) == "0.5000 (1 of 2 seeds)"
    assert mean_std([0.5, None, 0.7], 3) == "0.600 ± 0.141 (2 of 3 seeds)"
