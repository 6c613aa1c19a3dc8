"""torchvision's detection networks for `cnnlab budget`: the part that runs whatever the image, sized exactly, and
the heads whose work depends on it, per box.

A detection network (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD, SSDlite) takes a list of images of any sizes.
In eval mode its forward is:

1. its own transform: normalise, resize (``min_size``/``max_size``: the shorter side to ``min_size`` unless the longer
   would exceed ``max_size``; SSD: a ``fixed_size``), and pad the batch to a multiple of ``size_divisible``;
2. the backbone (with its FPN) on that batch, then the dense heads on every feature map position (R-CNN's RPN head;
   RetinaNet's, FCOS's and SSD's classification and box heads): the same work for any image of that size;
3. anchors, box decoding, top-k, non-maximum suppression: no multiply-accumulates, and how many boxes survive
   depends on the image's values;
4. R-CNN only: the RoI heads on the boxes that survived, the box head on each proposal the RPN kept (at most its
   ``post_nms_top_n``), the mask or keypoint head on each detection (at most ``detections_per_img``).

`DenseDetection` runs 2. on the transformed batch, so the budget's trace sizes it exactly (shapes, MACs, activation
memory) on the meta device; `detection_info` runs 1. on the meta device for the resized shape, and counts 4. per box
with `torch.utils.flop_counter.FlopCounterMode`, so a forward on an image with N proposals and D detections costs
``dense + N x per proposal + D x per detection`` MACs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import CnnlabError

__all__ = ["DenseDetection", "check_channels", "detection_info", "is_detection_network"]

# the R-CNN heads that run once per box: (their roi_heads attributes' prefix, the boxes they run on)
_PER_BOX_HEADS = (("box", "proposal"), ("mask", "detection"), ("keypoint", "detection"))
_PER_BOX_PARTS = ("roi_pool", "head", "predictor")


def is_detection_network(module: nn.Module) -> bool:
    """Whether `module` is a torchvision detection network: a transform that resizes a list of images, a backbone and
    dense heads (an RPN's, or its own)."""
    transform = getattr(module, "transform", None)
    return (
        hasattr(transform, "min_size")
        and hasattr(transform, "max_size")
        and isinstance(getattr(module, "backbone", None), nn.Module)
        and _dense_head(module) is not None
    )


def _dense_head(module: nn.Module) -> nn.Module | None:
    rpn = getattr(module, "rpn", None)
    head = getattr(rpn, "head", None) if rpn is not None else getattr(module, "head", None)
    return head if isinstance(head, nn.Module) else None


class DenseDetection(nn.Module):
    """A detection network's backbone and dense heads on a transformed batch: what runs on every image, whatever its
    values. Every child of the network is registered under its own name (``backbone.body.conv1``,
    ``roi_heads.box_head.fc6``), so the parameters are the whole network's; the RoI heads are not called."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        for name, child in network.named_children():
            self.add_module(name, child)
        self.network_type = type(network).__name__

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Head outputs for a batch already resized and normalised: N x 3 x H x W, H and W the transform's."""
        features = self.backbone(images)
        if isinstance(features, torch.Tensor):  # SSD's VGG returns the dict, a plain backbone one map
            features = OrderedDict([("0", features)])
        head = _dense_head(self)
        outputs = head(list(features.values()))
        if isinstance(outputs, dict):  # RetinaNet, FCOS, SSD: cls_logits, bbox_regression (, bbox_ctrness)
            return list(outputs.values())
        return [tensor for per_level in outputs for tensor in per_level]  # RPN: objectness and box deltas, per level


def check_channels(network: nn.Module, shape: tuple[int, ...], name: str) -> None:
    """Refuse an image whose channels the network's transform cannot normalise, in one line that names those it takes.

    torchvision's transform normalises an image as ``(image - mean[:, None, None]) / std[:, None, None]`` with one
    ``image_mean`` and ``image_std`` value per channel (3, RGB, for every torchvision detection network). A 1-channel
    image broadcasts against them: its channel is repeated into each of theirs, so the network runs (and is sized)
    on 3 channels, as `detection_info` reports; any other count fails to broadcast (torch's "The size of tensor a (4)
    must match the size of tensor b (3)", which the budget blamed on the list of images the network takes).
    """
    channels = len(getattr(network.transform, "image_mean", ()) or ()) or shape[0]
    if shape[0] in (1, channels):
        return
    raise CnnlabError(
        f"{name} is a detection network whose transform normalises {channels} channels (its image_mean and image_std "
        f"have {channels} values each): --input {'x'.join(map(str, shape))} has {shape[0]}; give {channels}xHxW (a "
        f"1-channel image is repeated into the {channels}, as torchvision's forward does)"
    )


def resized_shape(network: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One C x H x W image's shape after the network's own transform (resized, padded to its size divisor), as its
    eval-mode forward computes it: the transform is run on the meta device."""
    return _transformed(network, shape)[0]


def _transformed(network: nn.Module, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, int]]:
    """`resized_shape`, and the image's H x W as resized, before the batch is padded to the size divisor."""
    transform = network.transform
    training = transform.training
    transform.eval()  # in training a multi-scale transform (keypoint R-CNN) picks a random min_size
    try:
        with torch.no_grad():
            batched, _ = transform([torch.empty(shape, device="meta")])
    finally:
        transform.train(training)
    height, width = batched.image_sizes[0]
    return tuple(batched.tensors.shape[1:]), (int(height), int(width))


def detection_info(network: nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    """How the network's transform resizes a `shape` image, and the MACs of each head that runs once per box.

    Returns:
        ``network``, ``given_shape``, ``scaled_size`` (H x W as resized, before padding), ``resized_shape`` (C x H x
        W, padded), ``transform`` (min_size, max_size, fixed_size, size_divisible), and ``per_box_heads``: per R-CNN
        head, its modules, what it runs on, the most of them per image and its MACs per box (empty for RetinaNet,
        FCOS and SSD, whose heads are all dense), and ``training_losses_sized``: false, as the training figures are a
        step of the backbone and dense heads on the sum of their outputs, without torchvision's training-mode forward
        (targets, anchors or sampled proposals, its losses), which the note says in words.
    """
    transform = network.transform
    padded, scaled = _transformed(network, shape)
    info: dict[str, Any] = {
        "network": type(network).__name__,
        "given_shape": list(shape),
        "scaled_size": list(scaled),
        "resized_shape": list(padded),
        "transform": {
            "min_size": transform.min_size[-1],  # the eval-mode size of a multi-scale transform
            "max_size": transform.max_size,
            "fixed_size": list(transform.fixed_size) if getattr(transform, "fixed_size", None) else None,
            "size_divisible": transform.size_divisible,
        },
        "per_box_heads": [],
        "training_losses_sized": False,  # the JSON's word for the note's "its losses ... is not sized"
    }
    roi_heads = getattr(network, "roi_heads", None)
    if roi_heads is None:
        return info
    channels = network.backbone.out_channels
    most = {"proposal": network.rpn._post_nms_top_n["testing"], "detection": roi_heads.detections_per_img}
    for prefix, per in _PER_BOX_HEADS:
        pool, head, predictor = (getattr(roi_heads, f"{prefix}_{part}", None) for part in _PER_BOX_PARTS)
        if head is None or predictor is None or pool is None:  # Faster R-CNN: no mask or keypoint head
            continue
        side = pool.output_size if isinstance(pool.output_size, (tuple, list)) else (pool.output_size,) * 2
        device = next(head.parameters()).device
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            predictor(head(torch.empty(1, channels, *side, device=device)))
        info["per_box_heads"].append(
            {
                "modules": [f"roi_heads.{prefix}_head", f"roi_heads.{prefix}_predictor"],
                "runs_on": per,
                "most_per_image": int(most[per]),
                "macs_per_box": counter.get_total_flops() // 2,
                "input_per_box": [channels, *side],
            }
        )
    return info
