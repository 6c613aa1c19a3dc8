"""Training-step throughput of a zoo model in each memory format and precision, measured side by side.

One training step = forward, cross-entropy, backward and an SGD (Nesterov, weight decay) update on random inputs of
the model's size. Each variant is timed over `--steps` steps after `--warmup` untimed ones, and the variants are run
in turn `--repeats` times (interleaved, so a change of machine load hits all of them), reporting images per second
per repeat. This is what chose `channels_last` for the MNIST default recipe and the segmentation recipes.

    python benchmarks/step_speed.py --arch mnist_net --batch-size 128 --input 1,28,28 --threads 2
    python benchmarks/step_speed.py --arch unet --batch-size 16 --input 1,64,64 --dense --threads 2

Variants: fp32 (default layout), channels_last, bf16 (autocast), compile (`torch.compile`, default layout).
`--malloc-tuning` measures the engine's glibc allocator settings (`cnnlab.train.allocator`) against a run without.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time

import torch
import torch.nn.functional as F

from cnnlab.models import create_model
from cnnlab.train.allocator import keep_freed_memory

VARIANTS = ("fp32", "channels_last", "bf16", "compile")


def images_per_second(
    arch: str,
    variant: str,
    batch_size: int,
    shape: tuple[int, ...],
    dense: bool,
    steps: int,
    warmup: int,
    model_kwargs: dict | None = None,
) -> float:
    """Images per second of `steps` training steps of `arch` in `variant` (after `warmup` untimed steps)."""
    torch.manual_seed(0)
    model = create_model(arch, **(model_kwargs or {})).train()
    inputs = torch.rand(batch_size, *shape)
    classes = getattr(model, "num_classes", 10)
    target_shape = (batch_size, *shape[1:]) if dense else (batch_size,)
    targets = torch.randint(0, classes, target_shape)
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    forward = torch.compile(model) if variant == "compile" else model
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if variant == "bf16" else contextlib.nullcontext
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        with autocast():
            loss = F.cross_entropy(forward(inputs).float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return batch_size * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="mnist_net", help="registered model name")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input", default="1,28,28", help="C,H,W of one input")
    parser.add_argument("--dense", action="store_true", help="per-pixel targets (segmentation models)")
    parser.add_argument(
        "--model-kwargs", default="{}", help="constructor options as JSON, e.g. '{\"widths\": [8, 16]}'"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--malloc-tuning",
        action="store_true",
        help="apply cnnlab.train.allocator.keep_freed_memory() first, as the engine does for CPU runs "
        "(process-wide, so compare two invocations)",
    )
    args = parser.parse_args()
    if args.malloc_tuning and not keep_freed_memory():
        raise SystemExit("malloc tuning is not available here (needs glibc Linux)")
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.input.split(","))
    kwargs = json.loads(args.model_kwargs)
    results: dict[str, list[float]] = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for variant in args.variants:
            speed = images_per_second(args.arch, variant, args.batch_size, shape, args.dense, args.steps, args.warmup)
            results[variant].append(round(speed, 1))
            print(f"{variant:14s} {speed:8.1f} img/s", flush=True)
    record = {
        "arch": args.arch,
        "model_kwargs": kwargs,
        "batch_size": args.batch_size,
        "input": list(shape),
        "threads": torch.get_num_threads(),
        "malloc_tuning": args.malloc_tuning,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "images_per_second": results,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
