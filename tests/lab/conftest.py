"""Fixtures the lab's page tests share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.models import create_model
from cnnlab.train.config import TrainConfig, save_config
from cnnlab.train.saved import save_ensemble, save_model


@pytest.fixture
def mnist_trio(tmp_path: Path) -> Path:
    """RUNS/mnist/trio under `tmp_path`: an MNIST ensemble of two untrained mnist_net_small members, seeds 0 and 1,
    saved as `cnnlab train mnist --ensemble` saves one (members, ensemble.json, config.yaml)."""
    run = tmp_path / "mnist" / "trio"
    for seed in range(2):
        torch.manual_seed(seed)
        save_model(create_model("mnist_net_small"), run / f"seed{seed}", "mnist_net_small", {}, meta={"task": "mnist"})
    save_ensemble(run, [run / "seed0", run / "seed1"], meta={"task": "mnist"})
    save_config(TrainConfig(task="mnist", name="trio"), run / "config.yaml")
    return run
