"""What `cnnlab train segment` prints once a run is done."""

from __future__ import annotations

from typing import Any

import pytest


def test_a_canvas_run_names_the_commands_that_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on the MNIST canvases ended "load it with cnnlab.load_model", though `cnnlab explain` (15762fe),
    `cnnlab evaluate` (its test canvases made again) and `cnnlab export` take it, as README's segmentation section
    shows; `predict` and `fcn scan` refuse it, so the line names neither."""
    import cnnlab.tasks.segmentation
    from cli_in_process import run_cnnlab

    def trains(*args: Any, **options: Any) -> dict[str, Any]:
        test = {"miou": 0.5, "miou_with_bg": 0.5, "pixel_accuracy": 0.9, "boundary_tolerance_px": 2, "boundary_f1": 0.4}
        return {"run_dir": "runs/segment/cv", "arch": "unet", "test": test, "train_seconds": 3.0}

    monkeypatch.setattr(cnnlab.tasks.segmentation, "train_segmentation", trains)
    done = run_cnnlab("train", "segment", "--recipe", "quick")
    assert done.returncode == 0, done.stderr
    run_line = done.stdout.splitlines()[-1]
    assert run_line.startswith("run: runs/segment/cv  (report.md, test_overlays.png; ")
    assert "`cnnlab explain runs/segment/cv IMAGE`, evaluate, export)" in run_line
    assert "predict" not in run_line and "load_model" not in run_line
