"""Xception (Chollet, 2017, "Xception: Deep Learning with Depthwise Separable Convolutions").

Takes the Inception hypothesis to its extreme: cross-channel and spatial correlations can be mapped fully separately,
so every convolution after the stem is a `SeparableConv2d` (cnnlab.layers.separable: a depthwise 3x3 then a pointwise
1x1), arranged in 12 residual blocks: entry flow (3 strided blocks), middle flow (8 identical 728-wide blocks), exit
flow. 22,855,952 parameters, input 3 x 299 x 299.

The layout matches timm's ``legacy_xception`` (the Keras port); `xception_key_map` renames its separable-conv keys
(``*.conv1.*`` -> ``*.depthwise.*``) so its weights load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.layers import SeparableConv2d
from cnnlab.models._base import ClassifierMixin, ModelInfo, model_info, register_info
from cnnlab.models._pretrained import load_pretrained
from cnnlab.models._registry import register_model

__all__ = ["Xception", "XceptionBlock", "xception_key_map"]


class XceptionBlock(nn.Module):
    """``reps`` x (ReLU, SeparableConv 3x3, BN), an optional 3x3/stride max pool, and a residual shortcut (a strided
    1x1 conv + BN where the shape changes).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        reps: separable convolutions in the block.
        stride: stride of the closing max pool (1: no pool).
        start_with_relu: begin with a ReLU (False only for the first block, which follows the stem's ReLU).
        grow_first: widen at the first separable conv (True) or the last one (the exit-flow block).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
    ) -> None:
        super().__init__()
        if out_channels != in_channels or stride != 1:
            self.skip: nn.Module | None = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skipbn: nn.Module | None = nn.BatchNorm2d(out_channels)
        else:
            self.skip = self.skipbn = None
        layers: list[nn.Module] = []
        for index in range(reps):
            if grow_first:
                conv_in, conv_out = (in_channels if index == 0 else out_channels), out_channels
            else:
                conv_in, conv_out = in_channels, (in_channels if index < reps - 1 else out_channels)
            # Not in place on the block's input, which the shortcut still needs.
            layers.append(nn.ReLU(inplace=index > 0))
            layers += [SeparableConv2d(conv_in, conv_out, 3, padding=1), nn.BatchNorm2d(conv_out)]
        if not start_with_relu:
            layers = layers[1:]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.skip is None else self.skipbn(self.skip(x))  # type: ignore[misc]
        return self.rep(x) + shortcut


class Xception(ClassifierMixin, nn.Module):
    """Xception: stem (two 3x3 convs), 12 separable residual blocks, two separable convs, global pool, linear.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.default_input_size = (in_chans, 299, 299)
        self.conv1 = nn.Conv2d(in_chans, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)
        # Entry flow.
        self.block1 = XceptionBlock(64, 128, 2, 2, start_with_relu=False)
        self.block2 = XceptionBlock(128, 256, 2, 2)
        self.block3 = XceptionBlock(256, 728, 2, 2)
        # Middle flow: eight identical blocks (block4 .. block11).
        for index in range(4, 12):
            self.add_module(f"block{index}", XceptionBlock(728, 728, 3, 1))
        # Exit flow.
        self.block12 = XceptionBlock(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(1536, 2048, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(2048)
        self.act4 = nn.ReLU(inplace=True)
        self.num_features = 2048
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(2048, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))  # N x 32 x 149 x 149
        x = self.act2(self.bn2(self.conv2(x)))  # N x 64 x 147 x 147
        x = self.block3(self.block2(self.block1(x)))  # N x 728 x 19 x 19
        for index in range(4, 12):
            x = getattr(self, f"block{index}")(x)  # N x 728 x 19 x 19
        x = self.block12(x)  # N x 1024 x 10 x 10
        x = self.act3(self.bn3(self.conv3(x)))  # N x 1536 x 10 x 10
        return self.act4(self.bn4(self.conv4(x)))  # N x 2048 x 10 x 10

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.flatten(self.avgpool(x)))  # N x 2048
        return x if pre_logits else self.fc(x)


def xception_key_map(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm ``legacy_xception`` state dict to cnnlab's: its separable convs call the depthwise conv
    ``conv1`` (``block1.rep.0.conv1.weight``, ``conv3.conv1.weight``); cnnlab calls it ``depthwise``. The stem's
    top-level ``conv1`` is unchanged."""
    return {re.sub(r"^(.+)\.conv1\.weight$", r"\1.depthwise.weight", key): value for key, value in state.items()}


register_info(
    "xception",
    ModelInfo(
        "Chollet, Xception: Deep Learning with Depthwise Separable Convolutions, CVPR 2017 (arXiv:1610.02357)",
        "depthwise separable convolutions throughout, in residual blocks (an 'extreme' Inception)",
        22_855_952,
        innovation_code="cnnlab.layers.separable.SeparableConv2d",
        params_source="the paper's Table 3; timm legacy_xception (built without weights)",
    ),
)


@register_model
def xception(pretrained: bool = False, **kwargs: Any) -> Xception:
    """Xception at 299 x 299 (timm ``legacy_xception`` layout)."""
    model = Xception(**kwargs)
    model.model_info = model_info("xception")
    if pretrained:
        load_pretrained(model, None, "xception")
    return model
