"""Reusable blocks: each innovation of the classic CNNs as a named module."""

from cnnlab.layers.conv_bn_act import ConvBnAct
from cnnlab.layers.inception import InceptionA, InceptionB, InceptionC, InceptionD, InceptionE, InceptionModule
from cnnlab.layers.lrn import LocalResponseNorm
from cnnlab.layers.normalize import Normalize
from cnnlab.layers.padding import AvgPool2dSame, Conv2dSame, MaxPool2dSame, pad_same, same_padding_amounts
from cnnlab.layers.residual import BasicBlock, Bottleneck
from cnnlab.layers.separable import SeparableConv2d
from cnnlab.layers.squeeze_excite import SqueezeExcite

__all__ = [
    "AvgPool2dSame",
    "BasicBlock",
    "Bottleneck",
    "Conv2dSame",
    "ConvBnAct",
    "InceptionA",
    "InceptionB",
    "InceptionC",
    "InceptionD",
    "InceptionE",
    "InceptionModule",
    "LocalResponseNorm",
    "MaxPool2dSame",
    "Normalize",
    "SeparableConv2d",
    "SqueezeExcite",
    "pad_same",
    "same_padding_amounts",
]
