"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, 1998, "Gradient-based learning applied to document recognition").

The first CNN to combine the ideas every later network keeps: local receptive fields, shared weights (convolution)
and spatial subsampling, trained end to end by backpropagation. Built as in the paper's layer sizes with the common
simplifications: C3 connects to all six S2 maps ("full C3", the paper used a hand-made partial table), the pooling
layers are plain average pools (the paper's had a trainable coefficient and bias) and the output is a linear layer
(the paper's was Euclidean RBF units). Parameter count: 61,706.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from cnnlab.models._base import ClassifierMixin, ModelInfo, model_info, register_info
from cnnlab.models._pretrained import load_pretrained
from cnnlab.models._registry import register_model

__all__ = ["LeNet5"]


class LeNet5(ClassifierMixin, nn.Module):
    """LeNet-5 for 32x32 inputs: C1 conv5 (6) - S2 avgpool - C3 conv5 (16) - S4 avgpool - C5 conv5 (120) - F6 (84) -
    output, with tanh activations.

    Args:
        num_classes: outputs (10 digits).
        in_chans: input channels (1 for MNIST).
        drop_rate: dropout before the output layer (0 in the paper).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.default_input_size = (in_chans, 32, 32)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, kernel_size=5),  # C1: N x 6 x 28 x 28
            nn.Tanh(),
            nn.AvgPool2d(2),  # S2: N x 6 x 14 x 14
            nn.Conv2d(6, 16, kernel_size=5),  # C3: N x 16 x 10 x 10
            nn.Tanh(),
            nn.AvgPool2d(2),  # S4: N x 16 x 5 x 5
            nn.Conv2d(16, 120, kernel_size=5),  # C5: N x 120 x 1 x 1
            nn.Tanh(),
        )
        self.flatten = nn.Flatten(1)
        self.f6 = nn.Linear(120, 84)
        self.act = nn.Tanh()
        self.dropout = nn.Dropout(drop_rate)
        self.num_features = 84
        self.fc = nn.Linear(84, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)  # N x 120 x 1 x 1 (32 x 32 input)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.act(self.f6(self.flatten(x))))  # N x 84
        return x if pre_logits else self.fc(x)


register_info(
    "lenet5",
    ModelInfo(
        "LeCun et al., Gradient-Based Learning Applied to Document Recognition, Proc. IEEE 1998",
        "convolution + subsampling + weight sharing, trained end to end by backpropagation",
        61_706,
        innovation_code="cnnlab.models.lenet.LeNet5",
        params_note="cnnlab's count of the paper's layer sizes with full C3, plain average pools and a linear output; "
        "the paper's LeNet-5 has 60,000 (partial C3: 1,516; trainable pooling coefficients: 44; fixed RBF output)",
    ),
)


@register_model
def lenet5(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5: 1 x 32 x 32 input, 10 classes, tanh and average pooling, full C3."""
    model = LeNet5(**kwargs)
    if pretrained:
        load_pretrained(model, None, "lenet5")
    model.model_info = model_info("lenet5")
    return model
