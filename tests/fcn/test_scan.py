"""Scanning with a converted classifier, saving/loading converted models, and the `cnnlab fcn` commands."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import CnnlabError
from cnnlab.fcn import to_fully_convolutional
from cnnlab.fcn.scan import (
    ScanNotLocalWarning,
    load_fully_convolutional,
    refine_factor,
    save_fully_convolutional,
    save_heatmap,
    scan,
)
from cnnlab.layers import SqueezeExcite
from cnnlab.models import create_model
from cnnlab.train.saved import save_model


def _classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("mnist_net_small", drop_rate=0.0).eval()


def test_shift_and_stitch_interleaves_the_shifted_scans():
    converted = to_fully_convolutional(_classifier())
    image = torch.rand(1, 60, 76)
    coarse, fine = scan(converted, image, refine=1), scan(converted, image, refine=4)
    assert coarse.stride == 8 and fine.stride == 2 and coarse.window == 28
    rows, cols = coarse.probabilities.shape[1:]
    assert fine.probabilities.shape[1] >= 4 * (rows - 1)
    # the unshifted scan is every 4th location of the refined one
    assert torch.allclose(fine.probabilities[:, ::4, ::4][:, : rows - 1, : cols - 1], coarse.probabilities[:, :-1, :-1])
    assert torch.allclose(fine.probabilities.sum(0), torch.ones(fine.probabilities.shape[1:]))


def _unpadded_stride_8() -> torch.nn.Module:
    """A classifier whose windows the scan scores exactly as the classifier scores the crop (no padding, which
    would let a window see its neighbours' pixels where the crop sees zeros)."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 6, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]  # 26, 13
    layers += [torch.nn.Conv2d(6, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]  # 11, 5
    layers += [torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]  # 3, 1
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()


@pytest.mark.filterwarnings("error::cnnlab.fcn.scan.ScanNotLocalWarning")  # a local network: no warning
@pytest.mark.parametrize("network", ["stride 8", "mnist_baseline"])
@pytest.mark.parametrize("refine", [1, 2, 4])
def test_the_scan_scores_every_window_that_fits_as_the_classifier_scores_its_crop(network, refine):
    """The shifted scans' maps differ in length and all were cut to the shortest: at refine 4, 60x45 gave 16x8 of
    the 17x9 windows that fit, 100x77 gave 36x24 of 37x25."""
    torch.manual_seed(0)
    classifier = _unpadded_stride_8() if network == "stride 8" else create_model(network).eval()
    _assert_scan_scores_crops(classifier, refine)


@pytest.mark.filterwarnings("error::cnnlab.fcn.scan.ScanNotLocalWarning")
@pytest.mark.parametrize("refine", [1, None])
def test_a_network_whose_stride_does_not_divide_64_scans_every_window_at_its_place(refine):
    """The stride was read as 64 // (growth over 64 rows): 6 as 5, so the scan of a stride-6 network crashed in
    its tile check (a RuntimeError from narrow: its tiles were cut on a 5 px grid)."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 6, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]  # 26, 13
    layers += [torch.nn.Conv2d(6, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(3)]  # 11, 3
    layers += [torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 10)]  # 1
    classifier = torch.nn.Sequential(*layers).eval()
    assert to_fully_convolutional(classifier, (1, 28, 28)).output_geometry() == ((28, 28), (6, 6))
    _assert_scan_scores_crops(classifier, refine)


@pytest.mark.filterwarnings("error::cnnlab.fcn.scan.ScanNotLocalWarning")  # it is local: it was scanned whole
def test_a_network_striding_further_down_than_across_scans_each_window_at_its_place(tmp_path, monkeypatch):
    """A MaxPool2d((2, 1)) network's locations are 2 px apart down, 1 across: the scan took the height's 2 for both,
    kept 5 of the 9 columns it scored, each at twice its place, and its locality check failed on tiles cut on a 2 px
    grid across (a warning, and a scan in one piece)."""
    import cnnlab.fcn.scan as scanning

    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d((2, 1))]  # 16x14 -> 14x12 -> 7x12
    layers += [torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(), torch.nn.Flatten()]  # 5x10
    classifier = torch.nn.Sequential(*layers, torch.nn.Linear(4 * 5 * 10, 10)).eval()
    converted = to_fully_convolutional(classifier, (1, 16, 14))
    image = torch.rand(1, 27, 33)
    results = {}
    for refine, step in ((1, (2, 1)), (None, (1, 1))):  # by default each axis' own factor: 2 down, 1 across
        result = results[refine] = scan(converted, image, refine=refine)
        rows, cols = (27 - 16) // step[0] + 1, (33 - 14) // step[1] + 1
        assert result.probabilities.shape == (10, rows, cols) and result.steps == step
        crops = [image[:, i * step[0] : i * step[0] + 16, j * step[1] : j * step[1] + 14] for i in range(rows)
                 for j in range(cols)]  # fmt: skip
        with torch.inference_mode():
            expected = classifier(torch.stack(crops)).softmax(1).T.reshape(10, rows, cols)
        assert torch.allclose(result.probabilities, expected, atol=1e-5)
    with pytest.raises(CnnlabError, match=r"--refine 2 must divide the network's strides of 2 px down and 1 px acr"):
        scan(converted, image, refine=2)
    margin = scanning.tile_margin(converted)
    assert margin is not None and margin >= 16
    monkeypatch.setattr(scanning, "TILE_PIXELS", 40 * 40)  # in tiles, as a large photo is
    tiled = scan(converted, torch.rand(1, 150, 130, generator=torch.Generator().manual_seed(1)), refine=1)
    monkeypatch.setattr(scanning, "TILE_PIXELS", 10**9)
    whole = scan(converted, torch.rand(1, 150, 130, generator=torch.Generator().manual_seed(1)), refine=1)
    assert torch.allclose(tiled.probabilities, whole.probabilities, atol=1e-6)
    figures = _kept_figures(monkeypatch)
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda figure, path, **kwargs: Path(path).touch())
    save_heatmap(image, results[1], tmp_path / "h.png")  # cells 2 px tall and 1 px wide around the centres
    assert figures[0].axes[0].images[1].get_extent() == [6.5, 6.5 + 20, 7.0 + 6 * 2, 7.0]
    notes = [text.get_text() for axis in figures[0].axes for text in axis.texts]
    assert any("window 16x14px, stride 2x1px (height x width)\n6x20 locations" in note for note in notes)


def test_a_classifier_trained_on_windows_wider_than_tall_scans_and_draws_each_location_at_its_centre(
    tmp_path, monkeypatch
):
    """Its scan crashed (the memory and tile probes were squares of the window's height, narrower than the window:
    a RuntimeError, kernel larger than input), and the heatmap put the centres half the height, not half the width,
    from the left edge."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten()]  # 9 x 17
    classifier = torch.nn.Sequential(*layers, torch.nn.Linear(4 * 9 * 17, 10)).eval()
    image = torch.rand(1, 31, 47)
    result = scan(to_fully_convolutional(classifier, (1, 20, 36)), image, refine=1)
    rows, cols = (31 - 20) // 2 + 1, (47 - 36) // 2 + 1
    crops = torch.stack([image[:, 2 * i : 2 * i + 20, 2 * j : 2 * j + 36] for i in range(rows) for j in range(cols)])
    with torch.inference_mode():
        expected = classifier(crops).softmax(1).T.reshape(10, rows, cols)
    assert torch.allclose(result.probabilities, expected, atol=1e-5)
    assert (result.window, result.window_width, result.stride) == (20, 36, 2)
    figures = _kept_figures(monkeypatch)
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda figure, path, **kwargs: Path(path).touch())
    save_heatmap(image, result, tmp_path / "h.png")
    overlay = figures[0].axes[0].images[1]  # cells 2 px wide around the centres: x 18 .. 28, y 10 .. 20
    assert overlay.get_extent() == [17.0, 29.0, 21.0, 9.0]


def test_a_global_pool_head_scans_its_windows_and_one_converted_with_pool_none_is_refused():
    """With pool="none" each location is a feature-map cell's scores, not a window's: the scan drew them as
    windows 2 px apart, cut to the 11x17 windows that fit (up to 0.008 from the crops' probabilities)."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 8, 3)]
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)]
    classifier = torch.nn.Sequential(*layers).eval()
    image = torch.rand(1, 26, 30)
    result = scan(to_fully_convolutional(classifier, (1, 20, 20)), image, refine=1)
    crops = torch.stack([image[:, 2 * i : 2 * i + 20, 2 * j : 2 * j + 20] for i in range(4) for j in range(6)])
    with torch.inference_mode():
        expected = classifier(crops).softmax(1).T.reshape(10, 4, 6)
    assert torch.allclose(result.probabilities, expected, atol=1e-5)
    with pytest.raises(CnnlabError, match=r"gives a 7x7 map at its 20x20 input size .*convert it with pool='window'"):
        scan(to_fully_convolutional(classifier, (1, 20, 20), pool="none"), image, refine=1)


def _assert_scan_scores_crops(classifier: torch.nn.Module, refine: int | None) -> None:
    """A scan of a 61x47 image has one location for every window that fits, each scored as the classifier scores
    that crop, with the stroke of the crop's middle."""
    converted = to_fully_convolutional(classifier, (1, 28, 28))
    image = torch.rand(1, 47, 61)
    result = scan(converted, image, refine=refine)
    step = result.stride
    stride = converted.output_geometry().stride[0]
    assert step == stride // refine_factor(refine, stride) and result.stride_width is None
    rows, cols = (47 - 28) // step + 1, (61 - 28) // step + 1
    assert result.probabilities.shape == (10, rows, cols) and result.ink.shape == (rows, cols)
    corners = [(i * step, j * step) for i in range(rows) for j in range(cols)]
    crops = torch.stack([image[:, y : y + 28, x : x + 28] for y, x in corners])
    with torch.inference_mode():
        expected = classifier(crops).softmax(1).T.reshape(10, rows, cols)
    assert torch.allclose(result.probabilities, expected, atol=1e-5)
    middles = (crops[:, :, 4:24, 4:24] >= 0.5).float().mean((1, 2, 3))  # stroke in the central 20x20
    assert torch.allclose(result.ink, middles.reshape(rows, cols), atol=1e-6)


@pytest.mark.parametrize("last", [torch.nn.Softmax(dim=1), torch.nn.LogSoftmax(dim=1)], ids=["softmax", "logsoftmax"])
def test_a_classifier_ending_in_a_softmax_scans_to_its_own_probabilities(last):
    """A head converted with its softmax gives probabilities: the scan's softmax of them was near 1/10 everywhere."""
    classifier = torch.nn.Sequential(*_unpadded_stride_8(), last).eval()
    converted = to_fully_convolutional(classifier, (1, 28, 28))
    image = torch.rand(1, 36, 44)
    result = scan(converted, image, refine=1)
    rows, cols = result.probabilities.shape[1:]
    crops = torch.stack([image[:, 8 * i : 8 * i + 28, 8 * j : 8 * j + 28] for i in range(rows) for j in range(cols)])
    with torch.inference_mode():
        expected = classifier(crops).softmax(1).T.reshape(10, rows, cols)  # softmax of log-probabilities: the same
        if isinstance(last, torch.nn.Softmax):
            expected = classifier(crops).T.reshape(10, rows, cols)
    assert (rows, cols) == (2, 3)
    assert torch.allclose(result.probabilities, expected, atol=1e-5)


@pytest.mark.filterwarnings("error::cnnlab.fcn.scan.ScanNotLocalWarning")  # its tiles check as local in bf16 too
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_network_converted_in_half_precision_scans_a_float_image(dtype):
    """The float32 image went to a bfloat16 network as it was: "Input type (float) and bias type (c10::BFloat16)
    should be the same"."""
    classifier = _unpadded_stride_8().to(dtype)
    image = torch.rand(1, 36, 44)
    result = scan(to_fully_convolutional(classifier, (1, 28, 28)), image, refine=1)
    crops = torch.stack([image[:, 8 * i : 8 * i + 28, 8 * j : 8 * j + 28] for i in range(2) for j in range(3)])
    with torch.inference_mode():
        expected = classifier(crops.to(dtype)).float().softmax(1).T.reshape(10, 2, 3)
    assert result.probabilities.dtype == torch.float32 and result.probabilities.shape == (10, 2, 3)
    assert torch.allclose(result.probabilities, expected, atol=1e-3)


def test_refine_must_divide_the_stride_and_defaults_to_its_largest_divisor_up_to_4():
    """--refine 3 on a stride of 8 shifted by 0, 2, 4 px and drew locations 0, 2, 4, 8, 10 px as if 2 px apart."""
    converted = to_fully_convolutional(_classifier())
    image = torch.rand(1, 60, 76)
    coarse, half = scan(converted, image, refine=1), scan(converted, image, refine=2)
    assert half.stride == 4 and scan(converted, image).stride == 2  # the default: 4, which divides 8
    rows, cols = coarse.probabilities.shape[1:]
    assert torch.allclose(half.probabilities[:, ::2, ::2][:, : rows - 1, : cols - 1], coarse.probabilities[:, :-1, :-1])
    for refine in (3, 0, -1, 16):
        with pytest.raises(
            CnnlabError, match=f"--refine {refine} must divide the network's stride of 8 px.*1, 2, 4, 8"
        ):
            scan(converted, image, refine=refine)
    assert refine_factor(None, 2) == 2 and refine_factor(None, 6) == 3 and refine_factor(None, 32) == 4


@pytest.mark.parametrize("arch", ["mnist_net_small", "mnist_baseline"])
def test_a_large_image_is_scanned_in_tiles_that_give_the_whole_scan(arch, monkeypatch):
    """A 6000x4000 photo was one forward pass: 6 GB of activations for mnist_net, the same for each of 16 shifts."""
    import cnnlab.fcn.scan as scanning

    torch.manual_seed(0)
    converted = to_fully_convolutional(create_model(arch).eval())
    image = torch.rand(1, 470, 610)
    whole = scan(converted, image, refine=2)
    margin = scanning.tile_margin(converted)
    assert margin is not None and margin % converted.output_geometry().stride[0] == 0 and margin >= whole.window
    monkeypatch.setattr(scanning, "tile_margin", lambda model: margin)  # its probes are not the scan's tiles
    monkeypatch.setattr(scanning, "TILE_PIXELS", 150 * 150)
    inputs = []
    converted.register_forward_pre_hook(lambda module, args: inputs.append(tuple(args[0].shape[-2:])))
    tiled = scan(converted, image, refine=2)
    assert torch.allclose(tiled.probabilities, whole.probabilities, atol=1e-6)
    assert (tiled.window, tiled.stride) == (whole.window, whole.stride)
    scanned = [size for size in inputs if min(size) > 100]  # leaving out output_geometry's 28 px probes
    side = max(150, 4 * margin)  # a tile keeps at least twice its margin: the overlap at most doubles each side
    assert len(scanned) >= 8 and max(max(size) for size in scanned) <= side < min(image.shape[1:]) / 2


def test_the_progress_bar_counts_every_tile_of_every_shift(monkeypatch):
    """A 24 MP photo at refine 4 is 16 scans of about 30 s each: the bar counts their tiles, and reaches its total."""
    import cnnlab.fcn.scan as scanning

    bars = []

    class Recording:
        def __init__(self, total, description, enabled=True):
            self.total, self.done, self.description = total, 0, description
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def advance(self, steps=1):
            self.done += steps

    monkeypatch.setattr(scanning, "ProgressBar", Recording)
    monkeypatch.setattr(scanning, "TILE_PIXELS", 150 * 150)
    scan(to_fully_convolutional(_classifier()), torch.rand(1, 470, 610), refine=2, progress=True)
    assert len(bars) == 1 and bars[0].description == "scanning 610x470"
    assert bars[0].done == bars[0].total > 4 * 4  # 4 shifts, each in several tiles


def test_tiles_need_their_margin_and_a_network_that_is_not_local_is_scanned_whole():
    import cnnlab.fcn.scan as scanning

    converted = to_fully_convolutional(_classifier())
    stride = converted.output_geometry().stride
    image = torch.rand(1, 200, 200)
    with torch.inference_mode():
        whole = scanning._scores_in_tiles(converted, image, None, stride)
        margin = scanning.tile_margin(converted)
        assert torch.allclose(scanning._scores_in_tiles(converted, image, margin, stride, tile=2), whole, atol=1e-6)
        short = scanning._scores_in_tiles(converted, image, 2 * stride[0], stride, tile=2)  # under the reach
        assert short.shape == whole.shape and not torch.allclose(short, whole, atol=1e-4)

    class CentreOnTheMap(torch.nn.Module):  # looks at the whole map, as a squeeze-and-excitation block does
        def forward(self, x):
            return x - x.mean((2, 3), keepdim=True)

    converted.trunk = torch.nn.Sequential(converted.trunk, CentreOnTheMap())
    assert scanning.tile_margin(converted) is None
    fits = (200 - 28) // stride[0] + 1  # every window that fits (the padded trunk's map has one more, off the edge)
    with pytest.warns(ScanNotLocalWarning, match="pools its whole feature map, as a squeeze"):
        assert scan(converted, image, refine=1).probabilities.shape[1:] == (fits, fits) < whole.shape[1:]


def test_a_squeeze_excitation_trunk_is_scanned_with_a_warning_that_its_scores_are_not_per_window():
    """Its block pools the whole scanned image where the classifier pooled its window, so the scores of a scan are
    not the classifier's on each window, and the scan said nothing of it. Worse, the locality check's uniform noise
    has the same mean in every tile, so the block passed as local (a 32 px margin) and a large image was scanned in
    tiles, each pooling its own part: not even the single pass's numbers."""
    from cnnlab.fcn.scan import tile_margin

    torch.manual_seed(0)
    layers = list(_unpadded_stride_8())
    classifier = torch.nn.Sequential(*layers[:3], SqueezeExcite(6, hidden_channels=3), *layers[3:]).eval()
    with torch.no_grad():
        classifier[-1].weight *= 100  # confident scores, so that the gates' change shows in the probabilities
    converted = to_fully_convolutional(classifier, (1, 28, 28))
    assert tile_margin(converted) is None
    image = torch.rand(1, 44, 52, generator=torch.Generator().manual_seed(0))
    image[..., :26] *= 0.1  # a dim left half: the whole image's mean is no window's
    with pytest.warns(ScanNotLocalWarning, match=r"pools its whole feature map \(3\).*not the classifier's on its"):
        result = scan(converted, image, refine=1)
    rows, cols = result.probabilities.shape[1:]
    crops = torch.stack([image[:, 8 * i : 8 * i + 28, 8 * j : 8 * j + 28] for i in range(rows) for j in range(cols)])
    with torch.inference_mode():
        per_window = classifier(crops).softmax(1).T.reshape(10, rows, cols)
    assert (rows, cols) == (3, 4) and (result.probabilities - per_window).abs().max() > 1e-3


def test_a_large_picture_and_its_score_maps_are_drawn_averaged_down_to_the_heatmaps_size(tmp_path, monkeypatch):
    """matplotlib held float64 copies of a 24 MP picture in every panel: 1.7 GB and 15 s to draw it. The score maps
    were drawn whole too: a default scan of a 24 MP photo, 2,000 x 3,000 locations 2 px apart, took 27 s and 1 GB more
    to draw (3.5 s and 0.24 GB averaged down)."""
    from matplotlib.axes import Axes

    from cnnlab.fcn.scan import ScanResult

    drawn = []
    drawing = Axes.imshow
    monkeypatch.setattr(
        Axes, "imshow", lambda axis, data, **kw: drawn.append((np.shape(data), kw)) or drawing(axis, data, **kw)
    )
    probabilities = torch.full((3, 600, 1000), 0.1)
    probabilities[1, 100:300, 200:500] = 0.8  # a confident block of locations
    probabilities = probabilities / probabilities.sum(0)
    result = ScanResult(probabilities, torch.ones(600, 1000), window=28, stride=2)
    save_heatmap(torch.rand(1, 1226, 2026), result, tmp_path / "h.png")
    pictures = [shape for shape, kw in drawn if kw.get("cmap") == "gray"]
    maps = [(shape, kw["extent"]) for shape, kw in drawn if kw.get("cmap") != "gray"]
    assert len(pictures) == 4 and all(shape == (613, 1013) for shape in pictures)
    assert len(maps) == 4 and all(max(shape) <= 512 for shape, _ in maps)
    for _, (left, right, bottom, top) in maps:  # the same input span as the 600 x 1000 locations' centres
        assert (left, top) == (13, 13) and abs(right - (14 + 999.5 * 2)) < 4 and abs(bottom - (14 + 599.5 * 2)) < 4


def test_convert_refuses_a_converted_network(tmp_path):
    """Converting the converted folder again nested a copy in it (<fcn>/fcn)."""
    run = tmp_path / "run"
    save_model(_classifier(), run, "mnist_net_small", {"drop_rate": 0.0}, meta={})
    assert CliRunner().invoke(app, ["fcn", "convert", str(run)]).exit_code == 0
    again = CliRunner().invoke(app, ["fcn", "convert", str(run / "fcn")])
    assert isinstance(again.exception, CnnlabError), again.output
    assert "holds a converted network already; scan with it" in str(again.exception)
    assert not (run / "fcn" / "fcn").exists()
    # `-o RUN` (or another run) put fcn.json beside its model.json: the run then read as converted and was refused
    into_run = CliRunner().invoke(app, ["fcn", "convert", str(run), "-o", str(run)])
    assert isinstance(into_run.exception, CnnlabError), into_run.output
    assert "holds a saved model (model.json): the converted network goes in a folder of its own" in str(
        into_run.exception
    )
    assert not (run / "fcn.json").exists()


def test_convert_names_a_member_of_an_ensemble_before_loading_any(tmp_path, monkeypatch):
    """It loaded every member, then said the run was "not a single saved model (an ensemble?)"."""
    import cnnlab.train.saved
    from cnnlab.fcn.scan import convert_run
    from cnnlab.train.saved import save_ensemble

    for name in ("a", "b"):
        save_model(_classifier(), tmp_path / name, "mnist_net_small", {"drop_rate": 0.0}, meta={})
    (tmp_path / "pair").mkdir()
    save_ensemble(tmp_path / "pair", [tmp_path / "a", tmp_path / "b"], meta={})

    def no_loading(*args, **kwargs):
        raise AssertionError("a member was loaded")

    monkeypatch.setattr(cnnlab.train.saved, "_load_single", no_loading)
    with pytest.raises(CnnlabError, match=f"is an ensemble of 2 networks.*`cnnlab fcn convert {tmp_path / 'a'}`"):
        convert_run(tmp_path / "pair")


def test_a_scan_that_would_not_fit_in_memory_is_refused_naming_a_setting_that_fits(tmp_path, monkeypatch):
    """A 100 MP photo at 2 px apart needed about 7 GB of score maps, allocated without a word until the system killed
    the process. A scan whose estimate (image, stroke map, six copies of the score maps, one tile's working set;
    within 5% of the peak memory of scans of 6 and 24 MP images 2 px apart) is over 80% of the memory available is
    refused, naming the finest --refine, else the image size, that fits."""
    import re
    import warnings

    import cnnlab.fcn.scan as scanning
    import cnnlab.train.device as device

    converted = to_fully_convolutional(_unpadded_stride_8(), (1, 28, 28))
    image = torch.rand(1, 300, 400)
    cost = scanning._scan_cost(converted, 300, 400, scanning.tile_margin(converted))
    needed = {refine: cost.bytes(300, 400, (8 // refine, 8 // refine)) for refine in (1, 2, 4)}
    # a pass holds at most one layer's input and output: the first ReLU's, 6 + 6 floats a pixel
    assert cost.pass_bytes_per_pixel == pytest.approx(48, rel=0.1) and cost.tile == (300, 400)  # one tile: whole
    assert cost.classes == 10 and needed[4] - needed[1] == 6 * 10 * 4 * (
        137 * 187 - 35 * 47
    )  # six copies of the scores
    monkeypatch.setattr(device, "available_memory_bytes", lambda: int(needed[2] / 0.8) + 1)  # refine 2 fits, 4 not
    with pytest.raises(
        CnnlabError,
        match=r"this 400x300 image .* 2 px apart \(--refine 4\) needs about .* of memory, more than 80% of the .* "
        r"available; pass --refine 2 \(locations 4 px apart",
    ):
        scan(converted, image)
    monkeypatch.setattr(device, "available_memory_bytes", lambda: int(needed[1] / 0.8 / 2))  # none fits
    with pytest.raises(CnnlabError, match="crop or downscale the image to") as refused:
        scan(converted, image, refine=2)
    width, height = map(int, re.search(r"to (\d+)x(\d+) or less", str(refused.value)).groups())
    assert 0.5 < width / 400 < 1 and cost.bytes(height, width, (8, 8)) <= needed[1] / 2
    # the command refuses a large image by its header, before decoding it (a 100 MP one took 16 s and 1.3 GB)
    Image.new("L", (1500, 1400)).save(tmp_path / "large.png")
    Image.new("L", (400, 300)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2 * 10**6)  # Pillow's decompression-bomb warning is not printed
    with pytest.raises(CnnlabError, match="this 1500x1400 image .* pass --refine 1"), warnings.catch_warnings():
        warnings.simplefilter("error")
        scanning.check_scan_memory(converted, tmp_path / "large.png", refine=2)
    scanning.check_scan_memory(converted, tmp_path / "small.png")  # left to the scan, which has the image
    lines = []
    monkeypatch.setattr(device, "available_memory_bytes", lambda: None)  # a system that does not say: scanned
    monkeypatch.setattr(scanning, "LARGE_SCAN_BYTES", needed[1] - 1)  # a large scan says what it needs
    assert scan(converted, image, refine=1, log=lines.append).stride == 8
    assert lines == [f"scanning 400x300 (8 px apart) needs about {needed[1] / 1e9:.1f} GB of memory"]


def test_a_scan_on_a_cuda_device_checks_each_tile_against_the_gpus_free_memory(monkeypatch):
    """`fcn scan --device cuda` checked the whole estimate against the host's RAM only: a tile that would not fit
    in the GPU's free memory passed (and the GPU ran out), and one that fits was refused for the RAM its working set
    never takes. On a CUDA device the tile's pass is checked against `torch.cuda.mem_get_info`, the rest against RAM."""
    import dataclasses

    import cnnlab.fcn.scan as scanning
    import cnnlab.train.device as device

    converted = to_fully_convolutional(_unpadded_stride_8(), (1, 28, 28))
    cpu_cost = scanning._scan_cost(converted, 300, 400, scanning.tile_margin(converted))
    cost = dataclasses.replace(cpu_cost, device=torch.device("cuda", 0))
    held, on_gpu = cost.held_bytes(300, 400, (8, 8)), cost.pass_bytes(300, 400)
    assert held + on_gpu == cpu_cost.bytes(300, 400, (8, 8)) and on_gpu > 0
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda where=None: asked.append(where) or (free, 80 * 10**9))
    monkeypatch.setattr(device, "available_memory_bytes", lambda: int(held / 0.8) + 1)  # the RAM holds the maps only
    free = int(on_gpu / 0.8) + 1  # the GPU holds the tile's pass
    assert scanning._check_scan_memory(cost, 300, 400, (1, 1)) == held and asked == [torch.device("cuda", 0)]
    with pytest.raises(CnnlabError, match=r"this 400x300 image .*needs about .* of memory, more than 80%"):
        scanning._check_scan_memory(cpu_cost, 300, 400, (1, 1))  # on the CPU the pass takes RAM too: refused
    free = on_gpu  # under 80% of it is too little
    with pytest.raises(
        CnnlabError,
        match=r"^scanning this 400x300 image on cuda:0 needs about 0\.0 GB of GPU memory for its forward pass, more "
        r"than 80% of the 0\.0 GB free there; free some of the GPU's memory, crop or downscale the image, or pass "
        r"--device cpu$",
    ):
        scanning._check_scan_memory(cost, 300, 400, (1, 1))


def test_an_image_over_pillows_guard_whose_scan_fits_is_decoded(tmp_path, monkeypatch):
    """An image over twice Pillow's MAX_IMAGE_PIXELS (179 MP) was refused, "downscale it first", though README says
    `fcn scan` takes any size and it had estimated the scan's memory from the header: one that fits is decoded, the
    guard raised for that call only; one that does not is refused for its memory, naming what fits."""
    import cnnlab.fcn.scan as scanning
    import cnnlab.train.device as device

    converted = to_fully_convolutional(_unpadded_stride_8(), (1, 28, 28))
    measured = []  # the margin is its own, measured once (mnist_net's took 3.5 s, for the check then the scan)
    monkeypatch.setattr(scanning, "tile_margin", lambda model: measured.append(model) or 32)
    Image.new("L", (90, 70), 255).save(tmp_path / "canvas.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 6,300 px is over twice it, as 180 MP is over Pillow's
    with pytest.raises(CnnlabError, match="too many pixels to decode safely"):
        scanning.load_scan_image(tmp_path / "canvas.png")  # unchecked, the guard stands
    checked = scanning.check_scan_memory(converted, tmp_path / "canvas.png")
    assert checked == scanning.ScanCheck(90, 70, 32)
    picture = scanning.load_scan_image(tmp_path / "canvas.png", checked=checked)
    assert picture.shape == (1, 70, 90) and float(picture.max()) == 0.0 and Image.MAX_IMAGE_PIXELS == 1000
    assert scan(converted, picture, refine=1, checked=checked).probabilities.shape == (10, 6, 8)
    assert measured == [converted]
    monkeypatch.setattr(device, "available_memory_bytes", lambda: 10**5)
    with pytest.raises(CnnlabError, match="this 90x70 image .* crop or downscale the image to"):
        scanning.check_scan_memory(converted, tmp_path / "canvas.png")


def test_scan_refuses_images_smaller_than_the_window():
    """It said the image was smaller, not what to do with a small image of one digit."""
    with pytest.raises(
        CnnlabError, match=r"60x20, smaller than .* 28x28 input, so no window .*`cnnlab predict --model RUN"
    ):
        scan(to_fully_convolutional(_classifier()), torch.rand(1, 20, 60))


def test_save_and_load_converted_model(tmp_path):
    classifier = _classifier()
    converted = to_fully_convolutional(classifier)
    save_fully_convolutional(converted, tmp_path, {"arch": "mnist_net_small", "kwargs": {"drop_rate": 0.0}}, "window")
    loaded = load_fully_convolutional(tmp_path)
    x = torch.rand(2, 1, 50, 40)
    with torch.no_grad():
        assert torch.equal(loaded(x), converted(x))
    heatmap = save_heatmap(x[0], scan(loaded, x[0]), tmp_path / "h.png")
    assert heatmap.stat().st_size > 5000
    # convert stopped between its two files: another conversion's weights beside this record were loaded silently
    other = to_fully_convolutional(_classifier())
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    save_fully_convolutional(
        other, tmp_path / "other", {"arch": "mnist_net_small", "kwargs": {"drop_rate": 0.0}}, "window"
    )
    original = (tmp_path / "fcn.safetensors").read_bytes()
    (tmp_path / "fcn.safetensors").write_bytes((tmp_path / "other" / "fcn.safetensors").read_bytes())
    with pytest.raises(CnnlabError, match=r"fcn.safetensors is not the file .*fcn.json was written with .*fcn convert"):
        load_fully_convolutional(tmp_path)
    (tmp_path / "fcn.safetensors").write_bytes(original)
    # a damaged weights file (a cut copy, zero bytes) is one line naming it, not safetensors' traceback
    weights = tmp_path / "fcn.safetensors"
    for size in (100, 0):
        with weights.open("r+b") as file:
            file.truncate(size)
        with pytest.raises(
            CnnlabError, match=r"fcn.safetensors is damaged, not a whole safetensors file .*fcn convert"
        ):
            load_fully_convolutional(tmp_path)
    # fcn.json without its weights (a folder copied in part) was "No such file or directory", exit 1
    weights.unlink()
    with pytest.raises(CnnlabError, match=r"fcn.safetensors is missing; convert the run again with `cnnlab fcn conv"):
        load_fully_convolutional(tmp_path)


def test_the_commands_name_a_window_and_a_stride_that_differ_by_axis_as_height_x_width(tmp_path, monkeypatch):
    """`fcn scan` printed "20px windows every 2px" (heights alone) for 20x36 windows 2 px apart down and 1 across,
    and `fcn convert` "one score vector per 20px window, every 2px"."""
    import cnnlab.fcn.scan as scanning

    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d((2, 1)), torch.nn.Flatten()]  # 20x36 -> 18x34 -> 9x34
    converted = to_fully_convolutional(torch.nn.Sequential(*layers, torch.nn.Linear(2 * 9 * 34, 10)), (1, 20, 36))
    monkeypatch.setattr(scanning, "convert_run", lambda run, pool="window": (converted, {"arch": "wide"}))
    monkeypatch.setattr(scanning, "load_converted_or_run", lambda run, device="cpu": (converted, {"arch": "wide"}))
    monkeypatch.setattr(scanning, "save_heatmap", lambda image, result, path, *args, **kwargs: path)  # not drawn
    Image.fromarray(np.zeros((30, 40), dtype=np.uint8)).save(tmp_path / "canvas.png")
    runner = CliRunner()
    converting = runner.invoke(app, ["fcn", "convert", str(tmp_path), "-o", str(tmp_path / "fcn")])
    assert converting.exit_code == 0, converting.output
    # 80x144: (80 - 20) // 2 + 1 = 31 rows, (144 - 36) // 1 + 1 = 109 columns
    assert "gives [1, 10, 31, 109]: one score vector per 20x36px window, every 2x1px (height x width)" in (
        converting.output
    )
    scanned = runner.invoke(app, ["fcn", "scan", "wide", str(tmp_path / "canvas.png"), "--refine", "1", "--quiet"])
    assert scanned.exit_code == 0, scanned.output
    assert "6x5 locations (one per 20x36px window, every 2x1px (height x width)): " in scanned.output


def test_cli_convert_and_scan(tmp_path, monkeypatch):
    run = tmp_path / "run"
    save_model(_classifier(), run, "mnist_net_small", {"drop_rate": 0.0}, meta={})
    picture = np.zeros((70, 90), dtype=np.uint8)
    picture[20:40, 30:34] = 255
    Image.fromarray(picture).save(tmp_path / "canvas.png")
    runner = CliRunner()
    converted = runner.invoke(app, ["fcn", "convert", str(run)])
    assert converted.exit_code == 0, converted.output
    assert "Conv2d(64, 10, kernel_size=(3, 3)" in converted.output and (run / "fcn" / "fcn.json").is_file()
    # the padded trunk's map has a 12th row and column of windows off the edge: it said all 12x12 were 28px windows
    assert (
        "gives [1, 10, 12, 12]" in converted.output and "11x11 of them are windows inside the image" in converted.output
    )
    (tmp_path / "h.png").write_bytes(b"notes")  # a file of the user's is replaced only with --overwrite
    scanning = ["fcn", "scan", str(run / "fcn"), str(tmp_path / "canvas.png"), "-o", str(tmp_path / "h.png")]
    refused = runner.invoke(app, scanning)
    assert isinstance(refused.exception, CnnlabError) and "pass --overwrite" in str(refused.exception)
    assert (tmp_path / "h.png").read_bytes() == b"notes"
    scanned = runner.invoke(app, [*scanning, "--overwrite"])
    assert scanned.exit_code == 0, scanned.output
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    from cnnlab.fcn import scan as scan_module

    monkeypatch.setattr(scan_module, "LARGE_SCAN_BYTES", 0)  # every scan says the memory it needs ...
    from_run = runner.invoke(app, ["fcn", "scan", str(run), str(tmp_path / "canvas.png")])
    assert from_run.exit_code == 0 and (tmp_path / "canvas-heatmap.png").is_file()
    assert "needs about" in from_run.stderr and "needs about" not in from_run.stdout  # ... as a note, on stderr
    assert from_run.stdout.splitlines()[-1].endswith("canvas-heatmap.png")  # stdout: the result line alone
    assert len(from_run.stdout.splitlines()) == 1
    # the run trained again (`train --overwrite` keeps RUN/fcn): its converted copy scanned with the old weights
    torch.manual_seed(1)
    save_model(create_model("mnist_net_small", drop_rate=0.0), run, "mnist_net_small", {"drop_rate": 0.0}, meta={})
    stale = runner.invoke(app, ["fcn", "scan", str(run / "fcn"), str(tmp_path / "canvas.png")])
    assert isinstance(stale.exception, CnnlabError) and "before that run was trained again" in str(stale.exception)
    assert runner.invoke(app, ["fcn", "convert", str(run)]).exit_code == 0  # converted again: scanned
    with monkeypatch.context() as undrawn:  # a third heatmap, as the two above: a third of this test's time
        undrawn.setattr("cnnlab.fcn.scan.save_heatmap", lambda *args, **kwargs: tmp_path / "canvas-heatmap.png")
        quiet = runner.invoke(app, ["fcn", "scan", str(run / "fcn"), str(tmp_path / "canvas.png"), "-q"])
    # the memory note says a scan is starting, progress: -q dropped the bar but printed it (its help: no progress)
    assert (quiet.exit_code, quiet.stderr, len(quiet.stdout.splitlines())) == (0, "", 1)
    (run / "fcn" / "fcn.safetensors").unlink()  # was an OSError: "error: No such file or directory: ...", exit 1
    missing = runner.invoke(app, ["fcn", "scan", str(run / "fcn"), str(tmp_path / "canvas.png")])
    assert isinstance(missing.exception, CnnlabError)  # one line, exit 2 (`cnnlab.cli.main`)
    assert "fcn.safetensors is missing; convert the run again" in str(missing.exception)


def test_a_heatmap_stopped_while_it_was_written_leaves_the_earlier_one(tmp_path, monkeypatch):
    """The PNG was written in place: a stop while a large scan's figure was encoded left a truncated image (PIL:
    "image file is truncated") where an earlier scan's heatmap had been."""
    from cnnlab.fcn.scan import ScanResult
    from stopped_midway import stop_savefig_midway

    result = ScanResult(torch.full((3, 4, 6), 1 / 3), torch.ones(4, 6), window=28, stride=8)
    path = save_heatmap(torch.rand(1, 60, 80), result, tmp_path / "h.png")
    earlier = path.read_bytes()
    stop_savefig_midway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_heatmap(torch.rand(1, 60, 80), result, path)
    assert path.read_bytes() == earlier and [p.name for p in tmp_path.iterdir()] == ["h.png"]
    monkeypatch.undo()  # the format is still the one the name's suffix gives, though written under another name
    assert "<svg" in save_heatmap(torch.rand(1, 60, 80), result, tmp_path / "h.svg").read_text()[:500]


def test_the_heatmap_names_each_confident_blob_once(tmp_path, monkeypatch):
    """Every location with p >= 0.9 got its class name: a pile of names on each digit, tens of thousands on a photo."""
    from matplotlib.axes import Axes

    from cnnlab.fcn.scan import ScanResult

    written = []
    monkeypatch.setattr(Axes, "text", lambda axis, x, y, text, **kw: written.append((x, y, text)))
    rows, cols = torch.meshgrid(torch.arange(40.0), torch.arange(90.0), indexing="ij")
    probabilities = torch.full((10, 40, 90), 0.01)
    for digit, (i, j) in ((3, (20, 20)), (7, (18, 65))):  # two digits, each a peak of confidence 14 locations wide
        bump = torch.exp(-((rows - i) ** 2 + (cols - j) ** 2) / 60)
        probabilities[digit] = torch.maximum(probabilities[digit], bump)
    result = ScanResult(probabilities / probabilities.sum(0), torch.ones(40, 90), window=28, stride=2)
    figures = _kept_figures(monkeypatch)
    save_heatmap(torch.rand(1, 108, 208), result, tmp_path / "h.png")
    names = sorted(text for _, _, text in written if text in {str(d) for d in range(10)})
    assert names == ["3", "7"], written
    # The overlay had no legend: which colour is which class, and the score it is drawn above, went unsaid.
    (legend,) = [axis.get_legend() for axis in figures[0].axes if axis.get_legend() is not None]
    assert [text.get_text() for text in legend.get_texts()] == ["3", "7"]
    assert "p >= 0.5" in legend.get_title().get_text()
    overlay = figures[0].axes[0].get_images()[1].get_array()  # locations x RGBA, over the picture
    for handle, (i, j) in zip(legend.legend_handles, [(20, 20), (18, 65)], strict=True):
        assert np.allclose(overlay[i, j, :3], handle.get_facecolor()[:3]) and overlay[i, j, 3] > 0
    assert overlay[0, 0, 3] == 0 and not np.allclose(overlay[20, 20, :3], overlay[18, 65, :3])  # 7: not grey


def _kept_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures `save_heatmap` draws, kept as it closes them."""
    import matplotlib.pyplot as plt

    figures = []
    closing = plt.close
    monkeypatch.setattr(plt, "close", lambda figure: figures.append(figure) or closing(figure))
    return figures


def test_the_heatmap_says_what_it_shows_on_axes_in_pixels_of_the_image(tmp_path, monkeypatch):
    """The panels had no ticks, no scale for the heat and no word on where a location is drawn or why it is blank."""
    from cnnlab.fcn.scan import ScanResult

    figures = _kept_figures(monkeypatch)
    result = ScanResult(torch.full((3, 4, 6), 1 / 3), torch.ones(4, 6), window=28, stride=8)
    save_heatmap(torch.rand(1, 60, 80), result, tmp_path / "h.png")
    (main, *panels), info = figures[0].axes[:3], figures[0].axes[3]  # a 2 x 3 grid, row by row, then the scale
    assert not figures[0].axes[5].axison  # the sixth panel has no class to show
    assert "px of the image" in main.get_xlabel() and "px of the image" in main.get_ylabel()
    assert all(axis.get_xlim() == (0, 80) and axis.get_ylim() == (60, 0) for axis in [main, *panels])
    assert len(main.get_xticks()) > 1 and len(main.get_yticks()) > 1  # the class panels show the same pixels
    notes = " ".join(text.get_text() for text in info.texts)
    assert "window 28px, stride 8px" in notes and "window's centre" in notes and "blank: under 3%" in notes
    scale = info.child_axes[0]  # the colour bar, inset in the notes panel
    assert "p(class)" in scale.get_xlabel() and scale.get_xlim() == (0, 1)


@pytest.mark.parametrize(
    ("size", "line"), [((63, 70), "in no window: the right 2 px, the bottom 3 px"), ((60, 68), "")]
)
def test_the_heatmap_names_the_edges_no_window_reaches(tmp_path, monkeypatch, size, line):
    """A 63 x 70 image at 8 px keeps the 5 x 6 windows that fit, to 60 x 68: the last 3 rows and 2 columns lie in no
    window, which the heatmap did not say (its map ends at the last centre, as it ends half a window from the top)."""
    figures = _kept_figures(monkeypatch)
    result = scan(to_fully_convolutional(_unpadded_stride_8(), (1, 28, 28)), torch.rand(1, *size), refine=1)
    assert result.probabilities.shape[1:] == (5, 6)
    save_heatmap(torch.rand(1, *size), result, tmp_path / "h.png")
    notes = " ".join(text.get_text() for axis in figures[0].axes for text in axis.texts)
    assert (line in notes) if line else "in no window" not in notes


def test_a_strip_wider_than_three_heights_is_drawn_in_panels_stacked_across_the_page(tmp_path, monkeypatch):
    """A 29 x 3000 px scan drew every panel of the 2 x N grid as a line 2 px tall. On the page of stacked panels, 19 in
    tall, the title (at matplotlib's 98% of the height, 0.38 in down) ran into the image panel's title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cnnlab.fcn.scan import ScanResult

    figures = _kept_figures(monkeypatch)
    # laid out by tight_layout as it is written, but not encoded: the file is not read here
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda figure, path, **kwargs: Path(path).touch())
    result = ScanResult(torch.full((10, 1, 743), 1 / 10), torch.ones(1, 743), window=28, stride=4)
    save_heatmap(torch.rand(1, 29, 3000), result, tmp_path / "h.png", title="mnist_net scanning strip.png")
    figure = figures[0]
    main, notes, *panels = figure.axes[:5]  # one under the other: the image, the notes, the first three classes
    inches = figure.get_size_inches()
    for axis in (main, *panels):
        box = axis.get_position()
        assert box.height * inches[1] >= 0.9 and box.width * inches[0] >= 10, box  # was 0.03 x 2.9 in
        assert axis.get_xlim() == (0, 3000) and axis.get_ylim() == (29, 0)
    assert "the panels stretched 9x in height" in " ".join(text.get_text() for text in notes.texts)
    renderer = FigureCanvasAgg(figure).get_renderer()  # closing the figure took its canvas
    title, main_title = (text.get_window_extent(renderer) for text in (figure._suptitle, main.title))
    assert title.y0 > main_title.y1, (title, main_title)  # the figure's title above the image panel's


def test_a_strip_taller_than_three_widths_is_drawn_in_panels_side_by_side_down_the_page(tmp_path, monkeypatch):
    """A 3000 x 29 px scan drew every panel of the 2 x N grid as a line 2 px wide."""
    from cnnlab.fcn.scan import ScanResult

    figures = _kept_figures(monkeypatch)
    result = ScanResult(torch.full((3, 743, 1), 1 / 3), torch.ones(743, 1), window=28, stride=4)
    save_heatmap(torch.rand(1, 3000, 29), result, tmp_path / "h.png")
    figure = figures[0]
    main, notes, *panels = figure.axes[:5]  # side by side: the image, the notes, the three classes
    inches = figure.get_size_inches()
    boxes = [axis.get_position() for axis in (main, notes, *panels)]
    for axis, box in zip((main, *panels), boxes[:1] + boxes[2:], strict=True):
        assert box.width * inches[0] >= 0.9 and box.height * inches[1] >= 10, box  # was 0.03 x 2.6 in
        assert axis.get_xlim() == (0, 29) and axis.get_ylim() == (3000, 0)
    assert all(left.x1 <= right.x0 for left, right in pairwise(boxes)), boxes  # in one row, left to right
    assert "the panels stretched 9x in width" in " ".join(text.get_text() for text in notes.texts)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()  # closing the figure took its canvas
    titles = [axis.title.get_window_extent(renderer) for axis in (main, *panels)]
    assert not any(a.overlaps(b) for a, b in pairwise(titles)), titles  # none runs into its neighbour


def test_the_heatmap_shows_a_thin_digit_and_leaves_blank_or_noisy_paper_empty(tmp_path, monkeypatch):
    """Windows with a mean intensity under 0.06 were drawn empty: 25% of MNIST's test "1"s, so a "1" scored p = 0.98
    showed nothing, while noisy paper (mean 0.15) showed the class the classifier picks for nothing."""
    from matplotlib.axes import Axes

    from cnnlab.fcn.scan import ScanResult

    written = []
    monkeypatch.setattr(Axes, "text", lambda axis, x, y, text, **kw: written.append((x, y, text)))
    image = torch.zeros(1, 60, 150)
    image[:, 20:37, 74:76] = 1.0  # a thin "1": 34 px of stroke, a mean of 0.043 over its window
    image[:, :, :40] = torch.rand(1, 60, 40, generator=torch.Generator().manual_seed(0)) * 0.3  # noisy paper
    scanned = scan(to_fully_convolutional(_classifier()), image, refine=1)
    rows, cols = scanned.probabilities.shape[1:]
    confident = torch.full((10, rows, cols), 0.02 / 9)
    confident[1] = 0.98  # the classifier is sure everywhere: only the windows' stroke decides what is drawn
    save_heatmap(image, ScanResult(confident, scanned.ink, scanned.window, scanned.stride), tmp_path / "h.png")
    labels = [(x, y) for x, y, text in written if text == "1"]
    assert labels and all(abs(x - 75) < 28 and abs(y - 28) < 28 for x, y in labels), written


def test_a_16_bit_or_transparent_scan_reads_as_its_8_bit_opaque_copy(tmp_path, monkeypatch):
    """Pillow's own conversion clipped a 16-bit scan to white, and a transparent background read as black ink's
    colour: both scanned as an empty page."""
    from cnnlab.fcn.scan import load_scan_image

    paper = np.full((40, 60), 255, dtype=np.uint8)
    paper[10:30, 20:26] = 0  # a black stroke
    Image.fromarray(paper).save(tmp_path / "plain.png")
    ink = np.zeros((40, 60, 4), dtype=np.uint8)
    ink[..., 3] = 255 - paper  # black, opaque only where the stroke is
    Image.fromarray(ink, mode="RGBA").save(tmp_path / "clear.png")
    grey = np.where(paper == 0, 60, 220).astype(np.uint8)  # a pencil stroke on grey paper
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    plain = load_scan_image(tmp_path / "plain.png")
    assert plain[0, 15, 22] == 1.0 and plain[0, 0, 0] == 0.0  # inverted to MNIST's light ink on black
    # into an RGB network too, as --invert's help says ("when the image is bright"): it was grayscale only
    assert torch.equal(load_scan_image(tmp_path / "plain.png", channels=3), plain.expand(3, -1, -1))
    assert torch.equal(load_scan_image(tmp_path / "plain.png", channels=3, invert=False), 1 - plain.expand(3, -1, -1))
    # A 100 MP photo was decoded twice (checked, then loaded) with Pillow's "could be decompression bomb DOS attack"
    # warning printed over the scan's output (from 89 MP, Image.MAX_IMAGE_PIXELS, here 2,000 for a 2,400 px image).
    import warnings

    import cnnlab.data.folder as folder

    decoded = []
    decode = folder._decode
    monkeypatch.setattr(folder, "_decode", lambda data: decoded.append(len(data)) or decode(data))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load_scan_image(tmp_path / "plain.png"), plain) and len(decoded) == 1
    assert torch.equal(load_scan_image(tmp_path / "clear.png"), plain)
    assert torch.equal(load_scan_image(tmp_path / "deep.png"), load_scan_image(tmp_path / "grey.png"))
    with pytest.raises(CnnlabError, match="cannot read image .*: a folder, not an image file"):
        load_scan_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")  # it said "cannot identify image file", not what every command says
    with pytest.raises(CnnlabError, match="cannot read image .*empty.png: zero-byte file"):
        load_scan_image(tmp_path / "empty.png")


def test_heatmap_path_takes_folders_and_refuses_formats_matplotlib_cannot_write(tmp_path):
    """`-o /tmp` wrote /tmp.png and reported /tmp; `-o h.xyz` was a matplotlib traceback after the scan."""
    from cnnlab.errors import CnnlabError
    from cnnlab.fcn.scan import heatmap_path

    image = tmp_path / "pics" / "street.jpg"
    assert heatmap_path(None, image) == tmp_path / "pics" / "street-heatmap.png"
    assert heatmap_path(tmp_path, image) == tmp_path / "street-heatmap.png"  # an existing folder
    assert heatmap_path(tmp_path / "maps", image) == tmp_path / "maps" / "street-heatmap.png"  # a folder to make
    assert heatmap_path(tmp_path / "h.PDF", image) == tmp_path / "h.PDF"
    with pytest.raises(CnnlabError, match=r"cannot write a \.xyz image; end it in \.png"):
        heatmap_path(tmp_path / "h.xyz", image)
    image.parent.mkdir()  # `-o street.jpg` for street.jpg replaced the photo with its heatmap
    image.write_bytes(b"a photo")
    (tmp_path / "link.jpg").symlink_to(image)
    for same in (image, tmp_path / "pics" / ".." / "pics" / "street.jpg", tmp_path / "link.jpg"):
        with pytest.raises(CnnlabError, match=r"is the image being scanned, .*street-heatmap.png beside it"):
            heatmap_path(same, image)
    assert heatmap_path(tmp_path / "pics" / "other.jpg", image) == tmp_path / "pics" / "other.jpg"


def test_an_output_that_is_a_file_where_a_folder_is_needed_is_refused_before_the_work(tmp_path):
    """`fcn scan -o notes` (a file without a suffix, read as a folder) scanned the image, then failed writing the
    heatmap with exit code 1; `fcn convert -o notes` converted, then failed. Both are refused first: exit 2."""
    from cli_in_process import run_cnnlab
    from cnnlab.fcn.scan import heatmap_path

    (tmp_path / "notes").write_text("the user's own file")
    image = tmp_path / "street.png"
    for output in (tmp_path / "notes", tmp_path / "notes" / "h.png", tmp_path / "notes" / "maps" / "h.png"):
        with pytest.raises(CnnlabError, match=r"^--output .*: .*notes is a file, where a folder is needed; name a hea"):
            heatmap_path(output, image)
    run = tmp_path / "run"
    save_model(_classifier(), run, "mnist_net_small", {"drop_rate": 0.0}, meta={})
    done = run_cnnlab("fcn", "convert", str(run), "-o", str(tmp_path / "notes"))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"error: --output {tmp_path / 'notes'}: {tmp_path / 'notes'} is a file, where a folder is needed; the "
        "converted network is a folder (fcn.json, fcn.safetensors)\n"
    )


@pytest.mark.parametrize("suffix", [".png", ".webp"])  # the mark as PNG metadata, and in EXIF
def test_a_scan_replaces_its_own_heatmap_but_another_file_only_with_overwrite(tmp_path, suffix):
    """`-o notes.png` (or the default IMAGE-heatmap.png beside the image) replaced a file of the user's without a
    word; only `-o IMAGE` itself was refused."""
    from cnnlab.fcn.scan import ScanResult, heatmap_path, is_heatmap

    image = tmp_path / "street.jpg"
    image.write_bytes(b"a photo")
    notes = tmp_path / f"notes{suffix}"
    notes.write_bytes(b"the user's own file")
    with pytest.raises(
        CnnlabError, match=rf"notes{suffix} is a file that `cnnlab fcn scan` did not write.*--overwrite"
    ):
        heatmap_path(notes, image)
    assert heatmap_path(notes, image, overwrite=True) == notes
    result = ScanResult(torch.full((3, 4, 6), 1 / 3), torch.ones(4, 6), window=28, stride=8)
    save_heatmap(torch.rand(1, 60, 80), result, notes)
    assert is_heatmap(notes) and heatmap_path(notes, image) == notes  # a heatmap a scan wrote: replaced again
    (tmp_path / "street-heatmap.png").write_bytes(b"not a heatmap")  # the default name, beside the image
    for output in (None, tmp_path):
        with pytest.raises(CnnlabError, match="street-heatmap.png is a file that `cnnlab fcn scan` did not write"):
            heatmap_path(output, image)


def test_the_canvas_demo_title_does_not_list_the_digits_as_if_left_to_right(tmp_path, monkeypatch):
    """The exercise-7 heatmap's title listed the digits in the order they were drawn (9, 5, 4, 5 for a canvas that
    reads 5, 4, 9, 5): a reader takes a list under a picture as left to right. It lists them sorted, and says so."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
    from test_mnist_idx import write_fake_mnist  # noqa: PLC0415 - a sibling folder's test module

    from cnnlab.fcn import scan as scan_module

    titles: list[str] = []
    monkeypatch.setattr(scan_module, "save_heatmap", lambda *args: titles.append(args[-1]) or args[2])
    data = write_fake_mnist(tmp_path / "data", train=12, test=40)
    for seed in range(2):
        scan_module.scan_canvas_demo(_classifier(), tmp_path, data_dir=data, seed=seed)
    digits = [[int(d) for d in title.split(": ")[1].split(", ")] for title in titles]
    assert all(title.startswith("digits on the canvas, in any order: ") for title in titles)
    assert all(len(shown) == 4 and shown == sorted(shown) for shown in digits)


def test_scan_runs_the_network_on_the_device_asked_for(tmp_path, monkeypatch):
    """`fcn scan` had no --device: the network always scanned on the CPU. The network goes to --device (each tile is
    sent where its weights are); cpu scans, and a device the machine lacks is one line, as train's --device."""
    from cli_in_process import run_cnnlab
    from cnnlab.fcn import scan as scan_module

    run = tmp_path / "run"
    save_model(_classifier(), run, "mnist_net_small", {"drop_rate": 0.0}, meta={})
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "canvas.png")
    scanning = ["fcn", "scan", str(run), str(tmp_path / "canvas.png")]
    seen: list[torch.device] = []

    def spied(model, image, **options):
        seen.append(next(model.parameters()).device)
        raise CnnlabError("spied")

    with monkeypatch.context() as spying:
        spying.setattr(scan_module, "scan", spied)
        done = run_cnnlab(*scanning, "--device", "meta")  # a device other than the CPU that this machine has
    assert (done.returncode, done.stderr, seen) == (2, "error: spied\n", [torch.device("meta")])
    monkeypatch.setattr(scan_module, "save_heatmap", lambda *args, **kwargs: tmp_path / "canvas-heatmap.png")
    assert run_cnnlab(*scanning, "--device", "cpu").returncode == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    done = run_cnnlab(*scanning, "--device", "cuda")
    assert (done.returncode, done.stderr) == (
        2,
        "error: device 'cuda' was asked for, but torch finds no CUDA GPU here; available: cpu\n",
    )


def _page_of_strokes() -> np.ndarray:
    """A 96x160 uint8 canvas of three light strokes on black, as the MNIST canvases hold digits (a 1, a 7, a 0)."""
    from PIL import ImageDraw

    canvas = Image.new("L", (160, 96), 0)
    draw = ImageDraw.Draw(canvas)
    draw.line([(30, 20), (30, 60)], fill=255, width=3)
    draw.line([(60, 30), (80, 30), (68, 70)], fill=255, width=3)
    draw.ellipse([104, 40, 124, 76], outline=255, width=3)
    return np.array(canvas)


def _photographed_page(canvas: np.ndarray, paper: float, seed: int = 0) -> Image.Image:
    """A light-on-black canvas as a photo: dark ink (0.1) on paper of grey `paper`, lit 15% less at the bottom right
    than at the top left, with the camera's noise (sigma 0.02); RGB, as `load_scan_image` decodes a file."""
    ink = canvas.astype(np.float64) / 255
    rows, cols = np.mgrid[0 : canvas.shape[0], 0 : canvas.shape[1]]
    light = 1 - 0.15 * (0.6 * cols / canvas.shape[1] + 0.4 * rows / canvas.shape[0])
    page = (paper * (1 - ink) + 0.1 * ink) * light + np.random.default_rng(seed).normal(0, 0.02, canvas.shape)
    return Image.fromarray((page.clip(0, 1) * 255).round().astype(np.uint8)).convert("RGB")


@pytest.mark.parametrize("paper", [0.5, 0.7, 0.95])
def test_a_page_photographed_on_grey_paper_is_read_as_light_digits_on_black(paper: float) -> None:
    """A page of digits on grey paper (0.7) was inverted to paper of 0.3, left in the image the scan and the canvas
    segmenter read (the segmenter took it for ink), and on darker paper (0.5, the mean below 0.5) not inverted at all:
    the paper was the "digits". As `cnnlab predict` prepares one digit, the paper, found at the border, is now black
    and the ink white."""
    from cnnlab.fcn.scan import scan_tensor

    canvas = _page_of_strokes()
    clean = torch.from_numpy(canvas).float()[None] / 255
    for channels in (1, 3):
        read = scan_tensor(_photographed_page(canvas, paper), channels=channels)
        assert read.shape == (channels, 96, 160)
        ink, truth = read[0] > 0.5, clean[0] > 0.5
        assert float((ink & truth).sum() / (ink | truth).sum()) > 0.85
        assert float(read[0][clean[0] == 0].median()) == 0.0  # the paper is black, its grain faint, not a grey page
        assert float((read[0][clean[0] == 0] > 0.3).float().mean()) < 0.01
        assert float(read[0][clean[0] == 1].mean()) > 0.85  # the ink near white
        assert torch.equal(read, read[:1].expand(channels, -1, -1))


def test_a_clean_canvas_or_a_blank_page_is_read_as_before() -> None:
    """What was already right is kept: light digits on exact black (the canvases, MNIST's own form) are read as they
    are, white paper with black ink is inverted only, an image of one grey is inverted when bright, and a blank page is
    left black (its grain not stretched into ink); `--invert`/`--no-invert` invert, or not, and nothing else."""
    from cnnlab.fcn.scan import scan_tensor

    canvas = _page_of_strokes().copy()
    canvas[50:60, 140:150] = 120  # a fainter stroke: left faint, as the canvases' digits' edges are
    clean = torch.from_numpy(canvas).float()[None] / 255
    assert torch.equal(scan_tensor(Image.fromarray(canvas).convert("RGB")), clean)
    assert torch.equal(scan_tensor(Image.fromarray(canvas).convert("RGB"), channels=3), clean.expand(3, -1, -1))
    white = 255 - _page_of_strokes()
    inverted = 1 - torch.from_numpy(white).float()[None] / 255
    assert torch.equal(scan_tensor(Image.fromarray(white).convert("RGB")), inverted)
    grey = _photographed_page(canvas, 0.7)
    assert torch.equal(scan_tensor(grey, invert=True), 1 - scan_tensor(grey, invert=False))
    as_read = torch.from_numpy(np.array(grey.convert("L"))).float()[None] / 255
    assert torch.equal(scan_tensor(grey, invert=False), as_read)
    for paper in (0.5, 0.7, 0.95):  # a blank page lit unevenly: its paper black, its grain not stretched into ink
        blank = scan_tensor(_photographed_page(np.zeros((96, 160), np.uint8), paper))
        assert float(blank.median()) < 0.05 and float(blank.max()) < 0.3, paper
    assert torch.equal(scan_tensor(Image.new("RGB", (40, 30), (90, 90, 90))), torch.full((1, 30, 40), 90 / 255))


def _on_a_table(photo: Image.Image, table: float, margin: int, seed: int = 0) -> Image.Image:
    """`photo` (a page) lying on a table of grey `table` that shows `margin` px round it, with the camera's noise."""
    width, height = photo.size
    around = np.random.default_rng(seed).normal(table, 0.02, (height + 2 * margin, width + 2 * margin))
    picture = Image.fromarray((around.clip(0, 1) * 255).round().astype(np.uint8)).convert("RGB")
    picture.paste(photo, (margin, margin))
    return picture


@pytest.mark.parametrize("table", [0.1, 0.35])
def test_a_page_photographed_on_a_dark_table_is_read_as_the_page_with_the_table_black(table: float) -> None:
    """A light page on a darker table: the border (the table) was taken for the paper, so the page itself came out
    as the "ink", a bright slab the scan and the canvas segmenter read as digits. The table is now told apart (most of
    the border dark, the light class a large share of the image) and goes to black; the page reads as it does alone."""
    from cnnlab.fcn.scan import scan_tensor

    canvas = _page_of_strokes()
    page = _photographed_page(canvas, 0.9)
    alone = scan_tensor(page)
    read = scan_tensor(_on_a_table(page, table, margin=20))
    assert read.shape == (1, 136, 200)
    assert float(read[0, :20].abs().max()) == 0.0 and float(read[0, :, :20].abs().max()) == 0.0  # the table: black
    inside = read[0, 20:-20, 20:-20]
    ink, truth = inside > 0.5, alone[0] > 0.5
    assert float((ink & truth).sum() / (ink | truth).sum()) > 0.9
    assert float((inside[torch.from_numpy(canvas) == 0] > 0.3).float().mean()) < 0.01  # the page's paper is black
    blank = scan_tensor(_on_a_table(_photographed_page(np.zeros_like(canvas), 0.9), table, margin=20))
    assert float(blank.max()) < 0.3  # a blank page on a table: nothing bright


def test_an_rgb_network_gets_the_prepared_grey_on_each_channel_on_coloured_paper_too() -> None:
    """Each colour was stretched by the grey's paper and ink levels: yellow paper went to black in grey but its blue
    channel stayed at 0.49, as bright as half the ink (the scan's stroke level), so an RGB network read the page as
    ink. It now gets the grey preparation on each of its channels, as a grey photo always gave it."""
    from PIL import ImageDraw

    from cnnlab.fcn.scan import scan_tensor

    page = Image.new("RGB", (160, 96), (240, 220, 120))  # yellow paper, a dark stroke
    ImageDraw.Draw(page).line([(30, 20), (30, 60)], fill=(20, 20, 20), width=3)
    grey = scan_tensor(page, channels=1)
    read = scan_tensor(page, channels=3)
    assert torch.equal(read, grey.expand(3, -1, -1))
    assert float(read[:, 80, 100].max()) == 0.0 and float(read[:, 40, 30].min()) == 1.0  # paper black, ink white
    as_read = scan_tensor(page, channels=3, invert=False)  # --no-invert keeps the colours: it does nothing else
    assert not torch.equal(as_read[0], as_read[2])


def test_a_page_whose_light_falls_steeply_is_flattened_and_an_evenly_lit_one_read_as_before() -> None:
    """Light falling 75% across a page: Otsu's one threshold put the shaded paper with the ink, so the dark end's
    paper came out bright (as ink) and its strokes faint against it. The paper's light, a grey closing that covers a
    digit, is now divided out first when it falls below 2/3 of its brightest; a page lit evenly, or 15% unevenly, is
    read exactly as before."""
    from cnnlab.fcn.scan import scan_tensor

    canvas = _page_of_strokes()
    clean = torch.from_numpy(canvas).float() / 255
    ink = canvas.astype(np.float64) / 255
    rows, cols = np.mgrid[0:96, 0:160]
    light = 1 - 0.75 * (0.6 * cols / 160 + 0.4 * rows / 96)
    page = (0.95 * (1 - ink) + 0.1 * ink) * light + np.random.default_rng(0).normal(0, 0.02, canvas.shape)
    photo = Image.fromarray((page.clip(0, 1) * 255).round().astype(np.uint8)).convert("RGB")
    read = scan_tensor(photo)[0]
    assert float((read[clean == 0] > 0.3).float().mean()) < 0.01  # the shaded paper black, not ink
    strokes, truth = read > 0.5, clean > 0.5
    assert float((strokes & truth).sum() / (strokes | truth).sum()) > 0.8
    from cnnlab.data.mnist import flattened_light
    from cnnlab.fcn.scan import FLATTEN_SIZE

    even = _photographed_page(canvas, 0.9)  # lit 15% unevenly: not flattened, read as before
    assert flattened_light(np.array(even.convert("L")), FLATTEN_SIZE) is None
