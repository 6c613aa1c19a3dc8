"""`cnnlab answers`: the sheet's numbers trace to the JSON the same invocation wrote; interruption and --runs reuse."""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cnnlab.errors import CnnlabError
from cnnlab.tasks.answers import MODES, run_answers, untraced_numbers
from cnnlab.tasks.answers.measure import EXERCISES, SEGMENTATION_STRIDES, _coarse_prediction

REAL_MNIST = Path(os.environ.get("CNNLAB_DATA", "data"))
HAS_MNIST = (REAL_MNIST / "MNIST" / "raw").is_dir()
_EXPERIMENT = {"epochs": 1, "seeds": 2, "subset": 300, "val_subset": 200, "test_subset": 200, "batch_size": 64}
TINY = replace(
    MODES["quick"],
    name="quick",
    experiments={name: dict(_EXPERIMENT) for name in MODES["quick"].experiments},
    mnist_overrides={"epochs": 1},
    mnist_subset=2048,
    segment_canvases=40,
    fcn_test_images=200,
)


@pytest.fixture(scope="module")
def exercise_2_evidence() -> dict[str, Any]:
    """Exercise 2's evidence, measured once for the module: its measurement reads nothing from the mode or the output
    folder (the exercise network's real training step at batch 50 on 3x200x300 images: most of a sheet's time)."""
    return EXERCISES[2](None)  # type: ignore[arg-type]


@pytest.fixture
def exercise_2_calls(monkeypatch: pytest.MonkeyPatch, exercise_2_evidence: dict[str, Any]) -> list[int]:
    """Sheets written in the test get exercise 2's evidence from `exercise_2_evidence`; each measurement is counted."""
    calls: list[int] = []

    def measured(ctx: object) -> dict[str, Any]:
        calls.append(2)
        return copy.deepcopy(exercise_2_evidence)

    monkeypatch.setitem(EXERCISES, 2, measured)
    return calls


def test_tracer_accepts_displayed_forms_of_json_values_and_flags_the_rest():
    results = {"params": 903_400, "accuracy": 0.99304, "bytes": 576_454_400, "note": "ranges 1-3 overlap"}
    assert untraced_numbers("903,400 parameters, 99.30%, 576.5 MB, 0.993; ranges 1-3 overlap", results) == []
    assert untraced_numbers("903,401 parameters", results) == ["903,401"]
    assert untraced_numbers("99.4%", results) == ["99.4"]
    assert untraced_numbers("1.25x faster", results) == ["1.25x"]
    # commands, layer specs and link targets are not evidence
    assert untraced_numbers("`cnnlab budget --batch 77` ![plot](fig_12345.png) 3x3 kernels", results) == []


def test_an_exercise_named_in_an_answer_is_not_an_untraced_number():
    """Exercise 7's answer says "the MNIST CNN of exercise 9": `answers -e 7` measured it, then refused its own sheet
    ("answers.md prints numbers that answers.json does not hold: ['9'] (a cnnlab bug)") and wrote no answers.md."""
    assert untraced_numbers("Measured on the MNIST CNN of exercise 9: 3 layers (as in Exercise 2)", {"n": 3}) == []
    assert untraced_numbers("exercise 9 has 12 layers", {}) == ["12"]  # the numbers beside it are still traced


def test_coarse_ceiling_is_exact_at_stride_one_and_loses_small_objects_at_large_strides():
    import torch

    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:20, 40:50] = 3
    assert torch.equal(_coarse_prediction(masks, 1, 11), masks)
    assert int((_coarse_prediction(masks, 32, 11) == 3).sum()) == 0  # a 10x10 object in a 32x32 cell is outvoted
    assert int((_coarse_prediction(masks, 8, 11) == 3).sum()) > 0
    assert list(SEGMENTATION_STRIDES.values()) == sorted(SEGMENTATION_STRIDES.values(), reverse=True)


def test_bad_options_are_clear_errors(tmp_path: Path):
    with pytest.raises(CnnlabError, match="unknown mode"):
        run_answers("fast", output=tmp_path)
    with pytest.raises(CnnlabError, match="no exercise 11"):
        run_answers("quick", output=tmp_path, exercises=(11,))
    with pytest.raises(CnnlabError, match="missing does not exist; pass a runs root"):
        run_answers("quick", output=tmp_path, runs=tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CnnlabError, match="notes.txt is a file; pass a runs root"):
        run_answers("quick", output=tmp_path, runs=tmp_path / "notes.txt")


def test_a_data_dir_without_mnist_is_refused_before_any_exercise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`--data-dir WRONG` measured nothing, each exercise said "not measured: MNIST IDX files not found", and the
    command wrote that sheet and exited with code 0."""
    from cnnlab.tasks.answers.measure import EXERCISES

    monkeypatch.setitem(EXERCISES, 7, lambda ctx: pytest.fail("exercise 7 was measured"))
    with pytest.raises(CnnlabError, match=r"MNIST IDX files not found under .*nowhere \(from --data-dir"):
        run_answers("quick", output=tmp_path / "sheet", data_dir=str(tmp_path / "nowhere"), exercises=(7,))
    assert not (tmp_path / "sheet").exists()


@pytest.mark.parametrize("under", ["", "sheet"])
def test_an_output_that_is_a_file_is_refused_as_a_user_error(tmp_path: Path, under: str) -> None:
    """`-o FILE` was mkdir's FileExistsError (or NotADirectoryError under it): exit code 1, where a user's mistake
    is a refusal, exit code 2."""
    (tmp_path / "notes.txt").write_text("x")
    output = tmp_path / "notes.txt" / under
    with pytest.raises(CnnlabError, match=r"--output .*notes.txt.*: .*notes.txt is a file, not a folder"):
        run_answers("quick", output=output, exercises=(2,))
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_a_tasks_folder_or_a_runs_folder_as_runs_root_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # `answers --runs runs/mnist` read no run there (it looks in <root>/<task>/<name>) and trained everything again
    def measured(ctx: object) -> dict[str, Any]:
        raise AssertionError("an exercise was measured with a --runs that holds no <task>/<name>/ runs")

    monkeypatch.setitem(EXERCISES, 2, measured)
    run = tmp_path / "runs" / "mnist" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("epochs: 1\n")
    (run / "results.json").write_text("{}")
    out = tmp_path / "out"
    with pytest.raises(CnnlabError, match=r"holds runs itself .*not a runs root: .*--runs .*runs$"):
        run_answers("quick", output=out, runs=run.parent, exercises=(2,))
    with pytest.raises(CnnlabError, match=r"is a run's folder .*not a runs root"):
        run_answers("quick", output=out, runs=run, exercises=(2,))
    assert not out.exists()  # refused before the sheet's folder is made


def test_exercise_2_reproduces_the_answer_sets_slips(tmp_path: Path, exercise_2_calls: list[int]):
    sheet = run_answers("quick", output=tmp_path, exercises=(2,), log=lambda message: None)
    assert exercise_2_calls == [2]
    evidence = json.loads((tmp_path / "answers.json").read_text())["exercises"]["2"]
    assert evidence["params"] == 903_400 and evidence["weights"] + evidence["biases"] == evidence["params"]
    assert evidence["slips"]["times_ten"]["matches_claim"] and evidence["slips"]["reversed"]["matches_claim"]
    assert evidence["training_measured_peak_bytes"] > evidence["training_textbook"]["params_bytes"]
    # by hand: outputs 100x150x100, 50x75x200, 25x38x400 and the 3x200x300 input, 4 bytes each, times 50, plus the
    # parameters: what the book adds up. The sheet called 576.5 MB (gradients and Adam's state added) the textbook's.
    outputs, image = 100 * 150 * 100 + 50 * 75 * 200 + 25 * 38 * 400, 3 * 200 * 300
    assert evidence["training_book_bytes"] == 50 * (outputs + image) * 4 + 903_400 * 4 == 565_613_600
    text = sheet.read_text()
    assert "903,400" in text and "Reproduce: `cnnlab budget" in text
    assert "counted as the book counts (layer outputs, input batch and parameters) 565.6 MB" in text
    assert "| **textbook total** | **565.6 MB** |" in text and "| with gradients and Adam state | 576.5 MB |" in text
    # 8,006,700 is not reproduced by any slip applied to the spec: the sheet said "each slip can be reproduced"
    assert not evidence["slips"]["dense_and_misadd"]["matches_claim"] and "each slip can be reproduced" not in text
    assert "the third cannot be rebuilt, and its wrong terms are checked one by one" in text
    assert untraced_numbers(text, json.loads((tmp_path / "answers.json").read_text())) == []
    # the slips read as written where the sheet is shown (the lab's Answers page, GitHub): "(3*3*3)*100" rendered
    # as "(3<em>3</em>3)*100", an italic 3 between two others, the multiplications gone
    from markdown_it import MarkdownIt

    shown = MarkdownIt().render(text)
    assert "((3·3·3)·100 as 27,000)" in shown and "(3·3·100)·200 written as 1,800,000" in shown


@pytest.mark.parametrize("record", ["{", "[1, 2]", '{"meta": "quick", "exercises": {"2": 7}}'])
def test_an_unreadable_record_is_said_and_measured_again(tmp_path: Path, record: str, exercise_2_calls: list[int]):
    """A record that did not parse was measured again without a word; JSON other than an object, or an exercise
    that is not one, was an AttributeError."""
    (tmp_path / "answers.json").write_text(record)
    lines: list[str] = []
    run_answers("quick", output=tmp_path, exercises=(2,), log=lines.append)
    assert exercise_2_calls == [2]
    said = " ".join(lines)
    assert ("is not an answer sheet's record" in said) == (not record.startswith('{"meta"'))
    assert "exercise 2: done" in said
    assert json.loads((tmp_path / "answers.json").read_text())["exercises"]["2"]["params"] == 903_400


def test_a_record_another_version_wrote_is_measured_again_not_a_crash(
    tmp_path: Path, exercise_2_calls: list[int], exercise_2_evidence: dict[str, Any]
):
    """An answers.json from before exercise 2 recorded training_book_bytes was read back, then the sheet stopped with
    KeyError: 'training_book_bytes' after every chosen exercise had been measured, and wrote no answers.md."""
    older = {key: value for key, value in exercise_2_evidence.items() if key != "training_book_bytes"}
    record = {"meta": {"mode": "quick"}, "exercises": {"2": {**older, "seconds": 30.0}}}
    (tmp_path / "answers.json").write_text(json.dumps(record))
    lines: list[str] = []
    sheet = run_answers("quick", output=tmp_path, exercises=(2,), log=lines.append)
    assert exercise_2_calls == [2]
    assert any("written by another cnnlab version, cannot be shown (KeyError: 'training_book_bytes')" in line
               for line in lines)  # fmt: skip
    assert "565.6 MB" in sheet.read_text()


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST not found ($CNNLAB_DATA)")
def test_every_number_of_a_whole_sheet_traces_to_its_json_and_runs_are_reused(
    tmp_path: Path, exercise_2_calls: list[int], monkeypatch: pytest.MonkeyPatch
):
    from cnnlab.report import plots
    from cnnlab.train import records

    # The 17 runs' learning curves and the MNIST run's 100-digit grid of mistakes were a third of the sheet's
    # seconds; the sheet links neither (its figures, drawn, are checked below), and test_mnist_task draws them.
    monkeypatch.setattr(records, "plot_learning_curves", lambda history, path: Path(path))
    monkeypatch.setattr(plots, "plot_misclassified", lambda *args, **kwargs: Path(args[3]))
    lines: list[str] = []
    first = tmp_path / "first"
    sheet = run_answers(TINY, output=first, data_dir=str(REAL_MNIST), log=lines.append)
    text = sheet.read_text()
    results = json.loads((first / "answers.json").read_text())
    for number in range(1, 11):
        assert f"## Exercise {number}." in text
        assert "error" not in results["exercises"][str(number)], results["exercises"][str(number)]
    assert text.count("Reproduce: `cnnlab") == 10
    assert untraced_numbers(text, results) == []
    assert set(untraced_numbers(text.replace("903,400", "903,401"), results)) == {"903,401"}
    assert "You would add it in the lower layers, after the ReLU" in text  # exercise 5 answers "when", as asked
    # the figures the sheet links to exist, every one of them
    for link in ("figures/fcn_scan.png", "experiment/cnn-vs-dense/robustness_shift.png"):
        assert link in text
    assert all((first / link).is_file() for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))
    # a reader's checks: the figure tests the CNN's prior at equal parameters (it said it tested "fewer parameters"),
    # a memory limit typed in GiB is given in the sheet's decimal units too, quoted figures are said to be quoted
    assert "sample-efficiency figure below compares the CNN with a dense net of the same parameter count" in text
    assert "(the sample-efficiency figure below tests it)" not in text
    assert "on 8GiB (8.59 GB)" in text and "MB and GB are decimal units" in text
    assert "answer sets' 98.8%-99.0% (quoted)" in text and '"60 million" (quoted: Krizhevsky' in text
    assert "alexnet_2012 (3x227x227) | 60,965,224 | none (see below)" in text
    # exercise 1's verdicts: judged by the experiments' noise rule, which claims nothing from fewer than 3 seeds
    assert "within noise on" in text or "higher by" in text or "no difference claimed from 2 seeds" in text

    # an interrupted invocation (here: one that finished only exercise 2) is completed, not redone
    lines.clear()
    run_answers(TINY, output=first, data_dir=str(REAL_MNIST), exercises=(2, 3), log=lines.append)
    assert exercise_2_calls == [2]  # measured by the first sheet alone
    assert any("exercise 2: read back" in line for line in lines)
    assert any("exercise 3: read back" in line for line in lines)

    # --runs: the experiments and the MNIST run of the first sheet are read, not trained again
    second = tmp_path / "second"
    run_answers(TINY, output=second, runs=first, data_dir=str(REAL_MNIST), exercises=(1, 9), log=lines.append)
    again = json.loads((second / "answers.json").read_text())["exercises"]
    assert again["1"]["source"] == again["9"]["source"] == "read from the run folder"
    assert again["9"]["test_accuracy"] == results["exercises"]["9"]["test_accuracy"]


def _fake_run(root: Path, task: str, name: str, results: dict) -> Path:
    folder = root / task / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_runs_named_with_runs_are_read_into_the_sheet(tmp_path: Path):
    runs = tmp_path / "runs"
    _fake_run(
        runs, "transfer", "elpv-seed7",
        {"config": {"data": "elpv"}, "recipe": {"name": "default"}, "classes": ["a", "b"], "wall_seconds": 234.5,
         "wall_seconds_total": 1234.5,  # resumed once: the last session took 234.5 s of the run's 1234.5 s
         "test": {"accuracy": 0.8231, "balanced_accuracy": 0.6012, "count": 656, "binary_accuracy": 0.9047,
                  "single_view": {"accuracy": 0.7988}}},
    )  # fmt: skip
    _fake_run(
        runs, "transfer", "killed-once",  # a session was killed outright: the run's total time is unknown
        {"config": {"data": "elpv"}, "recipe": {"name": "default"}, "classes": ["a", "b"], "wall_seconds": 600.0,
         "wall_seconds_total": None, "test": {"accuracy": 0.75, "count": 656}},
    )  # fmt: skip
    _fake_run(runs, "transfer", "unfinished", {"config": {"data": "elpv"}})  # no test figures: left out
    sheet = run_answers("quick", output=tmp_path / "out", runs=runs, exercises=(10,), log=lambda message: None)
    text = sheet.read_text()
    assert "transfer/elpv-seed7" in text and "82.3%" in text and "90.5%" in text and "20.6 min" in text
    assert "3.9 min" not in text and "10.0 min" not in text  # a last session's time is not the run's
    killed = next(line for line in text.splitlines() if "killed-once" in line)
    assert killed.rstrip(" |").endswith("unknown")
    assert "unfinished" not in text
    assert untraced_numbers(text, json.loads((tmp_path / "out" / "answers.json").read_text())) == []


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST not found ($CNNLAB_DATA)")
def test_segmentation_runs_are_compared_with_the_stride_ceilings(tmp_path: Path):
    runs = tmp_path / "runs"
    _fake_run(
        runs, "segment", "fcn8s",
        {"recipe": "fcn8s", "arch": "fcn8s", "params": 11_200_000, "test": {"miou": 0.4321, "boundary_f1": 0.6543}},
    )  # fmt: skip
    _fake_run(runs, "segment", "folder", {"arch": "unet", "test": {"miou": 0.5}})  # no boundary F1: not comparable
    mode = replace(TINY, segment_canvases=20)
    sheet = run_answers(mode, output=tmp_path / "out", runs=runs, data_dir=str(REAL_MNIST), exercises=(8,),
                        log=lambda message: None)  # fmt: skip
    text = sheet.read_text()
    assert "segment/fcn8s" in text and "0.432" in text and "0.654" in text and "segment/folder" not in text
    evidence = json.loads((tmp_path / "out" / "answers.json").read_text())["exercises"]["8"]
    by_stride = {row["stride"]: row for row in evidence["ceilings"]}
    assert by_stride[1]["miou"] == 1.0 and by_stride[32]["miou"] < by_stride[8]["miou"] < 1.0


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST not found ($CNNLAB_DATA)")
def test_a_runs_root_with_unreadable_results_is_read_around_them(tmp_path: Path):
    """A broken results.json in --runs stopped the exercise as "a cnnlab bug" (JSONDecodeError, KeyError,
    TypeError), and a broken MNIST one hid the finished run beside it."""
    runs = tmp_path / "runs"
    good = _fake_mnist_run(runs, "good", 0.9931)
    bad = runs / "mnist" / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    os.utime(good / "results.json", (1, 1))  # the broken one is the newest, read first
    lines: list[str] = []
    run_answers("quick", output=tmp_path / "out", runs=runs, data_dir=str(REAL_MNIST), exercises=(9,), log=lines.append)
    evidence = json.loads((tmp_path / "out" / "answers.json").read_text())["exercises"]["9"]
    assert evidence["source"] == "read from the run folder" and evidence["test_accuracy"] == 0.9931
    assert any("mnist/bad/results.json cannot be read" in line for line in lines)

    from cnnlab.tasks.answers.measure import _EXPERIMENT_RESULTS, Context, read_results

    ctx = Context(MODES["quick"], tmp_path / "out", runs, log=lines.append)
    for name, text in (("a", "[1]"), ("b", '{"params": {}}')):
        folder = runs / "experiment" / name
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(text)
        assert read_results(folder, ctx, _EXPERIMENT_RESULTS["pool-vs-stride"]) is None
    assert "is not a JSON object" in lines[-2] and "has no macs, measured, conclusion" in lines[-1]


def test_an_experiment_read_from_runs_is_reproduced_with_its_own_settings(tmp_path: Path):
    """The sheet printed the mode's options (--epochs 2 --subset 4000 ...) under any run read from --runs."""
    runs = tmp_path / "runs"
    variants = ("max-pool", "strided-conv")
    measured = {v: {"test accuracy": [0.9, 0.91], "ms / step": [1.0, 1.1], "1-px shifted accuracy": [0.8, 0.82]}
                for v in variants}  # fmt: skip
    results = {"params": dict.fromkeys(variants, 100), "macs": dict.fromkeys(variants, 1000), "measured": measured,
               "conclusion": "made up"}  # fmt: skip
    settings = {"epochs": 1, "subset": 256, "seeds": 2, "test_subset": 100, "val_subset": 100}
    _fake_run(runs, "experiment", "pool-vs-stride", {**results, "settings": settings})
    text = run_answers(
        "quick", output=tmp_path / "out", runs=runs, exercises=(4,), log=lambda message: None
    ).read_text()
    assert (
        "`cnnlab experiment pool-vs-stride --epochs 1 --subset 256 --seeds 2 --test-subset 100 --val-subset 100`"
        in text
    )
    # its two conditions are judged; the pairs with a third one it lacks are left out (they were a KeyError)
    assert "max-pool vs strided-conv, test accuracy: " in text and "vs stride-2 conv only" not in text

    older = tmp_path / "older"
    _fake_run(older, "experiment", "pool-vs-stride", results)  # written before results.json recorded its settings
    text = run_answers("quick", output=tmp_path / "out2", runs=older, exercises=(4,), log=lambda m: None).read_text()
    assert "Reproduce: the command in `" in text and "--subset 4000" not in text


def test_figures_of_a_runs_folder_are_linked_from_where_the_sheet_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`cnnlab answers --runs runs` (output runs/answers) linked runs/experiment/cnn-vs-dense/robustness_shift.png
    as written on the command line: relative to answers.md that is runs/answers/runs/..., a broken image, and the
    lab's Answers page, which resolves links from the sheet's folder, left the figures out."""
    monkeypatch.chdir(tmp_path)
    runs = Path("runs")  # as typed
    shift = {"CNN": [[0.9, 0.5], [0.91, 0.52]], "dense": [[0.8, 0.3], [0.82, 0.31]]}
    results = {"params": {"CNN": 10, "dense": 11}, "macs": {"CNN": 100, "dense": 11}, "dense_width": 3,
               "test_accuracy": {"CNN": [0.9, 0.91], "dense": [0.8, 0.82]},
               "seconds_per_step": {"CNN": [0.01, 0.011], "dense": [0.001, 0.0011]},
               "sweeps": {"shift": [0, 6], "values": {name: {"shift": v} for name, v in shift.items()}},
               "conclusion": "made up"}  # fmt: skip
    folder = _fake_run(runs, "experiment", "cnn-vs-dense", results)
    for plot in ("robustness_shift.png", "sample_efficiency.png"):  # images that decode: the lab shows no other
        Image.new("RGB", (4, 4)).save(folder / plot)
    sheet = run_answers("quick", output=runs / "answers", runs=runs, exercises=(1,), log=lambda message: None)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", sheet.read_text())
    assert links == [
        "../experiment/cnn-vs-dense/robustness_shift.png",
        "../experiment/cnn-vs-dense/sample_efficiency.png",
    ]
    assert all((sheet.parent / link).is_file() for link in links)
    from cnnlab.lab.answers_page import answer_sheet

    assert [figure.name for figure, _ in answer_sheet(runs)[1]] == ["robustness_shift.png", "sample_efficiency.png"]
    # each figure says what it shows (its alt text, the lab's caption, was the file name, and no caption followed)
    captions = [caption for _, caption in answer_sheet(runs)[1]]
    assert captions[0].startswith("Test accuracy of the CNN and of the dense net against how far the test digits")
    assert captions[1].startswith("Test accuracy of the CNN and of the dense net against the number of training")
    assert all(f"_{caption}._" in sheet.read_text() for caption in captions)
    # the small CNN measured has a dense head: "the network can be applied to any image size" was not true of it
    assert "Made fully convolutional (exercise 7), a CNN also takes any image size." in sheet.read_text()


def test_exercises_not_chosen_again_stay_in_the_sheet(tmp_path: Path):
    """`-e 3` into a folder holding exercise 6 wrote a sheet and answers.json of exercise 3 alone: 6 was lost."""
    run_answers("quick", output=tmp_path, exercises=(6,), log=lambda message: None)
    sheet = run_answers("quick", output=tmp_path, exercises=(3,), log=lambda message: None)
    exercises = json.loads((tmp_path / "answers.json").read_text())["exercises"]
    assert sorted(exercises) == ["3", "6"] and exercises["6"]["read_back"]
    text = sheet.read_text()
    assert text.index("## Exercise 3.") < text.index("## Exercise 6.")
    # exercise 3 compared a peak in GB with a limit in GiB unconverted ("22.51 GB (does not fit in 8GiB)")
    assert "peaks at 22.51 GB (does not fit in 8GiB, 8.59 GB)" in text
    assert "what are five things you could try to solve the problem?" in text  # the book asks for five
    # "fixed (weights, gradients, optimizer state)": resnet50's fixed part with SGD is its weights and 8.6 MB of the
    # 102.2 MB of gradients, the ones formed before the peak in the backward pass; Adam's adds exactly its two moments
    three = json.loads((tmp_path / "answers.json").read_text())["exercises"]["3"]
    fixed = {remedy["remedy"]: remedy["fixed_bytes"] for remedy in three["remedies"]}
    weights = three["params"] * 4
    assert weights < fixed["SGD (no optimizer state)"] < 2 * weights
    assert abs(fixed["as configured"] - fixed["SGD (no optimizer state)"] - 2 * weights) < 1e-4 * weights
    assert "the gradients formed by the time of the peak: not all of them" in text
    # exercise 6 called cnnlab's own LeNet-5 count published; no publication gives 61,706, the paper says 60,000
    assert "| lenet5 (1x32x32) | 61,706 | none (see below) |" in text and "the paper's LeNet-5 has 60,000" in text
    assert "every count equals the reference implementation's; lenet5, alexnet_2012 have none" in text
    assert untraced_numbers(text, json.loads((tmp_path / "answers.json").read_text())) == []
    run_answers("quick", output=tmp_path, exercises=(3,), overwrite=True, log=lambda message: None)
    assert sorted(json.loads((tmp_path / "answers.json").read_text())["exercises"]) == ["3", "6"]


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST not found ($CNNLAB_DATA)")
def test_an_interrupted_experiment_of_the_sheet_reads_back_its_finished_runs(tmp_path: Path):
    """The sheet ran its experiments with overwrite, so each interruption trained every finished run again."""
    tiny = {"epochs": 1, "seeds": 1, "subset": 128, "val_subset": 64, "test_subset": 64, "batch_size": 64}
    mode = replace(TINY, experiments={**TINY.experiments, "pool-vs-stride": tiny})
    run_answers(mode, output=tmp_path, data_dir=str(REAL_MNIST), exercises=(4,), log=lambda message: None)
    finished = sorted((tmp_path / "experiment" / "pool-vs-stride").glob("*/seed0/finished.json"))
    written = [path.stat().st_mtime_ns for path in finished]
    assert len(finished) == 3
    (tmp_path / "answers.json").unlink()  # interrupted after the runs, before the exercise was recorded
    run_answers(mode, output=tmp_path, data_dir=str(REAL_MNIST), exercises=(4,), log=lambda message: None)
    assert [path.stat().st_mtime_ns for path in finished] == written
    source = json.loads((tmp_path / "answers.json").read_text())["exercises"]["4"]["source"]
    assert source == "measured by an earlier invocation into this folder, its finished runs read back"
    run_answers(mode, output=tmp_path, data_dir=str(REAL_MNIST), exercises=(4,), overwrite=True, log=lambda m: None)
    assert [path.stat().st_mtime_ns for path in finished] != written
    source = json.loads((tmp_path / "answers.json").read_text())["exercises"]["4"]["source"]
    assert source == "measured in this invocation"


def _fake_mnist_run(root: Path, name: str, accuracy: float, **overrides: object) -> Path:
    from cnnlab.tasks.mnist import RECIPES
    from cnnlab.tasks.recipes import with_overrides
    from cnnlab.train.config import TrainConfig, save_record

    recipe = RECIPES.get("quick")
    folder = _fake_run(root, "mnist", name, {"recipe": "quick", "test_accuracy": accuracy, "members": [{}]})
    (folder / "model.json").write_text("{}")
    config = TrainConfig(**with_overrides(recipe.train, overrides), extra={"arch": recipe.arch})
    save_record(config.to_dict(), folder / "config.yaml")
    return folder


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST not found ($CNNLAB_DATA)")
def test_an_mnist_run_of_the_recipe_with_other_options_is_not_shown_as_the_recipe(tmp_path: Path):
    """A `--recipe quick --epochs 1` run in --runs was the sheet's 'Recipe quick (mnist_net_small, 2 epochs, ...)'."""
    runs = tmp_path / "runs"
    recipe = _fake_mnist_run(runs, "as-the-recipe", 0.9931)
    os.utime(recipe / "results.json", (1, 1))
    _fake_mnist_run(runs, "shortened", 0.9913, epochs=1)  # the newest
    lines: list[str] = []
    run_answers("quick", output=tmp_path / "out", runs=runs, data_dir=str(REAL_MNIST), exercises=(9,), log=lines.append)
    evidence = json.loads((tmp_path / "out" / "answers.json").read_text())["exercises"]["9"]
    assert evidence["folder"].endswith("as-the-recipe") and evidence["test_accuracy"] == 0.9931
    assert any("shortened trained recipe quick with other options (epochs 1, the recipe's 2)" in line for line in lines)


@pytest.mark.skipif(not HAS_MNIST, reason="MNIST not found ($CNNLAB_DATA)")
def test_exercise_7_alone_writes_its_sheet_and_the_sheet_continues_its_own_mnist_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`answers -e 7` refused its own sheet (it names exercise 9, whose numbers were not in its JSON). And the sheet
    trained its MNIST run (exercises 7 and 9 share it) with overwrite: after an interruption (20 minutes of training
    with --full) it started again from the first epoch, and a run it had finished was trained again. A continued
    sheet also said "measured in this invocation" of what an earlier one had measured; and a sheet folder moved since
    named the run in exercise 7's Reproduce line where it was. One MNIST run, trained by the first sheet, serves all
    four checks."""
    from cnnlab.report import plots
    from cnnlab.train import records

    # most of the seconds, and not what is tested: the sheet links neither figure (test_mnist_task draws them)
    monkeypatch.setattr(records, "plot_learning_curves", lambda history, path: Path(path))
    monkeypatch.setattr(plots, "plot_misclassified", lambda *args, **kwargs: Path(args[3]))
    sheet = run_answers(TINY, output=tmp_path, data_dir=str(REAL_MNIST), exercises=(7,), log=lambda message: None)
    text = sheet.read_text()
    assert "Measured on the MNIST CNN of exercise 9" in text and "measured in this invocation" in text
    assert 'one filter per unit and "valid" padding' in text  # the book's third condition of the conversion
    # 5 windows of 28 pixels every 8 pixels span 60 pixels: on a 56-pixel input the last ones overhang by 4
    seven = json.loads((tmp_path / "answers.json").read_text())["exercises"]["7"]
    window, stride = seven["window"], seven["stride"]
    assert seven["window_overhang"] == window + (seven["double_input_grid"][0] - 1) * stride - seven["double_input"][0]
    assert seven["window_overhang"] > 0 and f"reach {seven['window_overhang']} pixels past the edge" in text
    assert "![The converted network scanned over a canvas of MNIST test digits" in text and "_The converted" in text
    assert list(json.loads((tmp_path / "answers.json").read_text())["exercises"]) == ["7"]
    weights = tmp_path / "mnist" / "quick" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    # exercise 9 was not recorded (as after an interruption before it): measured on the run folder read back
    run_answers(TINY, output=tmp_path, data_dir=str(REAL_MNIST), exercises=(9,), log=lambda message: None)
    assert weights.stat().st_mtime_ns == written
    text = sheet.read_text()
    assert "measured by an earlier invocation into this folder, its finished runs read back." in text
    assert "in this invocation" not in text
    # recorded now: read back from answers.json
    run_answers(TINY, output=tmp_path, data_dir=str(REAL_MNIST), exercises=(9,), log=lambda message: None)
    text = sheet.read_text()
    assert "measured by the earlier invocation named below." in text and "in this invocation" not in text
    # a moved sheet folder: exercise 7's read-back Reproduce line named the run where it was measured
    moved = tmp_path.with_name(tmp_path.name + "-moved")
    tmp_path.rename(moved)
    sheet = run_answers(TINY, output=moved, data_dir=str(REAL_MNIST), exercises=(9,), log=lambda message: None)
    assert f"`cnnlab fcn convert {moved / 'mnist' / 'quick'}`" in sheet.read_text()
    assert str(tmp_path / "mnist") not in sheet.read_text()


def test_the_sheets_elpv_run_continues_rather_than_trains_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exercise 10 (and 8) trained its run with overwrite: after Ctrl+C, `answers --full` started it again from the
    first epoch. Now a run the sheet started is resumed (a finished one read back); one that cannot be continued is
    said and trained again; --overwrite trains it again. Exercise 8's segmentation run goes through the same
    `continue_or_train`."""
    import cnnlab.tasks.transfer
    from cnnlab.tasks.answers import measure

    calls: list[tuple[bool, bool]] = []
    refuse = False

    def train_transfer(config: cnnlab.tasks.transfer.TransferConfig) -> dict:
        calls.append((config.resume, config.overwrite))
        if config.resume and refuse:
            raise CnnlabError("cannot resume with different options")
        config.run_dir.mkdir(parents=True, exist_ok=True)
        (config.run_dir / "split.csv").write_text("")
        return {"run_dir": str(config.run_dir)}

    monkeypatch.setattr(measure, "_elpv_available", lambda: True)
    monkeypatch.setattr(cnnlab.tasks.transfer, "train_transfer", train_transfer)
    lines: list[str] = []
    ctx = measure.Context(MODES["full"], tmp_path, None, log=lines.append)
    measure._train_elpv(ctx)
    measure._train_elpv(ctx)  # after an interruption: continued
    assert calls == [(False, True), (True, False)] and not lines
    refuse = True
    measure._train_elpv(ctx)  # another cnnlab's options, say: said, trained again
    assert calls[2:] == [(True, False), (False, True)]
    assert lines == [f"{tmp_path / 'transfer' / 'elpv'} cannot be continued (cannot resume with different options); "
                     "training it again"]  # fmt: skip
    measure._train_elpv(replace(ctx, overwrite=True))
    assert calls[4:] == [(False, True)]


def test_an_exercise_chosen_twice_is_measured_once(tmp_path: Path, exercise_2_calls: list[int]) -> None:
    """`answers -e 6 -e 6` measured exercise 6 twice."""
    run_answers("quick", output=tmp_path, exercises=(2, 2), log=lambda message: None)
    assert exercise_2_calls == [2]
    assert list(json.loads((tmp_path / "answers.json").read_text())["exercises"]) == ["2"]


def test_exercise_9_says_this_machine_only_of_a_run_trained_by_this_invocation():
    """A run read from --runs (or read back from an earlier invocation) may have been trained on another machine:
    the sheet said "trained in 41 s on this machine" of it."""
    from cnnlab.tasks.answers.measure import MEASURED_HERE, READ_BACK
    from cnnlab.tasks.answers.sheet import section_9

    evidence = {
        "answer_sets": {"low": 0.98, "high": 0.992},
        "above_answer_sets": False,
        "train_seconds": 41.2,
        "recipe": "quick",
        "recipe_summary": "mnist_net_small, 2 epochs",
        "test_accuracy": 0.9913,
        "folder": "mnist/quick",
    }
    for source in (MEASURED_HERE, READ_BACK, "read from the run folder"):
        answer = next(section_9({**evidence, "source": source}))
        assert ("trained in 41 s on this machine" in answer) == (source == MEASURED_HERE)
        assert "trained in 41 s on" in answer


def test_exercise_8_prints_a_boundary_f1_that_was_not_measurable_as_a_dash():
    """A boundary F1 with no boundary to score is None (not measurable); the sheet formatted it with :.3f and failed."""
    from cnnlab.tasks.answers.sheet import section_8

    ceiling = {"model": "fcn32s", "stride": 32, "grid": [2, 2], "miou": 0.25, "pixel_accuracy": 0.9, "boundary_f1": 0.5}
    full = {**ceiling, "model": "unet", "stride": 1, "grid": [64, 64], "miou": 1.0, "boundary_f1": None}
    trained = {"folder": "segment/blank", "arch": "unet", "params": 1_100_000, "miou": 0.5, "boundary_f1": None}
    evidence = {"ceilings": [ceiling, full], "canvas_size": [64, 64], "canvases": 20, "tolerance_px": 2}
    measured = {**trained, "folder": "seg/a", "boundary_f1": 0.75}
    text = "\n\n".join(section_8({**evidence, "trained": [trained, measured]}))
    assert "a boundary F1 of 0.500, against 1.000 and - at full resolution" in text
    assert "| `segment/blank` | unet | 1,100,000 | 0.500 | - |" in text and "| 0.750 |" in text
    assert "A boundary F1 of - was not measurable" in text
    assert "not measurable" not in "\n\n".join(section_8({**evidence, "ceilings": [ceiling, ceiling], "trained": []}))


def test_exercise_6_says_which_alexnet_it_counted_and_builds_the_papers_two_towers():
    """The sheet counted torchvision's one-tower AlexNet (61,100,840) alone, as "AlexNet"; the 2012 paper's network
    is two towers (groups=2 in conv2, conv4, conv5), 60,965,224 parameters, the "60 million" it quotes."""
    from cnnlab.tasks.answers.measure import ZOO_MODELS, alexnet_layouts, zoo_row
    from cnnlab.tasks.answers.sheet import section_6

    assert {"alexnet", "alexnet_2012"} <= set(ZOO_MODELS)
    rows = [zoo_row("alexnet"), zoo_row("alexnet_2012")]
    layouts = alexnet_layouts({row["model"]: row["params"] for row in rows})
    # the paper's layers as layer strings, built: the commonly computed counts with and without the groups
    assert layouts["two_tower_spec_params"] == rows[1]["params"] == 60_965_224 and layouts["spec_matches_zoo"]
    assert layouts["ungrouped_params"] == 62_378_344 and layouts["one_tower_params"] == 61_100_840
    evidence = {"rows": rows, "all_match": True, "alexnet_layouts": layouts}
    text = "\n\n".join(section_6(evidence))
    assert "alexnet_2012 have none" not in text and "alexnet_2012 has none" in text  # the one-tower count matches
    assert "`alexnet` is torchvision's one-tower layout" in text and "60,965,224 parameters" in text
    assert '"60 million" (quoted: Krizhevsky' in text and "two towers save 1,413,120" in text
    assert untraced_numbers(text, evidence) == []


def test_experiment_answers_state_a_difference_only_where_the_noise_rule_finds_one():
    """Exercises 1, 4 and 5 printed the conditions' means side by side (LRN 98.00%, none 98.00%...) and left the
    verdict to the experiment's conclusion: a gap within the seeds' spread read as a finding. Now each answer says,
    pair by pair, what the experiments' noise rule says, and the table gives the std of its extra column too."""
    from cnnlab.tasks.answers.measure import MEASURED_HERE, noise_verdict
    from cnnlab.tasks.answers.sheet import section_5

    seeds = {"LRN": [0.97, 0.99, 0.982], "none": [0.975, 0.985, 0.98], "BN": [0.99, 0.991, 0.992]}
    rows = [
        {"condition": name, "params": 1000, "macs": 2000, "test_accuracy_mean": sum(v) / 3, "test_accuracy_std": 0.01,
         "ms_per_step": 5.0, "seeds": 3, "val_after_epoch_1": 0.9, "val_after_epoch_1_std": 0.0123}
        for name, v in seeds.items()
    ]  # fmt: skip
    verdicts = [
        noise_verdict("LRN", seeds["LRN"], "none", seeds["none"], "test accuracy"),
        noise_verdict("BN", seeds["BN"], "none", seeds["none"], "test accuracy"),
    ]
    evidence = {"source": MEASURED_HERE, "folder": "experiment/lrn-vs-bn", "settings": {"seeds": 3}, "rows": rows,
                "verdicts": verdicts, "conclusion": "as the experiment words it"}  # fmt: skip
    answer = next(section_5(evidence))
    assert "LRN vs none, test accuracy: within noise on 3 seeds (0.07 points apart, noise" in answer
    assert "BN vs none, test accuracy: BN higher by 1.10 points (noise 1.00, 3 seeds)" in answer
    assert "LRN higher" not in answer and "none higher" not in answer
    text = "\n\n".join(section_5(evidence))
    assert "| 90.00% ± 1.23 |" in text
    assert untraced_numbers(text, evidence) == []


def test_the_sheets_runs_and_experiments_train_on_the_device_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """answers had no --device: its MNIST, segmentation and transfer runs took their recipes' auto and its experiments
    the CPU, whatever the user wanted. --device is checked before anything is written ("auto" becomes the device it
    picks) and reaches each training; without it each keeps its own."""
    import torch

    import cnnlab.tasks.experiments
    import cnnlab.tasks.mnist
    import cnnlab.tasks.transfer
    from cnnlab.tasks.answers import measure

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CnnlabError, match="'cuda' was asked for, but torch finds no CUDA GPU here"):
        run_answers("quick", output=tmp_path / "sheet", exercises=(1,), device="cuda")
    assert not (tmp_path / "sheet").exists()
    seen: list[str | None] = []

    def spied(ctx: measure.Context) -> dict[str, Any]:
        seen.append(ctx.device)
        raise CnnlabError("spied")

    monkeypatch.setitem(measure.EXERCISES, 1, spied)
    run_answers("quick", output=tmp_path / "sheet", exercises=(1,), device="auto", log=lambda line: None)
    assert seen == ["cpu"]

    given: dict[str, Any] = {}

    def trained(name: str) -> Any:
        def train(*args: Any, **options: Any) -> dict[str, Any]:
            given[name] = options
            return {"run_dir": str(tmp_path / name), "test_accuracy": 0.5}

        return train

    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", trained("mnist"))
    monkeypatch.setattr(cnnlab.tasks.transfer, "train_transfer", lambda config: trained("transfer")(config=config))
    monkeypatch.setattr(cnnlab.tasks.experiments, "run_experiment", lambda name, **options: given.update(lrn=options))
    monkeypatch.setattr(measure, "_elpv_available", lambda: True)
    for device, wanted in (("cuda:1", {"device": "cuda:1"}), (None, {})):
        ctx = measure.Context(MODES["full"], tmp_path / str(device), None, log=lambda line: None, device=device)
        measure._mnist_run(ctx)
        measure._train_elpv(ctx)
        with pytest.raises(AttributeError):  # the spy returns no report
            measure._experiment_results(ctx, "lrn-vs-bn")
        assert (given["mnist"]["overrides"] or {}) == wanted
        assert given["transfer"]["config"].train == wanted
        assert given["lrn"]["device"] == wanted.get("device")  # None: the experiment's own, the CPU


def test_the_sheets_mnist_run_read_back_is_told_by_its_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sheet told its MNIST run read back (measured by an earlier invocation) from trained here by comparing its
    weights file's mtime before and after; the run's results say which (``finished_before``), as the CLI reads them."""
    import cnnlab.tasks.mnist
    from cnnlab.tasks.answers import measure

    for finished_before, source in ((True, measure.READ_BACK), (False, measure.MEASURED_HERE)):
        summary: dict[str, Any] = {"run_dir": str(tmp_path), "test_accuracy": 0.5}
        summary |= {"finished_before": True} if finished_before else {}
        monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", lambda *args, summary=summary, **options: summary)
        ctx = measure.Context(MODES["full"], tmp_path / str(finished_before), None, log=lambda line: None)
        assert measure._mnist_run(ctx) == (summary, source)


def test_a_small_mnist_is_refused_without_naming_a_val_size_option_the_sheet_lacks(tmp_path: Path) -> None:
    """`cnnlab answers` (quick and --full) on a 120-image MNIST said "--val-size 5000 must be below ...; pass a
    smaller --val-size": the sheet has no --val-size. `train mnist`, which has, still names it."""
    import sys

    from cnnlab.tasks.answers import measure
    from cnnlab.tasks.mnist import train_mnist

    sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
    from test_mnist_idx import write_fake_mnist

    root = write_fake_mnist(tmp_path / "mnist")
    for mode in ("quick", "full"):
        ctx = measure.Context(MODES[mode], tmp_path / mode, data_dir=str(root), log=lambda line: None)
        with pytest.raises(CnnlabError, match=r"holds 120 MNIST training images, too few for the 5,000 this") as error:
            measure._mnist_run(ctx)
        assert "--val-size" not in str(error.value)
    with pytest.raises(CnnlabError, match="--val-size 5000 must be below the 120 MNIST training images"):
        train_mnist("quick", data_dir=str(root), output=str(tmp_path / "runs"))


def test_a_small_mnist_leaving_less_than_a_batch_names_no_batch_size_option_the_sheet_lacks(tmp_path: Path) -> None:
    """`cnnlab answers` (quick and --full) on an MNIST of 5,050 training images was told "training data has 50
    samples, fewer than one batch of 128; lower --batch-size": the sheet has no --batch-size. `train mnist`, which
    has, is still told to lower it."""
    import sys

    from cnnlab.tasks.answers import measure
    from cnnlab.tasks.mnist import train_mnist

    sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
    from test_mnist_idx import write_fake_mnist

    root = write_fake_mnist(tmp_path / "mnist", train=5_050, test=10)
    for mode in ("quick", "full"):
        ctx = measure.Context(MODES[mode], tmp_path / mode, data_dir=str(root), log=lambda line: None)
        with pytest.raises(CnnlabError, match=r"holds 5,050 MNIST training images: the 50 trained on") as error:
            measure._mnist_run(ctx)
        assert "--batch-size" not in str(error.value) and "point --data-dir at the full MNIST" in str(error.value)
    with pytest.raises(CnnlabError, match="fewer than one batch of 128; lower --batch-size"):
        train_mnist("quick", data_dir=str(root), output=str(tmp_path / "runs"), progress=False)


def test_a_sheet_interrupted_before_anything_finished_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Ctrl+C before any exercise or run finished said the folder "keeps what it finished; ... reads it back"."""
    from cnnlab.tasks import recipes
    from cnnlab.tasks.answers.measure import EXERCISES

    def interrupted(ctx: object) -> dict[str, Any]:
        (tmp_path / "experiment/cnn-vs-dense/cnn-n300/seed0").mkdir(parents=True, exist_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "_CURRENT_RUN", {})
    monkeypatch.setitem(EXERCISES, 4, interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_answers("quick", output=tmp_path, exercises=(4,), log=lambda message: None)
    assert recipes.interrupted_hint() == (
        f"no run in {tmp_path} had finished yet (it keeps the epochs it checkpointed); the same command again goes on "
        "from there"
    )
    (tmp_path / "experiment/cnn-vs-dense/cnn-n300/seed0/finished.json").write_text("{}")
    assert recipes.interrupted_hint().startswith(f"{tmp_path} keeps what it finished; the same command again reads")
    with pytest.raises(KeyboardInterrupt):  # --overwrite would measure it all again: continued without it
        run_answers("quick", output=tmp_path, exercises=(4,), overwrite=True, log=lambda message: None)
    assert "the same command again, without --overwrite, reads it back" in recipes.interrupted_hint()


def test_a_sheet_interrupted_after_an_exercise_keeps_those_not_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`-e 3 -e 4` interrupted in exercise 4 wrote answers.json of exercise 3 alone: exercise 6, measured earlier and
    not chosen, was lost."""
    from cnnlab.tasks.answers.measure import EXERCISES

    def interrupted(ctx: object) -> dict[str, Any]:
        raise KeyboardInterrupt

    run_answers("quick", output=tmp_path, exercises=(6,), log=lambda message: None)
    monkeypatch.setitem(EXERCISES, 4, interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_answers("quick", output=tmp_path, exercises=(3, 4), log=lambda message: None)
    assert sorted(json.loads((tmp_path / "answers.json").read_text())["exercises"]) == ["3", "6"]
