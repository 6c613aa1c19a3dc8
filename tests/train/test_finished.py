"""`cnnlab.train.finished`: a finished run read back by --resume, the same for every task (and what the CLI says)."""

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.train.finished import FINISHED_EARLIER, REPORT, Part, is_finished, read_back


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
    # a process that does not write (under torchrun, not rank 0) writes nothing and says nothing; nor does --json
    said.clear()
    assert read_back(run, write_report, said.append, write=False) == summary and said == []
    assert not (run / "report.md").exists()
    assert read_back(run, write_report, None) == summary and (run / "report.md").is_file()


def _train_commands_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, task: Any) -> dict[str, list[str]]:
    """Each train command's task replaced by `task(name)` (names mnist, segment, folder, transfer), and the command
    line that reaches it (transfer's --data an empty folder under `tmp_path`), by name."""
    import cnnlab.tasks.mnist
    import cnnlab.tasks.segment_folder
    import cnnlab.tasks.segmentation
    import cnnlab.tasks.transfer

    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", task("mnist"))
    monkeypatch.setattr(cnnlab.tasks.segmentation, "train_segmentation", task("segment"))
    monkeypatch.setattr(cnnlab.tasks.segment_folder, "train_segmentation_folder", task("folder"))
    monkeypatch.setattr(cnnlab.tasks.transfer, "train_transfer", task("transfer"))
    (tmp_path / "photos").mkdir()
    return {
        "mnist": ["train", "mnist"],
        "segment": ["train", "segment"],
        "folder": ["train", "segment", "--data", "."],
        "transfer": ["train", "transfer", "--data", str(tmp_path / "photos")],
    }


def test_every_train_command_says_a_run_was_read_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`train transfer` said "finished earlier, nothing run" of a run read back, and its --json left it out; `train
    mnist` and `train segment` (canvases and --data) printed the run's training seconds as if it had trained again."""
    from cli_in_process import run_cnnlab

    test = {"miou": 0.5, "miou_with_bg": 0.6, "pixel_accuracy": 0.9, "boundary_tolerance_px": 2, "boundary_f1": 0.4}
    summaries = {
        "mnist": {"members": [], "test_accuracy": 0.9},
        "segment": {"arch": "unet", "test": test, "train_seconds": 12.0},
        "folder": {"model": "unet", "test": {**test, "miou_includes_background": False}, "images": {"test": 3}},
        "transfer": {
            "test": {"accuracy": 0.9, "balanced_accuracy": 0.9, "count": 3},
            "views": ["identity"],
            **dict.fromkeys(("classes", "counts", "split", "phases", "costs", "wall_seconds")),
            "skipped": [],
        },
    }
    summaries["folder"].update(skipped=0, train_seconds=12.0)
    for name, summary in summaries.items():
        summary.update(run_dir=f"runs/{name}", finished_before=True)

    def task(name: str) -> Any:
        return lambda *args, **options: summaries[name]

    for name, args in _train_commands_on(monkeypatch, tmp_path, task).items():
        done = run_cnnlab(*args, "--resume", "--name", "r")
        assert done.returncode == 0, (name, done.stderr)
        assert FINISHED_EARLIER in done.stdout, (name, done.stdout)
        done = run_cnnlab(*args, "--resume", "--name", "r", "--json")
        assert done.returncode == 0, (name, done.stderr)
        assert json.loads(done.stdout)["finished_before"] is True, name


def test_quiet_keeps_the_line_on_a_run_read_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """-q drops progress alone; `train mnist` and `train segment` (canvases) turned the line `read_back` says off with
    it (the report written again, or why it could not be, and then "run: ... (report.md ...)" named a missing file).
    Every train command asks its task for its notes under -q, and with --json too (they go to stderr: stdout is the
    JSON)."""
    from cli_in_process import run_cnnlab

    asked: dict[str, dict[str, Any]] = {}

    def task(name: str) -> Any:
        def stopped(*args: Any, **options: Any) -> dict[str, Any]:
            asked[name] = options
            raise KeyboardInterrupt  # what the CLI passed is all this test reads

        return stopped

    for name, args in _train_commands_on(monkeypatch, tmp_path, task).items():
        for flag in ("-q", "--json"):
            asked.clear()
            run_cnnlab(*args, "--resume", "--name", "r", flag)
            assert asked[name].get("notes") is True, (name, flag, asked)


def test_figures_deleted_since_are_drawn_again_from_what_the_run_saved(tmp_path: Path) -> None:
    """A finished run whose figures were deleted was read back without them: its report (kept, or written again) had
    no learning curves nor confusion matrix, though metrics.json and results.json hold what they show. Those missing
    are drawn again, first (a report written links them); one that is there is never rewritten, one that cannot be
    drawn stays missing, and a process that does not write draws none."""
    run = _finished_run(tmp_path)
    (run / "metrics.json").write_text(json.dumps([{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.0}]))
    drawn_with: list[Any] = []

    def confusion(summary: dict[str, Any], path: Path) -> None:
        drawn_with.append(summary["test"])
        path.write_bytes(b"matrix")

    def needs_the_test_pass(summary: dict[str, Any], path: Path) -> None:
        raise FileNotFoundError("the test images")

    figures = {"confusion.png": confusion, "worst.png": needs_the_test_pass}
    linked: list[list[str]] = []

    def write_report(summary: dict[str, Any]) -> None:  # what RunReport.write finds beside the report
        linked.append(sorted(path.name for path in run.glob("*.png")))
        (run / REPORT).write_text("report")

    said: list[str] = []
    assert read_back(run, write_report, said.append, write=False, figures=figures)["finished_before"]
    assert not list(run.glob("*.png")) and not drawn_with and said == []
    read_back(run, write_report, said.append, figures=figures)
    assert linked == [["confusion.png", "learning_curves.png"]]  # drawn before the report was written
    assert (run / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn_with == [{"accuracy": 0.5}] and not (run / "worst.png").exists()
    assert said == [
        f"{run} is already finished; learning_curves.png, confusion.png were missing, drawn again from what it saved; "
        f"its report was missing, written from its results.json: {run / REPORT}"
    ]
    # a report that is there is kept; a figure that is there is not drawn again
    (run / "confusion.png").unlink()
    curves = (run / "learning_curves.png").stat().st_mtime_ns
    said.clear()
    read_back(run, write_report, said.append, figures=figures)
    assert (run / "confusion.png").read_bytes() == b"matrix" and len(drawn_with) == 2 and len(linked) == 1
    assert (run / "learning_curves.png").stat().st_mtime_ns == curves
    assert said == [
        f"{run} is already finished; confusion.png was missing, drawn again from what it saved (its report: "
        f"{run / REPORT})"
    ]
    said.clear()
    read_back(run, write_report, said.append, figures=figures)
    assert said == [f"{run} is already finished; nothing to do (its report: {run / REPORT})"] and len(drawn_with) == 2


def test_a_kept_report_linking_a_missing_figure_is_said(tmp_path: Path) -> None:
    """A report.md that is there is never rewritten (it may have been edited), so one linking a figure deleted since,
    that what the run saved cannot draw again (misclassified.png: the test images), went on showing a broken image
    while the read-back said "nothing to do". The line names each such figure and how to have the report written
    again; the report is left as it was."""
    run = _finished_run(tmp_path)
    text = "# run\n\n![confusion](confusion.png)\n\n![worst](worst.png)\n\n![worst again](worst.png)\n[text](gone.md)\n"
    (run / REPORT).write_text(text)
    (run / "confusion.png").write_bytes(b"there")
    said: list[str] = []
    read_back(run, lambda summary: None, said.append)
    assert (run / REPORT).read_text() == text
    assert said == [
        f"{run} is already finished; its report links worst.png, not in the run folder, which what it saved cannot "
        f"draw again: the report is kept as it is (remove it to have it written again, naming it as missing): "
        f"{run / REPORT}"
    ]
    (run / "worst.png").write_bytes(b"there")
    said.clear()
    read_back(run, lambda summary: None, said.append)
    assert said == [f"{run} is already finished; nothing to do (its report: {run / REPORT})"]


def test_what_was_done_to_a_runs_parts_is_said_in_its_line(tmp_path: Path) -> None:
    """An ensemble's members were read back in silence: a member's figures drawn again and its report written again
    went unsaid, and the ensemble's line said "nothing to do". Each is named in the run's line, by its folder."""
    run = _finished_run(tmp_path)
    (run / REPORT).write_text("# ensemble")
    members = [run / "seed0", run / "seed1"]
    for member in members:
        member.mkdir()
        (member / "results.json").write_text(json.dumps({"test": {"accuracy": 0.5}}))
        (member / REPORT).write_text("# member\n\n![matrix](confusion.png)\n")
        (member / "confusion.png").write_bytes(b"there")

    def confusion(summary: dict[str, Any], path: Path) -> None:
        path.write_bytes(b"matrix")

    def write_report(summary: dict[str, Any]) -> None:
        (Path(summary["run_dir"]) / REPORT).write_text("# member")

    parts = [Part(member, write_report, {"confusion.png": confusion}) for member in members]
    said: list[str] = []
    read_back(run, write_report, said.append, parts=parts)
    assert said == [f"{run} is already finished; nothing to do (its report: {run / REPORT})"]
    (members[1] / "confusion.png").unlink()
    (members[1] / REPORT).unlink()
    said.clear()
    read_back(run, write_report, said.append, parts=parts)
    assert (members[1] / "confusion.png").read_bytes() == b"matrix" and (members[1] / REPORT).is_file()
    assert said == [
        f"{run} is already finished; seed1/confusion.png was missing, drawn again from what it saved; seed1's report "
        f"was missing, written from its results.json: {members[1] / REPORT} (its report: {run / REPORT})"
    ]
    said.clear()
    read_back(run, write_report, said.append, write=False, parts=parts)  # not the writing process: nothing said
    assert said == []


@pytest.mark.parametrize("damage", ['{"test": {"accuracy": 0.', "[1, 2]", "\udcff"])
def test_a_damaged_results_json_is_said_in_one_line(tmp_path: Path, damage: str) -> None:
    """--resume of a finished run (or member) whose results.json was cut short or replaced was a JSONDecodeError
    traceback (a list: an AttributeError). It is one line naming the file and how to have the run tested again."""
    run = _finished_run(tmp_path)
    (run / "results.json").write_text(damage, errors="surrogateescape")
    message = rf"^{run / 'results.json'} cannot be read \(.+\); it holds the finished run's test results: put it back"
    with pytest.raises(CnnlabError, match=message):
        read_back(run, lambda summary: None, None)
    member = run / "seed0"
    shutil.copytree(run, member)
    (run / "results.json").write_text("{}")
    with pytest.raises(CnnlabError, match=re.escape(f"{member / 'results.json'} cannot be read")):  # a part's too
        read_back(run, lambda summary: None, None, parts=[Part(member, lambda summary: None)])


@pytest.mark.parametrize(
    ("damaged", "cut", "message"),
    [
        ("model.safetensors", True, r"model.safetensors is damaged, not a whole safetensors file"),
        ("model.json", True, r"model.json is not valid JSON"),
        ("model.safetensors", False, r"model.safetensors is missing next to .*model.json"),
    ],
)
def test_a_finished_run_whose_saved_model_is_damaged_is_refused_in_one_line(
    tmp_path: Path, damaged: str, cut: bool, message: str
) -> None:
    """Read back with exit code 0, its line pointing at a model that `predict` then refused."""
    from cnnlab.models import create_model
    from cnnlab.train.saved import save_model

    run = _finished_run(tmp_path)
    save_model(create_model("lenet5", num_classes=2), run, "lenet5", {"num_classes": 2}, {})
    (run / "report.md").write_text("kept")
    said: list[str] = []
    assert read_back(run, lambda _: None, said.append)["finished_before"] and said  # whole: read back as before
    path = run / damaged
    if cut:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:
        path.unlink()
    with pytest.raises(CnnlabError, match=message):
        read_back(run, lambda _: None, said.append)
