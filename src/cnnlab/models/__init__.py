"""The model zoo. Importing this package registers every family (one module each)."""

from cnnlab.models import (  # noqa: F401
    alexnet,
    efficientnet,
    googlenet,
    inception_v3,
    lenet,
    mnist_net,
    resnet,
    segmentation,
    xception,
)
from cnnlab.models._base import ModelInfo, model_info
from cnnlab.models._pretrained import PretrainedCfg, fetch_pretrained, has_offline_weights, load_pretrained
from cnnlab.models._registry import create_model, is_model, list_models, model_family, register_model
from cnnlab.models._split import ClassifierSplit, check_unfreeze, split_classifier, trainable_blocks

__all__ = [
    "ClassifierSplit",
    "ModelInfo",
    "PretrainedCfg",
    "check_unfreeze",
    "create_model",
    "fetch_pretrained",
    "has_offline_weights",
    "is_model",
    "list_models",
    "load_pretrained",
    "model_family",
    "model_info",
    "register_model",
    "split_classifier",
    "trainable_blocks",
]
