"""`cnnlab export`: what its self-check catches and what it exports (tiny networks, no training)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import cnnlab.tasks.export
from cnnlab.errors import CnnlabError
from cnnlab.fcn import to_fully_convolutional
from cnnlab.fcn.scan import (
    convert_run,
    load_fully_convolutional,
    load_scan_image,
    save_fully_convolutional,
    scan,
    scan_tensor,
)
from cnnlab.models import create_model
from cnnlab.tasks.export import export_model
from cnnlab.tasks.predict import Predictor
from cnnlab.train.saved import read_export_record, save_model
from exported_outside import grey_digits_input


class _OtherAtBatchOne(nn.Module):
    """A digit classifier whose forward branches on the batch size: the trace at batch 2 keeps the other branch, so
    the exported file gives batch 1 other logits than PyTorch does (and batch 3 the same)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.fc(x.flatten(1))
        return logits + 1.0 if x.shape[0] == 1 else logits


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_graph_that_differs_at_batch_1_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check ran batch 3 alone: a graph wrong at batch 1, the batch a server sends most, was written as checked."""
    predictor = Predictor(_OtherAtBatchOne().eval(), [str(digit) for digit in range(10)], None, "branchy")
    monkeypatch.setattr(cnnlab.tasks.export, "load_predictor", lambda model: predictor)
    output = tmp_path / "branchy.pt"
    with pytest.raises(CnnlabError, match=r"differ from PyTorch's by up to 1\.00e\+00 .* so it was deleted"):
        cnnlab.tasks.export.export_model("branchy", "torchscript", output)
    assert list(tmp_path.iterdir()) == []  # nothing unchecked is left to deploy


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MNIST run's folder as `cnnlab fcn convert RUN` writes it (RUN/fcn), of an untrained mnist_net_small."""
    run = tmp_path_factory.mktemp("fcn") / "run"
    torch.manual_seed(0)
    save_model(create_model("mnist_net_small"), run, "mnist_net_small", {}, {"task": "mnist"})
    network, source = convert_run(run)
    save_fully_convolutional(network, run / "fcn", source, "window")
    return run / "fcn"


def _loaded(model_file: str, fmt: str) -> object:
    """The exported file loaded as its record's ``load`` says."""
    if fmt == "pt2":
        program = torch.export.load(model_file).module()
        return lambda images: program(images).detach()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
        return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    module = torch.jit.load(model_file)
    return lambda images: module(images).detach()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "pt2"])
def test_a_converted_classifier_exports_with_free_height_and_width(converted: Path, tmp_path: Path, fmt: str) -> None:
    """`cnnlab fcn convert`'s folder was refused with predict's words ("pass the run it was converted from"): its
    network is fully convolutional, so it exports with any height and width (pt2: above window + stride), and the
    file, fed as its record says, gives `cnnlab fcn scan`'s scores."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    suffix = {"torchscript": "pt", "onnx": "onnx", "pt2": "pt2"}[fmt]
    result = export_model(str(converted), fmt, tmp_path / f"scanner.{suffix}")
    record = read_export_record(result["model"])
    least = 36 if fmt == "pt2" else 28  # pt2: a one-window side is specialised away, so window 28 + stride 8
    assert record["kind"] == "digit-scanner" and record["input_shape"] == ["N", 1, "H", "W"]
    assert (record["window"], record["stride"], record["classes"]) == ([28, 28], [8, 8], [str(d) for d in range(10)])
    assert f"any batch size N, H and W of at least {least};" in record["input"]
    assert record["checked_sizes"][0] == [1, 1, least, least] and result["max_abs_difference"] < 1e-4
    exported, eager = _loaded(result["model"], fmt), load_fully_convolutional(converted)
    generator = torch.Generator().manual_seed(1)
    for shape in ((1, 1, least, least), (2, 1, 61, 45)):  # two sizes the check did not use, batch 1 and 2
        images = torch.rand(*shape, generator=generator)
        with torch.inference_mode():
            expected = eager(images)
        assert expected.shape[-2:] == ((shape[2] - 28) // 8 + 1, (shape[3] - 28) // 8 + 1)
        assert torch.allclose(exported(images), expected, atol=1e-4)
    # dark digits on grey paper, prepared as the record's steps say, give what the scan at the network's stride gives
    page = np.full((70, 50), 0.7) + torch.rand(70, 50, generator=generator).numpy() * 0.05  # paper and its grain
    page[10:60, 20:24] = page[30:34, 8:44] = 0.1  # dark strokes
    image = Image.fromarray((page * 255).round().astype(np.uint8)).convert("RGB")
    image.save(tmp_path / "page.png")
    scores = exported(grey_digits_input(record, tmp_path / "page.png")[None])[0]
    rows, cols = (70 - 28) // 8 + 1, (50 - 28) // 8 + 1
    scanned = scan(eager, scan_tensor(image), refine=1).probabilities
    assert torch.allclose(scores.softmax(0)[:, :rows, :cols], scanned, atol=1e-5)


@pytest.mark.parametrize("name", ["fcn.safetensors", "fcn.json"])
def test_a_converted_folders_files_export_as_the_folder_does(converted: Path, tmp_path: Path, name: str) -> None:
    """`cnnlab export RUN/fcn/fcn.safetensors` was refused with "no saved model at RUN/fcn/model.json; pass a run
    directory or a model.json / model.safetensors file", though its folder and its fcn.json export; `fcn scan` (its
    loader) refused it so too."""
    from cnnlab.fcn.scan import load_converted_or_run

    result = export_model(str(converted / name), "torchscript", tmp_path / "scanner.pt")
    assert read_export_record(result["model"])["kind"] == "digit-scanner" and result["max_abs_difference"] < 1e-4
    network, source = load_converted_or_run(converted / name)
    assert source["arch"] == "mnist_net_small"
    images = torch.rand(1, 1, 44, 36, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(network(images), load_fully_convolutional(converted)(images))


def test_a_converted_network_of_other_than_digits_is_refused_saying_why(tmp_path: Path) -> None:
    """A folder saved from Python with an RGB classifier's copy: no preparation is known for its input."""
    network = to_fully_convolutional(create_model("lenet5", in_chans=3))
    save_fully_convolutional(network, tmp_path / "fcn", {"arch": "lenet5", "kwargs": {"in_chans": 3}}, "window")
    with pytest.raises(CnnlabError, match=r"3-channel images into 10 classes, not an MNIST run's .* does not export"):
        export_model(str(tmp_path / "fcn"), "torchscript")
    assert sorted(path.name for path in (tmp_path / "fcn").iterdir()) == ["fcn.json", "fcn.safetensors"]


def test_a_converted_folders_own_files_are_never_replaced(converted: Path, tmp_path: Path) -> None:
    """`-o RUN/fcn/fcn.safetensors --format torchscript --overwrite` replaced the converted network's weights with the
    export (the run's own files were refused, a converted folder's were not): it could not be scanned again."""
    folder = shutil.copytree(converted, tmp_path / "fcn")
    before = {name: (folder / name).read_bytes() for name in ("fcn.json", "fcn.safetensors")}
    for name, overwrite in itertools.product(before, (False, True)):
        with pytest.raises(CnnlabError, match=rf"is a converted folder's own {name}, which no export replaces"):
            export_model(str(folder), "torchscript", folder / name, overwrite=overwrite)
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert sorted(path.name for path in folder.iterdir()) == ["fcn.json", "fcn.safetensors"]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_a_canvas_segmentation_run_exports_with_free_height_and_width(tmp_path: Path) -> None:
    """A `cnnlab train segment` run on the MNIST canvases was refused ("records no preparation for images other than
    its canvases"): its network is a U-Net as a `--data` run's, taking the canvases' grey [0, 1] as it is, the input
    `fcn scan` prepares; it exports so, checked against PyTorch at sizes it was not traced at (TorchScript here: the
    pt2 and ONNX paths are the `--data` run's, which tests/tasks/test_segment_folder.py checks; 20 s for pt2)."""
    fmt = "torchscript"
    from cnnlab.data.segmentation import CLASS_NAMES
    from cnnlab.train.saved import load_model

    torch.manual_seed(0)
    kwargs = {"widths": (4, 8, 8, 8, 8), "num_classes": 11, "in_chans": 1}
    meta = {"task": "segment", "kind": "digit-segmenter", "classes": list(CLASS_NAMES)}
    save_model(create_model("unet", **kwargs), tmp_path / "canvases", "unet", kwargs, meta)
    result = export_model(str(tmp_path / "canvases"), fmt)
    assert result["model"] == str(tmp_path / "canvases" / "model.pt")
    record = read_export_record(result["model"])
    assert (record["kind"], record["input_shape"]) == ("digit-segmenter", ["N", 1, "H", "W"])
    assert record["normalisation"] is None and "any batch size N, any H and W; no normalisation" in record["input"]
    assert record["classes"] == ["background", *(str(d) for d in range(10))] and record["background"] == 0
    assert "as `cnnlab fcn scan` reads an image" in record["prepare"] and record["invert_above_mean"] == 0.5
    page = np.full((40, 90), 0.5)  # dark strokes on grey paper: the canvases' light digits on black, as scan reads it
    page[5:35, 10:13] = page[20:23, 30:80] = 0.1
    image = Image.fromarray((page * 255).round().astype(np.uint8)).convert("RGB")
    image.save(tmp_path / "page.png")
    assert torch.equal(grey_digits_input(record, tmp_path / "page.png"), scan_tensor(image))
    table = Image.new("RGB", (110, 60), (15, 15, 15))  # the page on a darker table round it: the table is black
    table.paste(image, (10, 10))
    table.save(tmp_path / "table.png")
    on_table = grey_digits_input(record, tmp_path / "table.png")
    assert torch.equal(on_table, scan_tensor(table)) and float(on_table[0, :10].max()) == 0.0
    assert torch.equal(on_table[:, 10:50, 10:100], scan_tensor(image))
    rows, cols = np.mgrid[0:40, 0:90]  # the page lit 70% less at one end: flattened first, as scan does
    shaded = Image.fromarray((page * (1 - 0.7 * cols / 90) * 255).round().astype(np.uint8)).convert("RGB")
    shaded.save(tmp_path / "shaded.png")
    assert torch.equal(grey_digits_input(record, tmp_path / "shaded.png"), scan_tensor(shaded))
    exported, eager = _loaded(result["model"], fmt), load_model(tmp_path / "canvases")
    generator = torch.Generator().manual_seed(1)
    for shape in ((1, 1, 64, 64), (2, 1, 40, 90)):
        images = torch.rand(*shape, generator=generator)
        with torch.inference_mode():
            expected = eager(images)
        assert expected.shape == (shape[0], 11, *shape[2:]) and torch.allclose(exported(images), expected, atol=1e-4)


def _digit_images(folder: Path, generator: torch.Generator) -> list[Path]:
    """Three image files a scanner or canvas segmenter is given: light strokes on black (grey PNG, 70x50), dark on
    light paper (RGB, inverted by the preparation, 45x61) and the same on a transparent background (RGBA)."""
    strokes = torch.zeros(70, 50)
    strokes[10:60, 20:26] = 1.0
    strokes[30:36, 5:45] = 0.8
    light = ((strokes + 0.1 * torch.rand(70, 50, generator=generator)).clamp(0, 1) * 255).to(torch.uint8).numpy()
    Image.fromarray(light).save(folder / "light.png")
    paper = (255 - light[:61, :45]).copy()
    Image.fromarray(paper).convert("RGB").save(folder / "paper.png")
    rgba = np.zeros((61, 45, 4), dtype=np.uint8)
    rgba[..., 3] = light[:61, :45]  # ink drawn as opacity on a transparent sheet: decoded on white, then inverted
    Image.fromarray(rgba, "RGBA").save(folder / "transparent.png")
    return [folder / "light.png", folder / "paper.png", folder / "transparent.png"]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "pt2"])
def test_a_scanner_export_used_from_its_record_alone_gives_fcn_scans_probabilities(
    converted: Path, tmp_path: Path, fmt: str
) -> None:
    """A `cnnlab fcn convert` folder's export loaded without cnnlab (tests/exported_outside.py) and each image file
    prepared from the record beside it alone: `cnnlab fcn scan`'s probabilities at the network's stride, for a grey, a
    dark-on-paper and a transparent image (the other kinds were checked so; this one only from tensors)."""
    from exported_outside import exported_runner, read_record, scanner_probabilities

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    model_file = export_model(str(converted), fmt, tmp_path / f"scanner{cnnlab.tasks.export.SUFFIXES[fmt]}")["model"]
    record = read_record(model_file)
    run, eager = exported_runner(model_file, record), load_fully_convolutional(converted)
    for path in _digit_images(tmp_path, torch.Generator().manual_seed(0)):
        expected = scan(eager, load_scan_image(path), refine=1).probabilities
        actual = scanner_probabilities(record, run, path)
        assert actual.shape == expected.shape and expected.shape[-2:] == (
            (Image.open(path).height - 28) // 8 + 1,
            (Image.open(path).width - 28) // 8 + 1,
        )
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_canvas_segmenter_export_used_from_its_record_alone_gives_its_test_pass_masks(
    tmp_path: Path, fmt: str
) -> None:
    """A canvas run's export loaded without cnnlab and canvases saved as image files (light on black as the run saw
    them, and dark on light paper) prepared from its record alone: the masks of the run's own test pass
    (`evaluate_segmentation`, which `cnnlab train segment` scores its test canvases with). pt2 takes 20 s here; its
    path is the `--data` run's, which tests/tasks/test_segment_folder.py checks."""
    from cnnlab.data.segmentation import CLASS_NAMES, make_canvases
    from cnnlab.tasks.segmentation import evaluate_segmentation
    from cnnlab.train.saved import load_model
    from exported_outside import canvas_mask, exported_runner, read_record

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    kwargs = {"widths": (4, 8, 8), "num_classes": 11, "in_chans": 1}
    generator = torch.Generator().manual_seed(0)
    pool = (torch.rand(20, 1, 28, 28, generator=generator) > 0.7).to(torch.uint8) * 255
    canvases = make_canvases(pool, torch.arange(20) % 10, torch.arange(20), 2, size=(48, 72), seed=0)
    network = create_model("unet", **kwargs)
    # untrained, its batch norms' unit statistics leave the bias to choose one class nearly everywhere, the same for an
    # image and its inverse; measured on the canvases and their inverses, its mask follows the ink
    for layer in network.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = None  # one pass: the batch's own statistics
    with torch.no_grad():
        network.train()(torch.cat([canvases.images, 255 - canvases.images]).float() / 255)
    meta = {"task": "segment", "kind": "digit-segmenter", "classes": list(CLASS_NAMES)}
    save_model(network.eval(), tmp_path / "canvases", "unet", kwargs, meta)
    eager = load_model(tmp_path / "canvases")
    with torch.inference_mode():
        _, expected = evaluate_segmentation(eager, canvases.images, canvases.masks)
        best_two = eager(canvases.images.float() / 255).topk(2, dim=1).values
        uninverted = eager(1 - canvases.images[1:].float() / 255).argmax(1)[0]  # the paper image, were it not inverted
    clear = (best_two[:, 0] - best_two[:, 1] > 1e-4).numpy()  # pixels whose class float rounding cannot change
    assert clear.mean() > 0.95 and len(np.unique(expected.numpy())) > 3
    assert (uninverted != expected[1]).float().mean() > 0.3  # so a preparation that skips the inversion fails
    Image.fromarray(canvases.images[0, 0].numpy()).save(tmp_path / "light.png")
    Image.fromarray(255 - canvases.images[1, 0].numpy()).convert("RGB").save(tmp_path / "paper.png")
    suffix = cnnlab.tasks.export.SUFFIXES[fmt]
    model_file = export_model(str(tmp_path / "canvases"), fmt, tmp_path / f"canvases{suffix}")["model"]
    record = read_record(model_file)
    run = exported_runner(model_file, record)
    for index, name in enumerate(("light.png", "paper.png")):
        mask = canvas_mask(record, run, tmp_path / name)
        assert mask.shape == (48, 72)
        np.testing.assert_array_equal(mask[clear[index]], expected[index].numpy()[clear[index]])
