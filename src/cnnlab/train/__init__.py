"""The training engine (see docs/ARCHITECTURE.md, "Training engine")."""

from cnnlab.train.batches import BatchSource, LoaderBatches, TensorBatches
from cnnlab.train.callbacks import Callback, EarlyStopping
from cnnlab.train.checkpoint import atomic_save, load_checkpoint
from cnnlab.train.config import TrainConfig, load_config, save_config
from cnnlab.train.ema import ModelEma
from cnnlab.train.metrics import Accumulate, Accuracy, Metric, accuracy
from cnnlab.train.trainer import Trainer, fit, seed_everything

__all__ = [
    "Accumulate",
    "Accuracy",
    "BatchSource",
    "Callback",
    "EarlyStopping",
    "LoaderBatches",
    "Metric",
    "ModelEma",
    "TensorBatches",
    "TrainConfig",
    "Trainer",
    "accuracy",
    "atomic_save",
    "fit",
    "load_checkpoint",
    "load_config",
    "save_config",
    "seed_everything",
]
