"""Ensembles across runs and recipes: members expanded, chosen on validation, tested once, loadable."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.tasks.mnist import evaluate_mnist, train_mnist
from cnnlab.tasks.mnist_ensemble import combine_mnist_ensemble, greedy_selection, member_dirs
from cnnlab.train.saved import Ensemble, load_model

_spec = importlib.util.spec_from_file_location("_idx", Path(__file__).parents[1] / "data" / "test_mnist_idx.py")
_idx = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_idx)  # type: ignore[union-attr]

DIGITS = [str(digit) for digit in range(10)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(fake MNIST root, runs root, ...): a 2-member quick ensemble and a single baseline run."""
    root = _idx.write_fake_mnist(tmp_path_factory.mktemp("mnist"), train=240, test=80)
    output = tmp_path_factory.mktemp("runs")
    common = dict(data_dir=str(root), output=str(output), val_size=40, progress=False)
    train_mnist("quick", name="pair", ensemble=2, overrides={"epochs": 2, "batch_size": 24}, **common)
    train_mnist("baseline", name="single", overrides={"epochs": 1, "batch_size": 24}, **common)
    return root, output, output / "mnist"


def test_an_ensemble_run_counts_as_its_members(runs: tuple[Path, Path, Path]) -> None:
    _, _, mnist = runs
    found = member_dirs([mnist / "pair", mnist / "single", mnist / "pair" / "seed0"])  # seed0 twice: kept once
    assert found == [
        (mnist / "pair" / "seed0").resolve(),
        (mnist / "pair" / "seed1").resolve(),
        (mnist / "single").resolve(),
    ]


def test_combined_ensemble_is_saved_tested_and_loadable(
    runs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while it drew its figures, it left ensemble.json (a loadable model with no results) and a folder the
    same command then refused ("exists; choose another --name"): now nothing, and the same command makes it."""
    from stopped_midway import stop_savefig_midway

    root, output, mnist = runs
    with monkeypatch.context() as stopped:
        stop_savefig_midway(stopped)
        with pytest.raises(KeyboardInterrupt):
            combine_mnist_ensemble([mnist / "pair", mnist / "single"], "mixed", output=output, data_dir=str(root))
    assert not (mnist / "mixed").exists() and not list(mnist.glob(".mixed*"))
    summary = combine_mnist_ensemble(
        [mnist / "pair", mnist / "single"], "mixed", output=output, data_dir=str(root), val_size=40
    )
    assert summary["test"]["confusion_matrix_png"] == str(mnist / "mixed" / "confusion_matrix.png")
    assert len(summary["chosen"]) == 3 and all(c["chosen"] for c in summary["candidates"])
    model = cnnlab.load_model(mnist / "mixed")
    assert isinstance(model, Ensemble) and len(model.members) == 3
    meta = json.loads((mnist / "mixed" / "ensemble.json").read_text())["meta"]  # an MNIST model's record, said so
    assert (meta["task"], meta["kind"], meta["classes"], meta["select"]) == ("mnist", "digit-classifier", DIGITS, "all")
    # The saved ensemble gives the accuracy the summary reports (evaluate reloads it from disk).
    evaluated = evaluate_mnist(mnist / "mixed", data_dir=str(root))
    assert evaluated["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    results = json.loads((mnist / "mixed" / "results.json").read_text())
    assert results["val_errors"] == summary["val_errors"]
    # It had results.json alone: now a report.md whose every number is results.json's and evaluate's
    report = (mnist / "mixed" / "report.md").read_text()
    test = results["test"]
    assert test["confusion_matrix"] == evaluated["confusion_matrix"] and test["errors"] == evaluated["errors"]
    assert test["per_class_accuracy"] == evaluated["per_class_accuracy"] and results["test_errors"] == test["errors"]
    assert f"Ensemble accuracy **{evaluated['test_accuracy']:.4f}** ({test['errors']} errors in 80 images)" in report
    assert all(f"| {d} | {a:.4f} |" in report for d, a in enumerate(evaluated["per_class_accuracy"]))
    assert (
        "![confusion matrix](confusion_matrix.png)" in report and (mnist / "mixed" / "confusion_matrix.png").is_file()
    )
    spec = json.loads((mnist / "mixed" / "ensemble.json").read_text())
    assert [c["weights_sha256"] for c in results["candidates"]] == spec["digests"]
    for c in results["candidates"]:
        row = (
            f"| {c['val_accuracy']:.4f} | {c['val_errors']} | {c['val_log_loss']:.4f} | yes | "
            f"{c['test_accuracy']:.4f} | `{c['weights_sha256'][:12]}` | {c['run_dir']} |"
        )
        assert row in report, row
    assert "`--select all`: every one of the 3 candidates is kept. On the 40 validation images" in report
    assert f"accuracy **{results['val_accuracy']:.4f}** ({results['val_errors']} errors, log loss " in report


def test_greedy_selection_keeps_the_prefix_with_the_fewest_errors() -> None:
    labels = torch.tensor([0, 0, 0, 0])
    # Each of a, b, c misreads a different image, narrowly; any two of them outvote the third.
    a = torch.tensor([[0.4, 0.6], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    b = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.9, 0.1], [0.9, 0.1]])
    c = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.9, 0.1]])
    wrong = torch.tensor([[0.3, 0.7]] * 4)  # wrong everywhere
    chosen = greedy_selection([wrong, a, b, c], labels)
    # a alone: 1 error; a + b: none; a + b + c: none and a lower log loss; adding `wrong` raises the log loss.
    assert sorted(chosen) == [1, 2, 3] and 0 not in chosen


def test_greedy_selection_keeps_the_best_member_alone_when_nothing_helps() -> None:
    labels = torch.tensor([0, 1])
    best = torch.tensor([[0.99, 0.01], [0.01, 0.99]])
    assert greedy_selection([torch.full((2, 2), 0.5), best], labels) == [1]


def test_greedy_selection_prefers_fewer_errors_to_a_lower_log_loss() -> None:
    labels = torch.tensor([0, 0, 0])
    calibrated = torch.tensor([[0.99, 0.01], [0.99, 0.01], [0.4, 0.6]])  # 1 error, low log loss
    hedging = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])  # no error, higher log loss
    assert greedy_selection([calibrated, hedging], labels)[0] == 1


def test_greedy_selection_on_real_runs_chooses_on_validation(runs: tuple[Path, Path, Path]) -> None:
    root, output, mnist = runs
    summary = combine_mnist_ensemble(
        [mnist / "pair", mnist / "single"], "chosen", select="greedy", output=output, data_dir=str(root), val_size=40
    )
    chosen = [c for c in summary["candidates"] if c["chosen"]]
    assert 1 <= len(chosen) == len(summary["chosen"])
    report = (mnist / "chosen" / "report.md").read_text()  # the rule, and what it chose, in the order chosen
    assert f"kept {len(chosen)} of the 3 candidates, in the order chosen: `{summary['chosen'][0]}`" in report
    assert all(f" | {'yes' if c['chosen'] else 'no'} | " in report for c in summary["candidates"])
    assert all(c["test_accuracy"] is None for c in summary["candidates"] if not c["chosen"])  # never tested
    fewest = min(c["val_errors"] for c in summary["candidates"])
    assert summary["val_errors"] <= fewest  # never worse on validation than the best single member


def test_bad_inputs_are_clear_errors(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, output, mnist = runs
    with pytest.raises(CnnlabError, match="at least 2 members"):
        member_dirs([mnist / "single"])
    with pytest.raises(CnnlabError, match=r"1 found in .*single, .*single \(the same run given more than once"):
        member_dirs([mnist / "single", mnist / "single"])
    with pytest.raises(CnnlabError, match="holds no model.json or ensemble.json"):
        member_dirs([tmp_path])
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CnnlabError, match="its training has not finished .*with --resume"):  # said "pass finished runs"
        member_dirs([tmp_path / "stopped"])
    with pytest.raises(CnnlabError, match="no-such-run does not exist; pass the run directories"):
        member_dirs([tmp_path / "no-such-run"])  # was "holds no model.json", as if it were a folder
    with pytest.raises(CnnlabError, match="unknown selection 'best'"):
        combine_mnist_ensemble([mnist / "pair"], "x", select="best", output=output, data_dir=str(root))
    with pytest.raises(CnnlabError, match="exists; choose another --name or pass --overwrite"):
        combine_mnist_ensemble([mnist / "pair", mnist / "single"], "single", output=output, data_dir=str(root))
    with pytest.raises(CnnlabError, match="holds members of this ensemble"):
        combine_mnist_ensemble([mnist / "pair"], "pair", output=output, data_dir=str(root), overwrite=True)


def test_members_are_scored_on_images_none_of_them_trained_on(
    runs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ensemble validated on 5,000 images whatever the members held out: a member trained with --val-size 0 or
    40 had trained on most of them (the greedy choice was made on training images), and --val-size 0 was a
    ValueError from torch.cat."""
    from cnnlab.cli import main

    root, output, mnist = runs
    common = dict(data_dir=str(root), output=str(output))
    train_mnist(
        "baseline", name="all-in", val_size=0, overrides={"epochs": 1, "batch_size": 24}, progress=False, **common
    )
    both = [mnist / "pair", mnist / "single"]
    summary = combine_mnist_ensemble(both, "held-out", **common)  # no --val-size: what the members held out
    assert summary["val_size"] == 40 and summary["val_errors"] is not None
    with pytest.raises(CnnlabError, match=r"--val-size 41: .*seed0 held out only 40 validation .*--val-size 40 or"):
        combine_mnist_ensemble(both, "more", val_size=41, **common)
    with pytest.raises(CnnlabError, match="a member was trained with --val-size 0.*use --select all"):
        combine_mnist_ensemble([*both, mnist / "all-in"], "greedy", select="greedy", **common)
    with pytest.raises(CnnlabError, match="--select greedy chooses members .* and --val-size is 0"):
        combine_mnist_ensemble(both, "greedy", select="greedy", val_size=0, **common)
    unvalidated = combine_mnist_ensemble([*both, mnist / "all-in"], "all-three", **common)
    assert unvalidated["val_size"] == 0 and unvalidated["val_accuracy"] is None and unvalidated["test_accuracy"] >= 0
    arguments = ["ensemble", *map(str, both), "--name", "cli-zero", "-o", str(output), "--data-dir", str(root)]
    monkeypatch.setattr(sys, "argv", ["cnnlab", *arguments, "--val-size", "0"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert not exit_info.value.code
    assert "ensemble of 3: val - (no validation images)  test " in capsys.readouterr().out  # pair's 2 + single


def test_validation_images_from_another_training_set_than_the_members_are_refused(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The validation split was cut again from whatever --data-dir held: another MNIST folder (or one changed since
    training) scored and chose the members on other images, some of which they may have trained on, unsaid."""
    root, output, mnist = runs
    other = _idx.write_fake_mnist(tmp_path / "other", train=240, test=80, seed=1)  # the same shape, other digits
    both = [mnist / "pair", mnist / "single"]
    with pytest.raises(CnnlabError, match=r"seed0 held its validation images out of other MNIST training images than"):
        combine_mnist_ensemble(both, "elsewhere", output=output, data_dir=str(other), select="greedy")
    assert not (mnist / "elsewhere").exists()
    # Without validation images the folder gives only the test set, as `cnnlab evaluate` takes it
    assert combine_mnist_ensemble(both, "tested-elsewhere", output=output, data_dir=str(other), val_size=0)["chosen"]


def test_cli_prints_members_and_the_ensemble(
    runs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlab.cli import main

    root, output, mnist = runs
    args = ["ensemble", str(mnist / "pair"), str(mnist / "single"), "--name", "cli", "-o", str(output)]
    monkeypatch.setattr(
        sys, "argv", ["cnnlab", *args, "--data-dir", str(root), "--val-size", "40", "--select", "greedy"]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert not exit_info.value.code
    out = capsys.readouterr().out
    assert out.count("val ") == 4 and "ensemble of " in out and (mnist / "cli" / "ensemble.json").is_file()


def _digit(path: Path) -> Path:
    """A photo-like digit: dark ink on light paper, off-centre, larger than MNIST's 28x28."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (90, 120), 230)
    ImageDraw.Draw(image).ellipse([30, 20, 80, 100], outline=20, width=9)
    image.save(path)
    return path


@pytest.mark.parametrize("run", ["single", "pair"])  # one model, and an ensemble (ensemble.json)
def test_an_mnist_run_predicts_a_photo_of_a_digit(runs: tuple[Path, Path, Path], tmp_path: Path, run: str) -> None:
    # predict said an MNIST run "records no class names or preprocessing; it was not saved by cnnlab train transfer".
    from PIL import Image

    from cnnlab.data.mnist import mnist_preprocess
    from cnnlab.tasks.predict import load_predictor, predict_images

    image = _digit(tmp_path / "digit.png")
    predictor = load_predictor(str(runs[2] / run))
    assert predictor.classes == [str(d) for d in range(10)] and predictor.cfg is None
    (result,) = predict_images(predictor, [image], top_k=10)
    with Image.open(image) as opened, torch.inference_mode():
        expected = load_model(runs[2] / run)(mnist_preprocess(opened).unsqueeze(0)).softmax(1)[0]
    got = torch.tensor([entry["probability"] for entry in sorted(result["top"], key=lambda e: e["index"])])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")  # was classified, as whatever an empty canvas gives
    blank, again = predict_images(predictor, [tmp_path / "blank.png", image], top_k=1)
    assert blank["error"].startswith("no digit found: no pixel stands out") and again["top"] == result["top"][:1]


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_an_mnist_run_exports_with_its_digit_preparation(
    runs: tuple[Path, Path, Path], tmp_path: Path, fmt: str
) -> None:
    from cnnlab.tasks.export import export_model

    result = export_model(str(runs[2] / "single"), fmt, tmp_path / f"digits.{fmt}")
    assert result["max_abs_difference"] < 1e-5 and result["input"].startswith("grey 28x28")
    record = json.loads(Path(result["preprocessing"]).read_text())
    assert record["classes"] == [str(d) for d in range(10)] and "[N, 1, 28, 28]" in record["input"]
    assert record["input_shape"] == ["N", 1, 28, 28] and "height and width fixed at 28x28" in record["input"]
    assert "20x20" in record["prepare"] and "record" not in record
    loaded = torch.jit.load(result["model"]) if fmt == "torchscript" else torch.export.load(result["model"]).module()
    for batch in (1, 3, 7):  # batch sizes the export was not traced at
        digits = torch.rand(batch, 1, 28, 28)
        with torch.inference_mode():
            torch.testing.assert_close(loaded(digits), load_model(runs[2] / "single")(digits), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("run", ["single", "pair"])
def test_an_mnist_export_used_from_its_record_alone_gives_predicts_probabilities(
    runs: tuple[Path, Path, Path], tmp_path: Path, run: str
) -> None:
    """The record said "fitted in 20x20, centre of mass at (14, 14)" and named cnnlab's function: the inversion, the ink
    threshold, the filter and the rounding were left to guesses. Each digit is prepared here from the record's
    `prepare_steps` alone, the file loaded without cnnlab, and the probabilities are predict's within 1e-4; an
    ensemble's output is said to be the log of its members' mean probabilities, not logits."""
    from PIL import ImageDraw

    from cnnlab.tasks.export import export_model
    from cnnlab.tasks.predict import load_predictor, predict_images
    from exported_outside import digit_input, exported_runner, read_record

    images = [_digit(tmp_path / "photo.png")]
    for index, (size, ink, paper) in enumerate((((28, 28), 255, 0), ((61, 37), 0, 200), ((45, 45), 180, 10))):
        image = Image.new("RGB", size, (paper,) * 3)  # light on dark (as MNIST), dark on light, off-centre strokes
        ImageDraw.Draw(image).line([(3 + index, 4), (size[0] // 2, size[1] - 5), (size[0] - 4, 6)], (ink,) * 3, 3)
        image.save(tmp_path / f"{index}.png")
        images.append(tmp_path / f"{index}.png")
    table = Image.new("RGB", (60, 70), (40, 40, 40))  # a light page on a dark table: the table is neither paper nor ink
    table.paste((220, 220, 220), (8, 8, 52, 62))
    ImageDraw.Draw(table).line([(20, 20), (40, 20), (28, 50)], (30, 30, 30), 3)
    table.save(tmp_path / "table.png")
    images.append(tmp_path / "table.png")
    shadow = Image.new("RGB", (60, 70), (230, 230, 230))  # a shadow over a corner of the page: flattened first
    shadow.paste((90, 90, 90), (0, 40, 60, 70))
    ImageDraw.Draw(shadow).line([(20, 15), (40, 15), (28, 55)], (30, 30, 30), 3)
    shadow.save(tmp_path / "shadow.png")
    images.append(tmp_path / "shadow.png")
    results = predict_images(load_predictor(str(runs[2] / run)), images, top_k=10)
    formats = ("torchscript", "onnx") if importlib.util.find_spec("onnxruntime") else ("torchscript",)
    for fmt in formats:
        suffix = ".onnx" if fmt == "onnx" else ".pt"
        model_file = export_model(str(runs[2] / run), fmt, tmp_path / f"{run}{suffix}")["model"]
        record = read_record(model_file)
        assert ("log of the mean of the 2 members' softmax probabilities" in record["output"]) == (run == "pair")
        assert record["kind"] == "digit-classifier" and record["normalisation"] == {"mean": [0.1307], "std": [0.3081]}
        saved = json.loads((runs[2] / run / ("model.json" if run == "single" else "ensemble.json")).read_text())
        assert (saved["meta"]["kind"], saved["meta"]["classes"]) == ("digit-classifier", DIGITS)  # the run's own
        outputs = exported_runner(model_file, record)(torch.stack([digit_input(record, path) for path in images]))
        for row, result in zip(outputs.softmax(dim=1), results, strict=True):
            expected = torch.tensor([entry["probability"] for entry in sorted(result["top"], key=lambda e: e["index"])])
            torch.testing.assert_close(row, expected, atol=1e-4, rtol=0)


def test_an_mnist_ensemble_is_explained_as_the_ensemble_not_through_its_last_member(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Once predict learnt MNIST ensembles, explain took them for photo models and failed on a missing record. Then
    its Grad-CAM was at members.1.features.5 (the last member alone), its filters member 0's and its feature-map rows
    a mix of both members' layers, none of it said."""
    from cnnlab.report.explain import grad_cam
    from cnnlab.tasks.explain import explain_image, load_subject

    pair, digit = runs[2] / "pair", _digit(tmp_path / "digit.png")
    explanation = explain_image(str(pair), digit, tmp_path / "out")
    assert explanation.label in [str(d) for d in range(10)] and explanation.files["gradcam"].is_file()
    assert explanation.cam_layer == "features.5, mean of 2 members"
    assert not any(layer.startswith("members.") for layer in explanation.feature_layers)
    assert explanation.shown_member == f"member 0 of 2 ({pair / 'seed0'})"
    subject = load_subject(str(pair))
    assert subject.kind == "mnist"
    tensor = subject.preprocess(Image.open(digit)).float()
    ensemble = load_model(pair)(tensor[None]).detach().softmax(1)[0]  # what predict gives
    assert explanation.probability == pytest.approx(float(ensemble[explanation.class_index]), abs=1e-6)
    # each member's Grad-CAM of the ensemble's class, at its own layer, averaged and scaled to peak 1
    own = [grad_cam(load_model(pair / f"seed{k}"), tensor, class_index=explanation.class_index) for k in range(2)]
    mean = (own[0].heatmap + own[1].heatmap) / 2
    cam = subject.grad_cam(tensor, class_index=explanation.class_index)
    torch.testing.assert_close(cam.heatmap, mean / mean.max())
    assert cam.members == 2 and cam.probability == pytest.approx(explanation.probability, abs=1e-6)


def test_members_that_are_not_ten_digit_classifiers_of_28x28_digits_are_refused(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Models saved from Python reached torch: a lenet5 (32x32 inputs) failed with "Kernel size can't be greater than
    actual input size", a 5-class network with torch.stack's "expects each tensor to be equal size", and a record
    naming the digits in another order was averaged output by output with the others, unsaid."""
    from cnnlab.train.saved import save_model

    root, output, mnist = runs
    reversed_digits = {"task": "mnist", "classes": DIGITS[::-1]}
    for name, arch, classes, meta, refusal in (
        ("lenet", "lenet5", 10, {}, "lenet5 takes 1x32x32 inputs"),
        ("five", "mnist_baseline", 5, {"task": "mnist"}, "five gives 5 scores per image, not one per digit"),
        ("reversed", "mnist_baseline", 10, reversed_digits, r"reversed names its outputs 9, 8, 7, .* in that order"),
    ):
        network = cnnlab.create_model(arch, num_classes=classes)
        save_model(network, tmp_path / name, arch, {"num_classes": classes}, meta)
        with pytest.raises(CnnlabError, match=refusal):
            combine_mnist_ensemble([tmp_path / name, mnist / "single"], name, output=output, data_dir=str(root))
        assert not (mnist / name).exists()


def test_an_ensemble_whose_members_are_not_beside_it_is_named_with_them(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """An ensemble copied without its members (they are found relative to its folder) was refused, once MNIST was
    read, with "no saved model at .../moved/seed0; pass a run directory", naming a folder the user never passed."""
    import shutil

    root, output, mnist = runs
    (tmp_path / "moved").mkdir()
    shutil.copy(mnist / "pair" / "ensemble.json", tmp_path / "moved")
    with pytest.raises(CnnlabError, match=r"moved is an ensemble whose member 'seed0' is not there \(.*moved/seed0: "):
        member_dirs([tmp_path / "moved", mnist / "single"])


def test_an_output_that_cannot_be_written_is_refused_before_the_members_are_scored(
    runs: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--output under a file was "NotADirectoryError" (exit 1) once every member had been scored and tested."""
    import cnnlab.tasks.mnist_ensemble as module

    root, _, mnist = runs
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(module, "load_mnist", lambda *args, **kwargs: pytest.fail("MNIST was read"))
    with pytest.raises(CnnlabError, match=r"--output .*file: .*file is a file, not a folder"):
        combine_mnist_ensemble([mnist / "pair", mnist / "single"], "x", output=tmp_path / "file", data_dir=str(root))


def test_another_task_s_run_is_refused_in_ensemble_s_words(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The refusal was evaluate's: "not an MNIST run (without --data this command scores MNIST models ...)", and
    `cnnlab ensemble` has no --data."""
    from cnnlab.train.saved import save_model

    kwargs = {"num_classes": 2}
    save_model(cnnlab.create_model("lenet5", **kwargs), tmp_path / "photos", "lenet5", kwargs, {"task": "transfer"})
    with pytest.raises(CnnlabError) as refused:
        member_dirs([tmp_path / "photos", runs[2] / "single"])
    assert "photos is a transfer run, not an MNIST run (`cnnlab ensemble` averages MNIST models'" in str(refused.value)
    assert "without --data" not in str(refused.value)


def test_a_member_whose_config_is_damaged_is_refused(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A member's config.yaml cut short (it records the validation images the member held out) was yaml's
    ScannerError traceback."""
    import shutil

    root, output, mnist = runs
    shutil.copytree(mnist / "single", tmp_path / "damaged")
    (tmp_path / "damaged" / "config.yaml").write_text("config: {epochs: 1, extra: {val_")
    with pytest.raises(CnnlabError, match=r"damaged/config.yaml cannot be read as a run's config \(.*copy the run"):
        combine_mnist_ensemble([tmp_path / "damaged", mnist / "pair"], "d", output=output, data_dir=str(root))


def test_an_ensemble_whose_member_was_retrained_since_is_refused_as_load_model_refuses_it(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """`cnnlab ensemble PAIR` averaged a member retrained after PAIR was made as it is now, while `load_model(PAIR)`
    (evaluate, predict) refused PAIR: the two commands disagreed about one run."""
    import shutil

    root, output, mnist = runs
    pair = shutil.copytree(mnist / "pair", tmp_path / "pair")
    shutil.rmtree(pair / "seed1")
    shutil.copytree(mnist / "single", pair / "seed1")  # seed1 retrained (--overwrite), a whole run again
    refusal = r"seed1 was replaced after the ensemble .*pair was made .*make the ensemble again"
    with pytest.raises(CnnlabError, match=refusal):
        load_model(pair)
    with pytest.raises(CnnlabError, match=refusal):
        combine_mnist_ensemble([pair, mnist / "single"], "from_retrained", output=output, data_dir=str(root))
    assert not (mnist / "from_retrained").exists()


def test_each_member_is_scored_in_the_memory_format_of_its_own_test_pass(
    runs: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cnnlab evaluate` runs a run in the memory format its test pass used (``--channels-last``); the ensemble
    scored every member in NCHW. A member trained channels-last is now run so, the others in NCHW."""
    import shutil

    import cnnlab.tasks.mnist_ensemble as mnist_ensemble
    from cnnlab.tasks.mnist import predict_logits
    from cnnlab.train.config import load_config, save_config

    root, output, mnist = runs
    shutil.copytree(mnist / "single", tmp_path / "nhwc")
    config = load_config(tmp_path / "nhwc" / "config.yaml")
    config.channels_last = True
    save_config(config, tmp_path / "nhwc" / "config.yaml")
    ran: list[tuple[int, bool]] = []  # (the model's id, its memory format) per call

    def recording(model: torch.nn.Module, images: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        ran.append((id(model), bool(kwargs.get("channels_last", False))))
        return predict_logits(model, images, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mnist_ensemble, "predict_logits", recording)
    summary = combine_mnist_ensemble(
        [tmp_path / "nhwc", mnist / "pair" / "seed0"], "formats", output=output, data_dir=str(root)
    )
    formats: dict[int, set[bool]] = {}
    for model, channels_last in ran:
        formats.setdefault(model, set()).add(channels_last)
    assert len(ran) == 4 and sorted(map(sorted, formats.values())) == [[False], [True]]  # val and test, each member
    nhwc = summary["candidates"][0]
    evaluated = evaluate_mnist(tmp_path / "nhwc", data_dir=str(root), output_dir=tmp_path / "evaluated")
    assert nhwc["run_dir"].endswith("nhwc") and nhwc["test_accuracy"] == pytest.approx(evaluated["test_accuracy"])
    assert ran[0][1] is True  # the first member, the channels-last one, ran so on the validation images
