"""Fully convolutional networks: converting classifiers (`to_fully_convolutional`) and scanning large images."""

from cnnlab.fcn.convert import FullyConvolutional, to_fully_convolutional, training_input_size

__all__ = ["FullyConvolutional", "to_fully_convolutional", "training_input_size"]
