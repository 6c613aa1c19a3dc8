"""The end every benchmark script's run shares: how long it took, on what machine and when, printed and, with
``--json PATH``, written where the results tables in docs/BENCHMARKS.md are read from (benchmarks/results/)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path


def write_results(results: dict[str, object], start: float, path: Path | None) -> None:
    """Add the seconds since `start` (a `time.perf_counter()`), the machine and the date to `results`, print them as
    JSON, and write them to `path` when one is given."""
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["machine"] = platform.processor() or platform.machine()
    results["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(results, indent=2))
    if path:
        path.write_text(json.dumps(results, indent=2) + "\n")
