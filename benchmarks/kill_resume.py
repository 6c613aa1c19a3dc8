"""SIGKILL every training task at random moments, resume it until it finishes, and check that nothing was lost.

For each task (`train mnist`, `train mnist -n 2`, `train transfer --recipe default` and `quick`, `train segment` on
the digit canvases and on a `--data` folder, `cnnlab experiment`), on tiny inputs it generates (700 MNIST training
images, 42 drawn shapes in 3 classes at 64 px, 40 demo segmentation pairs): one run uninterrupted, then the same run
killed with SIGKILL (its whole process group: DataLoader workers too) at a moment drawn uniformly over 5-100% of the
uninterrupted run's duration, continued (`--resume`; an experiment: the same command again), killed again, ... until
`--kills` kills landed (a run that finishes first is checked and a fresh one started, at most three), then continued to
the end. After each kill: every JSON file under the run parses, every ``.safetensors`` loads, every checkpoint loads
with ``weights_only=True``, every PNG decodes (hidden ``.*.tmp`` files are a killed writer's, never read), and no
sessions.json calls the killed session finished while the run has no results.json. At the end: the session after each
kill began at or after the epochs metrics.json held at the kill, each metrics.json row present at a kill is unchanged
(an epoch trained again has another ``epoch_seconds``), each epoch is listed once, a saved model present at a kill
holds the same bytes, and metrics.json and results.json equal the uninterrupted run's (same --seed: the engine claims
bit-identical resumes), times, paths and the conclusion text (it quotes step times) left out.

    OMP_NUM_THREADS=1 python benchmarks/kill_resume.py --kills 5 --work /tmp/kill-resume [--task mnist ...]
    (--src OLD/src tests another checkout's sources, e.g. ``git archive HEAD~1 src | tar -x -C OLD``)

Prints one line per kill and the problems found; exit code 1 when a check failed. Each task takes 3-8 minutes on 2
shared CPU cores (2026-12-07, AMD EPYC, load ~9): the tasks are dominated by start-up and testing, so most kills land
there rather than mid-epoch; the tests in tests/ reproduce each fault found at its exact moment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PYTHON = sys.executable
# Keys whose values differ between two identical runs: times, dates, commands, paths, machines.
VOLATILE = (
    "second", "time", "started", "command", "date", "path", "dir", "host", "wall", "throughput", "per_s", "sessions",
    "version", "cpu", "memory", "bytes", "cache", "hardware", "environment", "speed", "eta", "created", "name",
    "sha256", "images_per", "peak", "output", "pid", "resume", "costs", "conclusion",
)  # fmt: skip


def _cnnlab(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", "cnnlab", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill reaches DataLoader workers too
        **kwargs,
    )


def make_tiny_mnist(source_root: Path, target: Path, train: int = 700, test: int = 300) -> Path:
    """The first `train` and `test` MNIST images as IDX files under target/MNIST/raw."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from cnnlab.data.mnist import find_mnist_dir

    raw = find_mnist_dir(source_root)
    out = target / "MNIST" / "raw"
    out.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        for kind, magic, item in (("images-idx3-ubyte", 2051, 28 * 28), ("labels-idx1-ubyte", 2049, 1)):
            path = raw / f"{prefix}-{kind}"
            if path.is_file():
                data = path.read_bytes()
            else:
                import gzip

                data = gzip.decompress(path.with_name(path.name + ".gz").read_bytes())
            header = 16 if item > 1 else 8
            dims = [count, 28, 28] if item > 1 else [count]
            head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
            (out / f"{prefix}-{kind}").write_bytes(head + data[header : header + count * item])
    return target


def make_shapes_folder(target: Path, per_class: int = 14, side: int = 48) -> Path:
    """Three classes of drawn shapes (circle, square, triangle) in random colours, positions and sizes."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    for label in ("circle", "square", "triangle"):
        folder = target / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
            draw = ImageDraw.Draw(image)
            size = rng.randrange(side // 3, side - 4)
            x, y = rng.randrange(0, side - size), rng.randrange(0, side - size)
            colour = tuple(rng.randrange(256) for _ in range(3))
            if label == "circle":
                draw.ellipse((x, y, x + size, y + size), fill=colour)
            elif label == "square":
                draw.rectangle((x, y, x + size, y + size), fill=colour)
            else:
                draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=colour)
            image.save(folder / f"{index:03d}.png")
    return target


def tasks(data: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each task: its arguments (a run called R under OUT), its run folder under OUT, and how it continues."""
    engine = shlex.split("--seed 0 --threads 1 --quiet --name R")
    mnist = ["--data-dir", str(data["mnist"]), "--val-size", "200", *engine]
    transfer = ["train", "transfer", "--data", str(data["shapes"]), *shlex.split("--image-size 64 --min-per-class 10"),
                *shlex.split("--workers 0 --epochs 3"), *engine]  # fmt: skip
    canvases = shlex.split("train segment -r quick --train-canvases 120 --pretrain-epochs 1 --epochs 3")
    experiment = "experiment cnn-vs-dense --epochs 2 --subset 300 --seeds 2 --val-subset 100 --test-subset 200"
    return {
        "mnist": {"args": [*shlex.split("train mnist -r quick --epochs 3"), *mnist], "run": "mnist/R"},
        "mnist-ensemble": {"args": [*shlex.split("train mnist -r quick -n 2 --epochs 2"), *mnist], "run": "mnist/R"},
        "transfer-default": {"args": [*transfer, "--recipe", "default"], "run": "transfer/R"},
        "transfer-quick": {"args": [*transfer, "--recipe", "quick"], "run": "transfer/R"},
        "segment": {"args": [*canvases, "--data-dir", str(data["mnist"]), *engine], "run": "segment/R"},
        "segment-data": {
            "args": [
                "train",
                "segment",
                "--data",
                str(data["segmentation"]),
                *shlex.split("--crop-size 32 --epochs 3"),
                *engine,
            ],  # fmt: skip
            "run": "segment/R",
        },
        "experiment": {  # on the whole MNIST: an experiment holds out 5,000 validation images
            "args": [*shlex.split(experiment), "--data-dir", str(data["full_mnist"])],
            "run": "experiment/cnn-vs-dense",
            "continue": [],  # the same command again reads back the runs it finished
        },
    }


def damaged_files(root: Path) -> list[str]:
    """Files under `root` that a reader would take and that do not parse: JSON, safetensors, checkpoints, PNGs."""
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    bad = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                load_file(path)
            elif path.suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=True)
            elif path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
        except Exception as error:  # noqa: BLE001 - any failure to read is the finding
            bad.append(f"{path.relative_to(root)}: {type(error).__name__}: {str(error)[:120]}")
    return bad


def epochs_in(run: Path) -> dict[str, list[float]]:
    """Each metrics.json under the run: the epochs it lists."""
    found = {}
    for path in sorted(run.rglob("metrics.json")):
        try:
            found[str(path.relative_to(run))] = [row.get("epoch") for row in json.loads(path.read_text())]
        except (OSError, ValueError, AttributeError):
            found[str(path.relative_to(run))] = []
    return found


def rows_in(run: Path) -> dict[str, list[dict[str, Any]]]:
    """Each metrics.json under the run: its rows (an epoch trained again has another ``epoch_seconds``)."""
    found = {}
    for path in run.rglob("metrics.json"):
        try:
            found[str(path.relative_to(run))] = list(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def models_in(run: Path) -> dict[str, str]:
    """Each saved model under the run: the SHA-256 of its bytes."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("model.safetensors")}


def comparable(value: Any, key: str = "") -> Any:
    """The numbers of a results/metrics document that two identical runs share."""
    if any(word in key.lower() for word in VOLATILE):
        return None
    if isinstance(value, dict):
        kept = {k: comparable(v, str(k)) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None}
    if isinstance(value, list):
        return [comparable(v, key) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, str) and (value.startswith("/") or "/tmp" in value):
        return None  # a path into the run's own folder
    return value if isinstance(value, int | str | bool) else None


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{where}/{key}: only in {'reference' if key in a else 'resumed'}")
            else:
                out += differences(a[key], b[key], f"{where}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items vs {len(b)}"]
        return [d for x, y, i in zip(a, b, range(len(a)), strict=True) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def final_documents(run: Path) -> dict[str, Any]:
    docs = {}
    for path in sorted(run.rglob("*.json")):
        if path.name in ("metrics.json", "results.json") and "feature-cache" not in path.parts:
            docs[str(path.relative_to(run))] = comparable(json.loads(path.read_text()))
    return docs


def run_to_end(args: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    started = time.perf_counter()
    process = _cnnlab(args, env)
    output, _ = process.communicate()
    log.write_bytes(output)
    return process.returncode, time.perf_counter() - started


def check_task(name: str, task: dict[str, Any], work: Path, env: dict[str, str], kills: int, rng: random.Random):
    """The reference run, then killed-and-resumed runs (each in a fresh folder once one finished) until `kills`
    SIGKILLs landed (at most three runs)."""
    reference_out = work / name / "reference"
    subprocess.run(["rm", "-rf", str(reference_out)], check=True)
    code, duration = run_to_end([*task["args"], "-o", str(reference_out)], env, work / name / "reference.log")
    if code != 0:
        return {"task": name, "problems": [f"reference run failed ({code}), see {work / name / 'reference.log'}"]}
    result: dict[str, Any] = {"task": name, "duration": duration, "kills": 0, "lines": [], "problems": []}
    for attempt in range(3):
        if result["kills"] >= kills:
            break
        killed_sequence(name, task, work / name / f"killed-{attempt + 1}", reference_out, env, kills, duration, rng,
                        result)  # fmt: skip
    return result


def killed_sequence(
    name: str,
    task: dict[str, Any],
    killed_out: Path,
    reference_out: Path,
    env: dict[str, str],
    kills: int,
    duration: float,
    rng: random.Random,
    result: dict[str, Any],
) -> None:
    """Start the run in `killed_out`, SIGKILL it and resume it until it finishes or `kills` kills landed in all,
    resume it to the end, and check it against the reference run."""
    problems, lines = result["problems"], result["lines"]
    subprocess.run(["rm", "-rf", str(killed_out)], check=True)
    killed_out.mkdir(parents=True)
    continued = task.get("continue", ["--resume"])
    run = killed_out / task["run"]
    at_kill, sessions_before = [], 0
    finished = False
    while result["kills"] < kills:
        args = [*task["args"], "-o", str(killed_out), *(continued if run.exists() else [])]
        process = _cnnlab(args, env)
        delay = rng.uniform(0.05, 1.0) * duration
        try:
            output, _ = process.communicate(timeout=delay)
            lines.append(f"{killed_out.name}: finished before the kill at {delay:.1f} s (exit {process.returncode})")
            if process.returncode != 0:
                problems.append(f"a session exited {process.returncode}: {output.decode()[-400:]}")
            finished = True
            break
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        result["kills"] += 1
        sessions_before += 1
        epochs, models = epochs_in(run), models_in(run)
        bad = damaged_files(killed_out)
        problems += [f"after kill {result['kills']} at {delay:.1f} s: half-written {b}" for b in bad]
        lines.append(f"{killed_out.name}: kill {result['kills']} at {delay:.1f} s: epochs {epochs}")
        # the next session (resume) must start at or after the epochs the metrics.json beside its sessions.json holds
        sessions = {}
        for path in run.rglob("sessions.json"):
            try:
                count = len(json.loads(path.read_text()))
            except ValueError:
                continue
            metrics = path.with_name("metrics.json")
            done = len(json.loads(metrics.read_text())) if metrics.is_file() else 0
            sessions[str(path.relative_to(run))] = (count, done)
            last = json.loads(path.read_text())[-1:]
            new_session = count > (at_kill[-1][0].get(str(path.relative_to(run)), (0, 0))[0] if at_kill else 0)
            if new_session and last[0].get("ended") == "finished" and not path.with_name("results.json").is_file():
                problems.append(f"after kill {result['kills']}: {path.relative_to(run)} says a killed session finished")
        at_kill.append((sessions, models, rows_in(run)))
    if not finished:
        log = killed_out.parent / f"{killed_out.name}.final.log"
        code, _ = run_to_end([*task["args"], "-o", str(killed_out), *(continued if run.exists() else [])], env, log)
        if code != 0:
            problems.append(f"final resume exited {code}: {log.read_text()[-600:]}")
            return
    problems += [f"at the end: half-written {b}" for b in damaged_files(killed_out)]
    for file, listed in epochs_in(run).items():
        if len(listed) != len(set(listed)) or listed != sorted(listed):
            problems.append(f"{file} lists epochs {listed}")
    final_rows = rows_in(run)
    for sessions, models, rows in at_kill:
        for file, kept in rows.items():
            again = [row["epoch"] for row, now in zip(kept, final_rows.get(file, []), strict=False) if row != now]
            if again:
                problems.append(f"{file}: epochs {again}, finished before a kill, were trained again")
        for file, (count, done) in sessions.items():
            later = json.loads((run / file).read_text())[count:]
            first = later[0].get("first_epoch") if later else None
            if first is not None and first < done:
                problems.append(f"{file}: the session after a kill began after epoch {first}; {done} were finished")
        for file, digest in models.items():
            if models_in(run).get(file) != digest:
                problems.append(f"{file}, saved before a kill, was replaced by other weights")
    problems += sessions_problems(run, name)
    reference_docs = final_documents(reference_out / task["run"])
    resumed_docs = final_documents(run)
    problems += [
        f"{killed_out.name} differs from the uninterrupted run: {d}"
        for d in differences(reference_docs, resumed_docs)[:12]
    ]


def sessions_problems(run: Path, name: str) -> list[str]:
    """A session that began before the epochs its predecessor had finished (as the metrics.json the kill left)."""
    problems = []
    for path in run.rglob("sessions.json"):
        sessions = json.loads(path.read_text())
        for earlier, later in zip(sessions, sessions[1:], strict=False):
            first, last = later.get("first_epoch"), earlier.get("last_epoch")
            if first is not None and last is not None and first < last:
                problems.append(
                    f"{path.relative_to(run)}: a session started after epoch {first} though the one before recorded "
                    f"{last} finished"
                )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/kill-resume"))
    parser.add_argument("--kills", type=int, default=4, help="SIGKILLs per task before the last resume")
    parser.add_argument("--task", action="append", help="only these tasks (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                        help="the cnnlab sources to test (default: this checkout's)")  # fmt: skip
    parser.add_argument("--data-dir", default=os.environ.get("CNNLAB_DATA", "data"), help="MNIST root")
    options = parser.parse_args()
    work = options.work
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(options.src.resolve()), env.get("PYTHONPATH")]))
    data = {
        "full_mnist": Path(options.data_dir),
        "mnist": work / "data" / "mnist",
        "shapes": work / "data" / "shapes",
        "segmentation": work / "data" / "seg",
    }
    if not data["mnist"].exists():
        make_tiny_mnist(Path(options.data_dir), data["mnist"])
    if not data["shapes"].exists():
        make_shapes_folder(data["shapes"])
    if not (data["segmentation"] / "classes.json").exists():
        subprocess.run(
            [
                PYTHON,
                "-m",
                "cnnlab",
                "data",
                "segmentation-demo",
                str(data["segmentation"]),
                "--count",
                "40",
                "--data-dir",
                str(data["mnist"]),
            ],  # fmt: skip
            env=env,
            check=True,
            capture_output=True,
        )
    rng = random.Random(options.seed)
    failed = False
    for name, task in tasks(data).items():
        if options.task and name not in options.task:
            continue
        result = check_task(name, task, work, env, options.kills, rng)
        print(f"== {name}: uninterrupted {result.get('duration', 0):.1f} s, {result.get('kills', 0)} kills", flush=True)
        for line in result.get("lines", []):
            print("   " + line, flush=True)
        for problem in result["problems"]:
            print("   PROBLEM " + problem, flush=True)
        failed |= bool(result["problems"])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
