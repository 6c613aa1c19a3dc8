"""Inception-v3 (Szegedy et al., 2015, "Rethinking the Inception Architecture for Computer Vision").

Builds on GoogLeNet's module with factorised convolutions (5x5 as two 3x3; n x n as 1 x n then n x 1), efficient grid
reduction by parallel stride-2 conv and pool branches, batch norm everywhere, label smoothing and one auxiliary head
(used as a regulariser). Blocks ``InceptionA``..``InceptionE`` live in cnnlab.layers.inception.

Layout and names follow torchvision, whose ImageNet weights load unchanged: 23,834,568 parameters, 27,161,264 with
the auxiliary head. Input 3 x 299 x 299.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from cnnlab.layers import InceptionA, InceptionB, InceptionC, InceptionD, InceptionE
from cnnlab.layers.inception import inception_conv
from cnnlab.models._base import ClassifierMixin, ModelInfo, model_info, register_info
from cnnlab.models._pretrained import load_pretrained, torchvision_cfg
from cnnlab.models._registry import register_model

__all__ = ["InceptionV3"]


class InceptionV3Aux(nn.Module):
    """Auxiliary head on the 17x17 grid: 5x5/3 average pool, 1x1 conv (128), 5x5 conv (768), global pool, FC."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=5, stride=3)
        self.conv0 = inception_conv(in_channels, 128, kernel_size=1)
        self.conv1 = inception_conv(128, 768, kernel_size=5, padding=0)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(self.pool(x)))  # N x 768 x 1 x 1
        return self.fc(self.flatten(self.avgpool(x)))


class InceptionV3(ClassifierMixin, nn.Module):
    """Inception-v3. ``forward`` returns the main logits; ``forward_with_aux`` adds the auxiliary logits in training.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        drop_rate: dropout before the classifier (0.5).
        aux_logits: build the auxiliary head (after Mixed_6e).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5, aux_logits: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.default_input_size = (in_chans, 299, 299)
        self.aux_logits = aux_logits
        self.Conv2d_1a_3x3 = inception_conv(in_chans, 32, kernel_size=3, stride=2, padding=0)
        self.Conv2d_2a_3x3 = inception_conv(32, 32, kernel_size=3, padding=0)
        self.Conv2d_2b_3x3 = inception_conv(32, 64, kernel_size=3)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = inception_conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = inception_conv(80, 192, kernel_size=3, padding=0)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionV3Aux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.num_features = 2048
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(2048, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.1, a=-2, b=2)

    def _trunk(self, x: Tensor, with_aux: bool) -> tuple[Tensor, list[Tensor]]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # N x 64 x 147 x 147
        x = self.maxpool1(x)  # N x 64 x 73 x 73
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))  # N x 192 x 35 x 35
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # N x 288 x 35 x 35
        x = self.Mixed_6a(x)  # N x 768 x 17 x 17
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # N x 768 x 17 x 17
        aux = [self.AuxLogits(x)] if with_aux and self.AuxLogits is not None else []
        x = self.Mixed_7a(x)  # N x 1280 x 8 x 8
        return self.Mixed_7c(self.Mixed_7b(x)), aux  # N x 2048 x 8 x 8

    def forward_features(self, x: Tensor) -> Tensor:
        return self._trunk(x, with_aux=False)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.flatten(self.dropout(self.avgpool(x)))  # N x 2048
        return x if pre_logits else self.fc(x)

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Main logits and ``[aux]`` (empty in eval mode or without the auxiliary head)."""
        features, aux = self._trunk(x, with_aux=self.training)
        return self.forward_head(features), aux


register_info(
    "inception_v3",
    ModelInfo(
        "Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016 (arXiv:1512.00567)",
        "factorised Inception modules (5x5 -> 3x3+3x3, n x n -> 1 x n + n x 1) and efficient grid reduction",
        23_834_568,
        27_161_264,
        5.713,
        "cnnlab.layers.inception.InceptionA..InceptionE",
        params_source="torchvision inception_v3 (Inception_V3_Weights.IMAGENET1K_V1 metadata: 27,161,264 with the "
        "auxiliary head)",
    ),
)


@register_model
def inception_v3(pretrained: bool = False, **kwargs: Any) -> InceptionV3:
    """Inception-v3 at 299 x 299; ``aux_logits=True`` adds the auxiliary head."""
    model = InceptionV3(**kwargs)
    model.model_info = model_info("inception_v3")
    model.pretrained_cfg = torchvision_cfg(
        "Inception_V3_Weights.IMAGENET1K_V1",
        mean=(0.5, 0.5, 0.5),
        notes="ported from TensorFlow; torchvision's transform_input maps ImageNet-normalised input back to "
        "(x - 0.5) / 0.5, so cnnlab normalises with mean 0.5, std 0.5 directly",
    )
    if pretrained:
        load_pretrained(model, model.pretrained_cfg, "inception_v3")
    return model
