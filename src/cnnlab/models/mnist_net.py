"""Small CNNs for 28x28 digits: cnnlab's MNIST network and the textbook baseline it is measured against.

`MnistNet` is a VGG-style stack of conv-BN-ReLU blocks in three stages (28 -> 14 -> 7 -> 3 pixels) with a
dropout + linear head, the design behind most top single MNIST models (e.g. Deotte's Kaggle recipe and the
homogeneous-filter nets of Byerly et al. 2020), sized for a CPU. `mnist_baseline` is the basic Keras convnet of
Chollet's Deep Learning with Python (2017), section 5.1 (Conv32-Pool-Conv64-Pool-Conv64-Dense64-Dense10, ReLU, valid
padding): the book's model.summary() prints 93,322 parameters (320, 18,496, 36,928, 36,928 and 650 by layer).

Both take float images in [0, 1], shaped [N, 1, 28, 28], and normalise inside (MNIST mean 0.1307, std 0.3081), so
a saved model is never fed data scaled the wrong way.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from cnnlab.layers.conv_bn_act import ConvBnAct
from cnnlab.layers.normalize import Normalize
from cnnlab.models._base import ClassifierMixin, ModelInfo, register_info
from cnnlab.models._registry import register_model

__all__ = ["MNIST_MEAN", "MNIST_STD", "MnistBaseline", "MnistNet", "mnist_normalize"]

MNIST_MEAN = 0.1307  # of the 60,000 training images, pixels in [0, 1]
MNIST_STD = 0.3081


def mnist_normalize(in_chans: int = 1) -> Normalize:
    """The normalisation every MNIST network starts with: MNIST's mean and std on each input channel."""
    return Normalize((MNIST_MEAN,) * in_chans, (MNIST_STD,) * in_chans)


class MnistNet(ClassifierMixin, nn.Module):
    """Three stages of 3x3 conv-BN-ReLU blocks, each followed by 2x2 max-pooling, then dropout and a linear layer.

    Args:
        num_classes: outputs.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        widths: channels of the three stages.
        blocks: conv blocks in each stage.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        drop_rate: float = 0.25,
        widths: tuple[int, int, int] = (32, 64, 128),
        blocks: tuple[int, int, int] = (1, 2, 2),
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.default_input_size = (in_chans, 28, 28)
        self.normalize = mnist_normalize(in_chans)
        layers: list[nn.Module] = []
        channels = in_chans
        for width, count in zip(widths, blocks, strict=True):
            for _ in range(count):
                layers.append(ConvBnAct(channels, width, 3))
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)  # 28 -> 14 -> 7 -> 3: N x widths[2] x 3 x 3
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(drop_rate)
        self.num_features = widths[2] * 9
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(self.normalize(x))  # N x widths[2] x 3 x 3

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.flatten(x))  # N x widths[2] * 9
        return x if pre_logits else self.fc(x)


class MnistBaseline(ClassifierMixin, nn.Module):
    """Conv(32,3)-MaxPool-Conv(64,3)-MaxPool-Conv(64,3)-Dense(64)-Dense(10), ReLU, valid padding (Chollet 2017)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.default_input_size = (in_chans, 28, 28)
        self.normalize = mnist_normalize(in_chans)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3),  # N x 32 x 26 x 26
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # N x 32 x 13 x 13
            nn.Conv2d(32, 64, 3),  # N x 64 x 11 x 11
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # N x 64 x 5 x 5
            nn.Conv2d(64, 64, 3),  # N x 64 x 3 x 3
            nn.ReLU(inplace=True),
        )
        self.flatten = nn.Flatten(1)
        self.dense = nn.Linear(64 * 9, 64)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate)
        self.num_features = 64
        self.fc = nn.Linear(64, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(self.normalize(x))  # N x 64 x 3 x 3

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.act(self.dense(self.flatten(x))))  # N x 64
        return x if pre_logits else self.fc(x)


def _mnist_net(pretrained: bool, **kwargs: Any) -> MnistNet:
    if pretrained:
        raise ValueError("MNIST networks have no pretrained weights; train one with `cnnlab train mnist`")
    return MnistNet(**kwargs)


@register_model
def mnist_net(pretrained: bool = False, **kwargs: Any) -> MnistNet:
    """cnnlab's MNIST network: widths 32-64-128 with 1-2-2 blocks (0.29 M parameters, 22 M MACs per image)."""
    return _mnist_net(pretrained, **kwargs)


@register_model
def mnist_net_small(pretrained: bool = False, **kwargs: Any) -> MnistNet:
    """A narrower MnistNet for the quick recipe: widths 16-32-64, one block per stage."""
    return _mnist_net(pretrained, **{"widths": (16, 32, 64), "blocks": (1, 1, 1), **kwargs})


@register_model
def mnist_baseline(pretrained: bool = False, **kwargs: Any) -> MnistBaseline:
    """The basic MNIST convnet of Chollet's Deep Learning with Python, section 5.1 (93,322 parameters)."""
    if pretrained:
        raise ValueError("mnist_baseline has no pretrained weights")
    return MnistBaseline(**kwargs)


_INNOVATION = "cnnlab's own CPU-sized VGG-style digit classifier (3 stages of 3x3 conv-BN-ReLU, max-pool, dropout)"
register_info(
    "mnist_baseline",
    ModelInfo(
        paper="Chollet, Deep Learning with Python, Manning 2017, section 5.1 (listings 5.1-5.3)",
        innovation="the textbook baseline: a plain conv-pool stack with a dense head, no normalisation layers",
        published_params=93_322,
        innovation_code="cnnlab.models.mnist_net.MnistBaseline",
        params_source="the book's Keras model.summary() (fchollet/deep-learning-with-python-notebooks, "
        "first_edition/5.1-introduction-to-convnets.ipynb)",
    ),
)
