"""MNIST recipes end to end: learning on a subset, saved models, ensembles, evaluate's figures, CLI errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.tasks import mnist as mnist_task
from cnnlab.tasks.mnist import RECIPES, evaluate_mnist, to_float, train_mnist
from cnnlab.tasks.recipes import describe_overrides
from cnnlab.train import Callback, Trainer
from cnnlab.train.saved import Ensemble

REAL_MNIST = Path(os.environ.get("CNNLAB_DATA", "data"))
_spec = importlib.util.spec_from_file_location("_idx", Path(__file__).parents[1] / "data" / "test_mnist_idx.py")
_idx = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_idx)  # type: ignore[union-attr]
write_fake_mnist, write_idx = _idx.write_fake_mnist, _idx.write_idx

_TINY = {"epochs": 2, "batch_size": 24}
_WRITTEN = re.compile(r"- written: [^,]*,")  # when a report was written: the rest of a rewritten one is the first's


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), train=240, test=80)


def _tiny_ensemble(fake_root: Path, output: Path, **options: object) -> dict:
    """A 2-member quick ensemble called "ens" on the fake MNIST, trained in `output`."""
    return train_mnist(
        "quick",
        data_dir=str(fake_root),
        output=str(output),
        name="ens",
        ensemble=2,
        val_size=40,
        overrides=_TINY,
        progress=False,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def ensemble_run(fake_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _tiny_ensemble(fake_root, tmp_path_factory.mktemp("runs"))


def test_members_trained_in_separate_calls_make_the_same_ensemble(
    ensemble_run: dict, fake_root: Path, tmp_path: Path
) -> None:
    first = _tiny_ensemble(fake_root, tmp_path, member=1)  # the order does not matter
    assert first["missing_members"] == [0] and "ensemble_test_accuracy" not in first
    assert not (tmp_path / "mnist" / "ens" / "ensemble.json").exists()
    # A member 0 of other data or options beside member 1, finished or still training (its config.yaml written, no
    # results.json), is refused before it trains: it trained to the end, saved itself into the ensemble's folder, and
    # only then refused a finished member 1 ("cannot resume ...seed1"), and a member 1 still training not at all. One
    # of an ensemble of another size, or on another train_subset, was not refused at all: each process then saved an
    # ensemble of its own size; members trained on other images were averaged.
    other = write_fake_mnist(tmp_path / "other", train=240, test=80, seed=1)
    fellow = tmp_path / "mnist" / "ens" / "seed1"
    options = dict(output=str(tmp_path), name="ens", ensemble=2, val_size=40, progress=False, member=0)
    for still_training in (False, True):
        if still_training:
            (fellow / "results.json").rename(tmp_path / "results.json")
        with pytest.raises(CnnlabError, match=r"seed1, another member of this ensemble, trains on other MNIST"):
            train_mnist("quick", data_dir=str(other), overrides=_TINY, **options)  # type: ignore[arg-type]
        with pytest.raises(
            CnnlabError, match=r"seed1, another member of this ensemble, trains with other options \(lr"
        ):
            train_mnist("quick", data_dir=str(fake_root), overrides={**_TINY, "lr": 0.5}, **options)  # type: ignore[arg-type]
        with pytest.raises(CnnlabError, match=r"trains with other options \(extra.train_subset: not given -> 48"):
            train_mnist("quick", data_dir=str(fake_root), overrides=_TINY, train_subset=48, **options)  # type: ignore[arg-type]
        with pytest.raises(CnnlabError, match=r"seed1, another member of this ensemble, is one of 2 members"):
            train_mnist("quick", data_dir=str(fake_root), overrides=_TINY, **{**options, "ensemble": 3})  # type: ignore[arg-type]
        assert not (tmp_path / "mnist" / "ens" / "seed0").exists()
    (tmp_path / "results.json").rename(fellow / "results.json")
    second = _tiny_ensemble(fake_root, tmp_path, member=0)
    assert "missing_members" not in second
    # Same seeds, same data: the same members and ensemble as the run that trained both in one call.
    assert [m["test_accuracy"] for m in second["members"]] == [m["test_accuracy"] for m in ensemble_run["members"]]
    assert second["ensemble_test_accuracy"] == ensemble_run["ensemble_test_accuracy"]
    assert isinstance(cnnlab.load_model(tmp_path / "mnist" / "ens"), Ensemble)


def test_a_slow_precision_is_said_once_per_ensemble_naming_the_option_a_python_caller_set(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From Python, `overrides={"precision": "fp16"}` on the CPU was warned of by each member's trainer."""
    import warnings

    from cnnlab.report import plots
    from cnnlab.train import records
    from cnnlab.train.config import SlowPrecisionWarning

    for figure in (plots, "plot_confusion_matrix"), (plots, "plot_misclassified"), (records, "plot_learning_curves"):
        monkeypatch.setattr(*figure, lambda *args, **kwargs: None)  # most of the seconds, and not what is tested
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_mnist("quick", data_dir=str(fake_root), output=str(tmp_path), name="ens", ensemble=2, val_size=40,
                    train_subset=24, overrides={**_TINY, "epochs": 1, "precision": "fp16"}, progress=False)  # fmt: skip
    said = [str(w.message) for w in caught if issubclass(w.category, SlowPrecisionWarning)]
    assert len(said) == 1, said
    assert said[0].startswith('overrides["precision"] fp16 on the CPU trains several times slower'), said
    assert len(json.loads((tmp_path / "mnist" / "ens" / "results.json").read_text())["members"]) == 2


def test_a_finished_ensemble_is_extended_and_read_back_by_member_processes(
    ensemble_run: dict, fake_root: Path, tmp_path: Path
) -> None:
    """`-n 2`, then `-n 3 --member 2` was refused ("seed0, another member of this ensemble, is one of 2 members"),
    and so was every `--member K -n 3` process after `-n 3 --resume` had extended it: its first members keep the
    size they trained as. A finished member of the smaller ensemble is read back as --resume reads it."""
    import shutil

    from cnnlab.train.config import load_config

    run = tmp_path / "mnist" / "ens"
    shutil.copytree(Path(ensemble_run["run_dir"]), run)
    options = dict(data_dir=str(fake_root), output=str(tmp_path), name="ens", val_size=40, progress=False)
    (run / "results.json").rename(tmp_path / "results.json")  # not saved yet: a fellow of another --ensemble
    with pytest.raises(CnnlabError, match=r"seed0, another member of this ensemble, is one of 2 members"):
        train_mnist("quick", overrides=_TINY, ensemble=3, member=2, **options)  # type: ignore[arg-type]
    (tmp_path / "results.json").rename(run / "results.json")
    extended = train_mnist("quick", overrides=_TINY, ensemble=3, member=2, **options)  # type: ignore[arg-type]
    assert "missing_members" not in extended and [m["seed"] for m in extended["members"]] == [0, 1, 2]
    assert json.loads((run / "ensemble.json").read_text())["members"] == ["seed0", "seed1", "seed2"]
    sizes = [load_config(run / f"seed{seed}" / "config.yaml").extra["ensemble"] for seed in range(3)]
    assert sizes == [2, 2, 3]
    weights = [(run / f"seed{seed}" / "model.safetensors").stat().st_mtime_ns for seed in range(3)]
    for member in (0, 2):  # a later process of any member: nothing left to train, read back
        again = train_mnist("quick", overrides=_TINY, ensemble=3, member=member, **options)  # type: ignore[arg-type]
        assert again["finished_before"] and again["test_accuracy"] == extended["test_accuracy"]
    again = train_mnist("quick", overrides=_TINY, ensemble=3, resume=True, **options)  # type: ignore[arg-type]
    assert again["finished_before"] and again["test_accuracy"] == extended["test_accuracy"]
    assert [(run / f"seed{seed}" / "model.safetensors").stat().st_mtime_ns for seed in range(3)] == weights
    # shrunk: refused, naming the options that resume it ("the run's --seed and --ensemble" named neither)
    with pytest.raises(CnnlabError, match=r"seed0, seed1, seed2, which --seed 0 --ensemble 2 .*--seed 0 --ensemble 3,"):
        train_mnist("quick", overrides=_TINY, ensemble=2, resume=True, **options)  # type: ignore[arg-type]


def test_member_needs_a_name_and_an_index_inside_the_ensemble(fake_root: Path) -> None:
    with pytest.raises(CnnlabError, match="--member needs --name"):
        train_mnist("quick", data_dir=str(fake_root), ensemble=2, member=0)
    with pytest.raises(CnnlabError, match=r"--member must be in 0..1"):
        train_mnist("quick", data_dir=str(fake_root), name="x", ensemble=2, member=2)


def test_unknown_recipe_lists_the_known_ones() -> None:
    known = "default, quick, baseline"
    with pytest.raises(CnnlabError, match=f"unknown MNIST recipe 'best'; choose one of {known}"):
        RECIPES.get("best")


def test_saved_member_round_trips_through_load_model(ensemble_run: dict, fake_root: Path) -> None:
    member_dir = Path(ensemble_run["members"][0]["run_dir"])
    model = cnnlab.load_model(member_dir)
    assert not model.training
    images = torch.rand(5, 1, 28, 28)
    from_file = cnnlab.load_model(member_dir / "model.safetensors")
    torch.testing.assert_close(model(images), from_file(images))
    # The saved weights reproduce the test accuracy recorded at the end of training.
    from cnnlab.data.mnist import load_mnist

    data = load_mnist(fake_root, val_size=0)
    with torch.inference_mode():
        accuracy = (model(to_float(data.test_images)).argmax(1) == data.test_labels).float().mean().item()
    assert accuracy == pytest.approx(ensemble_run["members"][0]["test_accuracy"])
    assert accuracy > 0.5  # chance is 0.1: the bars are learnable in 3 epochs


def test_ensemble_averages_member_probabilities(ensemble_run: dict) -> None:
    run_dir = Path(ensemble_run["run_dir"])
    ensemble = cnnlab.load_model(run_dir)
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2
    members = [cnnlab.load_model(m["run_dir"]) for m in ensemble_run["members"]]
    images = torch.rand(4, 1, 28, 28)
    with torch.inference_mode():
        expected = torch.stack([m(images).softmax(1) for m in members]).mean(0)
        torch.testing.assert_close(ensemble(images).softmax(1), expected)
    assert ensemble_run["members"][0]["seed"] == 0 and ensemble_run["members"][1]["seed"] == 1
    assert 0.0 <= ensemble_run["ensemble_test_accuracy"] <= 1.0
    # the batch each member trained with (a search's, or after an out-of-memory retry), as --json prints it
    batch = {"batch_size": 24, "micro_batch_size": 24, "processes": 1, "oom_events": []}
    assert [member["batch"] for member in ensemble_run["members"]] == [batch, batch]


def test_reports_agree_with_the_run_and_its_results(ensemble_run: dict) -> None:
    """The reports repeated the recipe's summary alone ("mnist_net_small, 2 epochs, ..."): a run given --epochs 1
    read as trained for 2. Their numbers are results.json's, written as the text and `evaluate` write them."""
    assert describe_overrides({"epochs": 2, "lr": 0.1}, {"epochs": 1, "lr": 0.1, "device": "cpu"}) == (
        "; given: epochs 1 (the recipe's 2), device cpu"
    )
    assert describe_overrides({"epochs": 2}, {"epochs": 2}) == describe_overrides({"epochs": 2}, None) == ""
    given = "given: batch_size 24 (the recipe's 128)"  # _TINY's epochs are the quick recipe's own
    reports = [Path(m["run_dir"]) / "report.md" for m in ensemble_run["members"]]
    for report in [Path(ensemble_run["run_dir"]) / "report.md", *reports]:
        assert given in report.read_text().split("\n## ")[0], report
    # Every score in a member's report is its results.json's to four places, as the text and `evaluate` write it
    # (the per-class table gave "0.007782" beside the console's "0.0078", and "1" for a perfect digit)
    for member in ensemble_run["members"]:
        text = (Path(member["run_dir"]) / "report.md").read_text()
        for digit, accuracy in enumerate(member["test"]["per_class_accuracy"]):
            assert f"| {digit} | {accuracy:.4f} |" in text
        assert f"| {member['val_accuracy']:.4f} | " in text  # the training table's validation accuracy
        assert sum(map(sum, member["test"]["confusion_matrix"])) == 80  # the fake test split
        assert "the test set (80 images) was evaluated once" in text  # it said 10,000 whatever the files held
        assert "200 training images, 40 held out for validation;" in text  # it did not say (a train_subset neither)
    ensemble_text = (Path(ensemble_run["run_dir"]) / "report.md").read_text()
    assert all(f"| {m['test_accuracy']:.4f} |" in ensemble_text for m in ensemble_run["members"])
    # the members' reports listed their sessions, the ensemble's none: it lists each member's
    assert "## Sessions" in ensemble_text and "2 in all, wall time **" in ensemble_text
    for seed in (0, 1):
        assert re.search(rf"\| seed{seed} \| 1 \| [^|]+ \| `[^`]+` \| 1-2 \| [^|]+ \| finished \|", ensemble_text)


def test_evaluate_writes_its_figures(
    ensemble_run: dict, fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    titles: list[str] = []
    savefig = Figure.savefig

    def keep_titles(figure: Figure, *args: object, **kwargs: object) -> None:
        titles.extend(axis.get_title() for axis in figure.axes)
        savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep_titles)
    result = evaluate_mnist(ensemble_run["run_dir"], data_dir=str(fake_root), output_dir=tmp_path)
    assert result["test_accuracy"] == pytest.approx(ensemble_run["ensemble_test_accuracy"])
    assert result["precision"] == result["run_precision"] == "fp32"  # tested as evaluate runs: nothing to say
    # The ensemble's own report had its test accuracy alone: now evaluate's per-digit table and confusion matrix,
    # the same numbers, and its members' weights digests, those its ensemble.json checks them against
    test, run_dir = ensemble_run["test"], Path(ensemble_run["run_dir"])
    assert test["confusion_matrix"] == result["confusion_matrix"] and test["errors"] == result["errors"]
    report = (run_dir / "report.md").read_text()
    assert f"Ensemble accuracy **{result['test_accuracy']:.4f}** ({result['errors']} errors in 80 images)" in report
    assert all(f"| {d} | {a:.4f} |" in report for d, a in enumerate(result["per_class_accuracy"]))
    assert (run_dir / "confusion_matrix.png").is_file() and "![confusion matrix](confusion_matrix.png)" in report
    digests = json.loads((run_dir / "ensemble.json").read_text())["digests"]
    assert [m["weights_sha256"] for m in ensemble_run["members"]] == digests
    assert all(f"| `{digest[:12]}` |" in report for digest in digests)
    assert sum(map(sum, result["confusion_matrix"])) == 80
    # the accuracy as the report and the console give it: the title read "26.22%" beside their 0.2622
    assert f"MNIST test, 80 digits: accuracy {result['test_accuracy']:.4f}" in titles
    for key in ("confusion_matrix_png", "misclassified_png"):
        assert Path(result[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "evaluation.json").is_file()
    notes = tmp_path / "notes.txt"  # a figures folder under a file: one line naming it (an OSError, exit 1, before)
    notes.write_text("a file")
    with pytest.raises(CnnlabError, match=rf"^--output {re.escape(str(notes))}/figures: .*notes.txt is a file, not a"):
        evaluate_mnist(ensemble_run["run_dir"], data_dir=str(fake_root), output_dir=notes / "figures")


def test_evaluate_says_a_run_tested_under_bf16_autocast_is_scored_in_float32(
    ensemble_run: dict, fake_root: Path, tmp_path: Path
) -> None:
    """A run trained and tested under --precision bf16, evaluated in float32 (as predict runs), scored other than its
    results.json with nothing said (0.51 against 0.50 on 100 digits), and evaluation.json had no precision; transfer
    and segmentation evaluations said so. An ensemble's options are its recipe's and its overrides. Predict says it
    as well."""
    import shutil

    import yaml

    from cli_in_process import run_cnnlab

    # a member run as one trained with --precision bf16 records it (its config.yaml's own field)
    run, out = tmp_path / "bf16", tmp_path / "evaluation"
    shutil.copytree(Path(ensemble_run["run_dir"]) / "seed0", run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["config"]["precision"] == "fp32"
    config["config"]["precision"] = "bf16"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    completed = run_cnnlab("evaluate", str(run), "--data-dir", str(fake_root), "-o", str(out))
    assert completed.returncode == 0, completed.stderr
    assert "the run's test pass ran under bf16 autocast (--precision bf16)" in completed.stdout
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["precision"] == "fp32" and evaluation["run_precision"] == "bf16"
    # predict too: a bf16 transfer run's probabilities differed from its test_predictions.csv by up to 0.03, unsaid
    from PIL import Image

    digit = Image.new("L", (28, 28))
    digit.paste(255, (12, 6, 16, 22))  # a "1"
    digit.save(tmp_path / "digit.png")
    said = "test pass ran under bf16 autocast (--precision bf16), so on its test images these may differ slightly"
    for model, autocast in ((run, True), (Path(ensemble_run["run_dir"]), False)):
        completed = run_cnnlab("predict", "--model", str(model), str(tmp_path / "digit.png"), "--json")
        assert completed.returncode == 0, completed.stderr
        assert (said in completed.stderr) == autocast and json.loads(completed.stdout)["predictions"]
    # -q drops progress, not notes on the results (its help): the line is all stderr holds, the results on stdout
    quiet = run_cnnlab("predict", "--model", str(run), str(tmp_path / "digit.png"), "-q")
    assert quiet.returncode == 0 and str(tmp_path / "digit.png") in quiet.stdout
    assert quiet.stderr.splitlines() == [f"predicted in float32; {run}'s {said} from its own test predictions"]
    # an ensemble's config.yaml: the recipe's options, then those given (its members' each hold the whole config)
    from cnnlab.tasks.run_precision import precisions

    recorded = yaml.safe_load((Path(ensemble_run["run_dir"]) / "config.yaml").read_text())
    assert "precision" not in recorded["config"]
    recorded["config"]["overrides"]["precision"] = "bf16"
    (tmp_path / "ensemble").mkdir()
    (tmp_path / "ensemble" / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert precisions(tmp_path / "ensemble")["run_precision"] == "bf16"


def test_evaluate_runs_a_channels_last_run_in_that_memory_format(
    ensemble_run: dict, fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run trained with --channels-last (the default recipe's) ran its test pass in that memory format, but
    `evaluate` (which takes no --channels-last) ran it in NCHW, unsaid: it now runs the run's own memory format and
    evaluation.json says which."""
    import shutil

    import yaml

    formats: list[bool] = []
    for_inference = Trainer.for_inference

    def spy(cls: type[Trainer], model: torch.nn.Module, **options: object) -> Trainer:
        formats.append(bool(options.get("channels_last")))
        return for_inference(model, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "for_inference", classmethod(spy))
    run = tmp_path / "nhwc"
    shutil.copytree(Path(ensemble_run["run_dir"]) / "seed0", run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["config"]["channels_last"] is False  # the quick recipe's
    nchw = evaluate_mnist(run, data_dir=str(fake_root), output_dir=tmp_path / "nchw")
    config["config"]["channels_last"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    nhwc = evaluate_mnist(run, data_dir=str(fake_root), output_dir=tmp_path / "nhwc-evaluation")
    assert formats == [False, True]
    assert (nchw["channels_last"], nhwc["channels_last"]) == (False, True)
    assert nhwc["confusion_matrix"] == nchw["confusion_matrix"]  # the float rounding alone differs


@pytest.mark.parametrize("option", ["--output", "-o", "--out"])
def test_evaluate_takes_output_like_every_other_command(ensemble_run: dict, fake_root: Path, tmp_path: Path, option):
    """`evaluate` alone spelt the option `--out`; `--output`/`-o` now work too, and `--out` still does."""
    from typer.testing import CliRunner

    from cnnlab.cli import app

    args = ["evaluate", ensemble_run["run_dir"], "--data-dir", str(fake_root), option, str(tmp_path / "figures")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figures" / "confusion_matrix.png").is_file()


def test_load_model_on_a_directory_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="holds no model.json"):
        cnnlab.load_model(tmp_path)


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from cnnlab.cli import main

    monkeypatch.setattr(sys, "argv", ["cnnlab", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_cli_unknown_recipe(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(monkeypatch, capsys, "train", "mnist", "--recipe", "fastest")
    assert code == 2 and err.strip().count("\n") == 0 and "unknown MNIST recipe 'fastest'" in err


def test_cli_missing_data_dir(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    code, err = _cli(monkeypatch, capsys, "train", "mnist", "--recipe", "quick", "--data-dir", str(missing))
    assert code == 2 and err.strip().count("\n") == 0
    assert str(missing / "MNIST" / "raw") in err and "--data-dir" in err and "CNNLAB_DATA" in err


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_cli_corrupt_idx(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, damage: str
) -> None:
    root = write_fake_mnist(tmp_path / "bad")
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw = images.read_bytes()
    images.write_bytes(b"\x00\x00\x09\x99" + raw[4:] if damage == "magic" else raw[:1000])
    code, err = _cli(
        monkeypatch, capsys, "train", "mnist", "--recipe", "quick", "--data-dir", str(root), "-o", str(tmp_path)
    )
    assert code == 2 and err.strip().count("\n") == 0
    assert ("magic number" if damage == "magic" else "truncated") in err and str(images) in err


@pytest.mark.skipif(not (REAL_MNIST / "MNIST" / "raw").is_dir(), reason="MNIST not found ($CNNLAB_DATA)")
def test_quick_recipe_learns_real_mnist_subset(tmp_path: Path) -> None:
    from cnnlab.data.mnist import MnistSplits, load_mnist

    full = load_mnist(REAL_MNIST)
    # A subset keeps this under a few seconds: 3,072 training, 1,000 validation and 2,000 test images.
    splits = MnistSplits(
        full.train_images[:3072],
        full.train_labels[:3072],
        full.val_images[:1000],
        full.val_labels[:1000],
        full.test_images[:2000],
        full.test_labels[:2000],
    )
    summary = train_mnist(
        "quick", splits=splits, output=str(tmp_path), name="subset", overrides={"epochs": 1}, progress=False
    )
    assert summary["members"][0]["val_accuracy"] > 0.8  # chance is 0.1
    assert summary["test_accuracy"] > 0.8


class _KillSecondMember(Callback):
    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if trainer.config.seed == 1 and epoch == 1:
            raise KeyboardInterrupt("simulated kill during the second member")


def test_interrupted_ensemble_resumes_to_the_same_weights(
    ensemble_run: dict, fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(data_dir=str(fake_root), output=str(tmp_path), name="ens", ensemble=2, val_size=40, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_mnist("quick", overrides=_TINY, callbacks=[_KillSecondMember()], **options)
    first_member = tmp_path / "mnist" / "ens" / "seed0" / "model.safetensors"
    finished_at = first_member.stat().st_mtime_ns
    # The interrupted session recorded its command, its epoch and its wall time as it stopped.
    (stopped,) = json.loads((tmp_path / "mnist" / "ens" / "seed1" / "sessions.json").read_text())
    assert stopped["ended"] == "interrupted" and stopped["wall_seconds"] > 0
    assert (stopped["first_epoch"], stopped["last_epoch"]) == (0, 1)

    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    on_disk_while_loading: list[list[dict]] = []

    def stop_loading(*args: object, **kwargs: object) -> None:  # what a SIGKILL here would leave
        on_disk_while_loading.append(json.loads((tmp_path / "mnist" / "ens" / "seed1" / "sessions.json").read_text()))
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):  # a resume stopped while MNIST loads
        patch.setattr(mnist_task, "load_mnist", stop_loading)
        train_mnist("quick", overrides=_TINY, resume=True, **options)
    # killed there, it left no trace: the session is written before MNIST is read, its time unknown until it ends
    (_, killed_here) = on_disk_while_loading[0]
    assert killed_here["preparing"] == "loading MNIST" and (killed_here["ended"], killed_here["wall_seconds"]) == (
        None, None
    )  # fmt: skip
    # ... and one stopped after it, while the finished member seed0 was checked to be read back: seed1's session,
    # the member it would train, was not recorded at all
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(mnist_task, "check_resumable", stop)
        train_mnist("quick", overrides=_TINY, resume=True, **options)
    assert not (tmp_path / "mnist" / "ens" / "seed0" / "sessions.json").read_text().count("setting up")
    # the run moved to another runs folder and renamed: its engine refused "name: 'ens/seed0' -> 'moved/seed0'", and
    # the ensemble was saved from the finished member's old folder
    (tmp_path / "elsewhere" / "mnist").mkdir(parents=True)
    (tmp_path / "mnist" / "ens").rename(tmp_path / "elsewhere" / "mnist" / "moved")
    options |= {"output": str(tmp_path / "elsewhere"), "name": "moved"}
    summary = train_mnist("quick", overrides=_TINY, resume=True, **options)
    first_member = tmp_path / "elsewhere" / "mnist" / "moved" / "seed0" / "model.safetensors"
    assert first_member.stat().st_mtime_ns == finished_at  # the finished member is not trained again
    assert summary["members"][0]["run_dir"] == str(first_member.parent)
    # The resumed member's training seconds sum its sessions, its wall seconds are the last one's: said, not unsaid
    first, resumed = summary["members"]
    assert first["resumed_after_epoch"] is None and resumed["resumed_after_epoch"] == 1
    report = (Path(resumed["run_dir"]) / "report.md").read_text()
    assert "s of training over its sessions (interrupted, resumed after epoch 1)," in report
    assert "over its sessions" not in (Path(first["run_dir"]) / "report.md").read_text()
    # ... and it keeps every session, each with its wall time (the one stopped while MNIST loaded, before it trained,
    # was left out with its time), and says from which epoch it was resumed
    assert [s["ended"] for s in resumed["sessions"]] == ["interrupted", "interrupted", "interrupted", "finished"]
    assert resumed["sessions"][0]["wall_seconds"] == stopped["wall_seconds"]
    assert resumed["sessions"][1]["wall_seconds"] > 0 and resumed["sessions"][1]["preparing"] == "loading MNIST"
    assert resumed["sessions"][2]["wall_seconds"] > 0 and resumed["sessions"][2]["preparing"] == "setting up the run"
    assert resumed["wall_seconds_total"] == pytest.approx(sum(s["wall_seconds"] for s in resumed["sessions"]))
    assert "4 sessions, last resumed after epoch 1. Wall time of all sessions: **" in report
    assert re.search(r"\| 1 \| [^|]+ \| `[^`]+` \| 1 \| \d+ s \| interrupted \|", report)
    stopped_row = r"\| 2 \| [^|]+ \| `[^`]+` \| none \(stopped while loading MNIST\) \| \d+ s \| interrupted \|"
    assert re.search(stopped_row, report)
    assert re.search(r"\| 4 \| [^|]+ \| `[^`]+` \| 2 \| \d+ s \| finished \|", report)
    assert "## Sessions" not in (Path(first["run_dir"]) / "report.md").read_text()
    ensemble_report = (Path(summary["run_dir"]) / "report.md").read_text()  # every member's sessions, 5 in all
    assert "5 in all" in ensemble_report and re.search(r"\| seed1 \| 4 \| [^|]+ \| `[^`]+` \| 2 \|", ensemble_report)
    assert summary["ensemble_test_accuracy"] == ensemble_run["ensemble_test_accuracy"]
    for resumed, straight in zip(summary["members"], ensemble_run["members"], strict=True):
        resumed_state = cnnlab.load_model(resumed["run_dir"]).state_dict()
        straight_state = cnnlab.load_model(straight["run_dir"]).state_dict()
        assert all(torch.equal(resumed_state[k], straight_state[k]) for k in straight_state)


def _not_read(*args: object, **kwargs: object) -> None:
    raise AssertionError("MNIST was read before the resumed options were compared, or by a run read back")


def test_a_member_stopped_while_it_wrote_its_results_resumes(
    ensemble_run: dict, fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's results.json, what marks it finished, was written in place: a stop (or another member's process
    reading it) while it was written saw a cut-short file, and every --resume ended in a JSONDecodeError traceback."""
    options = dict(data_dir=str(fake_root), output=str(tmp_path), name="ens", ensemble=2, val_size=40, progress=False)
    write_text = Path.write_text

    def stopped_midway(path: Path, text: str, *args: object, **kwargs: object) -> int:
        if "results.json" not in path.name:
            return write_text(path, text, *args, **kwargs)
        write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", stopped_midway)
        with pytest.raises(KeyboardInterrupt):
            train_mnist("quick", overrides=_TINY, **options)
    summary = train_mnist("quick", overrides=_TINY, resume=True, **options)
    assert summary["ensemble_test_accuracy"] == ensemble_run["ensemble_test_accuracy"]
    assert [m["test_accuracy"] for m in summary["members"]] == [m["test_accuracy"] for m in ensemble_run["members"]]
    # a member stopped between its results.json and its report.md gets the report from what it saved, not retested
    # ... and so does the ensemble's, moved since; nothing else is written again (the ensemble was recombined from
    # its members' test probabilities, its config.yaml, ensemble.json, figures, report and results.json rewritten)
    run = tmp_path / "mnist" / "ens"
    written = {name: (run / name).read_text() for name in ("seed1/report.md", "report.md")}
    for name in written:
        (run / name).unlink()
    moved = tmp_path / "elsewhere" / "mnist" / "ens"
    moved.parent.mkdir(parents=True)
    run.rename(moved)
    saved = {path: path.stat().st_mtime_ns for path in moved.rglob("*") if path.is_file()}
    with monkeypatch.context() as patch:  # nor is MNIST read, but its training set's digest
        patch.setattr(mnist_task, "load_mnist", _not_read)
        again = train_mnist("quick", overrides=_TINY, resume=True, **{**options, "output": str(moved.parents[1])})
    assert {path: path.stat().st_mtime_ns for path in saved} == saved
    assert {str(path.relative_to(moved)) for path in moved.rglob("*") if path.is_file()} - {
        str(path.relative_to(moved)) for path in saved
    } == set(written)
    for name, text in written.items():  # named as the run is now: its folder and its runs folder (`output`)
        now = _WRITTEN.sub("", text).replace(str(run), str(moved)).replace(f"{tmp_path} |", f"{moved.parents[1]} |")
        assert _WRITTEN.sub("", (moved / name).read_text()) == now
    assert again["run_dir"] == str(moved) and str(run) in (moved / "results.json").read_text()
    assert again["members"] == [
        {**member, "run_dir": member["run_dir"].replace(str(run), str(moved))} for member in summary["members"]
    ]
    # nothing trained: read back as the other tasks' runs are (the CLI says so); a member trained here is not that
    assert again["finished_before"] and "finished_before" not in summary
    assert "finished_before" not in (moved / "results.json").read_text()
    # an ensemble's results.json cut short (written in place by an older cnnlab) is made again, not a traceback
    (moved / "results.json").write_text((moved / "results.json").read_text()[:40])
    again = train_mnist("quick", overrides=_TINY, resume=True, **{**options, "output": str(moved.parents[1])})
    assert "finished_before" not in again
    assert json.loads((moved / "results.json").read_text())["test_accuracy"] == summary["test_accuracy"]


def test_a_member_another_process_finished_while_this_one_prepared_is_read_back_its_sessions_kept(
    ensemble_run: dict, fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume records a session of the first unfinished member before MNIST loads (`_preparing`). When another
    process (`--member`) finishes that member meanwhile, the session is withdrawn (`RunSessions.withdraw`): the
    member's sessions.json stays as that process wrote it, and the member is read back, not trained again."""
    import shutil

    run = tmp_path / "mnist" / "ens"
    shutil.copytree(ensemble_run["run_dir"], run)
    options = dict(data_dir=str(fake_root), output=str(tmp_path), name="ens", ensemble=2, val_size=40, progress=False)
    load_mnist = mnist_task.load_mnist

    def finished_meanwhile(*members: str) -> None:
        """Each member's results.json hidden until MNIST is loaded: the other process finishes it then."""
        for member in members:
            (run / member / "results.json").rename(run / member / "results.hidden")

        def loaded(*args: object, **kwargs: object) -> object:
            data = load_mnist(*args, **kwargs)
            for member in members:
                (run / member / "results.hidden").rename(run / member / "results.json")
            return data

        monkeypatch.setattr(mnist_task, "load_mnist", loaded)

    # every member finished meanwhile: none trains here, the session begun for seed1 is withdrawn, and the ensemble is
    # combined from its members (not read back: it was not finished when this command looked)
    kept = (run / "seed1" / "sessions.json").read_bytes()
    trained_at = (run / "seed1" / "model.safetensors").stat().st_mtime_ns
    finished_meanwhile("seed1")
    summary = train_mnist("quick", overrides=_TINY, resume=True, **options)
    assert summary["ensemble_test_accuracy"] == ensemble_run["ensemble_test_accuracy"]
    assert "finished_before" not in summary and (run / "seed1" / "sessions.json").read_bytes() == kept
    assert (run / "seed1" / "model.safetensors").stat().st_mtime_ns == trained_at
    # seed0, which the session was begun for, finished meanwhile and seed1 not yet: seed1 trains here in a session
    # of its own, and seed0's sessions.json does not gain the withdrawn one
    shutil.rmtree(run / "seed1")
    (run / "results.json").unlink()
    kept = (run / "seed0" / "sessions.json").read_bytes()
    finished_meanwhile("seed0")
    summary = train_mnist("quick", overrides=_TINY, resume=True, **options)
    assert (run / "seed0" / "sessions.json").read_bytes() == kept
    (session,) = json.loads((run / "seed1" / "sessions.json").read_text())
    assert session["ended"] == "finished" and (session["first_epoch"], session["last_epoch"]) == (0, 2)
    assert "finished_before" not in summary
    assert summary["ensemble_test_accuracy"] == ensemble_run["ensemble_test_accuracy"]


def test_resume_of_a_missing_run_is_a_clear_error(fake_root: Path, tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="there is no run at"):
        train_mnist("quick", data_dir=str(fake_root), output=str(tmp_path), name="nope", resume=True, val_size=40)


def test_resume_of_a_finished_run_reads_it_back_and_refuses_other_options(
    fake_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--resume of a finished single run was a KeyError traceback; with another --recipe it was read back as is."""
    options = dict(data_dir=str(fake_root), output=str(tmp_path), name="done", val_size=40, progress=False)
    finished = train_mnist("quick", overrides=_TINY, **options)
    weights = tmp_path / "mnist" / "done" / "model.safetensors"
    trained_at = weights.stat().st_mtime_ns
    results = tmp_path / "mnist" / "done" / "results.json"
    recorded_at = results.stat().st_mtime_ns
    again = train_mnist("quick", overrides=_TINY, resume=True, **{**options, "progress": True})
    assert weights.stat().st_mtime_ns == trained_at  # read back, not trained again
    assert results.stat().st_mtime_ns == recorded_at  # nor its results written again
    assert again["test_accuracy"] == finished["test_accuracy"] and again["members"] == finished["members"]
    # said, and returned for the CLI to say, as the other tasks' (a run that trained is not read back)
    run = tmp_path / "mnist" / "done"
    assert capsys.readouterr().out == f"{run} is already finished; nothing to do (its report: {run / 'report.md'})\n"
    assert again["finished_before"] and "finished_before" not in finished
    # stopped between results.json and report.md: read back as finished, it never got its report; now the report
    # alone is written from what the run saved, the first one's but for when it was written
    report = tmp_path / "mnist" / "done" / "report.md"
    written = report.read_text()
    report.unlink()
    tested_at = (tmp_path / "mnist" / "done" / "test_probabilities.pt").stat().st_mtime_ns
    again = train_mnist("quick", overrides=_TINY, resume=True, notes=True, **options)  # said without progress too
    assert capsys.readouterr().out == f"{run} is already finished; its report was missing, written from its " + (
        f"results.json: {report}\n"
    )
    assert weights.stat().st_mtime_ns == trained_at and again["members"] == finished["members"]
    assert (tmp_path / "mnist" / "done" / "test_probabilities.pt").stat().st_mtime_ns == tested_at
    assert _WRITTEN.sub("", report.read_text()) == _WRITTEN.sub("", written)
    # ... and renamed since: the report written back was titled with the name config.yaml recorded
    (tmp_path / "mnist" / "done").rename(tmp_path / "mnist" / "renamed")
    (tmp_path / "mnist" / "renamed" / "report.md").unlink()
    train_mnist("quick", overrides=_TINY, resume=True, **{**options, "name": "renamed"})
    title = (tmp_path / "mnist" / "renamed" / "report.md").read_text().splitlines()[0]
    assert title == "# MNIST run `renamed`", title
    (tmp_path / "mnist" / "renamed").rename(tmp_path / "mnist" / "done")
    with monkeypatch.context() as patch:  # a changed option is refused before MNIST is read (seconds), not after
        patch.setattr(mnist_task, "load_mnist", _not_read)
        with pytest.raises(CnnlabError, match=r"cannot resume .*done with different options \(.*epochs: 2 -> 3"):
            train_mnist("quick", overrides={**_TINY, "epochs": 3}, resume=True, **options)
        with pytest.raises(CnnlabError, match=r"extra\.recipe: 'quick' -> 'baseline'"):  # a key, not two records
            train_mnist("baseline", overrides=_TINY, resume=True, **options)
    other = write_fake_mnist(tmp_path / "other", train=240, test=80, seed=1)  # read back on other training images
    with pytest.raises(CnnlabError, match=r"done: it held its validation images out of other MNIST training images"):
        train_mnist("quick", overrides=_TINY, resume=True, **{**options, "data_dir": str(other)})


def test_figures_deleted_from_a_finished_run_are_drawn_again_when_it_is_read_back(
    ensemble_run: dict, fake_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume of a finished run whose figures were deleted drew none of them: its report, kept or written again,
    lacked the learning curves and the confusion matrix, which its metrics.json and results.json hold. They are drawn
    again as the test pass drew them, the ensemble's and a member's, and the line names them all (a member's were
    drawn unsaid). misclassified.png stayed missing: it is drawn from the test probabilities each member saved and
    the MNIST test set, read again only then, when its digest is the one the run recorded; another stays missing."""
    import shutil

    run = tmp_path / "mnist" / "ens"
    shutil.copytree(Path(ensemble_run["run_dir"]), run)
    deleted = [
        run / "confusion_matrix.png",
        run / "seed1" / "confusion_matrix.png",
        run / "seed1" / "learning_curves.png",
        *run.rglob("misclassified.png"),
    ]
    drawn = {path: path.read_bytes() for path in deleted}
    for path in [*deleted, run / "seed1" / "report.md"]:
        path.unlink()
    other_tests = tmp_path / "other-tests"  # the same training set, another test set
    shutil.copytree(fake_root, other_tests)
    images = other_tests / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-1] + b"\xff")
    options = dict(data_dir=str(other_tests), output=str(tmp_path), name="ens", ensemble=2, val_size=40, notes=True)
    train_mnist("quick", overrides=_TINY, resume=True, **options)  # type: ignore[arg-type]
    assert not list(run.rglob("misclassified.png")) and (run / "seed1" / "learning_curves.png").is_file()
    capsys.readouterr()
    for path in [*deleted, run / "seed1" / "report.md"]:
        path.unlink(missing_ok=True)
    again = train_mnist("quick", overrides=_TINY, resume=True, **{**options, "data_dir": str(fake_root)})
    assert again["finished_before"] and again["test_accuracy"] == ensemble_run["test_accuracy"]
    assert {path: path.read_bytes() for path in deleted if path.is_file()} == drawn  # the same figures, all of them
    assert capsys.readouterr().out == (
        f"{run} is already finished; seed0/misclassified.png, seed1/learning_curves.png, seed1/confusion_matrix.png, "
        "seed1/misclassified.png, confusion_matrix.png, misclassified.png were missing, drawn again from what it "
        f"saved; seed1's report was missing, written from its results.json: {run / 'seed1' / 'report.md'} (its "
        f"report: {run / 'report.md'})\n"
    )
    report = (run / "seed1" / "report.md").read_text()
    assert "![confusion matrix](confusion_matrix.png)" in report and "![learning curves](learning_curves.png)" in report
    assert "![misclassified test digits](misclassified.png)" in report
    # a single run's results.json holds its member's under "members"
    member = json.loads((run / "seed1" / "results.json").read_text())
    mnist_task.redrawn_figures()["confusion_matrix.png"]({"members": [member]}, tmp_path / "single.png")
    assert (tmp_path / "single.png").read_bytes() == drawn[run / "seed1" / "confusion_matrix.png"]


def test_resume_of_a_run_killed_between_its_members_results_and_its_own_finishes_it(
    fake_root: Path, tmp_path: Path
) -> None:
    """A single run's results.json is written twice: its member's, then (after report.md) the run's summary that lists
    it. Killed between the two, every --resume read the member's back as the run's: a KeyError 'members' traceback."""
    options = dict(data_dir=str(fake_root), output=str(tmp_path), name="cut", val_size=40, progress=False)
    finished = train_mnist("quick", overrides=_TINY, **options)
    run = tmp_path / "mnist" / "cut"
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps(results["members"][0], indent=1))  # as the kill left it
    (run / "report.md").unlink()
    trained_at = (run / "model.safetensors").stat().st_mtime_ns
    again = train_mnist("quick", overrides=_TINY, resume=True, **options)
    assert again["members"] == finished["members"] and again["test_accuracy"] == finished["test_accuracy"]
    assert json.loads((run / "results.json").read_text()) == results and (run / "report.md").is_file()
    assert (run / "model.safetensors").stat().st_mtime_ns == trained_at  # read back, not trained again


class _KillAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill after the checkpoint of the first epoch")


def test_a_resume_on_another_training_set_is_refused_and_a_run_saved_before_its_digest_resumes(
    fake_root: Path, tmp_path: Path
) -> None:
    """--resume read whatever --data-dir held: another MNIST folder (or one changed since) held out other validation
    images, some of which the run had trained on, and the run went on choosing its epoch on them, unsaid."""
    import yaml

    from cnnlab.train.checkpoint import CHECKPOINT_NAME, atomic_save, load_checkpoint
    from cnnlab.train.saved import saved_meta

    options = dict(output=str(tmp_path), name="moved", val_size=40, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_mnist("quick", data_dir=str(fake_root), overrides=_TINY, callbacks=[_KillAfterFirstEpoch()], **options)
    other = write_fake_mnist(tmp_path / "other", train=240, test=80, seed=1)  # the same shape, other digits
    changed = r"cannot resume \S*moved: it held its validation images out of other MNIST training images than those"
    with pytest.raises(CnnlabError, match=f"{changed} under {re.escape(str(other))}"):
        train_mnist("quick", data_dir=str(other), overrides=_TINY, resume=True, **options)
    # a run started before the digest was recorded resumes as before (and its model records none: it is not known)
    run = tmp_path / "mnist" / "moved"
    record = yaml.safe_load((run / "config.yaml").read_text())
    del record["config"]["extra"]["train_set_sha256"]
    (run / "config.yaml").write_text(yaml.safe_dump(record))
    state = load_checkpoint(run / CHECKPOINT_NAME)
    del state["config"]["extra"]["train_set_sha256"]
    atomic_save(state, run / CHECKPOINT_NAME)
    resumed = train_mnist("quick", data_dir=str(other), overrides=_TINY, resume=True, **options)
    assert resumed["members"][0]["epochs"] == 2 and "train_set_sha256" not in saved_meta(run)


def test_one_model_and_an_ensemble_never_share_a_run_name_without_overwrite(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--name e2` without -n, over an ensemble e2, trained one model beside it with no flag, and `evaluate` went on
    scoring the old ensemble (its ensemble.json is loaded first); -n 2 over a single run did the reverse; a resume
    without -n was 'unknown training option(s) ensemble'; a resume with another --seed trained new members."""
    from cnnlab.report import plots
    from cnnlab.train import records

    for figure in (plots, "plot_confusion_matrix"), (plots, "plot_misclassified"), (records, "plot_learning_curves"):
        monkeypatch.setattr(*figure, lambda *args, **kwargs: None)  # six models' figures: most of the seconds
    options = dict(data_dir=str(fake_root), output=str(tmp_path), name="e2", val_size=40, progress=False)
    train_mnist("quick", overrides=_TINY, **options)
    run = tmp_path / "mnist" / "e2"
    for flags in ({}, {"resume": True}):
        with pytest.raises(CnnlabError, match="e2 holds one model, not an ensemble of 2; pass --overwrite"):
            train_mnist("quick", overrides=_TINY, ensemble=2, **flags, **options)
    assert not list(run.glob("seed*"))
    train_mnist("quick", overrides=_TINY, ensemble=2, overwrite=True, **options)
    assert isinstance(cnnlab.load_model(run), Ensemble) and not (run / "model.json").exists()
    with pytest.raises(CnnlabError, match=r"holds an ensemble \(members seed0, seed1\), not one model; pass --over"):
        train_mnist("quick", overrides=_TINY, **options)
    with pytest.raises(CnnlabError, match=re.escape("(or resume it with --ensemble 2 --seed 0)")):
        train_mnist("quick", overrides=_TINY, resume=True, **options)
    with pytest.raises(CnnlabError, match="already holds a run; pass --resume"):
        train_mnist("quick", overrides=_TINY, ensemble=2, seed=5, **options)
    with pytest.raises(CnnlabError, match="holds members seed0, seed1, which --seed 5 --ensemble 2"):
        train_mnist("quick", overrides=_TINY, ensemble=2, seed=5, resume=True, **options)
    assert not (run / "seed5").exists()
    single = train_mnist("quick", overrides=_TINY, overwrite=True, **options)
    assert not isinstance(cnnlab.load_model(run), Ensemble) and not (run / "ensemble.json").exists()
    assert single["members"][0]["run_dir"] == str(run)
    # the ensemble's members went with it: they kept the folder taken for an ensemble, and a later `-n 2 --resume`
    # rebuilt the ensemble over the single model
    assert not list(run.glob("seed*"))
    with pytest.raises(CnnlabError, match="holds one model, not an ensemble of 2"):
        train_mnist("quick", overrides=_TINY, ensemble=2, resume=True, **options)
    with pytest.raises(CnnlabError, match="--resume continues a run and --overwrite starts it again; pass one"):
        train_mnist("quick", overrides=_TINY, resume=True, overwrite=True, **options)
    # one model replaced by an ensemble keeps none of its curves or figures beside the ensemble's
    train_mnist("quick", overrides=_TINY, ensemble=2, overwrite=True, **options)
    assert not list(run.glob("model.*")) and not (run / "metrics.csv").exists()


def test_a_shortened_run_shrinks_its_recipes_warm_up_and_still_anneals(fake_root: Path, tmp_path: Path) -> None:
    """The default recipe (2 warm-up epochs of 10) run with --epochs 2 warmed up for the whole run: its last step was
    at the peak learning rate, 0.1."""
    import yaml

    from cnnlab.tasks.recipes import with_overrides

    recipe = {"epochs": 10, "warmup_epochs": 2, "lr": 0.1}
    assert with_overrides(recipe, {"epochs": 2})["warmup_epochs"] == 1  # half the run, then it anneals
    assert with_overrides(recipe, {"epochs": 5})["warmup_epochs"] == 2  # short enough already
    assert with_overrides(recipe, {"epochs": 20})["warmup_epochs"] == 2  # a longer run keeps it
    assert with_overrides(recipe, {"epochs": 2, "warmup_epochs": 3})["warmup_epochs"] == 3  # the user's own
    assert with_overrides(recipe, None) == recipe
    options = dict(data_dir=str(fake_root), output=str(tmp_path), name="short", val_size=40, progress=False)
    train_mnist("default", overrides={"epochs": 2, "batch_size": 20}, train_subset=200, **options)
    run = tmp_path / "mnist" / "short"
    assert yaml.safe_load((run / "config.yaml").read_text())["config"]["warmup_epochs"] == 1
    last_lr = float((run / "metrics.csv").read_text().splitlines()[-1].split(",")[
        (run / "metrics.csv").read_text().splitlines()[0].split(",").index("lr")])  # fmt: skip
    # metrics.csv gives an epoch's mean lr: annealed from the peak over epoch 2 it averages about half of 0.1, where
    # a warm-up over the whole run would average 0.075 there
    assert 0.04 < last_lr < 0.06
    # A resume with another --epochs is refused naming what the user changed; the warm-up moved with it, and is
    # said to be derived from it (it read as a second change: "epochs: 2 -> 4, warmup_epochs: 1 -> 2").
    with pytest.raises(CnnlabError) as refused:
        train_mnist("default", overrides={"epochs": 4, "batch_size": 20}, train_subset=200, resume=True, **options)
    assert "(epochs: 2 -> 4 and so warmup_epochs, derived from it: 1.0 -> 2)" in str(refused.value)


def test_a_refused_resume_names_a_derived_option_as_such_only_when_its_source_changed() -> None:
    from cnnlab.train.config import check_resumable

    saved = {"recipe": "default", "train": {"epochs": 4, "warmup_epochs": 1.0, "lr": 0.1}}
    with pytest.raises(CnnlabError, match=re.escape("(train.epochs: 4 -> 1 and so train.warmup_epochs, derived from "
                                                    "it: 1.0 -> 0.5, train.lr: 0.1 -> 0.2)")):  # fmt: skip
        check_resumable(saved, {**saved, "train": {"epochs": 1, "warmup_epochs": 0.5, "lr": 0.2}}, "r")
    with pytest.raises(CnnlabError, match=re.escape("(train.warmup_epochs: 1.0 -> 0.5)")):  # epochs kept: a change
        check_resumable(saved, {**saved, "train": {"epochs": 4, "warmup_epochs": 0.5, "lr": 0.1}}, "r")
    auto = {"batch_size": 1024, "auto_batch_size": True}  # --batch-size auto: the batch is its cap
    with pytest.raises(CnnlabError, match=re.escape("(auto_batch_size: False -> True and so batch_size, derived from")):
        check_resumable({"batch_size": 64, "auto_batch_size": False}, auto, "r")
    with pytest.raises(CnnlabError, match=re.escape("(auto_batch_size: True -> False, batch_size: 48 -> 64)")):
        check_resumable({"batch_size": 48, "auto_batch_size": True}, {"batch_size": 64, "auto_batch_size": False}, "r")
    # what the search chose (a finished run's record: 200) against its cap (the command's: 1024) are the same options:
    # the same `-b auto` command refused to read back a finished run, an ensemble's finished member (so an ensemble
    # stopped in its second member could not be finished) and a fellow --member
    check_resumable({"batch_size": 200, "accum_steps": 1, "auto_batch_size": True}, {**auto, "accum_steps": 1}, "r")
    searched = {"batch_size": 64, "accum_steps": 4, "auto_accum": True}  # --accum auto: the accumulation it chose
    check_resumable(searched, {**searched, "accum_steps": 1}, "r")


def test_the_last_line_names_the_run_to_copy_into_the_next_command(fake_root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cnnlab.cli import app

    arguments = ["train", "mnist", "--recipe", "quick", "--data-dir", str(fake_root), "--val-size", "40", "--epochs",
                 "2", "--batch-size", "24", "-o", str(tmp_path), "--name", "x", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert f"`cnnlab predict --model {tmp_path / 'mnist' / 'x'} digit.png`" in result.output  # it said "RUN"


def test_a_run_without_a_validation_set_reports_on_the_command_line(fake_root: Path, tmp_path: Path) -> None:
    """`--val-size 0` trained, saved and tested the run, then its summary line was a TypeError (val accuracy None)."""
    from typer.testing import CliRunner

    from cnnlab.cli import app

    arguments = ["train", "mnist", "--recipe", "quick", "--data-dir", str(fake_root), "--val-size", "0", "--epochs",
                 "1", "--batch-size", "24", "-o", str(tmp_path), "--name", "noval", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert re.search(r"seed 0: val -  test [01]\.\d{4} ", result.output)


def test_a_rank_other_than_0_writes_no_files(fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every rank runs `train_mnist`; only rank 0 may write the model, results and probabilities."""
    monkeypatch.setenv("RANK", "1")
    summary = train_mnist(
        "quick", data_dir=str(fake_root), output=str(tmp_path), name="r1", val_size=40, overrides=_TINY, progress=False
    )
    assert 0.0 <= summary["test_accuracy"] <= 1.0  # it still trains and evaluates
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_evaluate_and_ensemble_refuse_a_run_of_another_task(tmp_path: Path) -> None:
    # A transfer run's model takes RGB photos: evaluating it on MNIST digits failed inside conv2d with a traceback.
    from cnnlab.models import create_model
    from cnnlab.tasks.mnist import evaluate_mnist
    from cnnlab.tasks.mnist_ensemble import combine_mnist_ensemble
    from cnnlab.train.saved import save_model

    runs = []
    for name in ("photos-a", "photos-b"):
        run = tmp_path / "transfer" / name
        kwargs = {"num_classes": 3, "in_chans": 3}
        save_model(create_model("lenet5", **kwargs), run, "lenet5", kwargs, {"task": "transfer", "classes": ["a"]})
        runs.append(run)
    missing_data = str(tmp_path / "no-mnist-here")  # the check comes before MNIST is read
    for target in (runs[0], runs[0] / "model.safetensors"):
        with pytest.raises(CnnlabError, match=r"photos-a is a transfer run, not an MNIST run.*report\.md.*predict"):
            evaluate_mnist(target, missing_data)
    with pytest.raises(CnnlabError, match="is a transfer run, not an MNIST run"):
        combine_mnist_ensemble(runs, "mixed", output=tmp_path, data_dir=missing_data)


def test_evaluate_refuses_a_digit_record_whose_network_takes_another_size(tmp_path: Path) -> None:
    """A lenet5 (1x32x32) saved from Python with no kind is read as an MNIST run: `cnnlab evaluate` fed it the
    28x28 test digits and failed with torch's "Kernel size can't be greater than actual input size" traceback."""
    from cnnlab.models import create_model
    from cnnlab.tasks.mnist import evaluate_mnist
    from cnnlab.train.saved import save_model

    save_model(create_model("lenet5"), tmp_path / "lenet", "lenet5", {}, {})
    with pytest.raises(CnnlabError, match=r"lenet5 takes 1x32x32 inputs, but its meta records no 'kind'.*1x28x28"):
        evaluate_mnist(tmp_path / "lenet", str(tmp_path / "no-mnist-here"))  # said before MNIST is read
    assert not (tmp_path / "lenet" / "evaluation").exists()


def test_evaluate_into_a_run_folder_is_refused_not_its_figures_replaced(
    ensemble_run: dict, fake_root: Path, tmp_path: Path
) -> None:
    """`evaluate RUN -o RUN` (or -o another run's folder) replaced the run's confusion_matrix.png and
    misclassified.png, which its report.md shows, with those of the evaluation; `evaluate RUN --data DIR -o RUN`
    (transfer, segment) did too, through the same folder check."""
    from cli_in_process import run_cnnlab

    run = Path(ensemble_run["run_dir"])
    figures = {name: (run / name).read_bytes() for name in ("confusion_matrix.png", "misclassified.png")}
    for output in (run, run / "seed0"):
        completed = run_cnnlab("evaluate", str(run / "seed0"), "--data-dir", str(fake_root), "-o", str(output))
        assert completed.returncode == 2, completed.stderr
        assert completed.stderr.startswith(f"error: --output {output} holds a saved run (")
        assert f"pass another folder, such as {output / 'evaluation'}" in completed.stderr
    assert {name: (run / name).read_bytes() for name in figures} == figures
    assert not (run / "evaluation.json").exists() and not (run / "seed0" / "evaluation.json").exists()


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_resume_of_a_finished_run_whose_config_is_damaged_says_so_in_one_line(
    ensemble_run: dict, fake_root: Path, tmp_path: Path, damage: str
) -> None:
    """A member's config.yaml that yaml cannot parse was a yaml ParserError traceback on --resume (read for the
    training set's digest before its options were compared); one deleted was "cannot resume ... with different
    options (accum_steps: not given -> 1, ...)", every option named but not the file. Each is one line naming it."""
    import shutil

    run = tmp_path / "mnist" / "ens"
    shutil.copytree(Path(ensemble_run["run_dir"]), run)
    config = run / "seed1" / "config.yaml"
    if damage == "garbage":
        config.write_text("{not what cnnlab wrote")
        message = rf"^{re.escape(str(config))} cannot be read as a run's config \("
    else:
        config.unlink()
        message = rf"^{re.escape(str(config))} is missing; it records how the finished run .* was trained"
    options = dict(data_dir=str(fake_root), output=str(tmp_path), name="ens", ensemble=2, val_size=40)
    with pytest.raises(CnnlabError, match=message):
        train_mnist("quick", overrides=_TINY, resume=True, **options)  # type: ignore[arg-type]


def test_resume_of_an_ensemble_whose_finished_members_probabilities_are_damaged_says_so(
    ensemble_run: dict, fake_root: Path, tmp_path: Path
) -> None:
    """An ensemble resumed (or combined again) averages the test probabilities each finished member saved: one cut
    short was an UnpicklingError traceback, one deleted 'No such file or directory' with exit code 1. Each is one
    line naming the file and how to have the member tested again."""
    import shutil

    run = tmp_path / "mnist" / "ens"
    shutil.copytree(Path(ensemble_run["run_dir"]), run)
    (run / "results.json").unlink()  # the ensemble not combined yet: its members are read back and averaged
    probabilities = run / "seed0" / "test_probabilities.pt"
    options = dict(data_dir=str(fake_root), output=str(tmp_path), name="ens", ensemble=2, val_size=40)
    message = rf"^{re.escape(str(probabilities))} cannot be read \(.+\); it holds the test probabilities of the"
    for damage in (lambda: probabilities.write_bytes(probabilities.read_bytes()[:100]), probabilities.unlink):
        damage()
        with pytest.raises(CnnlabError, match=message + r".*delete .*seed0/results.json and --resume") as refused:
            train_mnist("quick", overrides=_TINY, resume=True, **options)  # type: ignore[arg-type]
        assert "weights_only" not in str(refused.value)  # torch's advice, not for a file cnnlab wrote
