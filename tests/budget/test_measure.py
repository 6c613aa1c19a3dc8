"""The realistic estimate (meta device) against a real CPU run, for several architectures."""

import pytest
import torch
from torch import nn

from cnnlab.budget import budget, count_macs
from cnnlab.budget.trace import trace


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


def _residual_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), Residual(8), Residual(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )


ARCHITECTURES = {
    "bn-pool-dropout": lambda: nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(32 * 6 * 6, 10),
    ),
    "residual": _residual_net,
    "dense-head": lambda: nn.Sequential(
        nn.Conv2d(3, 8, 5),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8 * 28 * 28, 64),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(64, 10),
    ),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_estimate_within_two_percent_of_measurement(name, optimizer):
    torch.manual_seed(0)
    report = budget(ARCHITECTURES[name](), input_shape=(3, 32, 32), batch_size=8, optimizer=optimizer, measure=True)
    assert report.measured["saved_for_backward_bytes"] > 0
    assert abs(report.measured["saved_ratio"] - 1) < 0.02
    assert abs(report.measured["peak_ratio"] - 1) < 0.02


def test_measured_counts_what_autograd_saves_by_hand():
    # conv saves its input (the batch), ReLU its output, max pool its input (= ReLU's output) and int64 indices.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    result = trace(model, (3, 8, 8), batch_size=2, device="cpu")
    batch_bytes = 2 * 3 * 8 * 8 * 4
    relu_bytes = 2 * 4 * 8 * 8 * 4
    indices_bytes = 2 * 4 * 4 * 4 * 8
    assert result.saved_bytes == batch_bytes + relu_bytes + indices_bytes
    assert result.saved_input_bytes == batch_bytes


def test_a_real_step_the_device_cannot_run_is_one_line_naming_dtype_and_device():
    """PyTorch has no float16 CPU kernel for local response normalisation: --measure ended in a traceback."""
    from cnnlab.errors import CnnlabError

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LocalResponseNorm(3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    assert budget(model, input_shape=(3, 8, 8), dtype="float16").macs > 0  # the estimate runs on the meta device
    with pytest.raises(CnnlabError, match=r"^--measure: one real float16 training step at batch 2 failed on cpu: .*"):
        budget(model, input_shape=(3, 8, 8), batch_size=2, dtype="float16", measure=True)


def test_measurement_leaves_the_callers_model_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    before = [p.detach().clone() for p in model.parameters()]
    budget(model, input_shape=(3, 8, 8), batch_size=2, measure=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_macs_count_matmuls_and_custom_modules():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(12, 5))

        def forward(self, x):
            return x.flatten(1) @ self.weight

    assert count_macs(Custom(), (3, 2, 2)) == 12 * 5
    assert count_macs(nn.Conv2d(3, 8, 3), (3, 10, 10)) == 8 * 8 * 8 * 27


def test_plan_fits_the_limit():
    report = budget(
        ["conv 16 k3 same relu", "conv 16 k3 same relu", "flatten", "dense 10"],
        input_shape=(3, 32, 32),
        memory_limit="64MiB",
    )
    remedies = {r["remedy"]: r for r in report.plan["remedies"]}
    best = remedies["as configured"]["max_batch"]
    assert best > 0
    from cnnlab.budget.core import resolve_model

    _, module, shape, _ = resolve_model(
        ["conv 16 k3 same relu", "conv 16 k3 same relu", "flatten", "dense 10"], (3, 32, 32)
    )
    assert trace(module, shape, best).peak_live_bytes <= 64 * 2**20 < trace(module, shape, best + 8).peak_live_bytes
    assert remedies["bf16 mixed precision"]["max_batch"] > best
    assert remedies["SGD (no optimizer state)"]["max_batch"] >= best


def test_plan_traces_checkpointing_of_a_deep_stack():
    # A deep stack of conv-BN-ReLU keeps three tensors per layer; checkpointing ~sqrt(n) segments keeps far fewer.
    layers = [line for _ in range(9) for line in ("conv 16 k3 same", "bn", "relu")] + ["gap", "dense 10"]
    plan = budget(layers, input_shape=(3, 32, 32), memory_limit="256MiB").plan
    remedies = {r["remedy"]: r for r in plan["remedies"]}
    assert remedies["gradient checkpointing"]["max_batch"] > 1.5 * remedies["as configured"]["max_batch"]
    assert remedies["all three"]["max_batch"] > remedies["gradient checkpointing"]["max_batch"]


def _frozen_conv() -> nn.Module:
    conv = nn.Conv2d(3, 4, 3)
    conv.requires_grad_(False)
    return conv


@pytest.mark.parametrize(
    "model",
    [["maxpool k2"], ["dropout 0.5"], nn.ReLU(), _frozen_conv()],
    ids=["maxpool", "dropout", "relu", "frozen-conv"],
)
def test_a_network_with_nothing_to_train_trains_by_its_forward_pass(model):
    """backward() of an output without a grad_fn failed, reported as "spec does not run on input 3x16x16"."""
    import json

    report = budget(model, input_shape=(3, 16, 16), batch_size=4, measure=True)
    assert report.trainable_params == 0
    params_bytes = report.params * 4
    for view in (report.training, report.realistic):
        assert view["grads_bytes"] == view["optimizer_bytes"] == view["activations_bytes"] == 0
        assert view["total_bytes"] == params_bytes + 4 * 3 * 16 * 16 * 4 + view.get("buffers_bytes", 0)
    assert report.realistic["saved_for_backward_bytes"] == report.measured["saved_for_backward_bytes"] == 0
    assert report.realistic["peak_bytes"] == report.measured["peak_live_bytes"]  # the forward's, at batch 4
    assert report.measured["saved_ratio"] == report.measured["peak_ratio"] == 1.0
    json.dumps(report.to_dict(), allow_nan=False)  # 0 of 0 was NaN, which is no JSON


def test_an_output_cut_from_the_trainable_parameters_is_named():
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).detach()

    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match="output does not depend on its trainable parameters"):
        budget(Detached(), input_shape=(3, 16, 16))


class _AuxiliaryHead(nn.Module):
    """GoogLeNet's shape in small: an auxiliary classifier whose logits are returned in training mode only, and a
    head that is built but never called (cnnlab's googlenet with aux_logits=True, whose forward skips its heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 5)
        self.aux = nn.Linear(4, 5)
        self.unused = nn.Linear(4, 5)

    def forward(self, x):
        features = self.body(x).mean((2, 3))
        return (self.head(features), self.aux(features)) if self.training else self.head(features)


def test_an_auxiliary_head_is_trained_in_the_step_and_said_to_run_in_training_only():
    """torchvision's googlenet returns its auxiliary logits in training mode; the step took its loss on the first
    output only, so the auxiliary heads ran forward but got no gradient, and nothing said they were left out of the
    MACs (the eval-mode forward's)."""
    model = _AuxiliaryHead()
    params = sum(p.numel() for p in model.parameters())
    result = trace(model, (3, 8, 8), batch_size=2, optimizer="sgd")
    unused = 4 * 5 + 5
    # when the step begins: the parameters, the gradients of all but the unused head's, and the input batch
    assert result.step_start_bytes == 4 * (params + params - unused) + 4 * 2 * 3 * 8 * 8
    report = budget(model, input_shape=(3, 8, 8), measure=True)
    assert report.measured["peak_ratio"] == 1.0
    assert report.training_only == {"aux": 25} and report.no_gradient == {"unused": 25}
    assert report.macs == 4 * 27 * 36 + 4 * 5  # the eval-mode forward's: no auxiliary head
    from cnnlab.budget.render import mode_notes

    notes = mode_notes(report)
    assert notes[0].startswith("aux (25 parameters) run in training mode only: the realistic training figures")
    assert notes[1].startswith("unused (25 parameters) get no gradient in a training step")
    assert report.to_dict()["training_only_modules"] == {"aux": 25}
    from cnnlab.budget.explain import explain

    text = explain(report)  # a head never called was said not to run "in eval mode", as if it ran in training
    assert (
        "aux (Linear): output - (not run in eval mode)" in text and "unused (Linear): output - (never called)" in text
    )


def test_a_tied_weight_is_counted_once_in_the_rows_and_said_to_be_shared():
    """A weight two modules hold was counted in both rows: the column (and --explain's sum) exceeded the total; and the
    meta-device copy untied it (``Module.to("meta")`` makes a parameter per holder), so the estimate stepped two
    gradients and two Adam states of it (peak estimate/measured 1.69 for an 8,000-weight head)."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 8, 3)
            self.head = nn.Linear(8, 10)
            self.twin = nn.Linear(8, 10)
            self.twin.weight = self.head.weight

        def forward(self, x):
            features = self.body(x).mean((2, 3))
            return self.head(features) + self.twin(features)

    from cnnlab.budget.explain import explain
    from cnnlab.budget.render import layer_table

    report = budget(Tied(), input_shape=(3, 8, 8), measure=True)
    assert report.measured["peak_ratio"] == 1.0 and report.realistic["grads_bytes"] == 4 * report.params
    rows = {row.name: row for row in report.layers}
    assert report.params == 3 * 9 * 8 + 8 + 80 + 10 + 10 == sum(row.params for row in report.layers)
    assert (rows["twin"].params, rows["twin"].shared_params, rows["head"].params) == (10, 80, 90)
    assert "total = 224 + 90 + 10\n          = 324 parameters" in explain(report)
    assert "twin (Linear): output 10, params 10 (+ 80 shared with an earlier row, counted there)" in explain(report)
    assert "counted there once: twin (80)." in layer_table(report).caption


def test_batch_one_on_a_batch_norm_of_one_value_per_channel_is_sized_and_measured():
    """Inception-v3's auxiliary head has a 1x1 map: at the default --batch 1 batch norm refused to train ("Expected
    more than 1 value per channel when training") and the budget gave no answer, even with --memory at batch 2 (the
    planner traces batch 1). The check is lifted, the layer named, and the real step agrees byte for byte."""
    model = nn.Sequential(nn.Conv2d(3, 4, 4), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    report = budget(model, input_shape=(3, 4, 4), measure=True, memory_limit="1MB")
    assert report.one_value_batch_norms == ["1"] and report.to_dict()["one_value_batch_norms"] == ["1"]
    assert report.measured["saved_ratio"] == report.measured["peak_ratio"] == 1.0
    assert report.plan["remedies"][0]["max_batch"] > 1
    from cnnlab.budget.render import mode_notes

    assert mode_notes(report)[-1].startswith("At batch 1, batch norm in training mode sees one value per channel in 1")
    assert budget(model, input_shape=(3, 4, 4), batch_size=2).one_value_batch_norms == []
    assert "forward" not in model[1].__dict__  # the class's own forward, as before


# `cnnlab budget --optimizer NAME` -> the engine's `TrainConfig` (its SGD has Nesterov momentum 0.9 unless told 0)
_ENGINE_OPTIMIZERS = {
    "sgd": {"optimizer": "sgd", "momentum": 0.0},
    "momentum": {"optimizer": "sgd"},
    "adam": {"optimizer": "adam"},
    "adamw": {"optimizer": "adamw"},
}


def _engine_step_peak(model: nn.Module, shape: tuple[int, ...], optimizer: str) -> int:
    """Peak live bytes of the second of two real CPU steps at batch 1 with the optimizer the engine builds (its
    state exists by then), counted as the budget counts: parameters, buffers, the state and the input from the start."""
    from cnnlab.budget import LiveTensorTracker
    from cnnlab.train import TrainConfig
    from cnnlab.train.optim import build_optimizer, default_param_groups

    config = TrainConfig(**_ENGINE_OPTIMIZERS[optimizer])
    step_optimizer = build_optimizer(default_param_groups(model, config.weight_decay), config)
    x = torch.randn(1, *shape)

    def step() -> None:
        loss = model(x).sum()
        loss.backward()
        del loss
        step_optimizer.step()
        step_optimizer.zero_grad(set_to_none=True)

    step()
    state = [value for values in step_optimizer.state.values() for value in values.values() if torch.is_tensor(value)]
    tracker = LiveTensorTracker()
    with tracker:
        tracker.add_existing([*model.parameters(), *model.buffers(), *state, x])
        step()
    return tracker.peak_bytes


@pytest.mark.parametrize(
    "optimizer,device",
    [("adam", "cuda"), ("adamw", "cuda"), ("momentum", "cuda"), ("adam", "cpu"), ("momentum", "cpu"), ("sgd", "cuda")],
)
def test_the_estimate_steps_the_engines_optimizer_as_on_the_device_it_is_for(optimizer, device, monkeypatch):
    """The budget stepped Adam one tensor at a time and SGD's momentum without Nesterov, whatever the device; the
    engine leaves the kernels to torch, which on CUDA steps a whole param group at once (resnet50 with Adam: 102 MB of
    temporaries, not 19 MB), and its SGD is Nesterov's. At batch 1 this network's peak is in the optimizer step."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    report = budget(model, input_shape=(3, 16, 16), batch_size=1, optimizer=optimizer, device=device)
    if device == "cuda":  # torch's own default, told that the CPU has multi-tensor kernels, steps as it does on CUDA
        import torch.optim.optimizer as torch_optimizer

        monkeypatch.setattr(torch_optimizer, "_get_foreach_kernels_supported_devices", lambda: ["cpu"])
    assert report.realistic["peak_bytes"] == _engine_step_peak(model, (3, 16, 16), optimizer)
    assert report.device == device


def test_parameters_a_module_above_the_rows_holds_are_named_and_summed():
    """A gain on the model itself is in the total but in no leaf row: --explain printed 'total = 224 + 72 = 312'
    and the table's column fell 16 short of its footer without a word."""

    class Gained(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.gain = nn.Parameter(torch.ones(1, 8, 1, 1))
            self.block = nn.Sequential(nn.Conv2d(8, 8, 1))
            self.block.shift = nn.Parameter(torch.zeros(8, 1, 1))

        def forward(self, x):
            return self.block(self.conv(x) * self.gain) + self.block.shift

    from cnnlab.budget.explain import explain
    from cnnlab.budget.render import layer_table

    report = budget(Gained(), input_shape=(3, 8, 8))
    assert report.unlisted_params == {"gain": 8, "block.shift": 8}
    assert sum(row.params for row in report.layers) + 16 == report.params == 312
    assert "total = 224 + 72 + 16\n          = 312 parameters" in explain(report)
    assert "in no row: gain (8), block.shift (8); 296 + 16 = 312, the total." in layer_table(report).caption
    assert budget(Gained(), input_shape=(3, 8, 8), depth=0).unlisted_params == {}  # the one row holds them all


def test_macs_of_a_functional_call_outside_every_row_are_said_to_make_up_the_total():
    """A matmul in the model's own forward counted in the total but in no row: the MACs column summed to 13,824 under
    a total of 17,920, and neither the table nor --explain said where the 4,096 came from."""

    class Projected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.proj = nn.Parameter(torch.randn(8, 8))

        def forward(self, x):
            return self.conv(x).flatten(2).transpose(1, 2) @ self.proj  # N x 64 x 8

    from cnnlab.budget.explain import explain
    from cnnlab.budget.render import layer_table

    report = budget(Projected(), input_shape=(3, 8, 8))
    assert report.macs == 8 * 27 * 64 + 64 * 8 * 8 == 17_920
    assert "= the rows' 13,824 + calls outside the listed layers (functional ops in a forward, e.g. x @ w) 4,096" in (
        explain(report)
    )
    assert "count 4,096 MACs: 13,824 + 4,096 = 17,920, the total." in layer_table(report).caption


def test_a_ratio_over_a_real_zero_is_null_with_a_note_not_infinity():
    """A real step that saved 0 bytes against an estimate above 0 made `saved_ratio` float("inf"): --json wrote
    `Infinity`, which is not JSON (strict parsers refuse the whole document)."""
    import json

    from rich.console import Console

    from cnnlab.budget.explain import explain
    from cnnlab.budget.render import measured_table

    class SavesOnlyOnMeta(nn.Module):
        """Multiplies by its weight on the meta device (saving the input), by a constant elsewhere (saving nothing)."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(1))

        def forward(self, x):
            if x.is_meta:
                return x * self.weight
            return x * 2.0 + self.weight.sum() * 0.0

    report = budget(SavesOnlyOnMeta(), input_shape=(3, 4, 4), measure=True)
    measured = report.measured
    assert measured["saved_for_backward_bytes"] == 0 < report.realistic["saved_for_backward_bytes"]
    assert measured["saved_ratio"] is None and measured["peak_ratio"] is not None
    assert measured["saved_ratio_note"].startswith("the real step held 0 bytes against an estimate of ")
    text = json.dumps(report.to_dict(), allow_nan=False)  # raised ValueError on inf
    assert json.loads(text)["measured"]["saved_ratio"] is None
    console = Console(width=160, record=True)
    console.print(measured_table(report))
    assert "- (measured 0)" in console.export_text() and "estimate/measured = - (measured 0)" in explain(report)


class _TinyCrnn(nn.Module):
    """A CNN, then an LSTM over the width (a text-line recogniser's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d((4, 1)))
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.conv(x).squeeze(2).transpose(1, 2))  # N x W x 8
        return self.head(out)


def test_a_recurrent_layers_unsized_workspace_is_noted_in_text_and_json():
    """A CRNN's LSTM keeps a fused-kernel workspace for backward that the estimate does not size (a real step saved
    several times its bytes), and nothing said so; a plain CNN gets no such note."""
    from cnnlab.budget.render import report_notes

    report = budget(_TinyCrnn(), input_shape=(1, 4, 16), batch_size=2)
    assert any(note.startswith("Recurrent layers rnn (LSTM): the workspace") for note in report_notes(report))
    assert report.to_dict()["recurrent"] == {"modules": {"rnn": "LSTM"}, "workspace_sized": False}
    plain = budget(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), input_shape=(1, 4, 16), batch_size=2)
    assert not any("Recurrent" in note for note in report_notes(plain)) and "recurrent" not in plain.to_dict()
