"""Batch norm in fine-tuning: pretrained statistics stay frozen (`FreezeBatchNorm`), so small fine-tuning batches
never overwrite what ImageNet's millions of images estimated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from cnnlab.train.callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from cnnlab.train.trainer import Trainer

__all__ = ["BATCH_NORMS", "FreezeBatchNorm"]

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
