"""The Scan page returns the heatmap of `cnnlab fcn scan` for an MNIST run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from cnnlab.errors import CnnlabError
from cnnlab.lab.scan_page import scan_view, segment_view
from cnnlab.models import create_model
from cnnlab.train.saved import save_model


@pytest.fixture
def mnist_run(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    folder = tmp_path / "mnist" / "run"
    save_model(create_model("mnist_net_small"), folder, "mnist_net_small", {}, meta={"task": "mnist"})
    return folder


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image Pillow decodes from now on (a decoded image's load() returns at once, uncounted)."""
    decoded = []
    load = ImageFile.ImageFile.load

    def counted(image: ImageFile.ImageFile) -> object:
        if image.tile:  # pixels still to decode
            decoded.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    return decoded


def test_large_image_gives_a_heatmap_and_a_small_one_a_message(
    mnist_run: Path, tmp_path: Path, decodes: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload is decoded once: the MNIST scan decoded it four times (the size check's EXIF look-up decodes a
    whole PNG, then the page's check, the scan's check and the scan's reading), each a full decode of a photo up to
    4 MP. It is scanned as `cnnlab fcn scan` reads the file."""
    from cnnlab.fcn import scan as fcn_scan

    scanned = []
    scan = fcn_scan.scan

    def recorded(model: torch.nn.Module, image: torch.Tensor, **options: object) -> object:
        scanned.append(image)
        return scan(model, image, **options)

    monkeypatch.setattr(fcn_scan, "scan", recorded)
    large = tmp_path / "large.png"
    canvas = np.zeros((56, 112), dtype=np.uint8)
    canvas[10:40, 20:26] = 255
    Image.fromarray(canvas).save(large)
    heatmap = scan_view(mnist_run, large)
    assert heatmap.mode == "RGB" and heatmap.width > 112
    assert decodes.count((112, 56)) == 1, decodes
    assert len(scanned) == 1 and torch.equal(scanned[0], fcn_scan.load_scan_image(large))
    small = tmp_path / "small.png"
    Image.fromarray(canvas[:20, :20]).save(small)
    with pytest.raises(CnnlabError, match="smaller than the classifier"):
        scan_view(mnist_run, small)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(CnnlabError, match="cannot use this file"):
        scan_view(mnist_run, broken)


def test_an_image_over_the_pages_pixel_limit_is_refused_naming_the_limit_and_the_command(
    mnist_run: Path, tmp_path: Path
) -> None:
    """The page had no pixel limit: a 24 MP photo took 2.5 min of CPU to scan (a blank 4 MP + 2 px image, two rows
    high, stands for it here: a small file, refused before any pass)."""
    large = tmp_path / "large.png"
    Image.new("L", (2**21 + 1, 2)).save(large)
    with pytest.raises(CnnlabError) as refused:
        scan_view(mnist_run, large)
    assert str(refused.value) == (
        "the image is 2097153x2, 4,194,306 pixels; the lab takes up to 4,194,304 (4 MP), a larger image takes "
        "minutes: crop it to the part to scan, or scan it whole with `cnnlab fcn scan RUN IMAGE`"
    )
    folder = tmp_path / "segment" / "run"
    meta = {"task": "segment", "classes": ["background", "disc"], "background": 0,
            "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3}}  # fmt: skip
    kwargs = {"num_classes": 2, "in_chans": 3, "widths": [4, 8]}
    save_model(create_model("unet", **kwargs), folder, "unet", kwargs, meta)
    with pytest.raises(CnnlabError, match=r"\(4 MP\), .*segment it whole with `cnnlab predict IMAGE --model RUN`"):
        segment_view(folder, large)


def test_a_run_trained_with_max_side_segments_a_photo_over_4_mp_that_it_downscales(
    tmp_path: Path, decodes: list[tuple[int, int]]
) -> None:
    """A run trained with --max-side on large photos refused a 6 MP photo ("a larger image takes minutes") that it
    segments downscaled in seconds, which the Classify page explains; a rotated photo was sized as stored."""
    folder = tmp_path / "segment" / "run"
    meta = {"task": "segment", "classes": ["background", "disc"], "background": 0, "max_side": 64,
            "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3}}  # fmt: skip
    kwargs = {"num_classes": 2, "in_chans": 3, "widths": [4, 8]}
    save_model(create_model("unet", **kwargs), folder, "unet", kwargs, meta)
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (2048, 2049), (200, 40, 40)).save(photo)  # 4 MP + 2,048 px: a blank JPEG stays small
    view = segment_view(folder, photo)
    # Decoded once, and the masks made at the size the page shows (a 12 MP photo took 8 s through predict's files,
    # decoded twice and three 12 MP PNGs written and two read back, and then 7 s for Gradio to encode two 12 MP
    # images for the page; 2.6 s in all now).
    assert decodes.count((2048, 2049)) == 1, decodes
    assert view.overlay.size == view.colour.size == (1024, 1024) and sum(view.share.values()) == pytest.approx(1.0)
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 5000 wide, 5100 high
    Image.new("RGB", (5100, 5000)).save(turned, exif=exif.tobytes())
    with pytest.raises(CnnlabError) as refused:
        segment_view(folder, turned)
    assert str(refused.value).startswith(
        "the image is 5000x5100, 25,500,000 pixels; the lab takes up to 25,165,824 (24 MP)"
    )


def test_segmentation_run_gives_the_masks_of_cnnlab_predict(tmp_path: Path, decodes: list[tuple[int, int]]) -> None:
    """... from a PNG decoded once (the size check's EXIF look-up decoded a whole PNG before the page decoded it)."""
    from cnnlab.tasks.segment_predict import load_segmenter, predict_masks

    torch.manual_seed(0)
    folder = tmp_path / "segment" / "run"
    kwargs = {"num_classes": 3, "in_chans": 3, "widths": [4, 8]}
    meta = {
        "task": "segment",
        "classes": ["background", "disc", "bar"],
        "background": 0,
        "normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    save_model(create_model("unet", **{**kwargs, "widths": (4, 8)}), folder, "unet", kwargs, meta)
    rng = np.random.default_rng(0)
    small, wide = tmp_path / "photo.png", tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(small)
    Image.fromarray(rng.integers(0, 255, (24, 1300, 3), dtype=np.uint8)).save(wide)
    clis = predict_masks(load_segmenter(folder), [small, wide], tmp_path / "predictions")
    # predict's masks, shown enlarged (nearest) or shrunk (the classes by nearest neighbour) for the page
    decodes.clear()
    views = [segment_view(folder, photo) for photo in (small, wide)]
    assert decodes == [(52, 40), (1300, 24)]
    for view, cli, size in zip(views, clis, ((156, 120), (1024, 19)), strict=True):
        assert view.overlay.size == view.colour.size == size
        assert view.share == cli["share"] and sum(view.share.values()) == pytest.approx(1.0)
        with Image.open(cli["colour"]) as colour:
            shown = colour.convert("RGB").resize(size, Image.Resampling.NEAREST)
            assert np.array_equal(np.asarray(view.colour), np.asarray(shown))
    with Image.open(clis[0]["overlay"]) as overlay:  # the small photo's overlay: predict's, enlarged
        shown = overlay.convert("RGB").resize((156, 120), Image.Resampling.NEAREST)
        assert np.array_equal(np.asarray(views[0].overlay), np.asarray(shown))
    with pytest.raises(CnnlabError, match="not a `cnnlab train segment --data` run"):
        segment_view(tmp_path, small)


def test_the_segmentation_outputs_are_shown_for_a_segmentation_run_only(tmp_path: Path) -> None:
    """For an MNIST run the heatmap was squeezed into a third of the row beside the mask and pixel shares, empty.
    Another run picked kept the previous run's figures on show under its name (a segmentation run's masks and
    shares beside "mnist/digits"): the image is scanned again with the new run, after the old figures are cleared."""
    pytest.importorskip("gradio", reason="the lab extra")
    from cnnlab.lab.app import build_app
    from cnnlab.train.config import TrainConfig, save_config

    torch.manual_seed(0)
    save_model(create_model("mnist_net_small"), tmp_path / "mnist" / "digits", "mnist_net_small", {}, {"task": "mnist"})
    save_config(TrainConfig(task="mnist", name="digits"), tmp_path / "mnist" / "digits" / "config.yaml")
    meta = {"task": "segment", "classes": ["background", "disc"], "background": 0,
            "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3}}  # fmt: skip
    kwargs = {"num_classes": 2, "in_chans": 3, "widths": [4, 8]}
    save_model(create_model("unet", **kwargs), tmp_path / "segment" / "discs", "unet", kwargs, meta)
    save_config(TrainConfig(task="segment", name="discs"), tmp_path / "segment" / "discs" / "config.yaml")
    image = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8)).save(image)
    app = build_app(tmp_path, warm=False)
    blocks = {getattr(block, "label", None): block for block in app.blocks.values()}
    assert not blocks["mask (segmentation runs)"].visible and not blocks["share of the pixels per class"].visible
    first = {(blocks_label, event): (key, dependency.fn) for key, dependency in app.fns.items()
             for block, event in dependency.targets
             if (blocks_label := getattr(app.blocks.get(block), "label", None))}  # fmt: skip
    then = {dependency.trigger_after: dependency.fn for dependency in app.fns.values()}

    def handlers(label: str, event: str) -> tuple:  # what the event runs first, and what follows it
        key, fn = first[(label, event)]
        return fn, then.get(key)

    clear_first, on_scan = handlers("large image", "upload")
    heatmap, mask, shares = on_scan("mnist/digits", str(image))
    assert heatmap.width > 84 and mask.visible is False and shares.visible is False
    overlay, mask, shares = on_scan("segment/discs", str(image))
    assert overlay.size == (168, 112) and mask.visible is True and shares.visible is True  # enlarged for the page
    assert {share["label"] for share in shares.value["confidences"]} <= {"background", "disc"}
    cleared = clear_first()
    assert cleared[0] is None and cleared[1].visible is False and cleared[2].visible is False
    clear, on_scan_run = handlers("MNIST or segmentation run", "change")
    assert clear is clear_first
    overlay, mask, shares = on_scan_run("segment/discs", str(image))  # the image on show, by the new run
    assert overlay.size == (168, 112) and mask.visible is True and shares.visible is True
    assert on_scan_run("mnist/digits", None)[0] is None  # no image: nothing on show
    assert handlers("large image", "clear") == (clear_first, None)


def test_the_page_says_why_a_segmentation_run_on_the_mnist_canvases_is_not_listed(tmp_path: Path) -> None:
    """A run of `cnnlab train segment` without --data, which the Classify page offers, was missing from the Scan
    page's list unsaid (`cnnlab fcn scan` and `cnnlab predict` both refuse it), and with no other run a scan said
    "no MNIST or segmentation run" beside it. The list's note names it and says why, from the page's load on."""
    pytest.importorskip("gradio", reason="the lab extra")
    from cnnlab.data.segmentation import CLASS_NAMES
    from cnnlab.lab.app import build_app
    from cnnlab.train.config import TrainConfig, save_config
    from cnnlab.train.saved import DIGIT_SEGMENTER

    app = build_app(tmp_path, warm=False)
    handlers = {dependency.fn.__name__: dependency.fn for dependency in app.fns.values()}
    refresh, on_scan = handlers["on_refresh_runs"], handlers["on_scan"]  # refresh: on each load, and on Refresh
    assert "Not listed" not in refresh(None, None, None, None, None)[5].info  # nothing left out, none named
    torch.manual_seed(0)
    kwargs = {"num_classes": 11, "in_chans": 1, "widths": [4, 8]}
    meta = {"task": "segment", "kind": DIGIT_SEGMENTER, "classes": list(CLASS_NAMES)}
    save_model(create_model("unet", **kwargs), tmp_path / "segment" / "canvas", "unet", kwargs, meta)
    save_config(TrainConfig(task="segment", name="canvas"), tmp_path / "segment" / "canvas" / "config.yaml")
    scan_list = refresh(None, None, None, None, None)[5]
    why = (
        "Not listed: segment/canvas, trained on the MNIST canvases (cnnlab train segment without --data). Its network "
        "scores every pixel already, so cnnlab fcn scan has nothing to convert, and it records no preparation for "
        "other images, so cnnlab predict, which segments here, refuses it; the Classify and explain page explains "
        "an image with it."
    )
    assert scan_list.choices == [] and scan_list.info.endswith(f"then Refresh on the Runs page. {why}")
    image = tmp_path / "large.png"
    Image.new("L", (64, 64)).save(image)
    with pytest.raises(Exception, match="no run to scan under .*: the page takes a finished MNIST run") as refused:
        on_scan(None, str(image))
    assert refused.value.message.endswith(f"then Refresh on the Runs page. {why}")
    save_model(create_model("mnist_net_small"), tmp_path / "mnist" / "digits", "mnist_net_small", {}, {"task": "mnist"})
    save_config(TrainConfig(task="mnist", name="digits"), tmp_path / "mnist" / "digits" / "config.yaml")
    scan_list = refresh(None, None, None, None, None)[5]  # beside a run it lists: the note alone
    assert [value for _, value in scan_list.choices] == ["mnist/digits"] and scan_list.info == why
    save_model(create_model("unet", **kwargs), tmp_path / "segment" / "second", "unet", kwargs, meta)
    save_config(TrainConfig(task="segment", name="second"), tmp_path / "segment" / "second" / "config.yaml")
    # two runs named: "Their networks ... refuses them", not "Its network ... refuses it"
    named, told = refresh(None, None, None, None, None)[5].info.split(", trained on the MNIST canvases", 1)
    assert sorted(named.removeprefix("Not listed: ").split(", ")) == ["segment/canvas", "segment/second"]
    assert told == (
        " (cnnlab train segment without --data). Their networks score every pixel already, so cnnlab fcn scan has "
        "nothing to convert, and they record no preparation for other images, so cnnlab predict, which segments "
        "here, refuses them; the Classify and explain page explains an image with any of them."
    )


def test_the_page_says_why_an_mnist_ensemble_is_not_listed_and_how_to_scan_with_a_member(
    mnist_trio: Path, tmp_path: Path
) -> None:
    """An MNIST ensemble, which the Classify page offers, was left out of the Scan page's list unsaid (it has no single
    network to convert); alone, it was told "no MNIST or segmentation run under RUNS; train one"."""
    pytest.importorskip("gradio", reason="the lab extra")
    from cnnlab.lab.app import build_app

    run = mnist_trio
    app = build_app(tmp_path, warm=False)
    handlers = {dependency.fn.__name__: dependency.fn for dependency in app.fns.values()}
    *_, models, scan_list, _curves, _confusion, _mistakes, _config, _note = handlers["on_refresh_runs"](
        None, None, None, None, None
    )
    why = (
        "Not listed: mnist/trio (an ensemble of MNIST networks: no single network to convert to a fully convolutional "
        f"one); scan with one member on the command line (cnnlab fcn scan {run / 'seed0'} IMAGE)."
    )
    assert "mnist/trio" in [value for _, value in models.choices] and scan_list.choices == []
    assert scan_list.info.startswith(f"No run to scan under {tmp_path}: ") and scan_list.info.endswith(f". {why}")
    image = tmp_path / "large.png"
    Image.new("L", (64, 64)).save(image)
    with pytest.raises(Exception, match="no run to scan under") as refused:
        handlers["on_scan"](None, str(image))
    assert refused.value.message.endswith(f". {why}")
    from cnnlab.fcn.scan import load_converted_or_run

    assert load_converted_or_run(run / "seed0")[1]["arch"] == "mnist_net_small"  # what the note says works, does
