"""Dense-to-convolutional conversion: identical outputs at the training size, score maps on larger inputs, and clear
refusals for heads that cannot be converted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.fcn import FullyConvolutional, to_fully_convolutional
from cnnlab.models import create_model


def _two_dense_head_net() -> nn.Sequential:
    """Conv trunk ending on a 16 x 5 x 5 map, then Flatten + Dense(64) + ReLU + Dense(10)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3),  # 26
        nn.ReLU(),
        nn.MaxPool2d(2),  # 13
        nn.Conv2d(8, 16, 3),  # 11
        nn.ReLU(),
        nn.MaxPool2d(2),  # 5
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 64),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(64, 10),
    ).eval()


def _assert_identical(model: nn.Module, converted: nn.Module, size: tuple[int, int, int]) -> None:
    x = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), converted(x)
    assert got.shape == (3, expected.shape[1], 1, 1)
    assert (got.flatten(1) - expected).abs().max().item() <= 1e-5


def _assert_windows_scored(model: nn.Module, converted: nn.Module, image: torch.Tensor, shape: tuple, at: list) -> None:
    """The converted net's score map on a larger `image` has `shape`, and its score at each (i, j) of `at` is the
    classifier's on the 9x9 window there."""
    with torch.no_grad():
        scores = converted(image)
        assert scores.shape == shape
        for i, j in at:
            assert torch.allclose(scores[0, :, i, j], model(image[..., i : i + 9, j : j + 9])[0], atol=1e-5)


def test_first_dense_layer_becomes_a_valid_convolution_with_the_map_size_as_kernel():
    model = _two_dense_head_net()
    converted = to_fully_convolutional(model, (1, 28, 28))
    convs = [m for m in converted.head if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5), (1, 1)]
    assert convs[0].padding == (0, 0)
    assert not any(isinstance(m, (nn.Linear, nn.Flatten)) for m in converted.modules())
    _assert_identical(model, converted, (1, 28, 28))


def test_larger_input_gives_a_class_map_with_one_location_per_stride_step():
    model = _two_dense_head_net()
    converted = to_fully_convolutional(model, (1, 28, 28))
    out = converted(torch.rand(2, 1, 60, 44))
    # trunk: 60 -> 58 -> 29 -> 27 -> 13, then a 5x5 valid conv -> 9; 44 -> 42 -> 21 -> 19 -> 9 -> 5
    assert out.shape == (2, 10, 9, 5)
    assert converted.output_geometry() == ((28, 28), (4, 4))


def test_a_network_whose_output_never_grows_is_refused_not_searched_forever():
    """output_geometry doubled the input until the output grew: behind an adaptive pool to 1x1 it never does."""
    trunk = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1))
    converted = FullyConvolutional(trunk, nn.Sequential(nn.Conv2d(2, 10, 1)), (1, 9, 9), window_pooled=False).eval()
    with pytest.raises(CnnlabError, match=r"output does not grow with its input \(not within 1,024 px more than its "
                       r"9x9 training size\), so it cannot be scanned"):  # fmt: skip
        converted.output_geometry()
    assert not converted.training  # left in its mode


@pytest.mark.parametrize("pools", [(2, 2, 2, 3), (2,) * 7], ids=["24", "128"])
def test_the_stride_is_measured_right_when_it_does_not_divide_64(pools):
    """It was 64 // (output rows gained over 64 input rows): 6 read as 5, 24 as 32, 128 as 64."""
    size, layers = 1, []
    for pool in pools:
        size *= pool
        layers += [nn.Conv2d(1, 1, 1), nn.MaxPool2d(pool)]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(1, 3)).eval()  # a 1x1 map at the `size` it reads
    assert to_fully_convolutional(model, (1, size, size)).output_geometry() == ((size, size), (size, size))


@pytest.mark.parametrize(
    ("first", "stride"),
    [([nn.Conv2d(1, 2, 3), nn.MaxPool2d((2, 1))], (2, 1)), ([nn.Conv2d(1, 2, 3, stride=(1, 3))], (1, 3))],
    ids=["pool 2x1", "conv stride 1x3"],
)
def test_the_stride_is_measured_along_each_axis_and_each_location_is_its_window(first, stride):
    """The width's stride was taken to be the height's: a MaxPool2d((2, 1)) network, 1 px apart across, read 2."""
    torch.manual_seed(0)
    trunk = nn.Sequential(*first, nn.ReLU(), nn.Conv2d(2, 2, 3), nn.Flatten()).eval()
    model = nn.Sequential(*trunk, nn.Linear(trunk(torch.zeros(1, 1, 16, 14)).shape[1], 5)).eval()
    converted = to_fully_convolutional(model, (1, 16, 14))
    assert converted.output_geometry() == ((16, 14), stride)
    image = torch.rand(1, 1, 27, 29)
    with torch.no_grad():
        scores = converted(image)
        for i, j in [(0, 0), (2, 1), (scores.shape[2] - 1, scores.shape[3] - 1)]:
            top, left = i * stride[0], j * stride[1]
            assert torch.allclose(scores[0, :, i, j], model(image[..., top : top + 16, left : left + 14])[0], atol=1e-5)


def _passes_to_measure(converted: FullyConvolutional) -> int:
    passes: list[int] = []
    handle = converted.register_forward_pre_hook(lambda module, args: passes.append(1))
    converted.output_geometry()
    handle.remove()
    return len(passes)


def test_the_stride_search_finds_every_stride_along_each_axis_from_any_phase():
    """Against outputs floor((length + offset) / stride), every stride to 40 and some larger, another across: the
    search narrows the (stride, phase) pairs that agree with the growths it saw, so it must agree with the distance
    between growths, from any offset (strides to 14 from 28 px and to 44 from 224 narrow the pairs; larger
    ones are searched growth by growth)."""
    from cnnlab.fcn.convert import _search_in_step, _stride_search

    cases = [(28, down) for down in [*range(1, 41), 48, 64, 100, 128, 200]] + [(224, 16), (224, 30), (224, 44)]
    for start, down in cases:
        across = (7 * down) % 130 + 1
        for offset in {0, down // 2, down - 1}:
            probes: list[tuple[int, int]] = []

            def sizes_out(rows: int, cols: int, down=down, across=across, offset=offset, probes=probes):
                probes.append((rows, cols))
                return (rows + offset) // down, (cols + 3 * offset) // across

            found = _search_in_step((start, start), sizes_out, lambda start: _stride_search(start, 1024))
            assert found == (down, across), (start, down, across, offset)
            assert max(max(probe) for probe in probes) <= start + 2 * 1024


def test_the_stride_is_measured_in_fewer_passes():
    """The first growth was searched (doubling, then halving) before the stride: 12 passes for googlenet, 13 for
    inception_v3, 6 for lenet5; the (stride, phase) pairs each probe allows are narrowed at once. resnet's output,
    ceil(length / 32), grows one pixel further and still takes 5."""
    from cnnlab.fcn.convert import _search_in_step, _stride_search

    layers = [nn.Conv2d(1, 1, 3, stride=2, padding=1) for _ in range(5)]  # resnet's 224 -> 7: ceil(H / 32)
    resnet_like = nn.Sequential(*layers, nn.Flatten(), nn.Linear(49, 3)).eval()
    converted = to_fully_convolutional(resnet_like, (1, 224, 224))
    assert _passes_to_measure(converted) == 5 and converted.output_geometry().stride == (32, 32)
    counts = {}
    for name, stride in (("mnist_net_small", 8), ("mnist_baseline", 4), ("lenet5", 4)):
        converted = to_fully_convolutional(create_model(name).eval())
        counts[name] = _passes_to_measure(converted)
        assert converted.output_geometry().stride == (stride, stride)
    # googlenet's and inception_v3's output lengths grow at 239 and 331 px, then every 32 (measured on the zoo's)
    for name, size, offset in (("googlenet", 224, 17), ("inception_v3", 299, 21)):
        probes: list[tuple[int, int]] = []

        def sizes_out(rows: int, cols: int, offset: int = offset, probes: list = probes) -> tuple[int, int]:
            probes.append((rows, cols))
            return (rows + offset) // 32, (cols + offset) // 32

        assert _search_in_step((size, size), sizes_out, lambda start: _stride_search(start, 1792)) == (32, 32)
        counts[name] = len(probes)
    assert counts == {"mnist_net_small": 7, "mnist_baseline": 3, "lenet5": 3, "googlenet": 10, "inception_v3": 10}


def test_each_output_location_is_the_classifier_on_that_window():
    model = _two_dense_head_net()
    converted = to_fully_convolutional(model, (1, 28, 28))
    image = torch.rand(1, 1, 44, 44)
    with torch.no_grad():
        scores = converted(image)
        (window, _), (stride, _) = converted.output_geometry()
        for i, j in [(0, 0), (1, 3), (4, 4)]:
            crop = image[..., i * stride : i * stride + window, j * stride : j * stride + window]
            assert torch.allclose(scores[0, :, i, j], model(crop)[0], atol=1e-5)


@pytest.mark.parametrize("pool", [nn.AdaptiveMaxPool2d(1), nn.AdaptiveAvgPool2d(1)], ids=["max", "avg"])
def test_a_global_pool_not_moved_behind_the_dense_layers_scores_every_window(pool):
    """Global pooling was kept with its window as its stride: a global-max-pool classifier scored one window of a
    15x15 image (a 1x1 map) where 7x7 windows of its 9x9 training size fit. The average pool shows the same when a
    ReLU after it keeps it in front of the dense layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), pool, nn.ReLU(), nn.Flatten(), nn.Linear(4, 10)).eval()
    converted = to_fully_convolutional(model, (1, 9, 9))
    _assert_identical(model, converted, (1, 9, 9))
    _assert_windows_scored(model, converted, torch.rand(1, 1, 15, 15), (1, 10, 7, 7), [(0, 0), (2, 5), (6, 6)])


def test_lenet5():
    model = create_model("lenet5").eval()
    converted = to_fully_convolutional(model)
    _assert_identical(model, converted, (1, 32, 32))
    assert converted(torch.rand(1, 1, 64, 48)).shape == (1, 10, 9, 5)


def test_zoo_global_pool_head_becomes_a_1x1_conv_before_the_pooling():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=7).eval()
    converted = to_fully_convolutional(model, (3, 64, 64))
    layers = list(converted.head)
    conv_index = next(i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d))
    assert layers[conv_index].kernel_size == (1, 1)
    assert isinstance(layers[-1], nn.AvgPool2d) and conv_index < len(layers) - 1
    _assert_identical(model, converted, (3, 64, 64))
    assert converted(torch.rand(1, 3, 128, 96)).shape == (1, 7, 3, 2)  # 4x3 map, 2x2 sliding average
    unpooled = to_fully_convolutional(model, (3, 64, 64), pool="none")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(unpooled(x).mean((2, 3)), model(x), atol=1e-5)


def test_mnist_net_with_dropout_between_flatten_and_dense():
    model = create_model("mnist_net_small").eval()
    converted = to_fully_convolutional(model)
    _assert_identical(model, converted, (1, 28, 28))
    with pytest.raises(CnnlabError, match="--pool none applies to a head that averages its map globally"):
        to_fully_convolutional(model, pool="none")  # every MNIST head flattens: it was accepted and changed nothing


def test_the_original_model_is_left_unchanged_and_in_its_mode():
    model = _two_dense_head_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    to_fully_convolutional(model, (1, 28, 28))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[7], nn.Linear)


class _PooledSqueezeExcite(nn.Module):
    """Squeeze-excitation squeezing with an AdaptiveAvgPool2d module (as torchvision's SqueezeExcitation does)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, 2, 1)
        self.fc2 = nn.Conv2d(2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))  # N x C x H x W


def test_a_squeeze_excitation_block_in_the_features_stays_in_the_trunk():
    """Its global pool was taken for the start of the head: "the head uses a functional op or a branch"."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), _PooledSqueezeExcite(4), nn.Flatten(), nn.Linear(4 * 7 * 7, 10)).eval()
    converted = to_fully_convolutional(model, (1, 9, 9))
    assert isinstance(converted.trunk[1], _PooledSqueezeExcite)
    assert [type(m) for m in converted.head] == [nn.Conv2d]
    _assert_identical(model, converted, (1, 9, 9))
    assert converted(torch.rand(2, 1, 15, 12)).shape == (2, 10, 7, 4)


@pytest.mark.parametrize(
    "head",
    [
        lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)),
        lambda: nn.Sequential(nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(4 * 7 * 7, 10)),
        lambda: nn.Sequential(nn.AdaptiveAvgPool2d(7)),  # a fixed-size map: not a feature layer either
    ],
    ids=["gap-dense", "pool7-dense", "pool7"],
)
def test_a_head_written_as_one_block_is_still_the_head(head):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), head()).eval()
    converted = to_fully_convolutional(model, (1, 9, 9))
    assert len(converted.trunk) == 2
    with torch.no_grad():  # at the training size the same numbers; on a larger image a map of windows
        expected = model(torch.ones(1, 1, 9, 9))
        assert (converted(torch.ones(1, 1, 9, 9)).reshape(expected.shape) - expected).abs().max() <= 1e-5
        assert converted(torch.rand(1, 1, 13, 13)).shape[-2:] != converted(torch.rand(1, 1, 9, 9)).shape[-2:]


@pytest.mark.parametrize(
    "last", [nn.LogSoftmax(dim=1), nn.Softmax(dim=1), nn.Softmax(dim=-1)], ids=["logsoftmax", "softmax", "softmax-1"]
)
def test_a_softmax_over_the_classes_ends_the_converted_head(last):
    """They were refused ("cannot convert layer ..."), though over dim 1 they are the same on maps; dim=-1 of a
    score vector is its classes, so it becomes dim=1 (the map's last dimension is its width)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 10), last).eval()
    converted = to_fully_convolutional(model, (1, 9, 9))
    assert isinstance(converted.head[-1], type(last)) and converted.head[-1].dim == 1
    _assert_identical(model, converted, (1, 9, 9))
    _assert_windows_scored(model, converted, torch.rand(1, 1, 14, 12), (1, 10, 6, 4), [(0, 0), (2, 3), (5, 1)])


@pytest.mark.parametrize(
    "layers,message",
    [
        ([nn.Flatten(), nn.Linear(4 * 8 * 8, 10), nn.Softmax(dim=0)], r"'4' \(Softmax\(dim=0\)\).*dim 0 .*the batch"),
        (
            [nn.AdaptiveAvgPool2d(2), nn.LogSoftmax(dim=-1), nn.Flatten(), nn.Linear(16, 10)],
            r"'3' \(LogSoftmax\(dim=-1\)\).*4-D input, a spatial dimension.*LogSoftmax\(dim=1\)",
        ),
    ],
    ids=["over-the-batch", "over-the-width"],
)
def test_a_softmax_not_over_the_classes_is_refused_and_named(layers, message):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), *layers).eval()
    with pytest.raises(CnnlabError, match=message):
        to_fully_convolutional(model, (1, 10, 10))


def test_refuses_a_layer_it_cannot_convert_and_names_it():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 16), nn.LayerNorm(16)).eval()
    with pytest.raises(CnnlabError, match=r"'3'.*LayerNorm"):
        to_fully_convolutional(model, (1, 28, 28))


def test_refuses_a_head_with_a_functional_op():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 3)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.features(x)

        def forward_head(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.amax(x, dim=(2, 3)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.forward_head(self.forward_features(x))

    with pytest.raises(CnnlabError, match="'fc'"):
        to_fully_convolutional(Odd(), (1, 8, 8))


def test_needs_an_input_size_when_the_model_has_none():
    with pytest.raises(CnnlabError, match="input_size"):
        to_fully_convolutional(_two_dense_head_net())


def test_returns_a_fully_convolutional_module():
    converted = to_fully_convolutional(_two_dense_head_net(), (1, 28, 28))
    assert isinstance(converted, FullyConvolutional) and not converted.training
