"""`cnnlab.train.finished`: a finished run read back by --resume, the same for every task (and what the CLI says)."""

import json
from pathlib import Path
from typing import Any

from cnnlab.train.finished import REPORT, is_finished, read_back


def _finished_run(tmp_path: Path) -> Path:
    run = tmp_path / "moved" / "run"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"run_dir": "/old/place/run", "test": {"accuracy": 0.5}}))
    return run


def test_a_finished_run_is_read_back_where_it_is_now_and_says_so(tmp_path: Path) -> None:
    """The four tasks read a finished run back each their own way: only transfer said so (a line, and
    ``finished_before`` for the CLI); the others returned results silently, and a report that what the run saved could
    not make was a traceback (segmentation) or left unsaid (MNIST)."""
    run = _finished_run(tmp_path)
    assert is_finished(run) and not is_finished(tmp_path)
    said: list[str] = []

    def write_report(summary: dict[str, Any]) -> None:
        (run / "report.md").write_text(f"accuracy {summary['test']['accuracy']}")

    # stopped between its results.json and its report.md: the report alone is written, from the results as saved
    summary = read_back(run, write_report, said.append)
    assert summary == {"run_dir": str(run), "test": {"accuracy": 0.5}, "finished_before": True}
    assert (run / "report.md").read_text() == "accuracy 0.5"
    assert said == [f"{run} is already finished; its report was missing, written from its results.json: {run / REPORT}"]
    said.clear()
    assert read_back(run, write_report, said.append) == summary
    assert said == [f"{run} is already finished; nothing to do (its report: {run}/report.md)"]

    def unreadable(summary: dict[str, Any]) -> None:
        json.loads((run / "metrics.json").read_text())

    (run / "report.md").unlink()
    said.clear()
    assert read_back(run, unreadable, said.append) == summary  # the results all the same, not a traceback
    assert len(said) == 1 and said[0].startswith(f"{run} is already finished; its report is missing, and what it")
    assert "metrics.json" in said[0] and not (run / "report.md").exists()
    # a process that does not write (under torchrun, not rank 0) writes nothing and says nothing; nor does --quiet
    said.clear()
    assert read_back(run, write_report, said.append, write=False) == summary and said == []
    assert not (run / "report.md").exists()
    assert read_back(run, write_report, None) == summary and (run / "report.md").is_file()

