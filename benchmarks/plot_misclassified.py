"""CPU time of `cnnlab.report.plots.plot_misclassified`, the figure every MNIST test pass and evaluate draws.

What it measures: 100 misclassified 1x28x28 digits (random pixels, seeded; the figure's cost does not depend on
them), drawn and saved as a PNG, `--repeats` times (5 by default) after one untimed warm-up call (matplotlib's
imports and font cache); each call timed with `time.process_time` (CPU seconds of this process, so other jobs on
the shared machine hurt it less than wall time would), and the median reported. With `--before DIR`, the function
from an older copy of the source (``git archive HEAD~1 src | tar -x -C DIR``) is timed too, the two interleaved so a
change of load hits both, and both PNGs are kept in `--out` to be compared by eye:

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/plot_misclassified.py [--before /tmp/old] [--out DIR]

Measured 2026-12-07 on the 2-core AMD EPYC (shared, load 4.0-4.3), OMP_NUM_THREADS=1, with `--before` a `git archive`
of the commit before: the grid of 100 subplots with tight_layout 2.28 CPU s (1.98-2.44), one mosaic image with its
labels as figure texts 0.18 CPU s (0.17-0.19), median of 5 each, interleaved: 12.7x less.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cnnlab.report.plots import plot_misclassified


def _old_function(source: Path) -> Callable[..., Path]:
    """`plot_misclassified` from `source`/src/cnnlab/report/plots.py, loaded as a module of its own."""
    spec = importlib.util.spec_from_file_location("plots_before", source / "src" / "cnnlab" / "report" / "plots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.plot_misclassified


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=Path, help="a folder holding an older src/ (git archive) to time too")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(137, 1, 28, 28, generator=generator)
    true = torch.randint(0, 10, (137,), generator=generator)
    predicted = (true + torch.randint(1, 10, (137,), generator=generator)) % 10
    functions = {"after": plot_misclassified}
    if args.before:
        functions = {"before": _old_function(args.before), **functions}
    seconds: dict[str, list[float]] = {name: [] for name in functions}
    for name, function in functions.items():  # warm-up: imports, fonts
        function(images, true, predicted, out / f"misclassified_{name}.png")
    for _ in range(args.repeats):
        for name, function in functions.items():
            start = time.process_time()
            function(images, true, predicted, out / f"misclassified_{name}.png")
            seconds[name].append(time.process_time() - start)
    for name, times in seconds.items():
        shown = ", ".join(f"{t:.2f}" for t in times)
        print(f"{name:6s} median {statistics.median(times):.2f} CPU s ({shown}); PNG {out}/misclassified_{name}.png")


if __name__ == "__main__":
    main()
