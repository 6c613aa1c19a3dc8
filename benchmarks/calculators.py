"""Wall time of the two calculators, `cnnlab budget --memory` and `cnnlab zoo`, against the bare torch import.

What it measures: each command is a fresh subprocess (interpreter start and imports included, as a user sees it),
timed with `time.perf_counter` around `subprocess.run`; the commands run in turn, interleaved, `--repeats` times
(5 by default), so a change of machine load hits all of them, and the median of each is reported:

- ``cnnlab budget resnet152 --input 3x224x224 --batch 64 --memory 16GiB`` (its max-batch answers, from one more
  untimed run with ``--json``, are recorded too: a faster planner with other answers would show here);
- ``cnnlab zoo``;
- ``python -c "import torch, torchvision"``: the floor any torch CLI pays, the peer for `cnnlab zoo`;
- ``cnnlab --help``: must stay free of torch.

Recorded in benchmarks/results/calculators.json with the hardware (CPU model, cores, torch version) and the load
average (`uptime`) before and after, since another process on the 2-core machine slows every command. The figures in
that file were measured on the project's 2-core CPU machine; on another machine, rerun:

    .venv/bin/python benchmarks/calculators.py [--repeats 5] [--out benchmarks/results/calculators.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("cnnlab")  # the console script a user runs
CNNLAB = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "cnnlab"]
BUDGET_ARGS = ["budget", "resnet152", "--input", "3x224x224", "--batch", "64", "--memory", "16GiB"]
COMMANDS = {
    "cnnlab budget resnet152 --input 3x224x224 --batch 64 --memory 16GiB": [*CNNLAB, *BUDGET_ARGS],
    "cnnlab zoo": [*CNNLAB, "zoo"],
    'python -c "import torch, torchvision"': [sys.executable, "-c", "import torch, torchvision"],
    "cnnlab --help": [*CNNLAB, "--help"],
}
BEFORE = {  # the same commands on the same machine, idle, before the planner's lines and the recorded zoo figures
    "cnnlab budget resnet152 --input 3x224x224 --batch 64 --memory 16GiB": 109.0,
    "cnnlab zoo": 6.2,
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{load:.2f}" for load in os.getloadavg())


def _run(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {result.returncode}:\n{result.stderr}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (the median is reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "calculators.json")
    args = parser.parse_args()
    import torch

    load_before = _uptime()
    seconds: dict[str, list[float]] = {label: [] for label in COMMANDS}
    for _ in range(args.repeats):
        for label, command in COMMANDS.items():
            seconds[label].append(round(_run(command)[0], 2))
    plan = json.loads(_run([*CNNLAB, *BUDGET_ARGS, "--json"])[1])["plan"]  # the answers, untimed
    answers = [row["max_batch"] for row in plan["remedies"]]
    results = {
        "what": "wall seconds of fresh subprocesses, interleaved; median of the repeats. The load after includes "
        "the benchmark's own commands (about 1.0 on its own)",
        "hardware": f"{_cpu_model()}, {os.cpu_count()} cores; {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset (torch's default)"),
        "repeats": args.repeats,
        "load_before": load_before,
        "load_after": _uptime(),
        "median_seconds": {label: statistics.median(runs) for label, runs in seconds.items()},
        "seconds": seconds,
        "before_seconds": BEFORE,
        "budget_resnet152_max_batch": dict(
            zip(["as configured", "bf16", "checkpointing", "sgd", "all three"], answers, strict=True)
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for label, median in results["median_seconds"].items():
        print(f"{median:7.2f} s  {label}")
    print(f"budget max batch: {answers}; load before: {load_before}; wrote {args.out}")


if __name__ == "__main__":
    main()
