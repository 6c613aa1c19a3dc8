"""Learning-curve plots from the per-epoch metrics the engine records."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def plot_learning_curves(history: Sequence[dict[str, float]], path: str | os.PathLike[str]) -> Path:
    """Plot losses (left) and every other train_/val_ metric (right) against the epoch; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    epochs = [row["epoch"] for row in history]
    keys = sorted({k for row in history for k in row if k.startswith(("train_", "val_", "test_"))})
    loss_keys = [k for k in keys if k.endswith("loss")]
    other_keys = [k for k in keys if not k.endswith("loss")]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, group, title in ((loss_axis, loss_keys, "loss"), (metric_axis, other_keys, "metrics")):
        for key in group:
            axis.plot(epochs, [row.get(key, float("nan")) for row in history], marker="o", label=key)
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        if group:
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
