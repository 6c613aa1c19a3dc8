"""Out-of-memory remedies on a CUDA GPU: cnnlab's predicted training peak against torch.cuda.max_memory_allocated.

What it measures: for resnet50 (3x224x224, 1000 classes) at several batch sizes, with each remedy of exercise 3
(as configured: fp32 + AdamW; bf16 autocast; gradient checkpointing of the stages; SGD without momentum, so no
optimizer state; all three together), the peak of one training step run by the engine (`Trainer.fit` on synthetic
data: the peak is read over the second optimizer step, after the optimizer state exists), next to the prediction of
`cnnlab.budget` (`plan_batch`: meta-device traces, fixed bytes + bytes per sample for each remedy) and the ratio
predicted / measured (goal: within 10 %). One run per cell: these are byte counts of a deterministic allocation
pattern, not timings.

Needs a CUDA GPU; on a machine without one it says so and exits with status 0 without measuring anything.

Run: .venv/bin/python benchmarks/memory.py [--batch-sizes 16 32 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Any

import torch

from cnnlab.budget.planner import plan_batch
from cnnlab.models import create_model
from cnnlab.train import Callback, TrainConfig, Trainer

SHAPE = (3, 224, 224)
# remedy name in cnnlab.budget's plan -> TrainConfig options that apply it
REMEDIES: dict[str, dict[str, Any]] = {
    "as configured": {},
    "bf16 mixed precision": {"precision": "bf16"},
    "gradient checkpointing": {"grad_checkpointing": True},
    "SGD (no optimizer state)": {"optimizer": "sgd", "momentum": 0.0},
    "all three": {"precision": "bf16", "grad_checkpointing": True, "optimizer": "sgd", "momentum": 0.0},
}


class _PeakOfSecondStep(Callback):
    """Resets the CUDA peak after step 1 and reads it after step 2 (the optimizer state exists by then)."""

    def __init__(self) -> None:
        self.peak_bytes = 0

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:
        torch.cuda.synchronize()
        if step == 1:
            torch.cuda.reset_peak_memory_stats()
        elif step == 2:
            self.peak_bytes = torch.cuda.max_memory_allocated()
            trainer.should_stop = True


def measure(batch: int, options: dict[str, Any]) -> int:
    """Peak bytes allocated on the GPU during the second training step of resnet50 with these options."""
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=1000)
    inputs = torch.randn(2 * batch, *SHAPE)
    targets = torch.randint(0, 1000, (2 * batch,))
    peak = _PeakOfSecondStep()
    with tempfile.TemporaryDirectory() as output:
        settings: dict[str, Any] = dict(
            epochs=1, batch_size=batch, optimizer="adamw", lr=1e-3, device="cuda", output=output, progress=False
        )
        settings.update(checkpoint=False, **options)
        trainer = Trainer(model, TrainConfig(**settings), callbacks=[peak])
        trainer.fit((inputs.cuda(), targets.cuda()))
        del trainer, model, inputs, targets
    torch.cuda.empty_cache()
    return peak.peak_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/memory.py needs a CUDA GPU and none is available here: nothing was measured.")
        return 0
    device_name = torch.cuda.get_device_name(0)
    limit = torch.cuda.get_device_properties(0).total_memory
    plan = plan_batch(
        create_model("resnet50", num_classes=1000), SHAPE, torch.float32, "adamw", limit, for_device="cuda"
    )
    predictions = {row["remedy"]: row for row in plan["remedies"]}
    rows = []
    print(f"resnet50 {'x'.join(map(str, SHAPE))}, {device_name}, torch {torch.__version__}")
    print(f"{'remedy':26} {'batch':>5} {'predicted MiB':>14} {'measured MiB':>13} {'ratio':>6}")
    for remedy, options in REMEDIES.items():
        for batch in args.batch_sizes:
            row = predictions[remedy]
            predicted = row["fixed_bytes"] + row["per_sample_bytes"] * batch
            measured = measure(batch, options)
            ratio = predicted / measured if measured else float("nan")
            rows.append(
                {"remedy": remedy, "batch": batch, "predicted_bytes": predicted, "measured_bytes": measured,
                 "ratio": round(ratio, 4), "max_batch_predicted": row["max_batch"]}
            )  # fmt: skip
            print(f"{remedy:26} {batch:5d} {predicted / 2**20:14.0f} {measured / 2**20:13.0f} {ratio:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
