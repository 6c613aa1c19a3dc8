"""GoogLeNet / Inception-v1 (Szegedy et al., 2014, "Going Deeper with Convolutions").

The innovation is the `InceptionModule` (cnnlab.layers.inception): parallel 1x1, 3x3, 5x5 and pooling branches whose
outputs are concatenated, with 1x1 "bottleneck" convolutions cutting channels before the expensive kernels. 22 layers
deep with 12x fewer parameters than AlexNet, plus global average pooling instead of big dense layers and two auxiliary
classifiers that inject gradient into the middle of the network during training.

Layout and names follow torchvision (with its batch norm, which the original lacked, and its 3x3 kernel in the
"5x5" branch), so torchvision's ImageNet weights load unchanged: 6,624,904 parameters, 13,004,888 with the auxiliary
classifiers.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from cnnlab.layers import InceptionModule
from cnnlab.layers.inception import inception_conv
from cnnlab.models._base import ClassifierMixin, ModelInfo, model_info, register_info
from cnnlab.models._pretrained import load_pretrained, torchvision_cfg
from cnnlab.models._registry import register_model

__all__ = ["GoogLeNet"]


class GoogLeNetAux(nn.Module):
    """Auxiliary classifier (training only): 4x4 average pool, 1x1 conv (128), FC 1024, dropout 0.7, FC."""

    def __init__(self, in_channels: int, num_classes: int, drop_rate: float = 0.7) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.conv = inception_conv(in_channels, 128, kernel_size=1)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(2048, 1024)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(self.conv(self.pool(x)))  # N x 2048
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class GoogLeNet(ClassifierMixin, nn.Module):
    """GoogLeNet. ``forward`` returns the main logits only; ``forward_with_aux`` also returns the auxiliary logits
    (in training mode, when built with ``aux_logits=True``) for a loss weighted as in the paper (0.3 each).

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        drop_rate: dropout before the classifier (0.2 in torchvision; 0.4 in the paper).
        aux_logits: build the two auxiliary classifiers (after inception4a and inception4d).
        large_kernel_size: kernel of the "5x5" branches: 3 as in torchvision (weights and published count), 5 as in
            the paper.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        aux_logits: bool = False,
        large_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.default_input_size = (in_chans, 224, 224)
        self.aux_logits = aux_logits

        def inception(*channels: int) -> InceptionModule:
            return InceptionModule(*channels, large_kernel_size=large_kernel_size)

        self.conv1 = inception_conv(in_chans, 64, kernel_size=7, stride=2)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = inception_conv(64, 64, kernel_size=1)
        self.conv3 = inception_conv(64, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = inception(832, 384, 192, 384, 48, 128, 128)
        self.aux1 = GoogLeNetAux(512, num_classes) if aux_logits else None
        self.aux2 = GoogLeNetAux(528, num_classes) if aux_logits else None
        self.num_features = 1024
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(1024, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.01, a=-2, b=2)

    def _trunk(self, x: Tensor, with_aux: bool) -> tuple[Tensor, list[Tensor]]:
        aux: list[Tensor] = []
        x = self.maxpool1(self.conv1(x))  # N x 64 x 56 x 56
        x = self.maxpool2(self.conv3(self.conv2(x)))  # N x 192 x 28 x 28
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # N x 480 x 14 x 14
        x = self.inception4a(x)  # N x 512 x 14 x 14
        if with_aux and self.aux1 is not None:
            aux.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        if with_aux and self.aux2 is not None:
            aux.append(self.aux2(x))
        x = self.maxpool4(self.inception4e(x))  # N x 832 x 7 x 7
        return self.inception5b(self.inception5a(x)), aux  # N x 1024 x 7 x 7

    def forward_features(self, x: Tensor) -> Tensor:
        return self._trunk(x, with_aux=False)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.flatten(self.avgpool(x)))  # N x 1024
        return x if pre_logits else self.fc(x)

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Main logits and the auxiliary logits ``[aux1, aux2]`` (empty in eval mode or without aux heads)."""
        features, aux = self._trunk(x, with_aux=self.training)
        return self.forward_head(features), aux


register_info(
    "googlenet",
    ModelInfo(
        "Szegedy et al., Going Deeper with Convolutions, CVPR 2015 (arXiv:1409.4842)",
        "the Inception module: parallel 1x1/3x3/5x5/pool branches with 1x1 bottlenecks, concatenated",
        6_624_904,
        13_004_888,
        1.498,
        "cnnlab.layers.inception.InceptionModule",
        params_source="torchvision googlenet (GoogLeNet_Weights.IMAGENET1K_V1 metadata); the paper's 5x5 branches "
        "(large_kernel_size=5) give 7,005,832",
    ),
)


@register_model
def googlenet(pretrained: bool = False, **kwargs: Any) -> GoogLeNet:
    """GoogLeNet (Inception-v1); ``aux_logits=True`` adds the two auxiliary classifiers."""
    model = GoogLeNet(**kwargs)
    model.model_info = model_info("googlenet")
    model.pretrained_cfg = torchvision_cfg(
        "GoogLeNet_Weights.IMAGENET1K_V1",
        mean=(0.5, 0.5, 0.5),
        notes="ported from the original (TF/Caffe) weights; torchvision's transform_input maps ImageNet-normalised "
        "input back to (x - 0.5) / 0.5, so cnnlab normalises with mean 0.5, std 0.5 directly",
    )
    if pretrained:
        load_pretrained(model, model.pretrained_cfg, "googlenet")
    return model
