"""Gradient accumulation: N micro-batches give the gradients of one large batch (the engine weights each micro-batch
loss by its share of the batch, so uneven splits, as after an out-of-memory halving, are exact too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.train import Callback, TrainConfig, Trainer


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def _model() -> nn.Module:
    torch.manual_seed(0)  # no BatchNorm: its statistics are per micro-batch by design
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))


class _SetMicroBatch(Callback):
    def __init__(self, size: int) -> None:
        self.size = size

    def on_fit_start(self, trainer: Trainer) -> None:
        trainer.micro_batch_size = self.size


def _one_step(
    tmp_path: Path,
    name: str,
    batch: int,
    accum: int,
    micro: int | None = None,
    *,
    model: nn.Module | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    loss_fn: nn.Module | None = None,
) -> Trainer:
    config = TrainConfig(
        epochs=1,
        batch_size=batch,
        accum_steps=accum,
        lr=0.1,
        optimizer="sgd",
        momentum=0.0,
        schedule="constant",
        output=str(tmp_path),
        name=name,
        progress=False,
        checkpoint=False,
    )
    callbacks = [_SetMicroBatch(micro)] if micro is not None else []
    trainer = Trainer(model or _model(), config, loss_fn=loss_fn, callbacks=callbacks)
    trainer.fit(data or _data(batch))  # exactly one optimizer step
    assert trainer.global_step == 1
    return trainer


@pytest.mark.parametrize(("batch", "accum", "micro"), [(32, 4, None), (30, 1, 7), (30, 2, 4)])
def test_micro_batches_give_the_large_batch_gradient(tmp_path: Path, batch: int, accum: int, micro: int | None) -> None:
    whole = _one_step(tmp_path, "whole", batch, 1)
    split = _one_step(tmp_path, "split", batch, accum, micro)
    for (name, p_whole), p_split in zip(whole.model.named_parameters(), split.model.parameters(), strict=True):
        assert p_whole.grad is not None and p_split.grad is not None
        torch.testing.assert_close(p_split.grad, p_whole.grad, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(p_split, p_whole, rtol=1e-5, atol=1e-6, msg=name)
    assert whole.history[0]["train_loss"] == pytest.approx(split.history[0]["train_loss"], rel=1e-5)


def test_accumulation_changes_the_gradient_when_the_loss_is_not_weighted(tmp_path: Path) -> None:
    # The check above can fail: plain summed micro-batch gradients differ from the batch gradient.
    whole = _one_step(tmp_path, "whole", 32, 1)
    model = _model()
    inputs, targets = _data(32)
    for piece_x, piece_y in zip(inputs.split(8), targets.split(8), strict=True):
        nn.functional.cross_entropy(model(piece_x), piece_y).backward()
    first = next(model.parameters()).grad
    assert not torch.allclose(first, next(whole.model.parameters()).grad, atol=1e-6)


def _masks(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and 8x8 masks of 3 classes, with unlabelled (255) pixels: half the rows of half the masks, and one
    whole mask."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (n, 8, 8), generator=generator)
    masks[: n // 2, :4] = 255
    masks[n - 1] = 255
    return torch.randn(n, 1, 8, 8, generator=generator), masks


def _segmenter() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))


@pytest.mark.parametrize("weight", [None, (0.2, 1.0, 3.0)], ids=["masked", "class-weighted"])
def test_micro_batches_give_the_large_batch_gradient_of_a_masked_or_class_weighted_loss(
    tmp_path: Path, weight: tuple[float, ...] | None
) -> None:
    # A cross-entropy averages over the (weighted) labelled pixels, not over images: weighting micro-batches by their
    # images gave another gradient (2-3 % off here), and a micro-batch with no labelled pixel a NaN training loss.
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else torch.tensor(weight), ignore_index=255)
    runs = {
        accum: _one_step(tmp_path, f"a{accum}", 8, accum, model=_segmenter(), data=_masks(8), loss_fn=loss_fn)
        for accum in (1, 8)
    }
    whole, split = runs[1], runs[8]
    for (name, p_whole), p_split in zip(whole.model.named_parameters(), split.model.parameters(), strict=True):
        torch.testing.assert_close(p_split.grad, p_whole.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert split.history[0]["train_loss"] == pytest.approx(whole.history[0]["train_loss"], rel=1e-5)
