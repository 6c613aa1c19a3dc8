"""The Runs page lists the runs under the root and opens only those."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from cnnlab.errors import CnnlabError
from cnnlab.files import pid_namespace
from cnnlab.lab.runs import (
    compare_curves,
    find_runs,
    resolve_run,
    run_details,
    summarise,
    unreadable_run_folders,
    unreadable_task_folders,
)
from cnnlab.train.config import TrainConfig, save_config
from cnnlab.train.records import write_history
from unreadable import refuse_listing


def _run(root: Path, task: str, name: str, accuracy: list[float], results: dict | None, mtime: float) -> Path:
    folder = root / task / name
    folder.mkdir(parents=True)
    save_config(TrainConfig(task=task, name=name, extra={"recipe": "quick"}), folder / "config.yaml")
    history = [
        {"epoch": float(i + 1), "train_loss": 1.0 / (i + 1), "val_loss": 1.2 / (i + 1), "val_accuracy": a}
        for i, a in enumerate(accuracy)
    ]
    write_history(history, folder, plot=True)
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))
    os.utime(folder / "config.yaml", (mtime, mtime))
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    _run(tmp_path, "mnist", "old", [0.9, 0.95], {"recipe": "default", "test_accuracy": 0.9912}, 1_700_000_000)
    _run(tmp_path, "segment", "new", [0.5, 0.6, 0.7], None, 1_800_000_000)
    (tmp_path / "mnist" / "unfinished").mkdir()  # no config.yaml: not a run
    return tmp_path


def test_runs_are_listed_newest_first_with_task_recipe_and_headline(root: Path) -> None:
    runs = find_runs(root)
    assert list(runs) == ["segment/new", "mnist/old"]
    old = summarise("mnist/old", runs["mnist/old"])
    assert (old.task, old.recipe, old.metric, old.value) == ("mnist", "default", "test_accuracy", 0.9912)
    folder = _run(root, "segment", "folder", [0.5], {"model": "unet-lite0", "test": {"miou": 0.5}}, 1_700_000_000)
    save_config(TrainConfig(task="segment", name="folder", extra={"model": "unet-lite0"}), folder / "config.yaml")
    # `train segment --data` names its recipe --model and records no "recipe": its line read "-"
    assert summarise("segment/folder", folder).recipe == "unet-lite0"
    new = summarise("segment/new", runs["segment/new"])
    # no results.json: training, or interrupted; it read "val_accuracy (last epoch)" as a finished run's figure
    assert (new.recipe, new.value) == ("quick", 0.7)
    assert new.metric == "val_accuracy (epoch 3, no results yet: training or interrupted)"
    (root / "segment" / "new" / "metrics.json").unlink()  # started: its config.yaml, and no epoch yet
    started = summarise("segment/new", runs["segment/new"])
    assert (started.metric, started.value) == ("- (no epoch finished, no results yet: training or interrupted)", None)
    (root / "segment" / "new" / "metrics.json").write_text('[{"epoch": 1, "val_acc')  # cut short: no "no epoch"
    broken = summarise("segment/new", runs["segment/new"]).metric
    assert broken == "- (metrics.json cannot be read: Unterminated string starting at: line 1 column 15 (char 14), "\
        "no results yet: training or interrupted)"  # fmt: skip
    (root / "mnist" / "old" / "results.json").write_text('{"test_acc')  # was its last epoch's figure, unsaid
    line = summarise("mnist/old", runs["mnist/old"])
    assert (line.metric, line.value) == ("- (results.json cannot be read: Unterminated string starting at: line 1 "
                                         "column 2 (char 1))", None)  # fmt: skip
    (root / "mnist" / "old" / "results.json").write_text('{"recipe": "default", "test_accuracy": 0.9912}')
    assert new.date > old.date
    (root / "mnist" / "old" / "config.yaml").unlink()  # removed after the listing (--overwrite): it failed the list
    assert summarise("mnist/old", runs["mnist/old"]).date == "-"


def test_an_ensemble_extended_while_it_trains_is_counted_at_its_new_size(root: Path) -> None:
    """`-n 2` stopped before it was saved, then `-n 3 --resume`: seed0 and seed1 record ensemble 2, seed2 (training)
    3; the first member's size was taken, "members finished: 2 of 2" while the third trained."""
    for seed, size in ((0, 2), (1, 2), (2, 3)):
        member = _run(root, "mnist", f"E/seed{seed}", [0.8], {"test_accuracy": 0.9} if seed < 2 else None, 0)
        save_config(TrainConfig(task="mnist", name=f"E/seed{seed}", extra={"recipe": "quick", "ensemble": size}),
                    member / "config.yaml")  # fmt: skip
    line = summarise("mnist/E", find_runs(root)["mnist/E"])
    assert line.metric == "training (members finished: 2 of 3)"
    # `-n 2` saved, then `-n 3 --resume`: the saved 2-member result was shown as finished, nothing said of seed2
    save_config(TrainConfig(task="mnist", name="E", extra={"recipe": "quick"}), root / "mnist" / "E" / "config.yaml")
    results = {"recipe": "quick", "members": [{"seed": 0}, {"seed": 1}], "test_accuracy": 0.95}
    (root / "mnist" / "E" / "results.json").write_text(json.dumps(results))
    line = summarise("mnist/E", find_runs(root)["mnist/E"])
    assert (line.metric, line.value) == (
        "test_accuracy (of its 2 saved members; extending to 3: member seed2 training or interrupted)",
        0.95,
    )
    shutil.rmtree(root / "mnist" / "E" / "seed2")  # nothing extending it: its saved result alone
    assert summarise("mnist/E", find_runs(root)["mnist/E"]).metric == "test_accuracy"


def test_an_ensemble_still_training_is_listed_with_its_members_finished(root: Path) -> None:
    """Its members sit one folder deeper and its own config.yaml is written at its end: it was not listed at all."""
    for seed, results in ((0, {"test_accuracy": 0.9}), (1, None)):  # seed0 finished, seed1 training
        member = _run(root, "mnist", f"E/seed{seed}", [0.8], results, 0)
        save_config(TrainConfig(task="mnist", name=f"E/seed{seed}", extra={"recipe": "quick", "ensemble": 3}),
                    member / "config.yaml")  # fmt: skip
    runs = find_runs(root)
    assert list(runs) == ["segment/new", "mnist/E", "mnist/old"]  # dated by its newest member's start (now)
    line = summarise("mnist/E", runs["mnist/E"])
    assert (line.task, line.recipe, line.metric, line.value) == (
        "mnist",
        "quick",
        "training (members finished: 1 of 3)",
        None,
    )
    details = run_details(root, "mnist/E")
    assert details.learning_curves == root / "mnist" / "E" / "seed0" / "learning_curves.png"
    # "(1 of 2; ...)" counted the members started alone, read as an ensemble of 2
    label = "learning curves of member seed0 (ensemble still training, members finished: 1 of 3; each member trained"
    assert details.curves_label == f"{label} on its own)"
    assert details.config.startswith("# member seed1's config (the ensemble's own is written when it finishes)")
    # Members trained in processes of their own: each saves the ensemble's config.yaml and results.json with those
    # still to train; its line read "-" as a finished run with no figure.
    save_config(TrainConfig(task="mnist", name="E"), root / "mnist" / "E" / "config.yaml")
    results = {"recipe": "quick", "members": [{"seed": 0}], "missing_members": [1, 2], "test_accuracy": None}
    (root / "mnist" / "E" / "results.json").write_text(json.dumps(results))
    line = summarise("mnist/E", find_runs(root)["mnist/E"])
    assert (line.metric, line.value) == ("training (members finished: 1 of 3)", None)
    details = run_details(root, "mnist/E")  # it showed no curves at all: its config.yaml is its own, no ensemble.json
    assert details.learning_curves == root / "mnist" / "E" / "seed0" / "learning_curves.png"
    assert details.curves_label == f"{label} on its own)"


def test_a_runs_config_is_parsed_only_when_its_results_do_not_name_the_recipe(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every page load parsed every run's config.yaml with PyYAML's Python parser, 7 ms each: 350 runs took 4.0-4.6 s
    to list (2-core EPYC, shared), 0.11 s now. The recipe is read from results.json where it is, else from the
    config by libyaml's parser."""
    import yaml

    parsed = []
    load = yaml.load

    def counted(text: str, Loader: type) -> object:  # noqa: N803 (PyYAML's name)
        parsed.append(Loader)
        return load(text, Loader=Loader)

    monkeypatch.setattr(yaml, "load", counted)
    monkeypatch.setattr(yaml, "safe_load", lambda text: pytest.fail("parsed by PyYAML's Python parser"))
    runs = find_runs(root)
    assert summarise("mnist/old", runs["mnist/old"]).recipe == "default" and parsed == []
    assert summarise("segment/new", runs["segment/new"]).recipe == "quick"
    assert parsed == [getattr(yaml, "CSafeLoader", yaml.SafeLoader)]


def test_a_task_folder_that_cannot_be_read_is_named(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its runs were left off the Runs page without a word (chmod 000 does not stop root: simulated)."""
    assert unreadable_task_folders(root) == []
    refuse_listing(monkeypatch, root / "mnist")
    assert list(find_runs(root)) == ["segment/new"]
    assert unreadable_task_folders(root) == [("mnist", "Permission denied")]


def test_a_run_folder_that_cannot_be_opened_is_named(root: Path) -> None:
    """A symbolic link loop or a link to a folder that is gone was left off the Runs page without a word; an empty
    folder (no config.yaml: no run) and a link to a file are not runs, and not named."""
    mnist = root / "mnist"
    (mnist / "loop_a").symlink_to("loop_b")
    (mnist / "loop_b").symlink_to("loop_a")
    (mnist / "gone").symlink_to(root / "nowhere")
    (mnist / "notes").symlink_to(mnist / "old" / "config.yaml")
    (mnist / "inner").mkdir()
    (mnist / "inner" / "self").symlink_to("../inner")  # a loop below a run's level: never opened
    assert list(find_runs(root)) == ["segment/new", "mnist/old"]
    assert unreadable_run_folders(root) == [
        ("mnist/gone", "No such file or directory"),
        ("mnist/loop_a", "Too many levels of symbolic links"),
        ("mnist/loop_b", "Too many levels of symbolic links"),
    ]
    (root / "looped").symlink_to("looped")  # a task folder: the same, one level up
    assert unreadable_task_folders(root) == [("looped", "Too many levels of symbolic links")]


def test_only_listed_runs_are_opened(root: Path) -> None:
    details = run_details(root, "mnist/old")
    assert details.learning_curves == root / "mnist" / "old" / "learning_curves.png"
    assert details.confusion_matrix is None and "task: mnist" in details.config
    for forged in ("../mnist/old", "mnist/unfinished", "/etc", "mnist/../mnist/old"):
        with pytest.raises(CnnlabError, match="pick one from the list"):
            resolve_run(root, forged)


def test_a_folder_segmentation_runs_test_figures_are_shown(root: Path) -> None:
    """`train segment --data` writes test_confusion.png and test_worst.png: the page showed neither."""
    folder = root / "segment" / "new"
    for name in ("test_confusion.png", "test_worst.png"):
        Image.new("RGB", (4, 4)).save(folder / name)
    details = run_details(root, "segment/new")
    assert (details.confusion_matrix, details.mistakes) == (folder / "test_confusion.png", folder / "test_worst.png")


def test_each_runs_test_figure_is_titled_as_what_it_shows(tmp_path: Path) -> None:
    """The Runs page titled every run's third figure "misclassified / highest-loss images": a segmentation run's on
    the MNIST canvases (which `cnnlab explain` takes since 2026-12-07) draws its first test canvases, right or wrong,
    and one of a folder its worst test images. The page titles it `RunDetails.mistakes_label`."""
    figures = {"mnist": "misclassified.png", "canvases": "test_overlays.png", "folder": "test_worst.png"}
    for name, figure in figures.items():
        folder = _run(tmp_path, "mnist" if name == "mnist" else "segment", name, [0.5], None, 1_700_000_000)
        Image.new("RGB", (4, 4)).save(folder / figure)
    labels = {run_id: run_details(tmp_path, run_id).mistakes_label for run_id in find_runs(tmp_path)}
    assert labels == {
        "mnist/mnist": "misclassified test images",
        "segment/canvases": "test canvases: input, truth, prediction",
        "segment/folder": "test images with the most wrong pixels",
    }


def test_an_ensemble_shows_a_members_learning_curves_saying_whose(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An ensemble trains no curves of its own (its members do): the Runs page hid the frame without a word."""
    ensemble = _run(root, "mnist", "E", [0.9], {"test_accuracy": 0.99}, 1_900_000_000)
    (ensemble / "learning_curves.png").unlink()
    outside = tmp_path_factory.mktemp("elsewhere") / "seed9"  # `cnnlab ensemble` may name a run outside the root
    for member in (outside, ensemble / "seed1"):
        member.mkdir()
        write_history([{"epoch": 1.0, "train_loss": 1.0, "val_loss": 1.0}], member, plot=True)
    members = [os.path.relpath(outside, ensemble), "seed0", "seed1"]  # seed0 has no curves (interrupted early)
    (ensemble / "ensemble.json").write_text(json.dumps({"format": "cnnlab-ensemble-1", "members": members}))
    details = run_details(root, "mnist/E")
    assert details.learning_curves == ensemble / "seed1" / "learning_curves.png"
    assert details.curves_label == "learning curves of member seed1 (3 of 3; each member trained on its own)"
    assert run_details(root, "mnist/old").curves_label == "learning curves"
    (ensemble / "metrics.json").unlink()  # as `cnnlab ensemble` writes it: no epochs of its own
    # Compare refused it ("its members trained the curves"): its members' are plotted, those inside the root alone
    figure = compare_curves(root, "mnist/E", "mnist/old")
    labels = {line.get_label() for axis in figure.axes for line in axis.get_lines()}
    assert labels == {"mnist/E/seed1: train_loss", "mnist/E/seed1: val_loss"} | {
        f"mnist/old: {key}" for key in ("train_loss", "val_loss", "val_accuracy")
    }
    assert figure.get_suptitle() == "mnist/E's members not plotted: seed9 (outside the runs root), seed0 (no epoch yet)"


def test_two_runs_curves_share_one_figure(root: Path) -> None:
    figure = compare_curves(root, "mnist/old", "segment/new")
    labels = [line.get_label() for axis in figure.axes for line in axis.get_lines()]
    assert "mnist/old: val_accuracy" in labels and "segment/new: val_accuracy" in labels
    assert "segment/new: train_loss" in labels
    lengths = {line.get_label(): len(line.get_xdata()) for axis in figure.axes for line in axis.get_lines()}
    assert lengths["mnist/old: val_accuracy"] == 2 and lengths["segment/new: val_accuracy"] == 3
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    plt.close(figure)
    # matplotlib's cycle of ten colours gave the 11th metric the 1st's: each of 15 metrics has its own
    (root / "mnist" / "old" / "metrics.json").write_text(
        json.dumps([{"epoch": 1, **{f"val_m{i}": 0.5 for i in range(12)}}])
    )
    figure = compare_curves(root, "mnist/old", "segment/new")
    colours = {
        line.get_label().split(": ")[1]: to_hex(line.get_color()) for axis in figure.axes for line in axis.get_lines()
    }
    assert len(colours) == 15 and len(set(colours.values())) == 15
    plt.close(figure)
    # a run without epochs is refused before a figure is made: each refusal left one open in pyplot (Gradio closes
    # the figures it shows), which the long-running lab kept, warning after 20
    (root / "segment" / "new" / "metrics.json").unlink()
    opened = len(plt.get_fignums())
    with pytest.raises(CnnlabError, match="run segment/new has no metrics.json with epochs"):
        compare_curves(root, "mnist/old", "segment/new")
    assert len(plt.get_fignums()) == opened
    # a metrics.json cut short was "no metrics.json with epochs", which the run has
    (root / "mnist" / "old" / "metrics.json").write_text('[{"epoch": 1, "val_acc')
    with pytest.raises(CnnlabError, match=r"run mnist/old's metrics.json cannot be read \(Unterminated string"):
        compare_curves(root, "mnist/old", "segment/new")


def test_compare_plots_each_member_of_an_ensemble_beside_a_single_run(root: Path) -> None:
    """Comparing an ensemble (`train mnist -n 3`: seed0..seed2, no epochs of its own) with a run was refused, saying
    where its curves are: each member's are plotted, named, a member still training with the epochs it has."""
    import matplotlib.pyplot as plt

    ensemble = root / "mnist" / "E"

    def member(seed: int, epochs: int) -> None:
        folder = ensemble / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text("config:\n  task: mnist\n  extra: {recipe: quick, ensemble: 3}\n")
        rows = [{"epoch": e + 1, "train_loss": 1 / (e + 1), "val_accuracy": 0.9 + e / 100} for e in range(epochs)]
        (folder / "metrics.json").write_text(json.dumps(rows))

    for seed, epochs in ((0, 3), (1, 1), (2, 0)):  # seed0 finished, seed1 training, seed2 started: no epoch yet
        member(seed, epochs)
    assert "mnist/E" in find_runs(root)  # listed while training: no config.yaml of its own yet
    figure = compare_curves(root, "mnist/E", "mnist/old")
    lengths = {line.get_label(): len(line.get_xdata()) for axis in figure.axes for line in axis.get_lines()}
    assert lengths == {
        "mnist/E/seed0: train_loss": 3,
        "mnist/E/seed0: val_accuracy": 3,
        "mnist/E/seed1: train_loss": 1,
        "mnist/E/seed1: val_accuracy": 1,
        "mnist/old: train_loss": 2,
        "mnist/old: val_loss": 2,
        "mnist/old: val_accuracy": 2,
    }
    assert figure.get_suptitle() == "mnist/E's members not plotted: seed2 (no epoch yet)"
    lines = {line.get_label(): line for axis in figure.axes for line in axis.get_lines()}
    # one colour per metric across runs and members, one marker per member, one line style per run
    assert lines["mnist/E/seed0: val_accuracy"].get_color() == lines["mnist/old: val_accuracy"].get_color()
    assert lines["mnist/E/seed0: val_accuracy"].get_marker() != lines["mnist/E/seed1: val_accuracy"].get_marker()
    assert lines["mnist/E/seed1: train_loss"].get_linestyle() != lines["mnist/old: train_loss"].get_linestyle()
    plt.close(figure)
    # a run with itself was drawn twice: its legend named each member twice ("mnist/E/seed0 / mnist/E/seed0")
    figure = compare_curves(root, "mnist/E", "mnist/E")
    entries = [text.get_text() for text in figure.legends[0].get_texts()]
    assert entries == ["mnist/E (one line per member)", "mnist/E/seed0", "mnist/E/seed1", "train_loss", "val_accuracy"]
    assert len([line for axis in figure.axes for line in axis.get_lines()]) == 4
    assert figure.get_suptitle() == "mnist/E's members not plotted: seed2 (no epoch yet)"
    plt.close(figure)
    (ensemble / "seed2" / "metrics.json").write_text('[{"epoch": 1, "train_lo')  # cut short: said, the rest plotted
    figure = compare_curves(root, "mnist/old", "mnist/E")
    assert figure.get_suptitle().startswith("mnist/E's members not plotted: seed2 (metrics.json cannot be read: ")
    plt.close(figure)
    member(2, 2)  # finished: the ensemble saved, its ensemble.json listing its members
    (ensemble / "ensemble.json").write_text(json.dumps({"format": "cnnlab-ensemble-1", "members": ["seed0", "seed2"]}))
    figure = compare_curves(root, "mnist/E", "mnist/old")
    labels = {line.get_label() for axis in figure.axes for line in axis.get_lines()}
    assert {label.split(":")[0] for label in labels} == {"mnist/E/seed0", "mnist/E/seed2", "mnist/old"}
    assert figure.get_suptitle() == ""
    plt.close(figure)
    for seed in (0, 2):
        (ensemble / f"seed{seed}" / "metrics.json").unlink()
    opened = len(plt.get_fignums())
    with pytest.raises(CnnlabError, match=r"^run mnist/E is an ensemble and none of its members under the runs root "
                       r"has epochs to plot yet: seed0 \(no epoch yet\), seed2 \(no epoch yet\)$"):  # fmt: skip
        compare_curves(root, "mnist/old", "mnist/E")
    assert len(plt.get_fignums()) == opened


@pytest.mark.parametrize(
    ("results", "metric", "value"),
    [
        ({"test": {"accuracy": 1.0, "balanced_accuracy": 1.0, "loss": 0.1}}, "test_accuracy", 1.0),  # train transfer
        ({"test": {"pixel_accuracy": 0.97, "miou": 0.61, "miou_with_bg": 0.7}}, "test_miou", 0.61),  # train segment
        ({"test": {"count": 6}}, "val_accuracy (last epoch)", 0.75),  # no test figure: the last epoch's
    ],
)
def test_the_headline_is_the_test_report_of_a_transfer_or_segmentation_run(
    tmp_path: Path, results: dict, metric: str, value: float
) -> None:
    """A transfer run's headline was its last epoch's val_accuracy (0.8333) while its test accuracy was 1.0: only
    top-level test_* figures were read, and transfer and segment runs write theirs under "test"."""
    folder = _run(tmp_path, "transfer", "t1", [0.5, 0.75], results, 1_700_000_000)
    line = summarise("transfer/t1", folder)
    assert (line.metric, line.value) == (metric, value)


def test_a_figure_cut_short_is_named_and_drawn_again_not_a_failed_page(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed while it redrew learning_curves.png (every epoch) left half a PNG: opening it failed the whole
    Runs page on load ("image file is truncated"), runs table and the other pages' run lists included."""
    folder = root / "segment" / "new"
    curves = folder / "learning_curves.png"
    curves.write_bytes(curves.read_bytes()[:3000])
    (folder / "config.yaml").write_bytes((folder / "config.yaml").read_bytes() + b"# caf\xe9\n")  # latin-1 text
    details = run_details(root, "segment/new")
    assert details.unreadable == ["learning_curves.png: corrupt or truncated (image file is truncated)"]
    # its epochs were hidden with the figure: drawn from metrics.json, as the engine draws them, and said so
    assert details.curves_label == "learning curves (drawn from metrics.json: its learning_curves.png cannot be read)"
    assert details.learning_curves is not None and details.learning_curves.parent != folder
    assert Image.open(details.learning_curves).size == Image.open(root / "mnist" / "old" / "learning_curves.png").size
    # into a folder removed when the lab exits (a /tmp/cnnlab-lab-<pid> was left behind by each lab)
    from cnnlab.lab import runs

    assert details.learning_curves.parent == Path(runs._scratch().name)
    assert details.learning_curves.parent.name == f"cnnlab-lab-{os.getpid()}"  # which a later lab tells by its id
    runs._scratch().cleanup()  # what exiting does
    assert not details.learning_curves.parent.exists()
    curves.unlink()  # killed in its first epoch between metrics.json and the figure: none saved
    assert (
        run_details(root, "segment/new").curves_label == "learning curves (drawn from metrics.json: the run saved none)"
    )
    assert "task: segment" in details.config
    assert run_details(root, "mnist/old").unreadable == []
    (root / "mnist" / "other" / "config.yaml").mkdir(parents=True)  # a folder named so: no run
    assert list(find_runs(root)) == ["segment/new", "mnist/old"]
    read_text = Path.read_text

    def refused(path: Path, *args: object, **kwargs: object) -> str:
        if path.name == "config.yaml":
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refused)  # another user's file (chmod does not stop root: simulated)
    assert run_details(root, "mnist/old").config == "# config.yaml cannot be read (Permission denied)\n"


def test_a_run_with_odd_records_is_listed_with_what_can_be_read(root: Path) -> None:
    """One run whose records held a null, a text or another layout (`extra: null`, a list of non-epochs) failed the
    whole runs list: float(None), 'list' object has no attribute 'get', 'int' object is not subscriptable."""
    folder = root / "mnist" / "old"
    (folder / "config.yaml").write_text("config:\n  extra: null\n  task: mnist\n")
    (folder / "results.json").write_text('{"test": [1]}')
    (folder / "metrics.json").write_text('[1, {"epoch": 1, "val_accuracy": null, "val_loss": 0.5}]')
    line = summarise("mnist/old", folder)
    assert (line.recipe, line.metric, line.value) == ("-", "val_loss (last epoch)", 0.5)
    figure = compare_curves(root, "mnist/old", "segment/new")
    lengths = {line.get_label(): len(line.get_xdata()) for axis in figure.axes for line in axis.get_lines()}
    assert lengths["mnist/old: val_loss"] == 1 and lengths["segment/new: val_loss"] == 3


def test_an_experiment_is_listed_with_its_best_variant_figure_and_command(root: Path) -> None:
    """`cnnlab experiment` writes OUTPUT/experiment/NAME/ with results.json, report.md and figures but no config.yaml
    (its seeds' runs sit one level deeper): the Runs page did not list it at all."""
    folder = root / "experiment" / "pool-vs-stride"
    (folder / "max-pool" / "seed0").mkdir(parents=True)
    save_config(TrainConfig(task="experiment", name="x"), folder / "max-pool" / "seed0" / "config.yaml")
    measured = {"max-pool": {"test accuracy": [0.9, 0.8]}, "strided-conv": {"test accuracy": [0.7, 0.7]}}
    (folder / "results.json").write_text(json.dumps({"measured": measured, "settings": {"epochs": 1, "seeds": 2}}))
    command = "cnnlab experiment pool-vs-stride --epochs 1 --seeds 2 --data-dir /some/where/long " + "x" * 60
    (folder / "report.md").write_text(f"# Max pooling\n\n- command: `{command}`\n")
    Image.new("RGB", (4, 4)).save(folder / "val_accuracy.png")
    runs = find_runs(root)
    assert "experiment/pool-vs-stride" in runs and "experiment/pool-vs-stride/max-pool" not in runs
    line = summarise("experiment/pool-vs-stride", runs["experiment/pool-vs-stride"])
    assert (line.task, line.recipe) == ("experiment", "-")
    assert line.metric == "mean test accuracy of max-pool (best of 2 variants; report.md compares them)"
    assert line.value == pytest.approx(0.85)
    details = run_details(root, "experiment/pool-vs-stride")
    assert details.learning_curves == folder / "val_accuracy.png"
    assert details.curves_label == "val accuracy of each variant (more in report.md)"
    assert f"command: {command}\n" in details.config and "seeds: 2" in details.config
    (folder / "results.json").write_text("{")  # cut short: still listed, saying where to look
    assert summarise("experiment/pool-vs-stride", folder).metric == "- (see its report.md)"


def test_an_ensemble_cnnlab_ensemble_combined_is_listed_with_its_members_and_results(root: Path) -> None:
    """`cnnlab ensemble` writes OUTPUT/mnist/NAME/ with ensemble.json, results.json and report.md but no config.yaml
    (it trains nothing): the Runs page did not list it at all."""
    folder = root / "mnist" / "mixed"
    folder.mkdir()
    members = ["../old", "../E/seed0", "../gone"]  # a member moved away on its own is named as not there
    (root / "mnist" / "E" / "seed0").mkdir(parents=True)
    meta = {"select": "greedy", "runs": [str(root / "mnist" / "old")]}
    record = {"format": "cnnlab-ensemble-1", "members": members, "meta": meta}
    (folder / "ensemble.json").write_text(json.dumps(record))
    candidates = [{"run_dir": str(root / "mnist" / "old"), "chosen": True, "val_accuracy": 0.9, "test_accuracy": 0.98}]
    results = {"select": "greedy", "candidates": candidates, "val_accuracy": 0.95, "test_accuracy": 0.9931}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "report.md").write_text("# MNIST ensemble\n")
    os.utime(folder / "ensemble.json", (1_900_000_000, 1_900_000_000))
    runs = find_runs(root)
    assert list(runs)[0] == "mnist/mixed"
    line = summarise("mnist/mixed", runs["mnist/mixed"])
    assert (line.task, line.metric, line.value) == ("mnist", "test_accuracy", 0.9931)
    assert line.recipe == (
        "ensemble of 3 (cnnlab ensemble, --select greedy): mnist/old, mnist/E/seed0, mnist/gone (not there: moved or "
        "renamed?)"
    )
    details = run_details(root, "mnist/mixed")
    assert details.config.startswith("# an ensemble `cnnlab ensemble` combined from saved runs")
    assert "members:\n- mnist/old\n- mnist/E/seed0\n" in details.config and "test_accuracy: 0.9931\n" in details.config
    assert "val_accuracy: 0.9\n" in details.config  # each candidate's results too
    assert details.learning_curves == root / "mnist" / "old" / "learning_curves.png"  # its first member's
    assert details.curves_label == "learning curves of member mnist/old (1 of 3; each member trained on its own)"
    # while `cnnlab ensemble` builds one it writes a hidden .NAME.partial, renamed when done: listed as a run
    for hidden in (root / "mnist" / ".mixed.partial", root / ".mnist" / "copy"):
        hidden.mkdir(parents=True)
        (hidden / "ensemble.json").write_text(json.dumps(record))
        save_config(TrainConfig(task="mnist", name="x"), hidden / "config.yaml")
    assert sorted(find_runs(root)) == sorted(runs)


def test_a_moved_run_says_where_it_is_now_above_the_config_it_recorded(root: Path) -> None:
    """A run moved or renamed showed only the output path its config.yaml records, as if it were still there."""
    folder = root / "mnist" / "here"
    folder.mkdir()
    save_config(TrainConfig(task="mnist", name="here", output=str(root)), folder / "config.yaml")
    assert run_details(root, "mnist/here").config.startswith("config:\n")  # where it was written: no note
    folder.rename(root / "mnist" / "renamed")
    config = run_details(root, "mnist/renamed").config
    assert config.startswith(
        f"# moved: written to {root / 'mnist' / 'here'}, now at {root / 'mnist' / 'renamed'}; the paths below are "
        "where it was written\nconfig:\n"
    )
    # a config that records no output (`train mnist -n`'s recipe record): its results.json's run_dir
    (root / "mnist" / "renamed" / "config.yaml").write_text("config:\n  recipe: quick\n")
    (root / "mnist" / "renamed" / "results.json").write_text(json.dumps({"run_dir": str(root / "mnist" / "E")}))
    assert run_details(root, "mnist/renamed").config.startswith(f"# moved: written to {root / 'mnist' / 'E'}, ")
    (root / "mnist" / "E").mkdir()
    assert run_details(root, "mnist/renamed").config.startswith("# copied (the original is still there): written")


def test_an_ensemble_of_ten_keeps_its_compare_legend_off_the_curves(root: Path) -> None:
    """A legend entry per line (an ensemble of 10: 20 in the loss plot) grew a legend larger than the plot it sat in,
    covering the curves: one key below both plots says what colour (metric), style (run) and marker (member) mean."""
    import matplotlib.pyplot as plt

    ensemble = root / "mnist" / "ten"
    for seed in range(10):
        (ensemble / f"seed{seed}").mkdir(parents=True)
        (ensemble / f"seed{seed}" / "config.yaml").write_text("config:\n  extra: {recipe: quick, ensemble: 10}\n")
        rows = [{"epoch": e + 1, "train_loss": 1 / (e + 1 + seed), "val_loss": 1.1 / (e + 1)} for e in range(2)]
        (ensemble / f"seed{seed}" / "metrics.json").write_text(json.dumps(rows))
    figure = compare_curves(root, "mnist/ten", "mnist/old")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legends = figure.legends + [axis.get_legend() for axis in figure.axes if axis.get_legend()]
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    assert all(not box.overlaps(axis.get_window_extent(renderer)) for axis in figure.axes)
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= figure.bbox.x1  # inside the figure
    entries = [text.get_text() for text in legends[0].get_texts()]
    assert entries[:2] == ["mnist/ten (one line per member)", "mnist/old"]
    assert "mnist/ten/seed9" in entries and {"train_loss", "val_loss", "val_accuracy"} <= set(entries)
    lines = {line.get_label(): line for axis in figure.axes for line in axis.get_lines()}
    assert lines["mnist/ten/seed0: train_loss"].get_marker() != lines["mnist/old: train_loss"].get_marker()
    plt.close(figure)


def test_the_figure_folders_of_killed_labs_are_removed_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lab killed outright (SIGKILL) cannot remove its /tmp/cnnlab-lab-<pid>: each one stayed for good. A lab
    starting removes those whose process is gone, and nothing else."""
    import subprocess

    from cnnlab.lab.runs import _mark_scratch, remove_stale_scratch

    ended = subprocess.Popen(["true"])
    ended.wait()  # a process id that no process has now
    kept = {f"cnnlab-lab-{os.getpid()}", f"cnnlab-lab-{os.getppid()}", f"cnnlab-lab-{ended.pid}-x", "cnnlab-lab-12a"}
    for name in kept | {f"cnnlab-lab-{ended.pid}"}:
        (tmp_path / name).mkdir()
        (tmp_path / name / "curves.png").write_bytes(b"png")
        _mark_scratch(tmp_path / name)  # made by a lab of this machine and process-id namespace
    (tmp_path / "cnnlab-lab-99999999999").write_text("a file")  # no folder: kept
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "cnnlab-lab-99999999998").symlink_to(target)  # a link: kept, and what it points to
    assert remove_stale_scratch(tmp_path) == [tmp_path / f"cnnlab-lab-{ended.pid}"]
    assert {p.name for p in tmp_path.iterdir()} == kept | {
        "cnnlab-lab-99999999999",
        "cnnlab-lab-99999999998",
        "elsewhere",
    }
    (tmp_path / f"cnnlab-lab-{ended.pid}").mkdir()
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)  # another user's: kept
    assert remove_stale_scratch(tmp_path) == []


def test_the_figure_folder_of_a_live_lab_in_another_container_sharing_tmp_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/tmp may be shared by containers that number their processes on their own: a live lab there has an id that no
    process has here, and a lab starting here removed its folder, or, having the same id, took it over. A folder
    is removed when its marker names this namespace and its process is gone; any other when untouched for a day."""
    import subprocess

    from cnnlab.lab import runs

    ended = subprocess.Popen(["true"])
    ended.wait()  # a process id that no process has here
    elsewhere = tmp_path / f"cnnlab-lab-{ended.pid}"
    elsewhere.mkdir()
    (elsewhere / "curves.png").write_bytes(b"png")
    foreign = "other-container\nboot\npid:[4026532999]"  # the marker of a lab in another pid namespace
    (elsewhere / ".cnnlab-lab-namespace").write_text(foreign)
    unmarked = tmp_path / f"cnnlab-lab-{ended.pid + 1}"  # made by a lab older than the marker
    unmarked.mkdir()
    assert runs.remove_stale_scratch(tmp_path) == []
    assert (elsewhere / "curves.png").is_file() and unmarked.is_dir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(elsewhere, (two_days_ago, two_days_ago))
    assert runs.remove_stale_scratch(tmp_path) == [elsewhere]  # untouched for a day: a leftover wherever it ran
    # A lab here whose id is that live lab's: it takes a folder of its own, and leaves the other one alone.
    own = tmp_path / f"cnnlab-lab-{os.getpid()}"
    own.mkdir()
    (own / ".cnnlab-lab-namespace").write_text(foreign)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    scratch = runs._ScratchFolder()
    assert Path(scratch.name) != own and Path(scratch.name).parent == tmp_path
    assert (own / ".cnnlab-lab-namespace").read_text() == foreign
    assert (Path(scratch.name) / runs._SCRATCH_MARKER).read_text() == pid_namespace()
    scratch.cleanup()
    # one this namespace marked, of a process that had this id before: taken over
    runs._mark_scratch(own)
    scratch = runs._ScratchFolder()
    assert Path(scratch.name) == own and [p.name for p in own.iterdir()] == [runs._SCRATCH_MARKER]
    scratch.cleanup()
