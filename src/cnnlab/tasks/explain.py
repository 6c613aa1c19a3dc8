"""`cnnlab explain`: load a model (MNIST, transfer or segmentation run, or pretrained zoo model), preprocess an
image the way the model expects, and write first-layer filters, feature maps and a Grad-CAM overlay
(`cnnlab.report.explain`).

Preprocessing follows the model, never a guess by the user:
- MNIST runs (``model.json`` or ``ensemble.json`` from `cnnlab train mnist`; an experiment's runs keep
  only weights, which `cnnlab explain` cannot rebuild a network from): grey, inverted when the background
  is light (MNIST digits are light on black), the ink's bounding box scaled to fit 20x20 and its centre of mass put at
  (14, 14) of 28x28, as MNIST itself was made; values in [0, 1] (the model normalises inside).
- transfer runs and pretrained models: the weights' record (`build_eval_transform`), through
  `cnnlab.tasks.predict.load_predictor`.
- a network named by code, as `cnnlab budget` takes one (``my_nets.py:build(width=32)``, ``MODULE:NAME``: a function
  that builds the network and loads the user's weights, called with literal arguments, or a module instance): the
  preprocessing its object declares (a ``pretrained_cfg``, cnnlab's record or timm's dict: the shorter side resized,
  a centre crop, mean/std; grey for a 1-channel record), else the one the user gives in full (`CodeInput`:
  ``--input CxHxW --mean M --std S``, the whole image resized to HxW, grey when C is 1, in [0, 1], less the mean, over
  the std), which also replaces a declared one (a network fine-tuned at another size keeps its pretrained record);
  neither is refused, never guessed. Class names are its ``classes`` (a list of strings, one per output), else those
  of a cnnlab record whose class count it has, else indices.
- segmentation runs (`cnnlab train segment --data`): the whole image at its own size, in [0, 1], less the run's
  mean, over its std, as `cnnlab predict` segments it. The scores are the shares of the pixels predicted as each
  class, the class explained is by default the largest one other than the background, and Grad-CAM weighs the
  decoder's stride-4 maps by the gradient of that class's logits over its pixels (`cnnlab.report.explain.grad_cam`).
- segmentation runs on the MNIST canvases (`cnnlab train segment` without --data), which predict refuses: the whole
  image grey, in [0, 1], at its own size, light digits on black as the canvases are, read as `cnnlab fcn scan` reads
  a page (`cnnlab.fcn.scan.scan_tensor`: the paper, told from the ink at the image's border, stretched to black and
  the ink to white, dark ink on light paper inverted, as MNIST runs' preparation does); explained as a segmentation
  run, the preprocessing said (`CANVAS_PREPROCESSING`), since the run records none for other images.

An ensemble (``ensemble.json``) is explained as the ensemble: its probabilities are its members' mean, its Grad-CAM the
mean of its members' for the ensemble's class (`cnnlab.report.explain.mean_grad_cam`); the filters and feature maps,
whose channels mean something else in each member, are its first member's, the titles saying so (explain a member's
own folder to see another).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError, listed
from cnnlab.files import check_writable
from cnnlab.layers.views import ViewAverage
from cnnlab.report.explain import (
    GradCam,
    LayerOutput,
    class_shares,
    default_cam_layer,
    default_feature_layers,
    feature_maps,
    grad_cam,
    layer_outputs,
    mean_grad_cam,
    plot_feature_maps,
    plot_filters,
    plot_grad_cam,
)


@dataclass
class Subject:
    """A model to explain with its preprocessing.

    A run that averages its logits over views (`cnnlab.layers.views.ViewAverage`) runs its network once per view:
    its layers' maps would be those of the last view (mirrored, for ``hflip``), so the filters, feature maps and
    Grad-CAM look inside the network on the image as given (`model`), and the class probabilities are the views'
    average (`classifier`), as `cnnlab predict` gives them.

    Attributes:
        model: eval-mode network returning logits, the one whose layers are shown.
        classes: class names in output order.
        preprocess: PIL image -> the model's input tensor [C, H, W].
        to_display: the input tensor -> [H, W, 3] in [0, 1] for plotting.
        source: what was loaded.
        kind: "mnist", "transfer", "pretrained", "segment" or "code" (a network named by code).
        classifier: what `cnnlab predict` runs (`model` with the run's views averaged); default `model`.
        views: the views `classifier` averages.
        background: a segmenter's background class, which is not explained unless asked for or alone.
        max_side: the longer side a segmenter trained with ``--max-side`` gets images downscaled to by `preprocess`,
            as `cnnlab predict` does; None: images as they are.
        members: an ensemble's members (`classifier` is the ensemble, `model` its first member, whose filters and
            feature maps are shown); empty for a single network.
        member_sources: the members' folders, in the same order.
        preprocessing: what `preprocess` does and where it comes from, for a network named by code or a run on the
            MNIST canvases ("" otherwise: a run's or the zoo's record is the model's own).
        resizes_whole: `preprocess` resizes the whole image to the input size (``--input``), so no aspect ratio is
            too thin for it (a record's shorter-side resize makes a thin image's longer side huge).
        channels_last: `probabilities` runs `classifier` in the channels-last memory format, as predict and evaluate
            run a run trained with ``--channels-last`` (`cnnlab.tasks.run_precision.run_channels_last`).
    """

    model: nn.Module
    classes: list[str]
    preprocess: Callable[[Any], torch.Tensor]
    to_display: Callable[[torch.Tensor], torch.Tensor]
    source: str
    kind: str
    classifier: nn.Module | None = None
    views: tuple[str, ...] = ("identity",)
    background: int | None = None
    max_side: int | None = None
    members: tuple[nn.Module, ...] = ()
    member_sources: tuple[str, ...] = ()
    preprocessing: str = ""
    resizes_whole: bool = False
    channels_last: bool = False

    @property
    def shown_member(self) -> str:
        """Whose filters and feature maps are shown, for titles: "" for a single network, else e.g.
        "member 0 of 2 (runs/mnist/E/seed0)"."""
        if not self.members:
            return ""
        return f"member 0 of {len(self.members)} ({self.member_sources[0]})"

    def grad_cam(self, tensor: torch.Tensor, layer: str | None = None, class_index: int | None = None) -> GradCam:
        """Grad-CAM of `class_index` for one input [C, H, W]: the network's, or an ensemble's members' averaged."""
        if self.members:
            return mean_grad_cam(self.members, tensor, class_index=class_index, layer=layer)
        return grad_cam(self.model, tensor, layer=layer, class_index=class_index)

    def probabilities(self, tensor: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class probabilities [K] (CPU) for one input [C, H, W], as `cnnlab predict` gives them; a segmenter's
        shares of the pixels predicted as each class, of its mask at `image_size` (height, width): the image as
        given, which a ``--max-side`` run sees downscaled and predict's mask upsamples back to (default: the
        input's)."""
        from cnnlab.train import Trainer

        classifier = self.classifier if self.classifier is not None else self.model
        device = str(next(classifier.parameters()).device)
        # predict's inference path, in the memory format of the run's test pass; NCHW otherwise, as predict's batches
        # are (a transform's tensor may be a channels-last view of the decoded image, which ran in that format)
        runner = Trainer.for_inference(classifier, device=device, batch_size=1, channels_last=self.channels_last)
        logits = runner.predict(tensor.unsqueeze(0).contiguous())
        if logits.ndim != 4:
            return logits.softmax(1)[0].cpu()
        if image_size is None or tuple(image_size) == tuple(logits.shape[-2:]):
            return class_shares(logits)
        from cnnlab.tasks.segment_predict import class_map

        labels = class_map(logits.cpu(), *image_size)  # predict's mask: the logits upsampled, then the argmax
        return torch.bincount(labels.flatten().long(), minlength=logits.shape[1]).float() / labels.numel()

    def class_name(self, index: int) -> str:
        return self.classes[index] if index < len(self.classes) else str(index)

    def top_classes(self, probabilities: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
        """The `k` highest scores with their class names, highest first; a segmenter's only where found."""
        values, indices = probabilities.topk(min(k, len(probabilities)))
        pairs = [(self.class_name(int(i)), float(v)) for v, i in zip(values, indices, strict=True)]
        return [pair for pair in pairs if self.kind != "segment" or pair[1] > 0]

    def check_size(self, image: Any, source: str | os.PathLike[str]) -> None:
        """Refuse an image too large for a segmenter's Grad-CAM (`SEGMENT_EXPLAIN_PIXELS`) at the size `preprocess`
        gives it, or too thin for a classifier's resize of its shorter side (`thin_image_reason`), naming `source`."""
        from cnnlab.data.folder import thin_image_reason
        from cnnlab.data.segmentation import downscaled_size

        crops = self.kind in ("transfer", "pretrained", "code") and not self.resizes_whole
        thin = thin_image_reason(image.width, image.height) if crops else None
        if thin is not None:
            raise CnnlabError(f"{source}: {thin}")
        width, height = downscaled_size(image.width, image.height, self.max_side)
        if self.kind == "segment" and width * height > SEGMENT_EXPLAIN_PIXELS:
            raise CnnlabError(
                f"{source}: {width}x{height} is above {SEGMENT_EXPLAIN_PIXELS / 2**20:.0f} MP; "
                "explaining a segmenter runs backward through the whole image, which takes gigabytes there: crop or "
                "downscale it (`cnnlab predict` segments it whole)"
            )

    def default_class(self, probabilities: torch.Tensor) -> int:
        """The class explained when none is asked for: the most probable, or a segmenter's largest class other
        than the background (the background when nothing else is found)."""
        if self.background is not None and float(probabilities.sum() - probabilities[self.background]) > 0:
            others = probabilities.clone()
            others[self.background] = -1.0
            return int(others.argmax())
        return int(probabilities.argmax())


def _grey_display(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[0].clamp(0, 1).unsqueeze(-1).expand(*tensor.shape[-2:], 3)


def load_subject(source: str, device: str | torch.device = "cpu") -> Subject:
    """An MNIST run or ensemble, a transfer run directory, or a zoo model name with pretrained weights.

    Raises:
        CnnlabError: nothing loadable at `source`.
    """
    from cnnlab.data.transforms import build_eval_transform
    from cnnlab.tasks.predict import load_predictor
    from cnnlab.tasks.segment_predict import is_segmentation_run
    from cnnlab.train.saved import Ensemble, ensemble_members, spec_path

    if is_segmentation_run(source):  # its folder, model.json or model.safetensors, as predict takes them
        return _segmenter_subject(source, device)
    if is_canvas_segmentation_run(source):  # predict refuses it (no record for other images): explained as canvases
        return _canvas_segmenter_subject(source, device)
    predictor = load_predictor(source, device=device)
    if predictor.cfg is None:  # an MNIST run or ensemble: [0, 1] grey 28x28 digits in, normalisation inside
        transform, classes = predictor.transform(), predictor.classes
        subject = Subject(predictor.model, classes, transform, _grey_display, str(source), "mnist",
                          channels_last=predictor.channels_last)  # fmt: skip
        if isinstance(predictor.model, Ensemble):  # its layers are members.K....: one member's maps, not a mix
            members = tuple(predictor.model.members)
            sources = tuple(str(folder) for folder in ensemble_members(spec_path(source)))
            subject = dataclasses.replace(subject, model=members[0], classifier=predictor.model, members=members,
                                          member_sources=sources)  # fmt: skip
        return subject
    mean = torch.tensor(predictor.cfg.mean).view(3, 1, 1)
    std = torch.tensor(predictor.cfg.std).view(3, 1, 1)

    def to_display(tensor: torch.Tensor) -> torch.Tensor:
        return (tensor.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0)

    kind = "pretrained" if not Path(source).exists() else "transfer"
    network = predictor.model.model if isinstance(predictor.model, ViewAverage) else predictor.model
    transform = build_eval_transform(predictor.cfg)
    classes, views = predictor.classes, predictor.views
    return Subject(network, classes, transform, to_display, str(source), kind, predictor.model, views,
                   channels_last=predictor.channels_last)  # fmt: skip


@dataclass(frozen=True)
class CodeInput:
    """The preprocessing a user gives a network named by code: ``--input CxHxW --mean M --std S`` as typed (each None
    when not given). The mean and std are one value, or one per channel, separated by commas."""

    size: str | None = None
    mean: str | None = None
    std: str | None = None

    @property
    def given(self) -> bool:
        return any(value is not None for value in (self.size, self.mean, self.std))


def is_code_target(source: str | os.PathLike[str]) -> bool:
    """Whether `source` names a network by code (``MODULE:NAME``, ``FILE.py:NAME(args)``) rather than a run folder."""
    from cnnlab.budget.python_model import is_python_target

    return not isinstance(source, os.PathLike) and is_python_target(str(source)) and not Path(source).exists()


def code_subject(source: str, given: CodeInput = CodeInput(), device: str | torch.device = "cpu") -> Subject:
    """A network named by code, built on the CPU (its function loads its weights) and put in eval mode, with the
    preprocessing it declares or `given` (see the module doc).

    Raises:
        CnnlabError: it cannot be built (`cnnlab.budget.python_model`), it declares no preprocessing and `given` is
            incomplete, or `given` cannot be read.
    """
    from cnnlab.budget.python_model import build_python_model
    from cnnlab.train.device import resolve_device

    network = build_python_model(source, on_meta=False)
    declared = _declared_cfg(network)
    if given.given:
        size, mean, std = _given_input(source, given)
        preprocess = _resized_whole(size, mean, std)
        note = f"{_described(size, mean, std)} (--input, --mean, --std" + (
            ", in place of its pretrained_cfg)" if declared is not None else ")"
        )
    elif declared is not None:
        from cnnlab.data.transforms import build_eval_transform, preprocessing_description

        size, mean, std = declared.input_size, declared.mean, declared.std
        transform = build_eval_transform(declared)
        mode = "L" if size[0] == 1 else "RGB"

        def preprocess(image: Any) -> torch.Tensor:
            return transform(image.convert(mode))

        note = f"{'grey, ' if size[0] == 1 else ''}{preprocessing_description(declared)} (its pretrained_cfg)"
    else:
        raise CnnlabError(
            f"{source} declares no preprocessing (no pretrained_cfg); give it as the network was trained: --input "
            "CxHxW --mean M --std S (e.g. --input 3x224x224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for "
            "ImageNet's; --mean 0 --std 1 for inputs in [0, 1])"
        )
    network = network.to(resolve_device(device)).eval()
    _check_runs(network, source, size)
    channels = size[0]
    shown_mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    shown_std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def to_display(tensor: torch.Tensor) -> torch.Tensor:
        shown = (tensor.cpu() * shown_std + shown_mean).clamp(0, 1)
        return shown.expand(3, *shown.shape[-2:]).permute(1, 2, 0) if channels == 1 else shown.permute(1, 2, 0)

    classes = _code_classes(network)
    return Subject(network, classes, preprocess, to_display, source, "code", preprocessing=note,
                   resizes_whole=given.given)  # fmt: skip


def _check_runs(network: nn.Module, source: str, size: tuple[int, ...]) -> None:
    """Run the user's network once on a blank input of `size` and refuse, on one line, what explain cannot use: a
    failure (an input size it was not built for: a traceback deep in its code) or an output other than logits (a
    dict, a tuple, a vector per image)."""
    shown = "x".join(map(str, size))
    try:
        with torch.inference_mode():
            output = network(torch.zeros(1, *size, device=next(network.parameters(), torch.zeros(())).device))
    except Exception as error:  # noqa: BLE001 - the user's own code: any failure is reported on one line
        first_line = next(iter(str(error).splitlines()), "")
        raise CnnlabError(
            f"{source} failed on a {shown} input: {type(error).__name__}: {first_line}; is that the size it was "
            "trained at (--input)?"
        ) from None
    if not isinstance(output, torch.Tensor) or output.ndim not in (2, 4):
        what = f"a {type(output).__name__}" if not isinstance(output, torch.Tensor) else f"{list(output.shape)}"
        raise CnnlabError(
            f"{source} returns {what} for a {shown} input, not logits [1, K] (a segmenter's [1, K, H, W]); make its "
            "forward return that tensor (a dict's logits: a small module that returns output['out'])"
        )


def _declared_cfg(network: nn.Module) -> Any:
    """The preprocessing record `network` carries as ``pretrained_cfg`` (cnnlab's `PretrainedCfg`, or timm's dict
    with its ``input_size``, ``mean``, ``std``, ``crop_pct`` and ``interpolation``; for RGB or, with one mean and one
    std, grey inputs) as a `PretrainedCfg`, else None."""
    from cnnlab.models import PretrainedCfg

    record = getattr(network, "pretrained_cfg", None)
    if isinstance(record, PretrainedCfg):
        return record
    if not isinstance(record, dict):
        return None
    try:
        channels, height, width = (int(n) for n in record["input_size"])
        mean, std = tuple(float(v) for v in record["mean"]), tuple(float(v) for v in record["std"])
        crop_pct = float(record.get("crop_pct") or 1.0)
    except (KeyError, TypeError, ValueError):
        return None
    if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
        return None  # a record for many-channel inputs, or one that disagrees with itself: given in full instead
    interpolation = record.get("interpolation") if record.get("interpolation") in ("bilinear", "bicubic") else "bicubic"
    return PretrainedCfg(source="pretrained_cfg", file_name="", input_size=(channels, height, width),
                         resize_size=round(min(height, width) / crop_pct), crop_pct=crop_pct, mean=mean, std=std,
                         interpolation=interpolation)  # fmt: skip


def _given_input(source: str, given: CodeInput) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """``--input``, ``--mean`` and ``--std`` read, each checked (all three are needed: half a preprocessing is a
    guess at the rest)."""
    from cnnlab.budget.spec import parse_size

    missing = [flag for flag, value in (("--input", given.size), ("--mean", given.mean), ("--std", given.std))
               if value is None]  # fmt: skip
    if missing:
        raise CnnlabError(f"{source}: give --input, --mean and --std together (missing {', '.join(missing)}): the "
                          "preprocessing the network was trained with, in full")  # fmt: skip
    size = parse_size(str(given.size), "--input")
    if len(size) != 3 or size[0] not in (1, 3):
        raise CnnlabError(f"--input {given.size!r} must be CxHxW with C 1 (grey) or 3 (RGB), e.g. 3x224x224")
    channels = size[0]

    def values(flag: str, text: str) -> tuple[float, ...]:
        try:
            numbers = tuple(float(part) for part in text.replace(" ", "").split(",") if part)
        except ValueError:
            numbers = ()
        # nan or inf passed float() and made every probability nan ("explained class '0' (nan%)")
        finite = all(math.isfinite(n) for n in numbers)
        if len(numbers) not in (1, channels) or not finite or (flag == "--std" and any(n <= 0 for n in numbers)):
            what = "finite positive number" if flag == "--std" else "finite number"
            count = f"one {what}" if channels == 1 else f"1 or {channels} {what}s separated by commas"
            raise CnnlabError(f"{flag} {text!r} must be {count} (--input has {channels} channel"
                              f"{'s' if channels > 1 else ''})")  # fmt: skip
        return numbers * channels if len(numbers) == 1 else numbers

    return (channels, size[1], size[2]), values("--mean", str(given.mean)), values("--std", str(given.std))


def _resized_whole(
    size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...]
) -> Callable[[Any], torch.Tensor]:
    from torchvision.transforms import v2

    from cnnlab.data.transforms import RESIZE_ANTIALIAS

    transform = v2.Compose([
        v2.ToImage(),
        v2.Resize(size[1:], antialias=RESIZE_ANTIALIAS),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])  # fmt: skip
    mode = "L" if size[0] == 1 else "RGB"
    return lambda image: transform(image.convert(mode))


def _described(size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    grey = "grey, " if size[0] == 1 else ""
    numbers = ", ".join(f"{v:g}" for v in mean), ", ".join(f"{v:g}" for v in std)
    return (
        f"{grey}the whole image resized to {size[1]}x{size[2]} (bilinear, antialiased), scaled to [0, 1], normalised "
        f"mean ({numbers[0]}) std ({numbers[1]})"
    )


def _code_classes(network: nn.Module) -> list[str]:
    """The class names a network named by code declares: its ``classes``, else its cnnlab record's categories when it
    has that many classes, else none (indices are shown)."""
    from cnnlab.models import PretrainedCfg

    classes = getattr(network, "classes", None)
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(name, str) for name in classes):
        return list(classes)
    cfg = getattr(network, "pretrained_cfg", None)
    if isinstance(cfg, PretrainedCfg) and getattr(network, "num_classes", None) == cfg.num_classes:
        with contextlib.suppress(CnnlabError):
            return list(cfg.categories)
    return []


def _segmenter_subject(source: str, device: str | torch.device) -> Subject:
    """A segmentation run: whole images in [0, 1], downscaled to the run's ``--max-side`` if it has one and normalised
    by its record, as `cnnlab predict` runs them (a --max-side run was explained at a scale it never saw)."""
    from torchvision.transforms.v2 import functional as TF

    from cnnlab.data.segmentation import downscale
    from cnnlab.tasks.segment_predict import load_segmenter

    segmenter = load_segmenter(source, device)
    mean, std = list(segmenter.mean), list(segmenter.std)

    def preprocess(image: Any) -> torch.Tensor:
        pixels = TF.to_dtype(TF.pil_to_tensor(downscale(image, segmenter.max_side)), torch.float32, scale=True)
        return TF.normalize(pixels, mean, std)

    def to_display(tensor: torch.Tensor) -> torch.Tensor:
        shown = tensor.cpu() * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        return shown.clamp(0, 1).permute(1, 2, 0)

    model, classes = segmenter.model, segmenter.classes
    background, max_side = segmenter.background, segmenter.max_side
    return Subject(model, classes, preprocess, to_display, source, "segment", background=background, max_side=max_side,
                   channels_last=segmenter.channels_last)  # fmt: skip


def is_canvas_segmentation_run(source: str | os.PathLike[str]) -> bool:
    """Whether `source` is a segmentation run on the MNIST canvases (`cnnlab train segment` without --data), which
    `load_subject` explains though predict refuses it (`cnnlab.tasks.segment_predict.is_segmentation_run` is the
    --data kind)."""
    from cnnlab.train.saved import DIGIT_SEGMENTER, model_kind, saved_meta

    try:
        return model_kind(saved_meta(source)) == DIGIT_SEGMENTER
    except CnnlabError:  # not a saved run: a zoo name, or what load_predictor then explains
        return False


# What `cnnlab explain` prints of a canvas run's preprocessing, which the run does not record (only "float images in
# [0, 1], shape [N, 1, H, W]"): the canvases' own convention, with MNIST's paper and ink for a photo of a page.
CANVAS_PREPROCESSING = (
    "grey, in [0, 1], at its own size, as the run's MNIST canvases (light digits on black; the paper, told from the "
    "ink at the image's border, stretched to black and the ink to white, dark ink on light paper inverted, as "
    "`cnnlab fcn scan` reads a page)"
)


def _canvas_segmenter_subject(source: str, device: str | torch.device) -> Subject:
    """A segmentation run on the MNIST canvases: the whole image grey, in [0, 1], at its own size, light digits on
    black as the canvases are (`cnnlab.fcn.scan.scan_tensor`: a photo's paper stretched to black and its ink to white,
    dark ink on light paper inverted, as MNIST's preparation does); class 0, the background, is explained only when
    asked for or alone."""
    from cnnlab.fcn.scan import scan_tensor
    from cnnlab.tasks.run_precision import run_channels_last
    from cnnlab.train.saved import load_model, saved_meta, spec_path

    model = load_model(source, device=device)
    classes = [str(name) for name in saved_meta(source)["classes"]]

    def preprocess(image: Any) -> torch.Tensor:
        return scan_tensor(image)  # 1 x H x W, as `cnnlab fcn scan` and the export's record read a page

    return Subject(model, classes, preprocess, _grey_display, source, "segment", background=0,
                   preprocessing=CANVAS_PREPROCESSING,
                   channels_last=run_channels_last(spec_path(source).parent))  # fmt: skip


# Explaining a segmenter runs backward through the whole image at full resolution, as training does: above this many
# pixels that takes gigabytes (`cnnlab predict` segments larger images without gradients).
SEGMENT_EXPLAIN_PIXELS = 4 * 2**20


def class_of(classes: Sequence[str], wanted: int | str | None) -> int | None:
    """The index of the class `wanted` names: a class name first, so a run whose classes are named by numbers means
    its names, else an index. A name matches as written, else in any case when that names one class only (ImageNet's
    "Cardigan", the corgi, and "cardigan", the jumper).

    Raises:
        CnnlabError: a name that several classes match in another case, an index outside the classes, or neither a
            class name nor an index (naming close class names and listing some).
    """
    if wanted is None:
        return None
    if isinstance(wanted, str):
        text = wanted.strip()
        if text in classes:
            return list(classes).index(text)
        folded = [index for index, name in enumerate(classes) if name.casefold() == text.casefold()]
        if len(folded) > 1:
            named = ", ".join(f"{classes[index]!r} ({index})" for index in folded)
            raise CnnlabError(f"--class {wanted!r} matches {len(folded)} classes in another case: {named}; write the "
                              "name as the class has it, or give its index")  # fmt: skip
        if folded:
            return folded[0]
        if not text.lstrip("-").isdigit() and not classes:
            raise CnnlabError(f"--class {wanted!r}: the model names no classes; give the class's index")
        if not text.lstrip("-").isdigit():
            spelled = {name.casefold(): name for name in reversed(classes)}  # each folded name as its first class
            close = difflib.get_close_matches(text.casefold(), list(spelled), n=3, cutoff=0.6)
            guess = [repr(spelled[name]) for name in close]  # closest first
            hint = f"did you mean {' or '.join(guess)}? " if guess else ""
            shown = listed([repr(name) for name in classes], 10)
            raise CnnlabError(
                f"--class {wanted!r} is neither a class name nor an index; {hint}the model's classes are {shown}"
            )
        wanted = int(text)
    if classes and not 0 <= wanted < len(classes):
        raise CnnlabError(
            f"--class {wanted} is not a class index: the model has {len(classes)} classes, indices 0 to "
            f"{len(classes) - 1}"
        )
    return wanted


@dataclass
class Explanation:
    """What `explain_image` wrote and found: the class explained and the top classes with the probabilities
    `cnnlab predict` gives (over the run's `views`); the maps are of the image as given."""

    label: str
    class_index: int
    probability: float
    top: list[tuple[str, float]]
    cam_layer: str
    feature_layers: list[str]
    files: dict[str, Path] = field(default_factory=dict)
    views: tuple[str, ...] = ("identity",)
    scores: str = "probability"  # what `probability` and `top` hold: "probability", or a segmenter's "pixel share"
    shown_member: str = ""  # an ensemble's member whose filters and feature maps are shown (see `Subject`)
    preprocessing: str = ""  # a network named by code: what was done to the image, and from where (see `Subject`)


def _prepared(
    source: str,
    image_path: str | os.PathLike[str],
    device: str,
    output_dir: Path | None = None,
    given: CodeInput = CodeInput(),
) -> tuple[Subject, Any, torch.Tensor]:
    """The subject (`load_subject`'s, or `code_subject`'s for a network named by code), the image (8-bit RGB, EXIF
    orientation applied) and its input tensor [C, H, W]; an `output_dir` that cannot be written is refused before the
    model loads."""
    code = is_code_target(source)
    if given.given and not code:
        raise CnnlabError(
            f"--input, --mean and --std are for a network named by code (FILE.py:NAME, MODULE:NAME); {source} "
            "is preprocessed as its own record says"
        )
    from cnnlab.data.folder import decode_image, to_rgb, with_remedy

    if Path(image_path).is_dir():
        raise CnnlabError(_folder_message(image_path))
    # decoded once, as the lab's upload is: checking it and then loading it decoded it twice (0.75 s more at 54 MP)
    decoded, _, reason = decode_image(image_path)
    if decoded is None:
        raise CnnlabError(f"{image_path}: {with_remedy(reason, 'pass a readable image file (PNG, JPEG, ...)')}")
    if output_dir is not None:  # an --output onto a file was an OSError once the model had loaded (exit code 1)
        check_writable(output_dir / "gradcam.png", shown=str(output_dir))
    subject = code_subject(source, given, device) if code else load_subject(source, device)
    image = to_rgb(decoded)  # as load_image gives it: EXIF orientation applied, 8-bit RGB
    del decoded
    subject.check_size(image, image_path)
    return subject, image, subject.preprocess(image).float()


def default_output_dir(
    source: str, image_path: str | os.PathLike[str], root: str | os.PathLike[str] = "runs/explain"
) -> Path:
    """Where `cnnlab explain` writes when no ``--output`` is given: ``root/<model>-<image stem>``, one folder per model
    and image, so that explaining a second image (or model) no longer replaces the first one's figures.

    The model is named by its run folder (an ensemble member's with its ensemble's: ``E-seed1``), its zoo name, or the
    code target with anything but letters, digits, ``.``, ``_`` and ``-`` made a ``-``."""
    path = Path(source)
    if not is_code_target(source) and path.is_dir():
        path = path.resolve()
        parent = path.parent
        member = (parent / "ensemble.json").is_file() or (parent / "model.json").is_file()
        model = f"{parent.name}-{path.name}" if member else path.name
    else:
        model = source
    parts = (re.sub(r"[^\w.-]+", "-", part).strip("-.") for part in (model, Path(image_path).stem))
    return Path(root) / ("-".join(part for part in parts if part) or "explain")


def _folder_message(folder: str | os.PathLike[str]) -> str:
    """Why a folder given as the image is refused, naming an image in it to pass: the figures explain one image's
    evidence (`cnnlab predict` classifies a folder)."""
    from cnnlab.data.folder import IMAGE_EXTENSIONS

    try:
        first = min((entry for entry in os.scandir(folder) if entry.name.lower().endswith(IMAGE_EXTENSIONS)
                     and entry.is_file() and not entry.name.startswith(".")), key=lambda entry: entry.name)  # fmt: skip
        example = f", such as {Path(folder) / first.name}"
    except (OSError, ValueError):  # unreadable, or no image directly in it
        example = ""
    return (
        f"{folder} is a folder; explain takes one image file{example} (its figures are of one image; `cnnlab "
        "predict` takes a folder)"
    )


@dataclass
class LayerListing:
    """The layers `cnnlab explain --list-layers` prints: every module with its output on the image (an ensemble's:
    its first member's, `shown_member`), and the layers explain shows when none is named."""

    layers: list[LayerOutput]
    input_shape: tuple[int, ...]
    feature_layers: list[str]
    cam_layer: str
    shown_member: str = ""
    named_feature_layers: bool = False  # feature_layers are the ones asked for (--layer), not the default ones
    named_cam_layer: bool = False  # cam_layer is the one asked for (--cam-layer)
    unknown: list[str] = field(default_factory=list)  # a line for each name asked for that the model lacks


def list_layers(
    source: str,
    image_path: str | os.PathLike[str],
    device: str = "cpu",
    given: CodeInput = CodeInput(),
    layers: Sequence[str] = (),
    cam_layer: str | None = None,
) -> LayerListing:
    """Every layer of `source`'s network as it runs on `image_path` (what ``--layer`` and ``--cam-layer`` take), with
    the feature layers and Grad-CAM layer explain would show: `layers` and `cam_layer` where named (a name the model
    lacks gets a line in `unknown`, with the closest names), else the defaults; nothing is written. `given`: as
    `explain_image`'s."""
    subject, _, tensor = _prepared(source, image_path, device, given=given)
    outputs = layer_outputs(subject.model, tensor)
    known = [layer.name for layer in outputs]
    unknown = []  # listed after the layers, which are the names to pick from, rather than refused before them
    for name in dict.fromkeys([*layers, *([cam_layer] if cam_layer is not None else [])]):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            unknown.append(f"the model has no layer {name!r}" + (f" (closest: {', '.join(close)})" if close else ""))
    mapped = any(layer.maps for layer in outputs)
    chosen = list(dict.fromkeys(layers)) or (default_feature_layers(subject.model, tensor) if mapped else [])
    cam = cam_layer if cam_layer is not None else default_cam_layer(subject.model, tensor) if mapped else ""
    return LayerListing(
        outputs, tuple(tensor.shape), chosen, cam, subject.shown_member, bool(layers), cam_layer is not None, unknown
    )


def explain_image(
    source: str,
    image_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    layers: Sequence[str] = (),
    cam_layer: str | None = None,
    class_index: int | str | None = None,
    device: str = "cpu",
    given: CodeInput = CodeInput(),
) -> Explanation:
    """Write ``filters.png``, ``feature_maps.png`` and ``gradcam.png`` for `image_path` into `output_dir`.

    Args:
        source: run directory or pretrained model name (see `load_subject`), or a network named by code
            (``my_nets.py:build(width=32)``, ``MODULE:NAME``; see `code_subject`).
        image_path: the image file.
        output_dir: created if missing.
        layers: modules whose feature maps to show, each once (default: three spread from shallow to deep); of an
            ensemble, named within its first member, whose maps are shown.
        cam_layer: module for Grad-CAM (default: the deepest spatial map); of an ensemble, named within each member.
        class_index: class to explain, by index or by name (see `class_of`; default: the predicted one).
        device: where to run.
        given: the preprocessing of a network named by code, where it declares none or another (see `code_subject`).
    """
    output_dir = Path(output_dir)
    subject, image, tensor = _prepared(source, image_path, device, output_dir, given)
    wanted = class_of(subject.classes, class_index)  # a class that is none of the model's: refused before the work
    files: dict[str, Path] = {}
    with contextlib.suppress(CnnlabError):  # a network without convolutions has no filters; Grad-CAM says why
        files["filters"] = plot_filters(subject.model, output_dir / "filters.png", of=subject.shown_member,
                                        image=tensor)  # fmt: skip
    # each layer once: `--layer X --layer X` printed "feature maps of: X, X" where the figure has one row of X
    chosen = list(dict.fromkeys(layers)) or default_feature_layers(subject.model, tensor)
    maps = feature_maps(subject.model, tensor, chosen)
    files["feature_maps"] = plot_feature_maps(maps, output_dir / "feature_maps.png", of=subject.shown_member)
    probabilities = subject.probabilities(tensor, (image.height, image.width))  # a mask's shares: the image's size
    wanted = subject.default_class(probabilities) if wanted is None else wanted  # predict's class, views averaged
    cam = subject.grad_cam(tensor, layer=cam_layer, class_index=wanted)  # an ensemble's: its members' averaged
    cam = dataclasses.replace(cam, probability=float(probabilities[cam.class_index]))
    label = subject.class_name(cam.class_index)
    segmenter = subject.kind == "segment"
    top_class = subject.default_class(probabilities)
    predicted = (
        None if cam.class_index == top_class else (subject.class_name(top_class), float(probabilities[top_class]))
    )
    display = subject.to_display(tensor)
    files["gradcam"] = plot_grad_cam(display, cam, label, output_dir / "gradcam.png", segmenter, predicted)
    top = subject.top_classes(probabilities)
    scores = "pixel share" if segmenter else "probability"
    return Explanation(
        label, cam.class_index, cam.probability, top, cam.where, chosen, files, subject.views, scores,
        subject.shown_member, subject.preprocessing,
    )  # fmt: skip
