"""Memory estimates against a measured training step: cnnlab (textbook and realistic views) and torchinfo.

What it measures: for each network, one real training step on the CPU (forward, backward of output.sum(), Adam step
with its state already created) counted by cnnlab's saved-tensor hooks and live-tensor tracker; the estimates of
cnnlab (meta-device trace, no memory allocated) and torchinfo's "Estimated Total Size"; the ratio of each estimate to
the measurement. One run per network (the counts are deterministic byte counts, not timings).

Run: .venv/bin/python benchmarks/budget.py [--json out.json]   (needs `pip install torchinfo`)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch
from torch import nn

from cnnlab.budget import budget
from cnnlab.models import create_model

EXERCISE = ["conv 100 k3 s2 same", "conv 200 k3 s2 same", "conv 400 k3 s2 same"]


def cases() -> list[tuple[str, object, tuple[int, ...], int]]:
    return [
        ("exercise 2 (3 convs), batch 50", EXERCISE, (3, 200, 300), 50),
        ("exercise 2 + ReLU, batch 50", [f"{line} relu" for line in EXERCISE], (3, 200, 300), 50),
        (
            "conv-bn-pool-dropout-dense, batch 64",
            [
                "conv 32 k3 same",
                "bn",
                "relu",
                "maxpool k2",
                "conv 64 k3 same relu",
                "maxpool k2",
                "dropout 0.25",
                "flatten",
                "dense 128 relu",
                "dense 10",
            ],
            (1, 28, 28),
            64,
        ),
        ("resnet18, batch 8", "resnet18", (3, 224, 224), 8),
    ]


def torchinfo_sizes(model: nn.Module, shape: tuple[int, ...], batch: int) -> tuple[int, int]:
    """torchinfo's (forward/backward pass size, estimated total size), in bytes."""
    import torchinfo

    stats = torchinfo.summary(model, input_size=(batch, *shape), verbose=0, device="cpu")
    return int(stats.total_output_bytes), int(stats.total_input + stats.total_output_bytes + stats.total_param_bytes)


def _over(estimate: int, measured: int) -> float | None:
    """estimate / measured to three places; None where the real step measured 0 bytes (no finite ratio)."""
    return round(estimate / measured, 3) if measured else None


def _cell(ratio: float | None, places: int) -> str:
    """A ratio to `places` places; "-" where there is none (the real step held 0 bytes: see the row's notes)."""
    return "-" if ratio is None else f"{ratio:.{places}f}"


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a Markdown table, then a line for each note on a ratio shown as "-"."""
    lines = [
        "| network | measured saved (MB) | measured peak (MB) | cnnlab saved est./meas. | cnnlab peak est./meas. "
        "| cnnlab textbook total / peak | torchinfo fwd/bwd size / saved | torchinfo total / peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['network']} | {row['measured_saved'] / 1e6:,.1f} | {row['measured_peak'] / 1e6:,.1f} | "
            f"{_cell(row['cnnlab_saved_ratio'], 4)} | {_cell(row['cnnlab_peak_ratio'], 4)} | "
            f"{_cell(row['cnnlab_textbook_ratio'], 3)} | {_cell(row['torchinfo_pass_over_saved'], 3)} | "
            f"{_cell(row['torchinfo_ratio'], 3)} |"
        )
    notes = [f"{row['network']}: {note}" for row in rows for note in row.get("notes") or []]
    return [*lines, "", *notes] if notes else lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for label, target, shape, batch in cases():
        start = time.perf_counter()
        report = budget(target, input_shape=shape, batch_size=batch, measure=True)
        seconds = time.perf_counter() - start
        module = create_model(target) if isinstance(target, str) else None
        if module is None:
            from cnnlab.budget.core import resolve_model

            module = resolve_model(target, shape)[1]
        measured_peak = report.measured["peak_live_bytes"]
        measured_saved = report.measured["saved_for_backward_bytes"]
        info_pass, info_total = torchinfo_sizes(module, shape, batch)
        notes = [report.measured[key] for key in ("saved_ratio_note", "peak_ratio_note") if key in report.measured]
        if not measured_peak:  # it divided by it (ZeroDivisionError) where --measure's own ratio is null or 1.0
            notes.append("the real step's peak of live tensors was 0 bytes: no total has a finite ratio to it")
        rows.append(
            {
                "network": label,
                "measured_saved": measured_saved,
                "measured_peak": measured_peak,
                "cnnlab_saved_ratio": report.measured["saved_ratio"],
                "cnnlab_peak_ratio": report.measured["peak_ratio"],
                "cnnlab_textbook_ratio": _over(report.training["total_bytes"], measured_peak),
                "torchinfo_pass_over_saved": _over(info_pass, measured_saved),
                "torchinfo_ratio": _over(info_total, measured_peak),
                "seconds": round(seconds, 1),
                # a step that saved or held 0 bytes has no finite ratio: null, and a note says why
                "notes": notes,
            }
        )
    print(f"# {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("\n".join(markdown_table(rows)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
