"""benchmarks/gpu_suite.py works before a GPU is lent: its dry run executes every stage on the CPU at toy sizes.

In the dry run only the ddp stage may be skipped (it needs two GPUs); MNIST comes from $CNNLAB_DATA when it is set,
synthetic digits otherwise, and the transfer stage's `full`-recipe run uses a generated image folder instead of ELPV.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from benchmark_script import BENCHMARKS, load_benchmark

SCRIPT = BENCHMARKS / "gpu_suite.py"
STAGES = ("budget", "mnist", "transfer", "segmentation", "ddp")


def _suite_module() -> ModuleType:
    return load_benchmark("gpu_suite")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_suite")
    # Run from an empty folder, so that a ./data there cannot stand in for $CNNLAB_DATA (passed on when set).
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        cwd=tmp_path_factory.mktemp("cwd"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (out / "gpu_suite.json").is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text(), done


def test_dry_run_runs_every_stage(dry_run: tuple[dict, str, subprocess.CompletedProcess]) -> None:
    report, markdown, done = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["dry_run"] is True
    assert set(report["stages"]) == set(STAGES)
    for name, stage in report["stages"].items():
        assert isinstance(stage["seconds"], (int, float)), name
        expected = "skipped" if name == "ddp" else "ok"
        assert stage["status"] == expected, (name, stage.get("error"), stage.get("traceback"))
        assert f"## {name}: {expected}" in markdown
    assert "2 GPUs" in report["stages"]["ddp"]["reason"]


def test_dry_run_measures_what_each_stage_claims(dry_run: tuple[dict, str, subprocess.CompletedProcess]) -> None:
    stages = dry_run[0]["stages"]
    for network in stages["budget"]["networks"].values():
        assert network["budget_measured"]["peak_ratio"] == pytest.approx(1.0, abs=0.02)
        rows = {(row["remedy"], row["which"]): row for row in network["rows"]}
        assert len(rows) == 10 and all(row.get("step_peak_bytes") for row in rows.values())
        # At the largest planned batch the plan's line is exact, and on a CPU the planner predicts the step exactly:
        # a wrongly measured step (a missed optimizer state, the wrong remedy applied) would show here.
        for remedy in ("as configured", "gradient checkpointing", "SGD (no optimizer state)"):
            assert rows[(remedy, "largest planned batch")]["step_ratio"] == pytest.approx(1.0, abs=0.02), remedy
    for recipe in ("quick", "default"):
        run = stages["mnist"][recipe]
        assert 0.0 <= run["test_accuracy"] <= 1.0 and run["images_per_second"] > 0
        assert len(run["test_accuracy_per_epoch"]) == run["epochs"]
    assert stages["transfer"]["finetune_speed"][0]["images_per_second"][0] > 0
    assert stages["transfer"]["elpv_full_run"]["test_images"] > 0
    assert stages["segmentation"]["unet_speed"][0]["images_per_second"][0] > 0
    assert stages["segmentation"]["quick_run"]["epochs"] == 1


def test_missing_mnist_is_a_stated_skip_on_the_gpu(tmp_path: Path) -> None:
    suite = _suite_module()
    ctx = suite.Context(
        dry_run=False,
        device="cuda",
        data_dir=str(tmp_path),
        work=tmp_path,
        deadline=0.0,
        sizes=suite.sizes_for(dry_run=False),
        result_path=tmp_path / "result.json",
    )
    for prepare in (suite._mnist_splits, suite._segmentation_data):
        with pytest.raises(suite.StageSkipped, match="MNIST IDX files not found.*--data-dir"):
            prepare(ctx)
