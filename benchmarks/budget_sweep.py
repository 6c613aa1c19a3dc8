"""`cnnlab budget` on networks it was not written for: every torchvision builder, and timm CNNs without weights.

What it measures, per network: the exit status and wall time of one `python -m cnnlab budget TARGET --json` process
(no --measure; the time includes Python's and torch's start, about 3 s here), cnnlab's parameter count against
``sum(p.numel())`` of the same network, and its MACs against ``torch.utils.flop_counter.FlopCounterMode`` on one
eval-mode forward at batch 1 (FLOPs / 2), both counted here on the meta device, independently of cnnlab. For a few
small networks also ``--measure`` (one real CPU training step): estimate/measured of the bytes saved for backward and
of the peak of live tensors. A detection network's forward keeps a number of boxes that depends on the image, so its
reference is a real CPU forward of the whole network (random weights, seed 0, on a blank image of the sweep's size,
score_thresh 0 so that the mask and keypoint heads run on every detection kept) under FlopCounterMode, against
cnnlab's dense MACs plus its MACs per box times the boxes that forward ran each head on. One run per network:
the counts are deterministic, the times are one sample on a shared machine.

Networks: ``torchvision.models.list_models(module=...)`` for the classification, segmentation, video and detection
modules (detection and segmentation builders with ``weights_backbone=None``: no download), and the timm names in
TIMM (built without weights; a timm network is sized at its ``pretrained_cfg`` input size, so no --input).

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/budget_sweep.py [--quick | --family detection] [--json out.json]
(--family reruns one family and puts its cases into the existing results file, whose summary it recomputes.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import CnnlabError

TIMM = [
    "convnext_tiny",
    "regnety_002",
    "efficientnetv2_rw_s",
    "ghostnet_100",
    "repvgg_a0",
    "dla34",
    "cspdarknet53",
    "hrnet_w18_small",
    "resnest14d",
    "mobilenetv3_small_100",
    "rexnet_100",
    "densenet121",
    "nfnet_l0",
    "vit_tiny_patch16_224",
    "efficientnet_b0",
]
QUICK = [
    "torchvision.models:resnet18",
    "torchvision.models:googlenet",
    "torchvision.models:vit_b_16",
    "torchvision.models.segmentation:lraspp_mobilenet_v3_large(weights_backbone=None)",
    "torchvision.models.video:r3d_18",
    "torchvision.models.detection:ssdlite320_mobilenet_v3_large(weights_backbone=None)",
    "timm.models:regnety_002",
    "timm.models:hrnet_w18_small",
]
MEASURE = [
    "torchvision.models:mobilenet_v3_small",
    "torchvision.models:squeezenet1_0",
    "torchvision.models:googlenet",  # auxiliary heads trained too
    "torchvision.models.segmentation:lraspp_mobilenet_v3_large(weights_backbone=None)",  # a dict output
    "timm.models:regnety_002",
]
# The sizes these need (their own error names them at 224 and at 112: tests/budget/test_python_target.py)
SIZES = {
    "inception_v3": "3x299x299",  # its auxiliary head, trained, needs 299
    "mvit_v1_b": "3x16x224x224",  # positional embeddings for 16x224x224
    "mvit_v2_s": "3x16x224x224",
    "s3d": "3x16x224x224",  # its last pooling's 7x7 kernel needs 209 at least
}


@dataclass
class Case:
    family: str
    target: str
    input: str | None
    rc: int | None = None
    seconds: float | None = None
    cpu_seconds: float | None = None
    params: int | None = None
    macs: int | None = None
    reference_params: int | None = None
    reference_macs: int | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    measured: dict | None = None
    # a detection network: cnnlab's per-box heads (modules, MACs per box), the resized input, and the boxes each head
    # ran on in the reference forward
    detection: dict | None = None
    boxes: dict | None = None


def cases() -> list[Case]:
    import torchvision

    found: list[Case] = []
    for name in torchvision.models.list_models(module=torchvision.models):
        found.append(Case("torchvision", f"torchvision.models:{name}", SIZES.get(name, "3x224x224")))
    for name in torchvision.models.list_models(module=torchvision.models.segmentation):
        found.append(
            Case("segmentation", f"torchvision.models.segmentation:{name}(weights_backbone=None)", "3x224x224")
        )
    for name in torchvision.models.list_models(module=torchvision.models.video):
        found.append(Case("video", f"torchvision.models.video:{name}", SIZES.get(name, "3x16x112x112")))
    for name in torchvision.models.list_models(module=torchvision.models.detection):
        found.append(Case("detection", f"torchvision.models.detection:{name}(weights_backbone=None)", "3x320x320"))
    found.extend(Case("timm", f"timm.models:{name}", None) for name in TIMM)
    return found


def run_cli(case: Case, measure: bool = False) -> dict | None:
    """`cnnlab budget TARGET --json` in this process (torch, torchvision and timm already imported: the time is the
    command's own; a fresh process adds STARTUP's seconds)."""
    from typer.testing import CliRunner

    from cnnlab.cli import app

    arguments = ["budget", case.target, "--json", *(["--input", case.input] if case.input else [])]
    arguments += ["--measure"] if measure else []
    start, cpu_start = time.perf_counter(), time.process_time()
    done = CliRunner().invoke(app, arguments)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # what `python -m cnnlab` (cnnlab.cli.main) makes of an exception: a CnnlabError is one line and exit 2
    error = done.exception if done.exit_code and not isinstance(done.exception, SystemExit) else None
    exit_code = 2 if isinstance(error, CnnlabError) else done.exit_code
    message = f"{type(error).__name__}: {error}" if error is not None else _last_line(done.stderr)
    if measure:
        return json.loads(done.stdout).get("measured") if exit_code == 0 else {"error": message[:300]}
    case.rc, case.seconds, case.cpu_seconds = exit_code, round(seconds, 2), round(cpu_seconds, 2)
    if exit_code != 0:
        case.error = message[:600]
        return None
    report = json.loads(done.stdout)
    case.params, case.macs = report["params"], report["macs"]
    case.notes = [
        key for key in ("training_only_modules", "no_gradient_modules", "one_value_batch_norms") if report[key]
    ]
    case.detection = report.get("detection")
    return report


def startup_seconds() -> float:
    """Wall time of a fresh `python -m cnnlab budget torchvision.models:resnet18` process, for reference."""
    command = [
        sys.executable,
        "-m",
        "cnnlab",
        "budget",
        "torchvision.models:resnet18",
        "--input",
        "3x224x224",
        "--json",
    ]
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)  # noqa: S603 - our own CLI
    return round(time.perf_counter() - start, 2)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def reference(case: Case) -> None:
    """sum(p.numel()) and FlopCounterMode's FLOPs / 2 of one eval forward (no_grad), counted here on the meta device."""
    from cnnlab.budget.python_model import build_python_model, declared_input_size

    model = build_python_model(case.target)  # on the meta device, as the CLI builds it; counted here on its own
    case.reference_params = sum(p.numel() for p in model.parameters())
    if case.family == "detection":
        _detection_reference(case)
        return
    shape = tuple(int(n) for n in case.input.split("x")) if case.input else declared_input_size(model)[0]
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *shape, device="meta"))
    case.reference_macs = counter.get_total_flops() // 2


def _detection_reference(case: Case) -> None:
    """FlopCounterMode's FLOPs / 2 of one real eval forward of the whole network on a blank image, and how many boxes
    each per-box head ran on (its input's first dimension)."""
    from cnnlab.budget.python_model import build_python_model

    torch.manual_seed(0)
    model = build_python_model(case.target, on_meta=False).eval()
    roi_heads = getattr(model, "roi_heads", None)
    boxes: dict[str, int] = {}
    if roi_heads is not None:
        roi_heads.score_thresh = 0.0  # random weights score every class about 1/91: keep detections for the heads
        for part in ("box_head", "mask_head", "keypoint_head"):
            head = getattr(roi_heads, part, None)
            if head is not None:
                head.register_forward_hook(
                    lambda _module, args, _output, name=f"roi_heads.{part}": boxes.__setitem__(name, args[0].shape[0])
                )
    shape = tuple(int(n) for n in case.input.split("x"))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model([torch.zeros(shape)])
    case.reference_macs, case.boxes = counter.get_total_flops() // 2, boxes


def compared_macs(case: Case) -> int | None:
    """cnnlab's MACs for what the reference ran: a detection network's dense MACs plus each per-box head's MACs
    times the boxes it ran on."""
    if case.macs is None or case.detection is None:
        return case.macs
    return case.macs + sum(
        head["macs_per_box"] * (case.boxes or {}).get(head["modules"][0], 0) for head in case.detection["per_box_heads"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} networks, one of each kind")
    parser.add_argument("--family", default=None, help="only this family (detection, timm, ...), merged into --json")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/budget_sweep[_quick].json")
    options = parser.parse_args()
    chosen = cases()
    if options.quick:
        chosen = [case for case in chosen if case.target in QUICK]
    if options.family:
        chosen = [case for case in chosen if case.family == options.family]
    _versions()  # imports torchvision and timm before the first timing
    startup = startup_seconds()
    for case in chosen:
        run_cli(case)
        try:
            reference(case)
        except Exception as error:  # noqa: BLE001 - recorded: the reference cannot count every network
            case.notes.append(f"reference failed: {type(error).__name__}: {str(error)[:120]}")
        print(_row(case), flush=True)
    for case in chosen:
        if case.target in MEASURE:
            case.measured = run_cli(case, measure=True)
            print(f"{case.target}: --measure {case.measured}", flush=True)
    path = options.json or Path(__file__).parent / "results" / f"budget_sweep{'_quick' if options.quick else ''}.json"
    command = " ".join([Path(sys.executable).name, *sys.argv])
    earlier: dict = {}
    if options.family and path.exists():  # the other families' cases as the earlier full run recorded them
        earlier = json.loads(path.read_text())
        rerun = {case.target for case in chosen}
        kept = [Case(**case) for case in earlier["cases"] if case["target"] not in rerun]
        chosen = sorted([*kept, *chosen], key=lambda case: [c["target"] for c in earlier["cases"]].index(case.target))
        command = f"{earlier['command']}; {command} ({earlier['date']}, then this date)"
    summary = _summary(chosen)
    print(json.dumps(summary, indent=1))
    record = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": _versions(),
        "fresh_process_seconds_resnet18": startup,
        "summary": summary,
        "cases": [asdict(case) for case in chosen],
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


def _row(case: Case) -> str:
    if case.rc != 0:
        return f"{case.target:78s} rc={case.rc} {case.seconds:6.1f}s  {case.error[:400]}"
    params = "=" if case.params == case.reference_params else f"!= {case.reference_params}"
    macs = "=" if case.reference_macs in (None, compared_macs(case)) else f"!= {case.reference_macs}"
    if case.boxes:
        macs += " with boxes " + ", ".join(f"{name} {count}" for name, count in case.boxes.items())
    return (
        f"{case.target:78s} rc=0 {case.seconds:6.1f}s ({case.cpu_seconds:5.1f} CPU) "
        f"params {case.params:>12,} {params:>3s} MACs {case.macs:>16,} {macs} {' '.join(case.notes)}"
    )


def _summary(chosen: list[Case]) -> dict:
    passed = [case for case in chosen if case.rc == 0]
    times = sorted(case.seconds for case in chosen if case.seconds is not None)
    cpu_times = sorted(case.cpu_seconds for case in chosen if case.cpu_seconds is not None)
    return {
        "networks": len(chosen),
        "exit_0": len(passed),
        "failed": {case.target: case.error for case in chosen if case.rc != 0},
        "params_equal": sum(case.params == case.reference_params for case in passed),
        "macs_equal": sum(
            compared_macs(case) == case.reference_macs for case in passed if case.reference_macs is not None
        ),
        "macs_compared": sum(case.reference_macs is not None for case in passed),
        "macs_differ": {
            case.target: [compared_macs(case), case.reference_macs]
            for case in passed
            if case.reference_macs is not None and compared_macs(case) != case.reference_macs
        },
        "median_seconds": times[len(times) // 2] if times else None,
        "max_seconds": max(times) if times else None,
        "median_cpu_seconds": cpu_times[len(cpu_times) // 2] if cpu_times else None,
        "max_cpu_seconds": max(cpu_times) if cpu_times else None,
        "over_10_seconds": {
            case.target: [case.seconds, case.cpu_seconds] for case in chosen if (case.seconds or 0) > 10
        },
    }


def _versions() -> dict[str, str]:
    import timm
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__}


if __name__ == "__main__":
    main()
