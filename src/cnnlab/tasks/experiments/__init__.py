"""Claims about CNNs turned into small, repeatable experiments (`cnnlab experiment NAME`).

Each experiment trains small networks on MNIST on the engine over several seeds, writes
``<output>/experiment/<name>/report.md`` with tables, PNG plots and `results.json`, and ends with a conclusion
generated from the measured numbers under the noise rule of `common.compare`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cnnlab.data.mnist import find_mnist_dir
from cnnlab.errors import CnnlabError
from cnnlab.tasks.experiments.common import ExperimentSettings


@dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    Attributes:
        name: the `cnnlab experiment` argument.
        summary: one line for `--help`.
        run: `run(settings) -> report path`.
        defaults: `ExperimentSettings` fields of the default run (chosen to finish in < 15 min on 2 CPU cores).
    """

    name: str
    summary: str
    run: Callable[[ExperimentSettings], Path]
    defaults: dict[str, Any]


def _experiments() -> dict[str, Experiment]:
    from cnnlab.tasks.experiments import cnn_vs_dense, lrn_vs_bn, pool_vs_stride

    return {
        experiment.name: experiment
        for experiment in (
            Experiment(
                cnn_vs_dense.NAME,
                "CNN vs dense net of equal parameter count: accuracy, MACs, time, shift/rotate/scale robustness, "
                "sample efficiency",
                cnn_vs_dense.run,
                {"epochs": 1, "subset": None},
            ),
            Experiment(
                pool_vs_stride.NAME,
                "2x2 max pooling vs stride-2 convolution: parameters, MACs, accuracy, feature invariance to 1-px "
                "shifts",
                pool_vs_stride.run,
                {"epochs": 3, "subset": 20_000},
            ),
            Experiment(
                lrn_vs_bn.NAME,
                "small AlexNet-style net with no normalisation, LRN or batch norm: accuracy, convergence, time/step",
                lrn_vs_bn.run,
                {"epochs": 4, "subset": 15_000, "val_subset": 2_000},
            ),
        )
    }


def list_experiments() -> list[Experiment]:
    """The registered experiments, in a fixed order."""
    return list(_experiments().values())


def get_experiment(name: str) -> Experiment:
    """The experiment called `name`.

    Raises:
        CnnlabError: for an unknown name, listing the known ones.
    """
    experiments = _experiments()
    if name not in experiments:
        # "cnn_vs_dense" (the modules' spelling) or "CNN-vs-dense" was told the list alone, as a model typo is not
        close = difflib.get_close_matches(name.lower().replace("_", "-").replace(" ", "-"), experiments, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise CnnlabError(f"unknown experiment {name!r}; {hint}choose one of: {', '.join(experiments)}")
    return experiments[name]


def run_experiment(name: str, **overrides: Any) -> Path:
    """Run experiment `name` with its defaults, replaced by any non-None `overrides`; returns the report path.

    `subset=0` means all training images. `device` (default cpu) is checked on this machine before the data is read.

    Raises:
        CnnlabError: an unknown experiment, settings no experiment runs with, a device this machine lacks, or MNIST
            missing.
    """
    from cnnlab.train.device import resolve_device

    experiment = get_experiment(name)
    settings = ExperimentSettings(**experiment.defaults)
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if settings.subset == 0:
        settings = replace(settings, subset=None)
    settings.validate()
    settings = replace(settings, device=str(resolve_device(settings.device)))  # "auto" as the device it picks
    find_mnist_dir(settings.data_dir)  # MNIST missing: said before the run folder is made, not after (left empty)
    return experiment.run(settings)


__all__ = ["Experiment", "ExperimentSettings", "get_experiment", "list_experiments", "run_experiment"]
