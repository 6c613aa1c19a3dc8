"""`cnnlab fcn scan` of a large image: tiled (the product) against one forward pass over the whole image.

What it measures: for each network, the scan of a random-weight converted MNIST classifier over a random grayscale
image (neither the weights nor the pixels change the cost), once with the image in tiles (`TILE_PIXELS`) and once
whole, each in its own child process; wall time of `scan()`, the child's peak resident memory above what it held
before the scan, and the largest difference between the two scans' probabilities (the tiles must give the whole
scan's numbers). Add `--heatmap` to time and size `save_heatmap` as well.

Run: .venv/bin/python benchmarks/fcn_scan.py [--size 6000x4000] [--refine 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ARCHS = ["mnist_net", "mnist_baseline"]


def child(arch: str, width: int, height: int, refine: int, tiled: bool, heatmap: bool, out: str) -> None:
    """One scan in this process; writes its figures and probabilities to `out` (a .pt file)."""
    import cnnlab.fcn.scan as scanning
    from cnnlab.fcn import to_fully_convolutional
    from cnnlab.models import create_model

    if not tiled:
        scanning.TILE_PIXELS = width * height
    torch.manual_seed(0)
    model = to_fully_convolutional(create_model(arch).eval())
    image = torch.rand(1, height, width, generator=torch.Generator().manual_seed(0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = scanning.scan(model, image, refine=refine)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {"scan_s": round(seconds, 2), "scan_peak_mb": round((peak - before) / 1024)}
    if heatmap:
        start = time.perf_counter()
        scanning.save_heatmap(image, result, Path(out).with_suffix(".png"))
        figures["heatmap_s"] = round(time.perf_counter() - start, 2)
        figures["heatmap_peak_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    torch.save({"figures": figures, "probabilities": result.probabilities}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="6000x4000", help="image WIDTHxHEIGHT (default: a 24 MP photo)")
    parser.add_argument("--refine", type=int, default=1, help="shift-and-stitch factor (1: one pass per mode)")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--heatmap", action="store_true", help="also draw the heatmap (tiled mode only)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arch, width, height, refine, tiled, heatmap, out = args.child
        child(arch, int(width), int(height), int(refine), tiled == "1", heatmap == "1", out)
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs.split(","):
            runs = {}
            for mode in ("tiled", "whole"):
                out = f"{folder}/{arch}-{mode}.pt"
                flags = ["1" if mode == "tiled" else "0", "1" if args.heatmap and mode == "tiled" else "0"]
                command = [sys.executable, __file__, "--child", arch, str(width), str(height), str(args.refine)]
                subprocess.run([*command, *flags, out], check=True)
                runs[mode] = torch.load(out, weights_only=True)
            difference = (runs["tiled"]["probabilities"] - runs["whole"]["probabilities"]).abs().max().item()
            row = {
                "arch": arch,
                "locations": list(runs["tiled"]["probabilities"].shape[1:]),
                "tiled": runs["tiled"]["figures"],
                "whole": runs["whole"]["figures"],
                "max_probability_difference": difference,
                "time_ratio": round(runs["tiled"]["figures"]["scan_s"] / runs["whole"]["figures"]["scan_s"], 2),
                "memory_ratio": round(
                    runs["tiled"]["figures"]["scan_peak_mb"] / max(1, runs["whole"]["figures"]["scan_peak_mb"]), 3
                ),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    record = {
        "image": f"{width}x{height}",
        "refine": args.refine,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
