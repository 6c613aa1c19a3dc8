"""Out-of-memory remedies on the CPU: the planner's predicted training peak against a real training step.

What it measures: for each network and batch size, one real training step on the CPU (forward, backward of
output.sum(), the optimizer step with its state already created), its live tensors tracked op by op by
`cnnlab.budget.trace` (the same counting the meta-device estimate uses, here on real tensors), with each remedy of
exercise 3: as configured (fp32, Adam); bf16 by CPU autocast of the forward pass and the loss, backward outside it,
as the engine does; the engine's gradient checkpointing of the stages; SGD without momentum; all three. Beside it,
the planner's peak for that remedy and batch (`_Planner.peak`, from meta-device traces) and the ratio
predicted / measured. One run per cell: these are byte counts, not timings.

Run: .venv/bin/python benchmarks/memory_cpu.py [--zoo] [--arch NAME ...] [--batch-sizes N ...] [--json out.json]
(`--arch` keeps only those networks, of the default cases and the zoo's; `--batch-sizes` replaces their batches.)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch

from cnnlab.budget import planner as planning
from cnnlab.budget.core import resolve_model
from cnnlab.budget.trace import trace
from cnnlab.models import create_model
from cnnlab.train.activation_checkpointing import checkpoint_stages

EXERCISE = ["conv 100 k3 s2 same", "conv 200 k3 s2 same", "conv 400 k3 s2 same"]  # the chapter's exercise 2
CASES = [
    ("exercise 2", (3, 200, 300), (4, 16, 64)),
    ("mnist_net", (1, 28, 28), (1, 8, 64)),
    ("resnet50", (3, 224, 224), (1, 4, 16)),
]
# --zoo: every other zoo network at batch 1 and 3, at inputs small enough for a CPU step in seconds
ZOO = [
    ("lenet5", (1, 32, 32)),
    ("mnist_baseline", (1, 28, 28)),
    ("alexnet", (3, 224, 224)),
    ("googlenet", (3, 96, 96)),
    ("resnet18", (3, 96, 96)),
    ("seresnet50", (3, 96, 96)),
    ("efficientnet_lite0", (3, 96, 96)),
    ("xception", (3, 160, 160)),
    ("inception_v3", (3, 139, 139)),
    ("unet", (1, 64, 64)),
    ("fcn8s", (1, 64, 64)),
]
REMEDIES = [
    planning._Remedy("as configured", checkpointed=False, optimizer="adam", bf16=False),
    planning._Remedy("bf16 mixed precision", checkpointed=False, optimizer="adam", bf16=True),
    planning._Remedy("gradient checkpointing", checkpointed=True, optimizer="adam", bf16=False),
    planning._Remedy("SGD (no optimizer state)", checkpointed=False, optimizer="sgd", bf16=False),
    planning._Remedy("all three", checkpointed=True, optimizer="sgd", bf16=True),
]


def measured_peak(model: torch.nn.Module, shape: tuple[int, ...], batch: int, remedy: planning._Remedy) -> int:
    """Peak live bytes of one real CPU training step with the remedy applied."""
    if remedy.checkpointed:
        model = copy.deepcopy(model)
        checkpoint_stages(model)
    autocast = torch.bfloat16 if remedy.bf16 else None
    return trace(
        model, shape, batch, torch.float32, "cpu", remedy.optimizer, inference=False, autocast=autocast
    ).peak_live_bytes


def select_cases(
    zoo: bool, archs: list[str] | None, batch_sizes: list[int] | None
) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """The (network, input shape, batch sizes) to run: the default cases, the zoo's too with `zoo` or `archs`,
    only `archs` when given (ValueError naming any unknown one), each at `batch_sizes` when given."""
    cases = CASES + [(name, shape, (1, 3)) for name, shape in ZOO] if zoo or archs else list(CASES)
    if archs:
        unknown = sorted(set(archs) - {name for name, _, _ in cases})
        if unknown:
            raise ValueError(f"unknown --arch {', '.join(unknown)}; choose from {', '.join(n for n, _, _ in cases)}")
        cases = [case for case in cases if case[0] in archs]
    if batch_sizes:
        cases = [(name, shape, tuple(batch_sizes)) for name, shape, _ in cases]
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--zoo", action="store_true", help="also every other zoo network at batch 1 and 3")
    parser.add_argument("--arch", nargs="+", help="only these networks (default cases or --zoo's), e.g. lenet5")
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="these batch sizes in place of each case's own")
    args = parser.parse_args()
    try:
        cases = select_cases(args.zoo, args.arch, args.batch_sizes)
    except ValueError as error:
        parser.error(str(error))
    rows = []
    print(f"{'network':18} {'remedy':26} {'batch':>5} {'predicted MB':>13} {'measured MB':>12} {'ratio':>6}")
    for arch, shape, batches in cases:
        torch.manual_seed(0)
        model = resolve_model(EXERCISE, shape)[1] if arch == "exercise 2" else create_model(arch)
        planner = planning._Planner(model, shape, torch.float32, "adam", None)
        for remedy in REMEDIES:
            for batch in batches:
                predicted, measured = planner.peak(remedy, batch), measured_peak(model, shape, batch, remedy)
                ratio = predicted / measured
                rows.append(
                    {"network": arch, "input": list(shape), "remedy": remedy.name, "batch": batch,
                     "predicted_bytes": predicted, "measured_bytes": measured, "ratio": round(ratio, 4)}
                )  # fmt: skip
                print(
                    f"{arch:10} {remedy.name:26} {batch:5d} {predicted / 1e6:13.1f} {measured / 1e6:12.1f} {ratio:6.3f}"
                )
    if args.json:
        record = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__}
        record.update(date=time.strftime("%Y-%m-%d"), rows=rows)
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
