"""The training engine (see docs/ARCHITECTURE.md, "Training engine")."""

from cnnlab.train.batch_norm import FreezeBatchNorm
from cnnlab.train.batches import BatchSource, LoaderBatches, TensorBatches
from cnnlab.train.callbacks import BestWeights, Callback, EarlyStopping
from cnnlab.train.checkpoint import atomic_save, load_checkpoint
from cnnlab.train.config import TrainConfig, load_config, save_config
from cnnlab.train.ema import ModelEma
from cnnlab.train.metrics import Accumulate, Accuracy, Metric, accuracy
from cnnlab.train.optim import depth_units, layerwise_param_groups, top_param_groups
from cnnlab.train.trainer import Trainer, fit, seed_everything

__all__ = [
    "Accumulate",
    "Accuracy",
    "BatchSource",
    "BestWeights",
    "Callback",
    "EarlyStopping",
    "FreezeBatchNorm",
    "LoaderBatches",
    "Metric",
    "ModelEma",
    "TensorBatches",
    "TrainConfig",
    "Trainer",
    "accuracy",
    "atomic_save",
    "depth_units",
    "fit",
    "layerwise_param_groups",
    "load_checkpoint",
    "load_config",
    "save_config",
    "seed_everything",
    "top_param_groups",
]
