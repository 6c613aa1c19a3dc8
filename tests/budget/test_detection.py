"""`cnnlab budget` on torchvision's detection networks: sized at their own transform's shape, the backbone and dense
heads exactly, the R-CNN heads per box, checked against FlopCounterMode on a real forward of the whole network."""

from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import detection
from typer.testing import CliRunner

from cnnlab.budget import budget
from cnnlab.budget.python_model import build_python_model
from cnnlab.budget.render import report_notes
from cnnlab.cli import app
from cnnlab.errors import CnnlabError


def _real_forward_macs(network: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """FlopCounterMode's FLOPs / 2 of one eval forward of the whole network on a blank image, and how many boxes each
    R-CNN head ran on (its input's first dimension)."""
    boxes: dict[str, int] = {}
    roi_heads = getattr(network, "roi_heads", None)
    if roi_heads is not None:
        roi_heads.score_thresh = 0.0  # random weights score each class about 1/91: keep detections for the heads
        roi_heads.box_head.register_forward_hook(lambda _m, args, _o: boxes.__setitem__("box", args[0].shape[0]))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network.eval()([torch.zeros(shape)])
    return counter.get_total_flops() // 2, boxes


def test_ssdlite_is_sized_at_its_fixed_size_and_its_macs_are_a_real_forwards() -> None:
    """It was refused ("takes a list of images"); its transform resizes any image to 320x320, and every head is dense,
    so one number is exact for any image."""
    target = "torchvision.models.detection:ssdlite320_mobilenet_v3_large(weights_backbone=None)"
    done = CliRunner().invoke(app, ["budget", target, "--input", "3x64x64", "--optimizer", "none", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    torch.manual_seed(0)
    network = detection.ssdlite320_mobilenet_v3_large(weights_backbone=None)
    assert report["params"] == sum(p.numel() for p in network.parameters()) == 3_440_060
    assert report["input_shape"] == [3, 320, 320] and report["detection"]["given_shape"] == [3, 64, 64]
    assert report["detection"]["per_box_heads"] == []
    # the note says the training step's losses are not sized; the JSON said nothing of it
    assert report["detection"]["training_losses_sized"] is False
    macs, _ = _real_forward_macs(network, (3, 64, 64))
    assert report["macs"] == report["detection"]["most_macs"] == macs
    assert report["realistic"]["inference_working_set_bytes"] > 0
    assert not report["no_gradient_modules"]
    done = CliRunner().invoke(app, ["budget", target, "--input", "3x4x64x64"])
    assert isinstance(done.exception, CnnlabError) and "takes each image as 3 sizes" in str(done.exception)


def test_faster_rcnn_counts_its_backbone_exactly_and_its_box_head_per_proposal() -> None:
    """A real forward costs the dense MACs plus the box head's per proposal the RPN kept (at most its
    rpn_post_nms_top_n_test); built small (min_size 64, 20 proposals) with literal arguments, as a command line may."""
    small = "min_size=64, max_size=96, rpn_post_nms_top_n_test=20"
    target = f"torchvision.models.detection:fasterrcnn_mobilenet_v3_large_320_fpn(weights_backbone=None, {small})"
    built = build_python_model(target)  # on the meta device, as the command line builds it
    sized = budget(built, input_shape=(3, 40, 50), optimizer="none", name=target)
    report = sized.to_dict()
    info = report["detection"]
    assert info["resized_shape"] == [3, 64, 96]  # 40x50 scaled by 64/40 to 64x80, then padded to multiples of 32
    (box,) = info["per_box_heads"]
    assert box["modules"] == ["roi_heads.box_head", "roi_heads.box_predictor"] and box["most_per_image"] == 20
    torch.manual_seed(0)
    network = detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights_backbone=None, min_size=64, max_size=96, rpn_post_nms_top_n_test=20
    )
    assert report["params"] == sum(p.numel() for p in network.parameters())
    macs, boxes = _real_forward_macs(network, (3, 40, 50))
    assert 0 < boxes["box"] <= 20
    assert macs == report["macs"] + boxes["box"] * box["macs_per_box"]
    assert info["most_macs"] == report["macs"] + 20 * box["macs_per_box"]
    assert not any("roi_heads" in name for name in report["no_gradient_modules"])  # not called: the note says so
    note = report_notes(sized)[0]
    assert "resizes the 3x40x50 image to 3x64x96 (min_size 64, max_size 96, padded to a multiple of 32)" in note
    assert f"{box['macs_per_box']:,} MACs per proposal (up to 20 per image)" in note


def test_a_one_channel_image_is_sized_as_the_three_channels_torchvision_repeats_it_into_and_four_are_refused() -> None:
    """torchvision's transform normalises per channel of its 3-value image_mean: a 1-channel image broadcasts into 3
    (a real forward runs), so it is sized at 3 channels and the note says why; 4 channels do not broadcast, and were
    refused as "takes a list of images ... size its backbone", which was not the cause."""
    from cli_in_process import run_cnnlab

    small = "min_size=64, max_size=96, rpn_post_nms_top_n_test=20"
    target = f"torchvision.models.detection:fasterrcnn_mobilenet_v3_large_320_fpn(weights_backbone=None, {small})"
    sized = budget(build_python_model(target), input_shape=(1, 40, 50), optimizer="none", name="frcnn")
    info = sized.detection
    assert info["given_shape"] == [1, 40, 50] and info["resized_shape"] == [3, 64, 96]
    assert "repeats the 1 channel into 3, as torchvision's forward does" in report_notes(sized)[0]
    torch.manual_seed(0)
    network = detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights_backbone=None, min_size=64, max_size=96, rpn_post_nms_top_n_test=20
    )
    macs, boxes = _real_forward_macs(network, (1, 40, 50))
    assert macs == sized.macs + boxes["box"] * info["per_box_heads"][0]["macs_per_box"]
    done = run_cnnlab("budget", target, "--input", "4x40x50")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "transform normalises 3 channels" in done.stderr and "--input 4x40x50 has 4; give 3xHxW" in done.stderr


def test_explain_derives_the_transforms_shape_and_the_per_box_macs() -> None:
    """--explain began at 'input 3x64x96' with no word of the 3x40x50 image it came from, and its compute section
    gave the dense MACs as an image's, with nothing of the heads that run once per box or of the training step
    torchvision runs."""
    from cnnlab.budget.explain import explain

    small = "min_size=64, max_size=96, rpn_post_nms_top_n_test=20"
    target = f"torchvision.models.detection:fasterrcnn_mobilenet_v3_large_320_fpn(weights_backbone=None, {small})"
    sized = budget(build_python_model(target), input_shape=(3, 40, 50), optimizer="none", name="frcnn")
    text = explain(sized)
    (box,) = sized.detection["per_box_heads"]
    per_box, most = box["macs_per_box"], 20 * box["macs_per_box"]
    assert "input 3x64x96 (the 3x40x50 image, resized)" in text.splitlines()[0]
    assert "= min(64 / 40, 96 / 50) = 1.6\n" in text and "rounded down: 40x50 -> 64x80\n" in text
    assert "padded with zeros to a multiple of 32: 64x80 -> 64x96\n" in text
    assert f"on 256x7x7: {per_box:,} MACs per proposal x up to 20 per image = up to {most:,}\n" in text
    assert f"from {sized.macs:,} (no box kept) to {sized.macs:,} + {most:,} = {sized.macs + most:,} MACs" in text
    assert "torchvision's training-mode\n      forward (targets, sampled anchors and proposals" in text


def test_the_note_of_a_network_whose_heads_are_all_dense_says_its_losses_are_not_sized() -> None:
    """The training figures are a step of the dense part on the sum of its outputs; the note said that torchvision's
    own training step (its losses) is left out for R-CNN only, and for RetinaNet, FCOS and SSD nothing."""
    from types import SimpleNamespace

    from cnnlab.budget.render import detection_note

    transform = {"min_size": 320, "max_size": 320, "fixed_size": [320, 320], "size_divisible": 1}
    info = {"network": "SSD", "given_shape": [3, 64, 64], "resized_shape": [3, 320, 320], "transform": transform}
    note = detection_note(SimpleNamespace(detection=info | {"per_box_heads": []}, model_name="ssd", macs=5))
    assert note.endswith(
        "the MACs are one image's. The training figures are one step of the backbone and dense heads on the sum of "
        "their outputs; torchvision's own training step (targets, anchors matched to them, its losses) is not sized."
    )
