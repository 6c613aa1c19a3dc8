"""One meaning, one option: a user who learned an option on one command finds it, under the same names, on the next."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import typer

from cnnlab.cli import app


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    subcommands = getattr(command, "commands", {})
    if not subcommands:
        yield " ".join(path), command
    for name, sub in subcommands.items():
        yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(typer.main.get_command(app)))

# Names of one meaning: an option that takes one of them takes all of them (an older name may stay beside them).
SAME_NAMES = [
    {"--batch-size", "-b"},  # budget's --batch is the training batch too
    {"--model", "-m"},
    {"--output", "-o"},
    {"--quiet", "-q"},
    {"--input", "-i"},
]


def _options(path: str) -> list[set[str]]:
    return [set(param.opts) | set(param.secondary_opts) for param in COMMANDS[path].params]


def test_an_option_has_the_same_names_on_every_command() -> None:
    faults = [
        f"cnnlab {path}: {'/'.join(sorted(names))} lacks {'/'.join(sorted(group - names))}"
        for path in COMMANDS
        for names in _options(path)
        for group in SAME_NAMES
        if names & group and not group <= names
    ]
    assert not faults, "\n".join(faults)


def test_a_short_flag_means_one_option_on_every_command() -> None:
    meanings: dict[str, list[set[str]]] = defaultdict(list)
    for path in COMMANDS:
        for names in _options(path):
            for short in (name for name in names if len(name) == 2):
                meanings[short].append({name for name in names if name.startswith("--")})
    clashes = {short: longs for short, longs in meanings.items() if not set.intersection(*longs)}
    assert not clashes, clashes
    assert {"-b", "-o", "-i", "-q", "-m"} <= set(meanings)  # the walk found them


def test_budget_takes_the_batch_size_by_the_train_commands_name() -> None:
    batch = next(param for param in COMMANDS["budget"].params if param.name == "batch")
    assert {"--batch", "--batch-size", "-b"} <= set(batch.opts)
    assert any({"--batch-size", "-b"} <= names for names in _options("train mnist"))


# The commands that run a network. Each takes --device and --threads, as the train commands do, but export and fcn
# convert: they trace or convert on the CPU, so that the file they write holds no device, and take --threads alone.
COMPUTES = [
    "train mnist",
    "train transfer",
    "train segment",
    "budget",
    "predict",
    "ensemble",
    "evaluate",
    "explain",
    "experiment",
    "answers",
    "fcn scan",
    "export",
    "fcn convert",
]
CPU_ONLY = {"export", "fcn convert"}


def test_every_command_that_computes_takes_device_and_threads() -> None:
    """export and fcn convert took neither --threads nor --device, though the README said every command that
    computes takes both; they take --threads, and the README names them as the two without --device."""
    assert set(COMPUTES) <= set(COMMANDS)
    faults = []
    for path in COMPUTES:
        names = set().union(*_options(path))
        wanted = {"--threads"} if path in CPU_ONLY else {"--threads", "--device"}
        faults += [f"cnnlab {path} lacks {option}" for option in sorted(wanted - names)]
        if path in CPU_ONLY and "--device" in names:
            faults.append(f"cnnlab {path} takes --device, which the README says it does not")
    assert not faults, "\n".join(faults)
    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8").replace("#", "").split())
    assert "--device: each but export and fcn convert, which work on the CPU" in readme


def test_a_device_this_machine_lacks_is_the_one_line_train_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """fcn scan, experiment and answers had no --device; theirs refuses a GPU this machine lacks as train's does,
    before any work (the run, the image and MNIST named here do not exist)."""
    import torch

    from cli_in_process import run_cnnlab

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trains = run_cnnlab("train", "mnist", "--device", "cuda", "--data-dir", "missing")
    assert trains.returncode == 2 and trains.stderr.startswith("error: device 'cuda' was asked for")
    for command in (
        ["fcn", "scan", "missing-run", "missing.png"],
        ["experiment", "lrn-vs-bn", "--data-dir", "missing"],
        ["answers", "--output", "missing/answers", "-e", "9", "--data-dir", "missing"],
    ):
        done = run_cnnlab(*command, "--device", "cuda")
        assert (done.returncode, done.stderr) == (2, trains.stderr), command


def test_every_device_option_names_the_same_devices() -> None:
    """budget's --device said "cpu or cuda", but it takes what every --device takes (train.device.parse_device);
    no --help named mps, which every --device takes too."""
    devices = {"cpu", "cuda", "cuda:N", "mps", "auto"}
    helps = {
        path: param.help or ""
        for path, command in COMMANDS.items()
        for param in command.params
        if "--device" in param.opts
    }
    assert len(helps) >= 8  # the walk found them
    missing = {
        path: devices - set(re.findall(r"(?<![\w:-])(cpu|cuda:N|cuda|mps|auto)(?![\w:-])", text))
        for path, text in helps.items()
    }
    assert not {path: sorted(names) for path, names in missing.items() if names}


def test_threads_is_given_to_torch_before_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from cli_in_process import run_cnnlab

    monkeypatch.setattr(torch, "set_num_threads", given := mock.Mock())
    done = run_cnnlab("budget", "conv 4 k3", "--input", "1x8x8", "--json", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["params"] == 40
    given.assert_called_once_with(1)
    for command in (
        ["predict", "missing.png"],
        ["fcn", "scan", "run", "image.png"],
        ["train", "mnist"],
        ["evaluate", "missing-run"],
        ["explain", "missing-run", "image.png"],
        ["export", "missing-run"],
        ["fcn", "convert", "missing-run"],
    ):
        done = run_cnnlab(*command, "--threads", "0")  # one line, the same everywhere, before any work
        assert (done.returncode, done.stderr) == (2, "error: --threads must be >= 1, got 0\n"), command


def test_every_command_that_makes_a_run_prints_json_with_nothing_else_on_stdout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """train transfer had --json; train mnist, train segment (canvases and --data), ensemble and experiment take it
    too, and print the results alone on stdout (with no progress, as train transfer turns its bars off). The train
    commands' notes on the results, which --json dropped with the progress, go to stderr, as its help says."""
    import cnnlab.tasks.experiments
    import cnnlab.tasks.mnist
    import cnnlab.tasks.mnist_ensemble
    import cnnlab.tasks.segment_folder
    import cnnlab.tasks.segmentation
    from cli_in_process import run_cnnlab

    given: dict[str, Any] = {}
    notes: dict[str, Any] = {}
    said: dict[str, str] = {}
    report = tmp_path / "experiment" / "lrn-vs-bn" / "report.md"
    report.parent.mkdir(parents=True)
    (report.parent / "results.json").write_text('{"seeds": 3}')

    def task(name: str) -> Any:
        def run(*args: Any, **options: Any) -> Any:
            given[name], notes[name] = options.get("progress"), options.get("notes")
            if options.get("notes"):
                print(f"a note of {name}")  # as a task prints one: a file skipped, a run read back
            if name == "experiment":
                return report
            return {"run_dir": f"runs/{name}", "test": {"miou": 0.5}, "members": []}

        return run

    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", task("mnist"))
    monkeypatch.setattr(cnnlab.tasks.segmentation, "train_segmentation", task("segment"))
    monkeypatch.setattr(cnnlab.tasks.segment_folder, "train_segmentation_folder", task("folder"))
    monkeypatch.setattr(cnnlab.tasks.mnist_ensemble, "combine_mnist_ensemble", task("ensemble"))
    monkeypatch.setattr(cnnlab.tasks.experiments, "run_experiment", task("experiment"))
    for name, args in {
        "mnist": ["train", "mnist", "--recipe", "quick", "--json"],
        "segment": ["train", "segment", "--json"],
        "folder": ["train", "segment", "--data", ".", "--json"],
        "ensemble": ["ensemble", "runs/mnist/a", "--name", "E", "--json"],
        "experiment": ["experiment", "lrn-vs-bn", "--json"],
    }.items():
        done = run_cnnlab(*args)
        assert done.returncode == 0, done.stderr
        said[name] = done.stderr
        printed = json.loads(done.stdout)
        if name == "experiment":
            assert printed == {"run_dir": str(report.parent), "report": str(report), "results": {"seeds": 3}}
            assert given[name] is False
        else:
            assert printed["run_dir"] == f"runs/{name}"
            assert given[name] is (None if name == "ensemble" else False)  # ensemble shows no progress
    # train segment --data -q dropped its notes on the data (a class with no training pixels, files skipped) with the
    # progress; -q drops progress alone (its help), --json too, its notes going to stderr
    for name in ("mnist", "segment", "folder"):
        assert notes[name] is True, name
        assert f"a note of {name}\n" in said[name], name
    from cnnlab.errors import CnnlabError

    def trains(*args: Any, **options: Any) -> Any:
        given.update(options)
        raise CnnlabError("stub")  # its options are what counts, not a summary to print

    monkeypatch.setattr(cnnlab.tasks.segment_folder, "train_segmentation_folder", trains)
    assert run_cnnlab("train", "segment", "--data", ".", "-q").stderr == "error: stub\n"
    assert (given["progress"], given["notes"]) == (False, True)


def test_quiet_keeps_the_engines_notes_on_the_results_in_every_train_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The train commands gave -q to the engine as progress off alone, which silenced its notes on the results with
    the progress (the batch a search chose, an out-of-memory retry, early stopping, the weights kept): each passes
    notes too, on under -q and with --json (which dropped them; their lines go to stderr)."""
    import cnnlab.tasks.mnist
    import cnnlab.tasks.segment_folder
    import cnnlab.tasks.segmentation
    import cnnlab.tasks.transfer
    from cli_in_process import run_cnnlab
    from cnnlab.errors import CnnlabError

    given: dict[str, tuple[Any, Any]] = {}

    def task(name: str) -> Any:
        def trains(*args: Any, **options: Any) -> Any:
            progress = args[0].progress if name == "transfer" else options.get("progress")  # a TransferConfig's
            given[name] = (progress, options.get("notes"))
            raise CnnlabError("stub")  # its options are what counts, not a summary to print

        return trains

    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", task("mnist"))
    monkeypatch.setattr(cnnlab.tasks.segmentation, "train_segmentation", task("segment"))
    monkeypatch.setattr(cnnlab.tasks.segment_folder, "train_segmentation_folder", task("folder"))
    monkeypatch.setattr(cnnlab.tasks.transfer, "train_transfer", task("transfer"))
    (tmp_path / "photos").mkdir()
    commands = {
        "mnist": ["train", "mnist"],
        "segment": ["train", "segment"],
        "folder": ["train", "segment", "--data", "."],
        "transfer": ["train", "transfer", "--data", str(tmp_path / "photos")],
    }
    for options, expected in (([], (True, True)), (["-q"], (False, True)), (["--json"], (False, True))):
        for name, args in commands.items():
            done = run_cnnlab(*args, *options)
            assert (done.returncode, done.stderr) == (2, "error: stub\n"), (name, options)
            assert given.pop(name) == expected, (name, options)


# The commands that show progress (bars on a terminal, or lines on stderr) take --quiet/-q, as the train commands do
# (answers: its lines on stderr also carry each exercise's failure). explain shows none, but its -q leaves only the
# paths it wrote on stdout, as predict's leaves the results.
SHOWS_PROGRESS = [
    "train mnist",
    "train transfer",
    "train segment",
    "predict",
    "evaluate",
    "experiment",
    "fcn scan",
    "data segmentation-demo",
    "explain",
    "export",
]


def test_every_command_that_shows_progress_takes_quiet() -> None:
    lacking = [path for path in SHOWS_PROGRESS if not any({"--quiet", "-q"} <= names for names in _options(path))]
    assert not lacking


def test_quiet_stops_the_progress_lines_of_an_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlab.tasks.experiments
    from cli_in_process import run_cnnlab

    given: dict[str, Any] = {}
    monkeypatch.setattr(cnnlab.tasks.experiments, "run_experiment", lambda name, **o: given.update(o) or _report())
    assert run_cnnlab("experiment", "lrn-vs-bn", "-q").returncode == 0 and given["progress"] is False
    assert run_cnnlab("experiment", "lrn-vs-bn").returncode == 0 and given["progress"] is True


def test_evaluate_takes_quiet_and_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """evaluate --data showed its bar always, and evaluate had no --json: -q turns the bar off, as predict's, and
    --json prints evaluation.json's content alone on stdout (an MNIST run's too), with no bar."""
    import cnnlab.tasks.evaluate
    import cnnlab.tasks.mnist
    from cli_in_process import run_cnnlab

    given: list[bool] = []
    scored = {"run": str(tmp_path), "accuracy": 0.75}
    monkeypatch.setattr(
        cnnlab.tasks.evaluate, "evaluate_folder", lambda *a, progress, **o: given.append(progress) or scored
    )
    monkeypatch.setattr(cnnlab.tasks.evaluate, "evaluation_lines", lambda result: ["scored"])
    monkeypatch.setattr(cnnlab.tasks.evaluate, "evaluation_notes", lambda result: ["a note"])
    monkeypatch.setattr(cnnlab.tasks.mnist, "evaluate_mnist", lambda *a, **o: {"test_accuracy": 0.5, "errors": 3})
    for options, shown in ((["-q"], "scored\n"), ([], "scored\n"), (["--json"], json.dumps(scored) + "\n")):
        done = run_cnnlab("evaluate", str(tmp_path), "--data", str(tmp_path), *options)
        assert (done.returncode, done.stdout) == (0, shown), done.stderr
        assert ("a note" in done.stderr) == ("--json" in options)  # notes on stderr, not dropped with the text
    assert given == [False, True, False]
    done = run_cnnlab("evaluate", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"test_accuracy": 0.5, "errors": 3}


def _report() -> Any:
    report = mock.Mock()
    report.read_text.return_value = "# report\n## Conclusion\nnone"
    return report


def test_an_image_size_option_gives_its_unit() -> None:
    """--max-side said "px", --crop-size and --image-size did not (pixels, not a fraction like --crop-pct)."""
    sized = {
        f"{path} {param.opts[0]}": param.help or ""
        for path, command in COMMANDS.items()
        for param in command.params
        if param.opts[0] in ("--image-size", "--crop-size", "--max-side")
    }
    assert len(sized) == 3
    assert not [name for name, text in sized.items() if not re.search(r"\bpx\b", text)]
