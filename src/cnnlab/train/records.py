"""The per-epoch records every run writes: ``metrics.json``, ``metrics.csv`` and ``learning_curves.png``.

The engine writes them after every epoch (the plot only when an epoch is long enough for its ~0.5 s not to matter),
so an interrupted run still has its curves; tasks with several phases merge their phases' histories with
`write_history`.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnlab.files import save_figure_whole, write_text_whole, written_then_renamed

__all__ = ["epoch_axis", "plot_learning_curves", "write_history"]


def write_history(history: Sequence[dict[str, float]], run_dir: str | os.PathLike[str], plot: bool = True) -> None:
    """Write `history` (one dict per epoch) as ``metrics.json`` and ``metrics.csv`` in `run_dir`, and the learning
    curves as ``learning_curves.png`` when `plot` is set."""
    run_dir = Path(run_dir)
    write_text_whole(run_dir / "metrics.json", json.dumps(list(history), indent=1))
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    # Rewritten whole every epoch from the history (a resumed run's comes from its checkpoint), never appended to:
    # a kill mid-write leaves the previous epoch's file, and a resume the rows of the epochs it kept.
    with written_then_renamed(run_dir / "metrics.csv") as partial, open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    if plot and history:
        plot_learning_curves(history, run_dir / "learning_curves.png")


def plot_learning_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Plot losses (left) and every other train_/val_ metric (right) against the epoch; returns `path`.

    Rows with a ``phase`` (a transfer run's head and fine-tuning phases, numbered across them) are drawn phase by
    phase: each curve breaks at a phase's end, where a dotted line and the phase's name mark it. Joined, the curve
    read as one continuous training, though the next phase starts from the best epoch's weights with another part of
    the network trained and a new schedule.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    phases = [(name, list(rows)) for name, rows in itertools.groupby(history, key=lambda row: row.get("phase"))]
    keys = sorted({k for row in history for k in row if k.startswith(("train_", "val_", "test_"))})
    loss_keys = [k for k in keys if k.endswith("loss")]
    other_keys = [k for k in keys if not k.endswith("loss")]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, group, title in ((loss_axis, loss_keys, "loss"), (metric_axis, other_keys, "metrics")):
        for key in group:
            color = None
            for index, (_, rows) in enumerate(phases):
                (line,) = axis.plot(
                    [row["epoch"] for row in rows],
                    [row.get(key, float("nan")) for row in rows],
                    marker="o",
                    color=color,
                    label=key if index == 0 else None,
                )
                color = line.get_color()
        if len(phases) > 1:
            for index, (name, rows) in enumerate(phases):
                if index:  # between the last epoch of the phase before and this phase's first
                    axis.axvline(rows[0]["epoch"] - 0.5, color="gray", linestyle=":", linewidth=1)
                axis.text(rows[0]["epoch"] - 0.4, 1.0, f" {name}", transform=axis.get_xaxis_transform(),
                          va="top", fontsize=8, color="gray")  # fmt: skip
        epoch_axis(axis, title)
        if group:
            axis.legend()
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=100)
    plt.close(figure)
    return path


def epoch_axis(axis: Any, title: str = "") -> None:
    """Label a learning-curve axis: whole epochs on x (matplotlib's ticks fell on 1.5, 2.5 ...), a title, a grid."""
    from matplotlib.ticker import MaxNLocator

    # min_n_ticks=1: with the default 2, a one-epoch run's view (0.945 to 1.055) holds one integer, and the locator
    # gave up on integers and ticked 0.945, 0.96 ... 1.05.
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_xlabel("epoch")
    axis.set_title(title)
    axis.grid(alpha=0.3)
