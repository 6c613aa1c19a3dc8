"""Gradient checkpointing of zoo-model stages: same gradients and buffers, fewer bytes saved for backward."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.budget import SavedTensorCounter
from cnnlab.models import create_model
from cnnlab.train.activation_checkpointing import checkpoint_stages, checkpointed_modules, remove_checkpointing

# (model, input shape): small inputs keep this fast on 2 CPU cores.
CASES = [
    ("resnet18", (3, 32, 32)),
    ("mnist_net_small", (1, 28, 28)),
    # Stages in ModuleLists (a U-Net's encoders and decoders) and a trunk run through forward_features (an FCN's
    # backbone): the stages found were never called, and a checkpointed step saved every byte a plain one did.
    ("unet", (1, 32, 32)),
    ("fcn8s", (1, 32, 32)),
    pytest.param("efficientnet_lite0", (3, 64, 64), marks=pytest.mark.slow),
    pytest.param("googlenet", (3, 64, 64), marks=pytest.mark.slow),
    pytest.param("xception", (3, 71, 71), marks=pytest.mark.slow),
]


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # Small tensors: one thread is faster than two fighting over a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _step(model: nn.Module, x: torch.Tensor) -> tuple[int, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Saved bytes of one forward, the gradients and the buffers after backward, and the output."""
    model.train()
    torch.manual_seed(1)  # same dropout masks in both runs
    state = [*model.parameters(), *model.buffers()]
    with SavedTensorCounter(exclude=state, inputs=[x]) as counter:
        output = model(x)
    output.float().pow(2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    return counter.total_bytes, grads, buffers, output.detach()


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_checkpointing_keeps_gradients_and_saves_memory(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    plain = create_model(name, num_classes=10)
    checkpointed = copy.deepcopy(plain)
    names = checkpoint_stages(checkpointed)
    assert names, f"{name}: no stage was found to checkpoint"
    x = torch.randn(2, *shape)

    plain_saved, plain_grads, plain_buffers, plain_out = _step(plain, x)
    ckpt_saved, ckpt_grads, ckpt_buffers, ckpt_out = _step(checkpointed, x)

    torch.testing.assert_close(ckpt_out, plain_out)
    for a, b in zip(ckpt_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # BatchNorm running statistics are updated once, not again during recomputation.
    for a, b in zip(ckpt_buffers, plain_buffers, strict=True):
        torch.testing.assert_close(a, b)
    assert ckpt_saved < 0.6 * plain_saved, f"{name}: {ckpt_saved} saved bytes vs {plain_saved} without checkpointing"


def test_resnet_stages_are_its_layers_and_keys_do_not_change() -> None:
    model = create_model("resnet18", num_classes=10)
    keys = list(model.state_dict())
    assert checkpoint_stages(model) == ["layer1", "layer2", "layer3", "layer4"]
    assert checkpointed_modules(model) == ["layer1", "layer2", "layer3", "layer4"]
    assert list(model.state_dict()) == keys  # checkpoints stay loadable either way
    copy.deepcopy(model)  # the EMA copies the model
    remove_checkpointing(model)
    assert checkpointed_modules(model) == []


def test_plain_sequential_model_is_segmented_and_eval_is_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(9)], nn.Linear(16, 2))
    reference = copy.deepcopy(model)
    assert checkpoint_stages(model) == [""]
    x = torch.randn(8, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x))
    saved, grads, _, _ = _step(model, x)
    plain_saved, plain_grads, _, _ = _step(reference, x)
    for a, b in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b)
    assert saved < plain_saved


def test_a_checkpointed_model_inside_another_module_is_not_checkpointed_again() -> None:
    from cnnlab.tasks.segmentation import EncoderClassifier

    unet = create_model("unet", widths=(4, 8))
    names = checkpoint_stages(unet)
    assert names == ["encoders.0", "encoders.1", "decoders.0"]
    # the encoder's pretraining trains the U-Net inside a classifier: its whole forward was checkpointed around the
    # checkpointed stages, and segmentation then recomputed every stage twice
    assert checkpoint_stages(EncoderClassifier(unet)) == [f"unet.{name}" for name in names]
    assert checkpointed_modules(unet) == names and checkpoint_stages(unet) == names


def test_a_model_with_nothing_worth_checkpointing_is_refused(tmp_path: Path) -> None:
    from cnnlab.errors import CnnlabError
    from cnnlab.train import TrainConfig, Trainer

    # a classifier on cached pooled features (transfer's head): checkpointing the lone Linear kept its input anyway
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 2))
    assert checkpoint_stages(copy.deepcopy(head)) == []
    config = TrainConfig(grad_checkpointing=True, device="cpu", output=str(tmp_path), progress=False)
    with pytest.raises(CnnlabError, match="--grad-checkpointing: Sequential has no stage of several layers"):
        Trainer(head, config)


def test_engine_option_trains_the_same_weights(tmp_path: Path) -> None:
    from cnnlab.train import TrainConfig, Trainer

    generator = torch.Generator().manual_seed(0)
    data = torch.rand(128, 1, 28, 28, generator=generator), torch.randint(0, 10, (128,), generator=generator)
    trainers = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = create_model("mnist_net_small", num_classes=10)  # BatchNorm and dropout: both must match
        config = TrainConfig(epochs=1, batch_size=32, lr=0.05, optimizer="sgd", ema_decay=0.9, seed=1,
                             grad_checkpointing=checkpointing, output=str(tmp_path), name=f"ckpt{checkpointing}",
                             progress=False, checkpoint=False)  # fmt: skip
        trainer = Trainer(model, config)
        trainer.fit(data)
        trainers.append(trainer)
    plain, checkpointed = trainers
    assert checkpointed_modules(checkpointed.model) == ["features"]
    for a, b in zip(checkpointed.model.state_dict().values(), plain.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
