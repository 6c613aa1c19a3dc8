"""Datasets (MNIST, photo folders, segmentation canvases), splits, transforms and augmentation."""
