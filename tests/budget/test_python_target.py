"""`cnnlab budget MODULE:NAME` and `FILE.py:NAME`: a network from the user's own code or another library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.budget import budget
from cnnlab.budget.python_model import build_python_model, is_python_target
from cnnlab.budget.spec import load_spec_file
from cnnlab.cli import app
from cnnlab.errors import CnnlabError

NETS = """
from torch import nn

def build(width=8, classes=10):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, classes))

net = build(4)

class Grey(nn.Module):
    default_input_size = (1, 28, 28)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.conv(x)

def not_a_net():
    return [1]

class TimmLike(nn.Module):  # as timm's networks carry their weights' record (no timm needed here)
    def __init__(self, in_chans=3, attribute="pretrained_cfg"):
        super().__init__()
        setattr(self, attribute, {"input_size": (3, 40, 40), "num_classes": 2})
        self.conv = nn.Conv2d(in_chans, 2, 3)

    def forward(self, x):
        return self.conv(x)
"""


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path / "nets.py"


def _budget(*arguments: str) -> dict:
    result = CliRunner().invoke(app, ["budget", *arguments, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_function_in_a_file_is_called_with_its_literal_arguments(nets: Path) -> None:
    report = _budget(f"{nets}:build(width=16, classes=5)", "--input", "3x32x32")
    assert report["model"] == f"{nets}:build(width=16, classes=5)"
    assert report["params"] == (3 * 9 + 1) * 16 + (16 + 1) * 5
    assert report["output_shape"] == [5]
    assert _budget(f"{nets}:net", "--input", "3x32x32")["params"] == (3 * 9 + 1) * 4 + (4 + 1) * 10  # an instance
    assert _budget(f"{nets}:Grey")["input_shape"] == [1, 28, 28]  # a class, with its own input size


def test_a_timm_network_is_sized_at_its_records_input_size(nets: Path) -> None:
    """timm's networks carry pretrained_cfg["input_size"] (efficientnet_b3: 3x288x288); without --input the budget
    asked for one instead of using it."""
    report = _budget(f"{nets}:TimmLike")
    assert report["input_shape"] == [3, 40, 40] and report["output_shape"] == [2, 38, 38]
    assert report["input_note"].startswith("input 3x40x40: its pretrained_cfg's input_size")
    grey = _budget(f"{nets}:TimmLike(in_chans=1)")  # the record keeps 3 channels
    assert grey["input_shape"] == [1, 40, 40] and "with its first convolution's channels" in grey["input_note"]
    assert _budget(f"{nets}:TimmLike(attribute='default_cfg')")["input_shape"] == [3, 40, 40]  # older timm
    given = _budget(f"{nets}:TimmLike", "--input", "3x20x20")
    assert given["input_shape"] == [3, 20, 20] and "input_note" not in given
    result = CliRunner().invoke(app, ["budget", f"{nets}:TimmLike", "--no-layers"])
    assert result.exit_code == 0 and "input 3x40x40: its pretrained_cfg's input_size" in result.stdout


def test_a_library_function_gives_the_published_count() -> None:
    pytest.importorskip("torchvision")
    from torchvision.models import ResNet18_Weights

    record = ResNet18_Weights.IMAGENET1K_V1.meta  # torchvision's own count, and its GFLOPS (multiply-adds)
    report = _budget("torchvision.models:resnet18", "--input", "3x224x224")
    assert report["params"] == record["num_params"] == 11_689_512
    assert report["macs"] / 1e9 == pytest.approx(record["_ops"], abs=0.0005)  # 1.814


def test_it_is_built_on_the_meta_device(nets: Path) -> None:
    assert next(build_python_model(f"{nets}:build").parameters()).device == torch.device("meta")
    assert next(build_python_model(f"{nets}:build", on_meta=False).parameters()).device == torch.device("cpu")


def test_only_module_colon_name_forms_are_taken() -> None:
    assert is_python_target("torchvision.models:resnet18")
    assert is_python_target("models/nets.py:build(width=3, pool='max')")
    assert not is_python_target("resnet18") and not is_python_target("conv 64 k3")
    assert not is_python_target("spec.yaml") and not is_python_target("torchvision.models:")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("{nets}:build(width=len('ab'))", "must be literals"),  # never evaluated as code
        ("{nets}:build(**{{'width': 3}})", "write each keyword argument out"),
        ("{nets}:nothere", "nets.py has no 'nothere'"),
        ("{nets}:not_a_net", "returned a list, not a torch.nn.Module"),
        ("{nets}:build(wdth=3)", r"build\(wdth=3\)` cannot be called so: got an unexpected keyword argument 'wdth'"),
        ("{nets}:net(3)", "is a module instance, not a function: drop the arguments"),
        ("cnnlab_no_such_module:build", "cannot import cnnlab_no_such_module: No module named"),
        ("{folder}/missing.py:build", "missing.py: no such file"),
    ],
)
def test_bad_targets_are_one_line_errors(nets: Path, target: str, message: str) -> None:
    with pytest.raises(CnnlabError, match=message):
        build_python_model(target.format(nets=nets, folder=nets.parent))


def test_the_command_line_asks_for_the_input_and_checks_its_channels(nets: Path) -> None:
    missing = CliRunner().invoke(app, ["budget", f"{nets}:build"])
    assert isinstance(missing.exception, CnnlabError) and "give --input" in str(missing.exception)
    python = CliRunner().invoke(app, ["budget", str(nets)])  # it was read as YAML: "mapping values are not allowed"
    assert isinstance(python.exception, CnnlabError)
    assert str(python.exception).endswith(
        f"`cnnlab budget {nets}:Grey --input 3x224x224`; it defines Grey, TimmLike, build, not_a_net"
    )
    grey = CliRunner().invoke(app, ["budget", f"{nets}:Grey", "--input", "3x28x28"])
    assert isinstance(grey.exception, CnnlabError) and "takes 1-channel input" in str(grey.exception)


READS_VALUES = """
import torch
from torch import nn

class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x / float(x.abs().max())).flatten(1)
"""


def test_a_forward_that_reads_tensor_values_is_named_as_such(tmp_path: Path) -> None:
    """The meta device's refusal was blamed on the input: "does not run on input 3x8x8: Tensor.item() cannot be
    called on meta tensors", though no input size runs."""
    (tmp_path / "scaled.py").write_text(READS_VALUES)
    result = CliRunner().invoke(app, ["budget", f"{tmp_path}/scaled.py:Scaled", "--input", "3x8x8"])
    assert isinstance(result.exception, CnnlabError)
    message = str(result.exception)
    assert "reads its tensors' values in forward (Tensor.item() cannot be called on meta tensors)" in message
    assert "does not run on input" not in message


CHECKS_ITS_INPUT = """
from torch import nn

class Patches(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 16, stride=16)

    def forward(self, x):
        assert x.shape[-1] == 64, f"Wrong image width! Expected 64 but got {x.shape[-1]}!"  # as vit_b_16 checks
        return self.embed(x).flatten(1)
"""


def test_a_forward_that_asserts_its_input_size_is_a_one_line_error(tmp_path: Path) -> None:
    """torchvision's vit_b_16 and timm's ViTs check the image size with an assertion: at --input 3x32x32 the
    AssertionError was a traceback, not the one line that names the input."""
    (tmp_path / "patches.py").write_text(CHECKS_ITS_INPUT)
    result = CliRunner().invoke(app, ["budget", f"{tmp_path}/patches.py:Patches", "--input", "3x32x32"])
    assert isinstance(result.exception, CnnlabError), result.exception
    assert str(result.exception) == (
        f"{tmp_path}/patches.py:Patches does not run on input 3x32x32: Wrong image width! Expected 64 but got 32! "
        f'({tmp_path}/patches.py, line 10: `assert x.shape[-1] == 64, f"Wrong image width! Expected 64 but got '
        '{x.shape[-1]}!"  # as vit_b_16 checks`)'
    )


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("1x32x32", "its first convolution (0) takes 3-channel input"),
        ("32x32", "its first convolution (0) takes one sample as 3 sizes, its 3 channels first: --input 32x32 has 2"),
    ],
)
def test_an_input_with_the_wrong_channels_names_what_the_first_convolution_takes(
    nets: Path, given: str, hint: str
) -> None:
    """A network with no default input size was refused with the meta device's bare "Invalid channel dimensions"."""
    result = CliRunner().invoke(app, ["budget", f"{nets}:build", "--input", given])
    assert isinstance(result.exception, CnnlabError), result.exception
    assert str(result.exception).endswith(f"does not run on input {given}: Invalid channel dimensions; {hint}")


class AuxiliaryHead(torch.nn.Module):
    """inception_v3's pattern: a head that runs in training only and needs a larger map than the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(3, 4, 1)
        self.aux = torch.nn.Conv2d(4, 2, 12)  # a 12x12 kernel: 12 px at least, in training only

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        main = features.mean((2, 3))
        return (main, self.aux(features).flatten(1)) if self.training else main


def test_the_smallest_input_counts_a_head_that_runs_in_training_only() -> None:
    """inception_v3 at 3x224x224 was told "the smallest square input it takes is 3x225x225": the search ran the
    eval-mode forward only, which skips the auxiliary head that needs 299; 225 fails as 224 did."""
    with torch.device("meta"):  # as a MODULE:NAME network is built; the search needs no weights
        net = AuxiliaryHead()
    with pytest.raises(CnnlabError) as error:
        budget(net, input_shape=(3, 8, 8))
    assert "the smallest square input it takes is 3x12x12" in str(error.value)
    assert budget(net, input_shape=(3, 12, 12)).params == 3 * 4 + 4 + 4 * 2 * 144 + 2


class Detector(torch.nn.Module):
    """torchvision's detection networks take a list of images (and targets to train) and keep values by score."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Conv2d(3, 4, 3)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> list[torch.Tensor]:
        scores = self.backbone(torch.stack(list(images))).amax(1)
        return [torch.nonzero(score > 0.5) for score in scores]


class UnannotatedDetector(Detector):
    def forward(self, images, targets=None):  # noqa: ANN001, ANN201 - as torchvision's RetinaNet writes it
        return super().forward(images, targets)


class KeepsByValue(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(x > 0.5)


def test_a_network_that_takes_a_list_of_images_is_refused_in_one_line_that_says_why() -> None:
    """A detection network (ssdlite320_mobilenet_v3_large) was refused for "reading its tensors' values" with torch's
    whole nonzero paragraph quoted, and without saying that its input is a list of images."""
    with pytest.raises(CnnlabError) as error:
        budget(Detector(), input_shape=(3, 16, 16), name="detector")
    message = str(error.value)
    assert (
        message.startswith("detector takes a list of images (images, as detection networks do") and "\n" not in message
    )
    assert "backbone" in message
    with pytest.raises(CnnlabError) as error:  # RetinaNet: forward(self, images, targets=None), no annotations
        budget(UnannotatedDetector(), input_shape=(3, 16, 16), name="retina")
    assert str(error.value).startswith("retina takes a list of images (images, as detection networks do")
    with pytest.raises(CnnlabError) as error:
        budget(KeepsByValue(), input_shape=(3, 16, 16), name="keeps")
    assert "reads its tensors' values in forward (The register_meta function for torch.nonzero()" in str(error.value)
    assert "To enable this registration" not in str(error.value)  # torch's paragraph, cut at its first sentence


REGNET_LIKE = """
import torch
from torch import nn

def build(depth=2):
    # torchvision's RegNets compute their widths with tensors while they build, which the meta device cannot
    widths = (torch.round(torch.arange(1, depth + 1) * 4.0)).int().tolist()
    layers, channels = [], 3
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width)]
        channels = width
    net = nn.Sequential(*layers)
    built.append(net[0].weight.device.type)
    return net

built = []
"""


def test_a_network_that_computes_with_tensors_while_it_builds_gets_its_weights_on_meta(tmp_path: Path) -> None:
    """torchvision's regnet_y_128gf cannot be built under torch.device("meta") (its widths are computed with
    tensors and .tolist()): it was built on the CPU, 645 M parameters allocated and initialised, 2 minutes on this
    machine, where only shapes were needed."""
    (tmp_path / "regnet_like.py").write_text(REGNET_LIKE)
    net = build_python_model(f"{tmp_path}/regnet_like.py:build(3)")
    assert {tensor.device.type for tensor in [*net.parameters(), *net.buffers()]} == {"meta"}
    assert sum(p.numel() for p in net.parameters()) == (3 * 4 * 9 + 4 + 8) + (4 * 8 * 9 + 8 + 16) + (
        8 * 12 * 9 + 12 + 24
    )
    assert isinstance(net[0].weight, torch.nn.Parameter) and net[1].running_mean.device.type == "meta"
    assert torch.nn.Module.register_parameter.__name__ == "register_parameter"  # put back after the build


def test_a_builder_that_downloads_weights_offline_is_told_to_build_without_them(tmp_path: Path) -> None:
    """torchvision.models.segmentation:fcn_resnet50 fetches its backbone's weights by default: offline it was
    "raised URLError: <urlopen error [Errno -2] Name or service not known>", with nothing to do about it."""
    (tmp_path / "fetches.py").write_text(
        "import urllib.error\n\ndef build():\n    raise urllib.error.URLError('[Errno -2] Name or service not known')\n"
    )
    with pytest.raises(CnnlabError) as error:
        build_python_model(f"{tmp_path}/fetches.py:build")
    assert "tried to download weights and could not" in str(error.value)
    assert "weights_backbone=None" in str(error.value)


def test_a_video_network_too_small_is_told_its_smallest_frames() -> None:
    """torchvision's s3d at --input 3x16x112x112 was refused with torch's "input image (T: 2 H: 3 W: 3) smaller than
    kernel size" and no size that runs: 3-D pooling's words were not known, and the search fed 4-D input to it."""
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.AvgPool3d((2, 5, 5)))
    with pytest.raises(CnnlabError) as error:
        budget(net, input_shape=(3, 4, 4, 4))
    assert "smaller than kernel size" in str(error.value)
    assert str(error.value).endswith("; the smallest square input it takes is 3x4x5x5")


def test_building_on_meta_leaves_other_threads_modules_on_the_cpu() -> None:
    """The meta build replaces nn.Module's registration methods process-wide while it runs: a module another thread
    built meanwhile (the lab's Classify page loading a model while its Budget page sizes one) got meta weights."""
    import threading

    from cnnlab.budget.python_model import _parameters_on_meta

    inside, other_built = threading.Event(), threading.Event()
    other: list[torch.nn.Module] = []

    def elsewhere() -> None:
        inside.wait(5)
        other.append(torch.nn.BatchNorm2d(3))
        other_built.set()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    with _parameters_on_meta():
        inside.set()
        assert other_built.wait(5)
        mine = torch.nn.BatchNorm2d(3)
    thread.join()
    assert {t.device.type for t in [*mine.parameters(), *mine.buffers()]} == {"meta"}
    assert {t.device.type for t in [*other[0].parameters(), *other[0].buffers()]} == {"cpu"}


def test_a_file_inside_a_package_is_imported_with_its_relative_imports(tmp_path: Path) -> None:
    """`cnnlab budget zoo_pkg/nets/vgg.py:Net`, whose file does ``from .blocks import Block`` (as a package's modules
    do), was "ImportError: attempted relative import with no known parent package": it was loaded as a lone file."""
    package = tmp_path / "budget_pkg_rel" / "nets"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("WIDTH = 6\n")
    (package / "__init__.py").write_text("")
    (package / "blocks.py").write_text("from torch import nn\n\ndef block(width):\n    return nn.Conv2d(3, width, 3)\n")
    (package / "vgg.py").write_text(
        "from torch import nn\nfrom .blocks import block\nfrom .. import WIDTH\n\n"
        "class Net(nn.Sequential):\n    def __init__(self):\n        super().__init__(block(WIDTH), nn.ReLU())\n"
    )
    report = _budget(f"{package}/vgg.py:Net", "--input", "3x8x8")
    assert report["params"] == 3 * 6 * 9 + 6
    assert report["macs"] == 3 * 6 * 9 * 6 * 6


class _ConvLstm(torch.nn.Module):
    """A CRNN's shape: a convolution, its columns read by an LSTM from a zero state made in forward."""

    def __init__(self, state_device: str | None) -> None:
        super().__init__()
        self.state_device = state_device
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.lstm = torch.nn.LSTM(4 * 6, 5, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = self.conv(x).permute(0, 3, 1, 2).flatten(2)  # N x W x (C * H)
        device = x.device if self.state_device == "input" else None
        state = (torch.zeros(1, x.shape[0], 5, device=device), torch.zeros(1, x.shape[0], 5, device=device))
        return self.lstm(columns, state)[0]


def test_a_forward_that_makes_cpu_tensors_is_sized_as_if_it_made_them_beside_its_input() -> None:
    """``h0 = torch.zeros(layers, n, hidden)`` without a device, as most CRNN code writes it, runs where the user runs
    it (the CPU) and was refused here: "Input and hidden tensors are not at the same device, found input tensor at
    meta and hidden tensor at cpu". Its figures are those of the same network that makes them on the input's device."""
    on_cpu = budget(_ConvLstm(None), input_shape=(1, 6, 7), batch_size=3)
    beside = budget(_ConvLstm("input"), input_shape=(1, 6, 7), batch_size=3)
    assert on_cpu.params == beside.params == (9 * 4 + 4) + 4 * 5 * (24 + 5) + 2 * 4 * 5
    assert on_cpu.macs == beside.macs > 0
    training = {key: value for key, value in on_cpu.realistic.items() if not key.startswith("inference")}
    assert training == {key: value for key, value in beside.realistic.items() if not key.startswith("inference")}
    # the eval-mode forward counts the CPU state and its meta copy: at most one more state (2 x 5 floats at batch 1)
    extra = on_cpu.realistic["inference_working_set_bytes"] - beside.realistic["inference_working_set_bytes"]
    assert 0 <= extra <= 2 * 5 * 4


def test_an_error_in_the_users_code_names_their_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing import or constructor was told by its message alone ("name 'undefined_width' is not defined"):
    the one line now names the user's own line that raised it, not cnnlab's or torch's frames."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_import.py").write_text("from torch import nn\n\nimport budget_no_such_module_xyz\n")
    (tmp_path / "broken_init.py").write_text(
        "from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, undefined_width, 3)\n"
    )
    with pytest.raises(CnnlabError) as imported:
        build_python_model("broken_import.py:Net")
    assert "(broken_import.py, line 3: `import budget_no_such_module_xyz`)" in str(imported.value)
    with pytest.raises(CnnlabError) as built:
        build_python_model("broken_init.py:Net")
    assert "(broken_init.py, line 7: `self.conv = nn.Conv2d(3, undefined_width, 3)`)" in str(built.value)


def test_a_python_file_without_a_name_is_told_the_networks_it_defines(tmp_path: Path) -> None:
    """`cnnlab budget nets.py` (no `:NAME`) chose nothing, rightly, but told the user to write `nets.py:build`, a name
    the file may not define; it now lists the file's classes (networks first) and functions, read without running it."""
    (tmp_path / "two_nets.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef make_head(n):\n    return nn.Linear(n, 2)\n\n\n"
        "class Small(nn.Module):\n    pass\n\n\nclass Config:\n    pass\n\n\n"
        "class Large(torch.nn.Sequential):\n    pass\n"
    )
    (tmp_path / "empty_nets.py").write_text("WIDTH = 3\n")
    with pytest.raises(CnnlabError) as several:
        load_spec_file(tmp_path / "two_nets.py")
    assert str(several.value).endswith(
        f"`cnnlab budget {tmp_path / 'two_nets.py'}:Small --input 3x224x224`; "
        "it defines Small, Large, Config, make_head"
    )
    with pytest.raises(CnnlabError, match="it defines no class or function at its top level"):
        load_spec_file(tmp_path / "empty_nets.py")


def test_a_class_that_needs_arguments_is_told_how_to_give_them(tmp_path: Path) -> None:
    """A class whose __init__ needs arguments was "`wide.py:Wide` raised TypeError: Wide.__init__() missing 1 required
    positional argument: 'width'": right, but without the form that passes them."""
    (tmp_path / "wide.py").write_text(
        "from torch import nn\n\n\nclass Wide(nn.Module):\n    def __init__(self, width, depth=2, *, classes):\n"
        "        super().__init__()\n        self.conv = nn.Conv2d(3, width, 3)\n"
    )
    with pytest.raises(CnnlabError) as missing:
        build_python_model(f"{tmp_path}/wide.py:Wide(depth=3)")
    assert str(missing.value).endswith(
        f'give them as literals, e.g. "{tmp_path}/wide.py:Wide(depth=3, width=..., classes=...)" (quoted for the shell)'
    )
    assert sum(p.numel() for p in build_python_model(f"{tmp_path}/wide.py:Wide(4, classes=2)").parameters()) == 112


def test_a_forward_that_fails_names_the_users_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shape error in the user's forward was torch's words alone ("a and b must have same reduction dim"), and a
    forward that reads values did not say where: the one line now names the user's line that raised it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "forward_bug.py").write_text(
        "from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 8, 3)\n        self.fc = nn.Linear(8, 10)\n\n    def forward(self, x):\n"
        "        f = self.conv(x).flatten(1)\n        return self.fc(f)\n\n\nclass Reads(Net):\n"
        "    def forward(self, x):\n        return self.conv(x) * float(x.max())\n"
    )
    with pytest.raises(CnnlabError) as shapes:
        budget(build_python_model("forward_bug.py:Net"), input_shape=(3, 6, 6), name="forward_bug.py:Net")
    assert str(shapes.value).endswith("(forward_bug.py, line 12: `return self.fc(f)`)")
    with pytest.raises(CnnlabError) as values:
        budget(build_python_model("forward_bug.py:Reads"), input_shape=(3, 6, 6), name="forward_bug.py:Reads")
    assert str(values.value).endswith("(forward_bug.py, line 17: `return self.conv(x) * float(x.max())`)")


HELD_FORWARDS = """
import torch
from torch import nn

class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))

class Lambda(Plain):
    def __init__(self):
        super().__init__()
        self.run = lambda x: self.head(self.conv(x).mean((2, 3)))

    def forward(self, x):
        return self.run(x)

class Compiled(Plain):
    def __init__(self):
        super().__init__()
        self.run = torch.compile(super().forward)

    def forward(self, x):
        return self.run(x)
"""


@pytest.mark.parametrize("name", ["Lambda", "Compiled"])
def test_a_forward_held_as_a_function_attribute_is_sized_as_the_plain_network(tmp_path: Path, name: str) -> None:
    """A forward that calls a function stored on the module (``self.run = lambda x: ...``, or
    ``torch.compile(self._forward)``) ran the original network's layers in the copy the budget traces: the lambda's
    rows had no output and 'conv, head (170 parameters) get no gradient', its saved bytes 736 against 12,672 measured;
    the compiled one failed as if its forward read tensor values. Both are sized as the same network without it."""
    (tmp_path / "held.py").write_text(HELD_FORWARDS)
    plain, held = (
        budget(build_python_model(f"{tmp_path / 'held.py'}:{target}", on_meta=False), (1, 8, 8), 2, measure=measure)
        for target, measure in (("Plain", False), (name, True))
    )
    assert held.no_gradient == {} and held.layers == plain.layers
    assert held.realistic == plain.realistic
    assert held.measured is not None and held.measured["peak_ratio"] == 1.0
