"""ResNet (He et al., 2015, "Deep Residual Learning for Image Recognition") and SE-ResNet (Hu et al., 2018,
"Squeeze-and-Excitation Networks").

SE-ResNet is this same ResNet with a `SqueezeExcite` block inside every residual unit (``attn_layer``), not a second
implementation. Layout and state-dict names match torchvision's ResNet (and timm's ``seresnet50``), so their weights
load with no key mapping; strides sit on the bottleneck's 3x3 conv (ResNet v1.5).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import Tensor, nn

from cnnlab.layers import BasicBlock, Bottleneck, SqueezeExcite
from cnnlab.models._base import ClassifierMixin, ModelInfo, model_info, register_info
from cnnlab.models._pretrained import load_pretrained, torchvision_cfg
from cnnlab.models._registry import register_model

__all__ = ["ResNet"]

Block = type[BasicBlock] | type[Bottleneck]


class ResNet(ClassifierMixin, nn.Module):
    """ResNet: a 7x7/2 stem and max pool, four stages of residual blocks (widths 64..512, x4 for bottlenecks), global
    average pool, linear classifier.

    Args:
        block: `BasicBlock` (ResNet-18/34) or `Bottleneck` (ResNet-50 and deeper).
        layers: blocks per stage.
        num_classes: classifier outputs.
        in_chans: input channels.
        drop_rate: dropout before the classifier (0 in the paper).
        attn_layer: channel attention inserted in every block (`SqueezeExcite` for SE-ResNet), or None.
        zero_init_residual: start each block's last BN at zero so every block begins as the identity.
    """

    def __init__(
        self,
        block: Block,
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_layer: Callable[[int], nn.Module] | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.default_input_size = (in_chans, 224, 224)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(block, 64, layers[0], 1, attn_layer)
        self.layer2 = self._make_stage(block, 128, layers[1], 2, attn_layer)
        self.layer3 = self._make_stage(block, 256, layers[2], 2, attn_layer)
        self.layer4 = self._make_stage(block, 512, layers[3], 2, attn_layer)
        self.num_features = 512 * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)

    def _make_stage(
        self, block: Block, planes: int, blocks: int, stride: int, attn_layer: Callable[[int], nn.Module] | None
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self.inplanes, planes, stride, downsample, attn_layer)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes, attn_layer=attn_layer) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # N x 64 x 56 x 56 (224 input)
        x = self.layer1(x)  # N x 64e x 56 x 56 (e = block expansion)
        x = self.layer2(x)  # N x 128e x 28 x 28
        x = self.layer3(x)  # N x 256e x 14 x 14
        return self.layer4(x)  # N x 512e x 7 x 7

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.flatten(self.avgpool(x)))  # N x 512e
        return x if pre_logits else self.fc(x)


_TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V2",
    "resnet152": "ResNet152_Weights.IMAGENET1K_V2",
}

_RESNET_PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016 (arXiv:1512.03385)"
_RESIDUAL = "the residual unit: blocks learn a correction added to an identity shortcut, so 150+ layers still train"
_SE = "the squeeze-and-excitation block: global context gates each channel of the residual branch"
for _name, _params, _gmacs in [
    ("resnet18", 11_689_512, 1.814),
    ("resnet34", 21_797_672, 3.664),
    ("resnet50", 25_557_032, 4.089),
    ("resnet101", 44_549_160, 7.801),
    ("resnet152", 60_192_808, 11.514),
]:
    _source = f"torchvision {_name} ({_TORCHVISION_WEIGHTS[_name]} metadata)"
    _info = ModelInfo(_RESNET_PAPER, _RESIDUAL, _params, None, _gmacs, "cnnlab.layers.residual", params_source=_source)
    register_info(_name, _info)
register_info(
    "seresnet50",
    ModelInfo(
        "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018 (arXiv:1709.01507)",
        _SE,
        28_088_024,
        innovation_code="cnnlab.layers.squeeze_excite.SqueezeExcite in cnnlab.layers.residual.Bottleneck",
        params_source="timm seresnet50 (built without weights)",
    ),
)


def _create_resnet(
    name: str, block: Block, layers: tuple[int, int, int, int], pretrained: bool, **kwargs: Any
) -> ResNet:
    model = ResNet(block, layers, **kwargs)
    model.model_info = model_info(name)
    weights = _TORCHVISION_WEIGHTS.get(name)
    model.pretrained_cfg = torchvision_cfg(weights) if weights else None
    if pretrained:
        load_pretrained(model, model.pretrained_cfg, name)
    return model


@register_model
def resnet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18: BasicBlocks (2, 2, 2, 2)."""
    return _create_resnet("resnet18", BasicBlock, (2, 2, 2, 2), pretrained, **kwargs)


@register_model
def resnet34(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34: BasicBlocks (3, 4, 6, 3)."""
    return _create_resnet("resnet34", BasicBlock, (3, 4, 6, 3), pretrained, **kwargs)


@register_model
def resnet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50: Bottlenecks (3, 4, 6, 3)."""
    return _create_resnet("resnet50", Bottleneck, (3, 4, 6, 3), pretrained, **kwargs)


@register_model
def resnet101(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101: Bottlenecks (3, 4, 23, 3)."""
    return _create_resnet("resnet101", Bottleneck, (3, 4, 23, 3), pretrained, **kwargs)


@register_model
def resnet152(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-152: Bottlenecks (3, 8, 36, 3)."""
    return _create_resnet("resnet152", Bottleneck, (3, 8, 36, 3), pretrained, **kwargs)


@register_model
def seresnet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SE-ResNet-50: ResNet-50 with a squeeze-and-excitation block (reduction 16) in every bottleneck."""
    se = partial(SqueezeExcite, reduction=16)
    return _create_resnet("seresnet50", Bottleneck, (3, 4, 6, 3), pretrained, attn_layer=se, **kwargs)
