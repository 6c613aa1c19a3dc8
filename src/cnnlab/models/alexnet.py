"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012, "ImageNet Classification with Deep Convolutional Neural Networks").

What it added to LeNet-5: ReLU instead of tanh (several times faster training), dropout in the large fully connected
layers, overlapping max pooling (3x3, stride 2), local response normalisation, data augmentation, and training on two
GPUs, with a model 1000x larger on a dataset 1000x larger.

- `alexnet`: torchvision's single-tower variant (from "One weird trick", Krizhevsky 2014): 64-192-384-256-256
  filters, no LRN, no groups; 61,100,840 parameters; torchvision's ImageNet weights load into it.
- `alexnet_2012`: the paper's two-GPU layout: 96-256-384-384-256 filters, conv2/4/5 split in two groups (each GPU saw
  only its own half of the previous layer's maps; conv3 and the dense layers communicate across), and
  `LocalResponseNorm` after the ReLUs of conv1 and conv2; 227 x 227 input; 60,965,224 parameters.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from cnnlab.layers import LocalResponseNorm
from cnnlab.models._base import ClassifierMixin, ModelInfo, model_info, register_info
from cnnlab.models._pretrained import load_pretrained, torchvision_cfg
from cnnlab.models._registry import register_model

__all__ = ["AlexNet"]


class AlexNet(ClassifierMixin, nn.Module):
    """AlexNet: a convolutional trunk (``features``), a 6x6 adaptive average pool and a three-layer dropout MLP
    (``classifier``, torchvision's layout: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear).

    Args:
        features: the convolutional trunk, ending in ``trunk_channels`` maps.
        trunk_channels: channels of the trunk's output.
        num_classes: classifier outputs.
        drop_rate: dropout before each of the two hidden dense layers (0.5 in the paper).
        default_input_size: (C, H, W) the architecture was designed for.
    """

    def __init__(
        self,
        features: nn.Sequential,
        trunk_channels: int,
        num_classes: int = 1000,
        drop_rate: float = 0.5,
        default_input_size: tuple[int, int, int] = (3, 224, 224),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.default_input_size = default_input_size
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.flatten = nn.Flatten(1)
        self.num_features = 4096
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(trunk_channels * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)  # N x 256 x 6 x 6 at the default resolution

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.flatten(self.avgpool(x))  # N x 9216
        x = self.classifier[:-1](x)  # N x 4096
        return x if pre_logits else self.classifier[-1](x)

    def get_classifier(self) -> nn.Module:
        """The final ``nn.Linear`` (the last layer of ``classifier``)."""
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer by a fresh one with ``num_classes`` outputs (0: return the 4096 features)."""
        reference = next(self.parameters())
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.classifier[-1] = head.to(device=reference.device, dtype=reference.dtype)
        self.num_classes = num_classes


def _torchvision_features(in_chans: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),  # N x 64 x 55 x 55
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 64 x 27 x 27
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 192 x 13 x 13
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 256 x 6 x 6
    )


def _paper_features(in_chans: int) -> nn.Sequential:
    # The paper's alpha=1e-4 multiplies the plain sum of squares; LocalResponseNorm divides alpha by size (=5).
    def lrn() -> LocalResponseNorm:
        return LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)

    return nn.Sequential(
        nn.Conv2d(in_chans, 96, kernel_size=11, stride=4),  # N x 96 x 55 x 55 (227 input)
        nn.ReLU(inplace=True),
        lrn(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 96 x 27 x 27
        nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2),  # each GPU: 48 maps in, 128 out
        nn.ReLU(inplace=True),
        lrn(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 256 x 13 x 13
        nn.Conv2d(256, 384, kernel_size=3, padding=1),  # the one cross-GPU convolution
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 256 x 6 x 6
    )


_PAPER = "Krizhevsky, Sutskever and Hinton, ImageNet Classification with Deep CNNs, NeurIPS 2012"
_INNOVATION = "ReLU, dropout, overlapping max pooling, data augmentation and GPU training at ImageNet scale"
register_info(
    "alexnet",
    ModelInfo(
        _PAPER + "; one-tower layout of Krizhevsky 2014 (arXiv:1404.5997)",
        _INNOVATION,
        61_100_840,
        None,
        0.714,
        "cnnlab.models.alexnet",
        params_source="torchvision alexnet (AlexNet_Weights.IMAGENET1K_V1 metadata), the one-tower layout; the 2012 "
        "paper's two towers are alexnet_2012",
    ),
)
register_info(
    "alexnet_2012",
    ModelInfo(
        _PAPER,
        _INNOVATION + "; local response normalisation",
        60_965_224,
        None,
        None,
        "cnnlab.layers.lrn.LocalResponseNorm; grouped convs (groups=2) in cnnlab.models.alexnet",
        params_note="cnnlab's count of the paper's layer sizes, conv2, conv4 and conv5 in two groups (one per GPU); no "
        'reference implementation gives it, and the paper says "60 million"',
    ),
)


@register_model
def alexnet(pretrained: bool = False, in_chans: int = 3, **kwargs: Any) -> AlexNet:
    """AlexNet, torchvision's one-tower layout (61,100,840 parameters)."""
    model = AlexNet(_torchvision_features(in_chans), 256, default_input_size=(in_chans, 224, 224), **kwargs)
    model.model_info = model_info("alexnet")
    model.pretrained_cfg = torchvision_cfg("AlexNet_Weights.IMAGENET1K_V1")
    if pretrained:
        load_pretrained(model, model.pretrained_cfg, "alexnet")
    return model


@register_model
def alexnet_2012(pretrained: bool = False, in_chans: int = 3, **kwargs: Any) -> AlexNet:
    """AlexNet as in the 2012 paper: two groups, LRN after conv1 and conv2, 227 x 227 input (60,965,224 params)."""
    model = AlexNet(_paper_features(in_chans), 256, default_input_size=(in_chans, 227, 227), **kwargs)
    model.model_info = model_info("alexnet_2012")
    if pretrained:
        load_pretrained(model, None, "alexnet_2012")
    return model
