"""The Classify and explain page: the classes and Grad-CAM of `cnnlab explain`, as images; uploads checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.lab.classify import classify, drawing_to_image, for_display, open_upload, pretrained_models
from cnnlab.models import create_model
from cnnlab.tasks.explain import explain_image, load_subject
from cnnlab.train.saved import save_model

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (the photos extra) ships the sample photo")
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(path)
    return path


@pytest.fixture(scope="module")
def digit_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A photographed "0": a dark ring on light grey paper (an MNIST run refuses a cat as "no digit found")."""
    from PIL import Image

    rows, cols = np.mgrid[:200, :200]
    radius = np.hypot(rows - 100, cols - 100)
    page = np.where((radius > 45) & (radius < 60), 40, 225).astype(np.uint8)
    path = tmp_path_factory.mktemp("photos") / "zero.png"
    Image.fromarray(page).convert("RGB").save(path)
    return path


@pytest.fixture
def mnist_run(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    save_model(create_model("mnist_net_small"), tmp_path, "mnist_net_small", {}, meta={"task": "mnist"})
    return tmp_path


def test_the_offline_pretrained_model_is_offered() -> None:
    assert "efficientnet_lite0" in pretrained_models()


def test_photo_gets_the_classes_and_grad_cam_of_cnnlab_explain(chelsea: Path, tmp_path: Path) -> None:
    view = classify(load_subject("efficientnet_lite0"), open_upload(chelsea, 10 * 2**20), top_k=3)
    cli = explain_image("efficientnet_lite0", chelsea, tmp_path)
    assert [name for name, _ in view.top] == [name for name, _ in cli.top[:3]]
    assert [p for _, p in view.top] == pytest.approx([p for _, p in cli.top[:3]], abs=1e-5)
    assert CATS & {name for name, _ in view.top}
    assert view.cam_layer == cli.cam_layer
    assert view.gradcam.shape == (224, 224, 3) and view.gradcam.dtype == np.uint8
    assert view.feature_layer in view.layers and view.filters is not None


def test_drawn_digit_on_an_mnist_run_with_a_chosen_layer(mnist_run: Path) -> None:
    drawing = np.zeros((200, 200, 4), dtype=np.uint8)  # transparent canvas
    drawing[40:160, 95:105] = (0, 0, 0, 255)  # a black stroke: a "1"
    image = drawing_to_image(drawing)
    pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[100, 100].tolist() == [0, 0, 0]
    subject = load_subject(str(mnist_run))
    first = classify(subject, image)
    assert len(first.top) == 5 and sum(p for _, p in first.top) <= 1.0 + 1e-6
    chosen = classify(subject, image, layer=first.layers[0])
    assert chosen.feature_layer == first.layers[0]
    assert chosen.filters is not None and chosen.gradcam.shape == (168, 168, 3)  # 28x28, enlarged for the page
    with pytest.raises(CnnlabError, match="no spatial layer 'head'"):
        classify(subject, image, layer="head")


def test_uploads_are_size_limited_and_checked(chelsea: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    large = tmp_path / "large.jpg"
    large.write_bytes(bytes(3 * 2**19))  # 1.5 MiB, 1.6 MB: the limit is in MiB and was printed as "up to 1 MB"
    with pytest.raises(CnnlabError) as refused:
        open_upload(large, max_bytes=2**20)
    assert str(refused.value) == (
        "the image is 1.50 MiB; the lab takes images up to 1 MiB: downscale it or save it as a lower-quality JPEG, or "
        "start the lab with a larger `--max-upload-mb`"
    )
    garbage = tmp_path / "photo.jpg"
    garbage.write_bytes(b"this is not a JPEG" * 50)
    with pytest.raises(CnnlabError, match="not an image PIL can read"):
        open_upload(garbage, max_bytes=10 * 2**20)
    (tmp_path / "empty.png").touch()
    with pytest.raises(CnnlabError, match="^cannot use this file: zero-byte file; upload a PNG or JPEG photo$"):
        open_upload(tmp_path / "empty.png", max_bytes=10 * 2**20)
    # over Pillow's guard (179 MP): "...; downscale it first; upload a PNG or JPEG photo", though it was one
    from PIL import Image

    Image.new("L", (20, 20)).save(tmp_path / "wide.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses images above twice this
    with pytest.raises(CnnlabError, match=r"bombs\); downscale it first$"):
        open_upload(tmp_path / "wide.png", max_bytes=10 * 2**20)


def test_an_image_over_pillows_warning_size_leaves_no_warning_in_the_servers_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload over 89 MP (Pillow's DecompressionBombWarning; simulated with a lower limit) printed two lines of
    Pillow's source in the lab's log each time the Classify or Scan page decoded it, the page answering in words."""
    import warnings

    from PIL import Image

    from cnnlab.lab.scan_page import _decoded, _refuse_large

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "wide.png"
    Image.new("L", (40, 40), 128).save(path)  # 1,600 pixels: over the warning, under the error (twice the limit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert open_upload(path, max_bytes=2**20).size == _decoded(path).size == (40, 40)
        _refuse_large(path, "crop it")
    assert [str(warning.message) for warning in caught] == []


def test_an_mnist_ensemble_run_is_offered_and_classifies_a_drawing(mnist_trio: Path, tmp_path: Path) -> None:
    from cnnlab.lab.runs import saved_runs

    run = mnist_trio
    assert saved_runs(tmp_path, ("mnist", "transfer")) == ["mnist/trio"]  # the Classify page's list
    assert saved_runs(tmp_path, ("mnist",), ensembles=False) == []  # the Scan page converts single networks only
    drawing = np.zeros((200, 200, 4), dtype=np.uint8)
    drawing[40:160, 95:105] = (0, 0, 0, 255)
    view = classify(load_subject(str(run)), drawing_to_image(drawing))
    assert len(view.top) == 5 and view.gradcam.shape == (168, 168, 3)


def test_a_segmentation_run_is_offered_and_explained_by_its_pixel_shares(chelsea: Path, tmp_path: Path) -> None:
    """The page listed classifier runs only; a run of `train segment --data` is explained as `cnnlab explain` does."""
    pytest.importorskip("gradio", reason="the lab extra")
    from cnnlab.lab.app import build_app
    from cnnlab.train.config import TrainConfig, save_config

    torch.manual_seed(0)
    run = tmp_path / "segment" / "shapes"
    classes = ["background", "disc", "square"]
    meta = {"task": "segment", "classes": classes, "background": 0,
            "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3}}  # fmt: skip
    kwargs = {"widths": [4, 8, 16], "num_classes": 3, "in_chans": 3}
    save_model(create_model("unet", **kwargs), run, "unet", kwargs, meta=meta)
    save_config(TrainConfig(task="segment", name="shapes"), run / "config.yaml")
    from PIL import Image

    with Image.open(chelsea) as photo:
        image = photo.convert("RGB").resize((60, 44))
    subject = load_subject(str(run))
    view = classify(subject, image)
    assert view.pixel_shares and sum(share for _, share in view.top) == pytest.approx(1.0)
    assert all(share > 0 for _, share in view.top) and {name for name, _ in view.top} <= set(classes)
    shares = subject.probabilities(subject.preprocess(image))
    assert view.explained == classes[subject.default_class(shares)]
    assert view.gradcam.shape == (132, 180, 3)  # 44x60, enlarged 3 times
    with pytest.raises(CnnlabError, match="above 4 MP; explaining a segmenter runs backward through the whole image"):
        classify(subject, Image.new("RGB", (2049, 2049)))  # an upload of 10 MB can hold 20 MP
    blocks = build_app(tmp_path, warm=False).blocks.values()
    (models,) = [block for block in blocks if getattr(block, "label", None) == "model (zoo or run)"]
    assert "segment/shapes" in [value for _, value in models.choices]  # listed among the page's models


def test_a_canvas_segmentation_run_is_offered_and_its_preprocessing_said(tmp_path: Path) -> None:
    """`cnnlab explain` explains a segmentation run on the MNIST canvases (`train segment` without --data), printing
    the preprocessing it gives the image; the page listed `--data` segmentation runs only, so it was not offered."""
    pytest.importorskip("gradio", reason="the lab extra")
    from markdown_it import MarkdownIt
    from PIL import Image

    from cnnlab.data.segmentation import CLASS_NAMES
    from cnnlab.lab.app import build_app
    from cnnlab.tasks.explain import CANVAS_PREPROCESSING
    from cnnlab.train.config import TrainConfig, save_config
    from cnnlab.train.saved import DIGIT_SEGMENTER

    torch.manual_seed(0)
    run = tmp_path / "segment" / "canvas"
    kwargs = {"num_classes": 11, "in_chans": 1, "widths": (4, 8, 16)}
    meta = {"task": "segment", "kind": DIGIT_SEGMENTER, "classes": list(CLASS_NAMES)}
    save_model(create_model("unet", **kwargs), run, "unet", kwargs, meta)
    save_config(TrainConfig(task="segment", name="canvas"), run / "config.yaml")
    canvas = np.zeros((40, 56), np.uint8)
    canvas[6:34, 8:12] = 255
    paper = tmp_path / "paper.png"
    Image.fromarray(255 - canvas).convert("RGB").save(paper)  # dark ink on light paper: inverted, as explain does
    app = build_app(tmp_path, warm=False)
    choices = {block.label: [value for _, value in block.choices] for block in app.blocks.values()
               if getattr(block, "choices", None) is not None and getattr(block, "label", None)}  # fmt: skip
    assert "segment/canvas" in choices["model (zoo or run)"]
    assert "segment/canvas" not in choices["MNIST or segmentation run"]  # predict, which the Scan page runs, refuses it
    on_upload = _handler(app, "photo", "upload")
    _photo, top, cam, caption, _layers, maps, _filters = on_upload("segment/canvas", str(paper), None)
    subject = load_subject(str(run))
    image = open_upload(paper, 2**20)
    expected = subject.top_classes(subject.probabilities(subject.preprocess(image).float(), (40, 56)), 5)
    assert list(top) == [name for name, _ in expected] and sum(top.values()) == pytest.approx(1.0)
    assert cam.shape == (120, 168, 3) and maps is not None  # 40x56, enlarged 3 times
    rendered = MarkdownIt("commonmark").render(caption)
    assert "(a segmenter: classes by their share of the pixels)" in rendered
    assert f"<p>preprocessing: {CANVAS_PREPROCESSING}</p>" in rendered  # the line `cnnlab explain` prints


def _dependency(app: object, label: str, event: str) -> object:
    """What the app runs on `event` of the component labelled `label`: the step that follows the clearing of the
    results on show, where there is one."""

    def labelled(block: int | None) -> str | None:
        return getattr(app.blocks.get(block), "label", None)

    ((key, dependency),) = [
        (key, dependency)
        for key, dependency in app.fns.items()
        if any(labelled(block) == label and name == event for block, name in dependency.targets)
    ]
    following = [then for then in app.fns.values() if then.trigger_after == key]
    if following:
        assert dependency.fn.__name__.endswith("_cleared") and not dependency.inputs
        (dependency,) = following
    return dependency


def _handler(app: object, label: str, event: str) -> object:
    """The function the app calls on `event` of the component labelled `label`, after clearing what is on show."""
    return _dependency(app, label, event).fn


def _mnist_run_in_runs_root(runs: Path) -> Path:
    """An untrained MNIST run as the lab lists it: ``RUNS/mnist/small`` with its weights and config.yaml."""
    from cnnlab.train.config import TrainConfig, save_config

    run = runs / "mnist" / "small"
    torch.manual_seed(0)
    save_model(create_model("mnist_net_small"), run, "mnist_net_small", {}, meta={"task": "mnist"})
    save_config(TrainConfig(task="mnist", name="small"), run / "config.yaml")
    return run


def test_a_model_change_shows_the_new_models_layers_for_the_photo_on_show(digit_photo: Path, tmp_path: Path) -> None:
    """Switching from the zoo model to an MNIST run kept the zoo model's layer list and results; the next photo was
    refused ("has no spatial layer 'blocks.8.expand.bn'")."""
    pytest.importorskip("gradio", reason="the lab extra")
    from cnnlab.lab.app import build_app

    run = _mnist_run_in_runs_root(tmp_path)
    app = build_app(tmp_path, warm=False)
    on_model = _handler(app, "model (zoo or run)", "change")
    _photo, top, cam, _caption, layers, maps, _filters = on_model("mnist/small", str(digit_photo))
    mnist_layers = classify(load_subject(str(run)), open_upload(digit_photo, 10 * 2**20)).layers
    assert layers.choices == [(name, name) for name in mnist_layers] and layers.value in mnist_layers
    assert len(top) == 5 and cam is not None and maps is not None
    on_upload = _handler(app, "photo", "upload")  # the layer the change chose is the new model's
    assert on_upload("mnist/small", str(digit_photo), layers.value)[4].value == layers.value
    cleared = on_model("efficientnet_lite0", None)  # no photo: the old model's results and layers go
    assert cleared[:3] == (None, None, None) and cleared[4].choices == []


def test_the_results_on_show_go_before_another_model_photo_or_drawing_is_classified(tmp_path: Path) -> None:
    """A model that refused the photo on show (a segmentation run and a 5 MP photo: "above 4 MP") left the previous
    model's classes, Grad-CAM and caption ("Grad-CAM of 'Egyptian cat'") on show under the new model's name, and its
    layer list; so did a photo or drawing that could not be classified. Each event now clears them first."""
    pytest.importorskip("gradio", reason="the lab extra")
    from cnnlab.lab.app import build_app

    app = build_app(tmp_path, warm=False)
    ids = {block.label: key for key, block in app.blocks.items() if getattr(block, "label", None)}
    (ids["Classify the drawing"],) = [key for key, block in app.blocks.items()
                                      if getattr(block, "value", None) == "Classify the drawing"]  # fmt: skip
    results = {"the image classified", "top classes", "Grad-CAM of the class named below", "",
               "feature maps (most active channels)", "first-layer filters"}  # fmt: skip
    for trigger, event, layers in (("model (zoo or run)", "change", True), ("photo", "upload", False),
                                   ("Classify the drawing", "click", False)):  # fmt: skip
        ((key, first),) = [(key, d) for key, d in app.fns.items() if (ids[trigger], event) in d.targets]
        values = first.fn()
        shown = {getattr(block, "label", None) or "": value for block, value in zip(first.outputs, values, strict=True)}
        assert set(shown) == results | ({"feature-map layer"} if layers else set()), trigger
        assert all(shown[name] in (None, "") for name in results), trigger
        if layers:  # another model has other layers; a new photo keeps the layer chosen
            assert shown["feature-map layer"].choices == []
        (then,) = [d for d in app.fns.values() if d.trigger_after == key]  # and then the classification
        assert then.fn.__name__ in ("on_model", "on_upload", "on_drawing")


def test_uploads_reach_cnnlab_as_files_a_broken_one_refused_a_transparent_one_on_white(tmp_path: Path) -> None:
    """Gradio decoded image uploads itself: a text file named .png got "Could not preprocess input component ...
    UnidentifiedImageError ... /tmp/gradio/<hash>/notimage.png", and a PNG's transparent pixels were classified as
    the colour under them (black here) instead of the white that `cnnlab predict` puts them on."""
    gradio = pytest.importorskip("gradio", reason="the lab extra")
    from gradio.data_classes import FileData
    from PIL import Image

    from cnnlab.lab.app import build_app
    from cnnlab.train.config import TrainConfig, save_config

    run = tmp_path / "mnist" / "small"
    torch.manual_seed(0)
    save_model(create_model("mnist_net_small"), run, "mnist_net_small", {}, meta={"task": "mnist"})
    save_config(TrainConfig(task="mnist", name="small"), run / "config.yaml")
    not_an_image = tmp_path / "notimage.png"
    not_an_image.write_text("just text")
    transparent = tmp_path / "transparent.png"
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)  # black, but fully transparent ...
    pixels[20:44, 28:36] = (0, 0, 0, 255)  # ... but for an opaque black stroke
    Image.fromarray(pixels, "RGBA").save(transparent)
    app = build_app(tmp_path, warm=False)
    blocks = {getattr(block, "label", None): block for block in app.blocks.values()}
    for label in ("photo", "large image"):  # the path itself goes to cnnlab, undecoded
        assert blocks[label].preprocess(FileData(path=str(not_an_image))) == str(not_an_image)
    on_upload = _handler(app, "photo", "upload")
    with pytest.raises(gradio.Error, match="cannot use this file: not an image PIL can read; upload a PNG") as error:
        on_upload("mnist/small", str(not_an_image), None)
    assert "gradio" not in str(error.value)
    photo, top, *_ = on_upload("mnist/small", blocks["photo"].preprocess(FileData(path=str(transparent))), None)
    shown = np.asarray(photo)
    assert shown.shape == (192, 192, 3)  # 64x64, enlarged 3 times for the page
    assert shown[0, 0].tolist() == [255, 255, 255] and shown[3 * 32, 3 * 32].tolist() == [0, 0, 0]
    cli = load_subject(str(run))
    expected = cli.top_classes(cli.probabilities(cli.preprocess(open_upload(transparent, 2**20)).float()), 5)
    assert list(top) == [name for name, _ in expected]
    on_scan = _handler(app, "large image", "upload")
    with pytest.raises(gradio.Error, match="cannot use this file: not an image PIL can read"):
        on_scan("mnist/small", str(not_an_image))


def test_a_small_input_and_its_grad_cam_are_enlarged_for_the_page(mnist_run: Path) -> None:
    """MNIST's Grad-CAM and photo were shown at 28x28, a few pixels tall; only the filters were enlarged."""
    from PIL import Image

    digit = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8))
    view = classify(load_subject(str(mnist_run)), digit)
    assert view.gradcam.shape == (168, 168, 3)  # six times, nearest: each input pixel a 6x6 block
    blocks = view.gradcam.reshape(28, 6, 28, 6, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()
    shown = for_display(digit)
    assert shown.size == (168, 168) and np.array_equal(np.asarray(shown)[::6, ::6], np.asarray(digit))
    photo = Image.new("RGB", (300, 200))
    assert for_display(photo) is photo  # large enough already
    assert for_display(Image.new("RGB", (6000, 4000))).size == (1024, 683)  # was sent whole: seconds to encode
    assert for_display(Image.new("RGB", (3000, 1))).size == (1024, 1)


def test_a_run_saved_again_while_the_lab_runs_is_classified_with_its_new_model(tmp_path: Path) -> None:
    """The page kept each run's model by run id: a run trained again (--overwrite, or resumed to its end) still
    showed the old model's classes, while `cnnlab predict` on the same photo gave the new model's."""
    pytest.importorskip("gradio", reason="the lab extra")
    from PIL import Image

    from cnnlab.lab.app import build_app
    from cnnlab.train.config import TrainConfig, save_config

    run = tmp_path / "mnist" / "small"
    digit = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(digit)
    run.mkdir(parents=True)
    save_config(TrainConfig(task="mnist", name="small"), run / "config.yaml")
    on_upload = _handler(build_app(tmp_path, warm=False), "photo", "upload")
    shown = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_model(create_model("mnist_net_small"), run, "mnist_net_small", {}, meta={"task": "mnist"})
        cli = load_subject(str(run))
        expected = cli.top_classes(cli.probabilities(cli.preprocess(open_upload(digit, 2**20)).float()), 5)
        top = on_upload("mnist/small", str(digit), None)[1]
        assert list(top) == [name for name, _ in expected]
        assert list(top.values()) == pytest.approx([p for _, p in expected], abs=1e-6)
        shown.append(top)
    assert shown[0] != shown[1]  # the two models differ: the second answer is not the first one kept
    import shutil

    import gradio

    shutil.rmtree(run)  # deleted while the page lists it: it said "pick one from the list", which still offered it
    with pytest.raises(gradio.Error, match=r"\(deleted, moved or renamed since the page listed it\?\).*Refresh"):
        on_upload("mnist/small", str(digit), None)


def test_another_layer_or_model_for_a_drawing_explains_the_drawing(digit_photo: Path, tmp_path: Path) -> None:
    """Picking another feature-map layer re-ran the photo upload's handler: with a digit drawn and no photo it said
    "upload a photo first"; with a photo uploaded earlier it put the photo's classes in place of the drawing's."""
    pytest.importorskip("gradio", reason="the lab extra")
    from cnnlab.lab.app import build_app

    run = _mnist_run_in_runs_root(tmp_path)
    app = build_app(tmp_path, warm=False)
    canvas = np.zeros((200, 200, 4), dtype=np.uint8)
    canvas[40:160, 95:105] = (0, 0, 0, 255)
    drawing = {"background": None, "layers": [], "composite": canvas}
    subject = load_subject(str(run))
    drawn = classify(subject, drawing_to_image(canvas))
    values = {"model (zoo or run)": "mnist/small", "photo": str(digit_photo), "digit": drawing}

    def fire(label: str, event: str, **changed: object) -> tuple:
        dependency = _dependency(app, label, event)
        given = {**values, **changed}  # a gr.State has no label: the results on show are the drawing's
        return dependency.fn(*(given.get(getattr(block, "label", None), "drawing") for block in dependency.inputs))

    first_layer = {"feature-map layer": drawn.layers[0]}
    top = fire("feature-map layer", "input", **first_layer)[1]
    assert list(top) == [name for name, _ in drawn.top[:5]]
    assert fire("feature-map layer", "input", photo=None, **first_layer)[4].value == drawn.layers[0]  # no photo
    assert list(fire("model (zoo or run)", "change")[1]) == list(top)  # the drawing again, with the chosen model
    photo_top = classify(subject, open_upload(digit_photo, 10 * 2**20)).top
    assert [name for name, _ in photo_top] != [name for name, _ in drawn.top]  # else the test could not tell


def test_a_class_name_is_shown_as_text_not_as_markup_in_the_caption() -> None:
    """A class is a folder's name: "Blue circles <b>v2" turned the rest of the caption bold, as HTML in the page."""
    pytest.importorskip("gradio", reason="the lab extra")
    from types import SimpleNamespace

    from markdown_it import MarkdownIt

    from cnnlab.lab.app import classification_caption

    names = ["Blue circles <b>v2", "*starred* [link](http://x) `code` a_b_c & 1.", "7"]
    for name in names:
        view = SimpleNamespace(explained=name, cam_layer="features.5", feature_layer="features.2", shown_member="",
                               pixel_shares=False, preprocessing="")  # fmt: skip
        rendered = MarkdownIt("commonmark").render(classification_caption(view))
        shown = rendered.replace("<p>", "").replace("</p>", "").strip()
        escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert shown == (
            f"Grad-CAM of '{escaped}' at <code>features.5</code>; feature maps of <code>features.2</code>"
        ), rendered
    noted = SimpleNamespace(explained="7", cam_layer="c", feature_layer="f", shown_member="", pixel_shares=False,
                            preprocessing="grey <b>bold, *in* [0, 1]")  # fmt: skip
    rendered = MarkdownIt("commonmark").render(classification_caption(noted))
    assert rendered.endswith("<p>preprocessing: grey &lt;b&gt;bold, *in* [0, 1]</p>\n"), rendered


def test_with_no_model_to_pick_a_photo_is_answered_with_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an installed zoo model's weights and with no runs, the model list is empty: a photo was refused with
    "no run None under RUNS; pick one from the list", of a list with nothing in it."""
    pytest.importorskip("gradio", reason="the lab extra")
    import gradio
    from PIL import Image

    import cnnlab.lab.classify
    from cnnlab.lab.app import build_app

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "photo.png")
    monkeypatch.setattr(cnnlab.lab.classify, "pretrained_models", list)
    on_upload = _handler(build_app(tmp_path, warm=False), "photo", "upload")
    with pytest.raises(gradio.Error, match=rf"no model to classify with: .* under {tmp_path}; train one, e\.g\."):
        on_upload(None, str(tmp_path / "photo.png"), None)


def test_a_network_without_maps_on_the_page_is_told_as_explain_tells_it() -> None:
    """The page said "produces no spatial feature maps" of a convolutional network on an input too small for a map
    (`cnnlab explain` says "give it a larger input"); a dense network is asked about, as explain asks."""
    from PIL import Image
    from torch import nn

    from cnnlab.tasks.explain import Subject

    def three_by_three(_image: Image.Image) -> torch.Tensor:  # an input too small for a 2x2 map
        return torch.zeros(1, 3, 3)

    def subject(network: nn.Module) -> Subject:
        shown = lambda tensor: tensor.expand(3, 3, 3).permute(1, 2, 0)  # noqa: E731
        return Subject(network.eval(), ["a", "b"], three_by_three, shown, "tiny", "code")

    image = Image.new("RGB", (3, 3))
    convolutional = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))  # 1x1 maps on 3x3
    with pytest.raises(CnnlabError, match=r"^tiny's feature maps on a 1x3x3 input are at most 1x1, .*larger input$"):
        classify(subject(convolutional), image)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(9, 2))
    with pytest.raises(CnnlabError, match=r"^tiny produces no spatial feature maps \(is it a dense network\?\)"):
        classify(subject(dense), image)


def test_the_drawing_panel_says_what_to_do_and_what_each_kind_of_model_makes_of_a_drawing(tmp_path: Path) -> None:
    """The panel was titled "Draw a digit (for an MNIST run)" over a canvas labelled "digit": a segmentation run on the
    MNIST canvases, which the page lists too, takes drawings as well (at their own size, unlike an MNIST run), and
    nothing said to pick the canvas's brush first, to press the button under it, or what the other models make of a
    drawing."""
    pytest.importorskip("gradio", reason="the lab extra")
    from cnnlab.data.segmentation import CLASS_NAMES
    from cnnlab.lab import app as lab_app
    from cnnlab.train.config import TrainConfig, save_config
    from cnnlab.train.saved import DIGIT_SEGMENTER

    _mnist_run_in_runs_root(tmp_path)
    kwargs = {"num_classes": 11, "in_chans": 1, "widths": [4, 8]}
    meta = {"task": "segment", "kind": DIGIT_SEGMENTER, "classes": list(CLASS_NAMES)}
    save_model(create_model("unet", **kwargs), tmp_path / "segment" / "canvas", "unet", kwargs, meta)
    save_config(TrainConfig(task="segment", name="canvas"), tmp_path / "segment" / "canvas" / "config.yaml")
    app = lab_app.build_app(tmp_path, warm=False)
    blocks = list(app.blocks.values())
    (panel,) = [block for block in blocks if getattr(block, "label", None) == lab_app._DRAWING_TITLE]
    (help_text,) = [block for block in blocks if getattr(block, "elem_id", None) == "classify-sketch-help"]
    assert help_text.parent is panel and help_text.value == lab_app._DRAWING_HELP
    assert panel.label == "Draw a digit (for an MNIST run, or a segmentation run on the MNIST canvases)"
    assert [block.value for block in blocks if getattr(block, "value", None) == "Classify the drawing"]
    # what to do: the canvas draws nothing until its brush is picked, and the button under it, by its name
    assert help_text.value.startswith("Pick the brush") and "press **Classify the drawing**" in help_text.value
    # every kind of model the page lists is said, and what it makes of a drawing
    for kind in ("MNIST run", "segmentation run on the MNIST canvases", "zoo model", "transfer run",
                 "`train segment --data` run"):  # fmt: skip
        assert kind in help_text.value, kind
    (on_drawing,) = [dependency.fn for dependency in app.fns.values() if dependency.fn.__name__ == "on_drawing"]
    small, large = np.zeros((200, 200, 4), np.uint8), np.zeros((200, 200, 4), np.uint8)
    small[80:120, 98:102] = (0, 0, 0, 255)
    large[20:180, 90:110] = (0, 0, 0, 255)  # the same stroke, four times as large
    tops = [on_drawing("mnist/small", {"composite": drawing}, None)[1] for drawing in (small, large)]
    assert list(tops[0]) == list(tops[1])  # "any size will do": cut out and scaled to 28x28 either way
    assert tops[0] == pytest.approx(tops[1], abs=0.02)
    _photo, shares, *_ = on_drawing("segment/canvas", {"composite": small}, None)
    assert sum(shares.values()) == pytest.approx(1.0)  # a canvas run takes the drawing too, as its pixel shares
