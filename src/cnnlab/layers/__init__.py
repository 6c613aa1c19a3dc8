"""Reusable blocks: each innovation of the classic CNNs as a named module."""

from cnnlab.layers.padding import AvgPool2dSame, Conv2dSame, MaxPool2dSame, pad_same, same_padding_amounts

__all__ = ["AvgPool2dSame", "Conv2dSame", "MaxPool2dSame", "pad_same", "same_padding_amounts"]
