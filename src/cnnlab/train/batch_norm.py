"""Batch norm in fine-tuning: keep pretrained statistics frozen (`FreezeBatchNorm`) or re-estimate them on the new
data before training (`adapt_batch_norm`, AdaBN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cnnlab.train.batches import as_batch_source
from cnnlab.train.callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from cnnlab.train.trainer import Trainer

__all__ = ["BATCH_NORMS", "FreezeBatchNorm", "adapt_batch_norm"]

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class FreezeBatchNorm(Callback):
    """Keep batch norms in eval mode during training (the engine calls `model.train()` each epoch).

    Frozen batch norms (parameters not trained) always use their running statistics; with ``all_bn`` every batch norm
    does (the Keras fine-tuning convention: small fine-tuning batches would otherwise overwrite ImageNet statistics).
    """

    def __init__(self, all_bn: bool) -> None:
        self.all_bn = all_bn

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        for module in trainer.model.modules():
            if isinstance(module, BATCH_NORMS):
                frozen = not any(p.requires_grad for p in module.parameters())
                if self.all_bn or frozen:
                    module.eval()


@torch.no_grad()
def adapt_batch_norm(model: nn.Module, data: Any, device: torch.device, channels_last: bool = False) -> int:
    """AdaBN (Li et al. 2016): set every batch norm's running mean and variance to the average over `data`'s
    batches (not a moving average), touching no weight. Dropout stays off.

    Args:
        model: the network, on `device`.
        data: a DataLoader, a `BatchSource` or an `(inputs, targets)` pair (batches of 64) of preprocessed images.
        device: where the batches go.
        channels_last: feed NHWC batches (when the model was converted).

    Returns:
        The number of images seen (0 when the model has no batch norm with running statistics).
    """
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
    if not norms:
        return 0
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval()
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average over the batches
        module.train()
    seen = 0
    try:
        for inputs, _ in as_batch_source(data, 64).batches(0, 0, shuffle=False, device=device):
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            model(inputs)
            seen += len(inputs)
    finally:
        for module, momentum in zip(norms, momenta, strict=True):
            module.momentum = momentum
        model.train(was_training)
    return seen
