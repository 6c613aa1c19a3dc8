"""Export a fine-tuned run (or a pretrained zoo model) to TorchScript, ONNX or torch.export's ExportedProgram.

The exported graph takes float RGB images in [0, 1], [N, 3, H, W] at the record's crop size (its ``input_shape``: any
batch size, the height and width fixed), and does the normalisation itself (mean/std are inside), so a deployment only
has to decode, resize and crop. How cnnlab decodes a file (EXIF orientation, transparency, 16-bit), those two geometric
steps, the class names and the full record are written beside it in ``<file>.preprocessing.json``. A segmentation run
(`cnnlab train segment --data`) exports with dynamic height and width: whole images of any size in, logits of the same
size out, checked at two sizes other than the traced one; a run trained with ``--max-side`` records in its ``resize``
entry how `cnnlab predict` downscales each image before the graph and brings the logits back to the image's size after
it.

``pt2`` is torch.export's ExportedProgram (``torch.export.load(path).module()``), the path torch 2.14 names as the
successor of the deprecated TorchScript tracer. It exports classifiers with a dynamic batch, and segmenters with a
dynamic batch, height and width above the network's stride (17 px for the U-Net, 33 for the Lite0 ones: a smaller
side would leave a 1-pixel bottleneck, which the export specialises away). The segmenters' padding to their stride
is written so that torch.export can prove its sizes, and the size checks it cannot prove symbolically (a padding
is never negative) are kept as runtime checks in the program (``prefer_deferred_runtime_asserts_over_guards``).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.data.mnist import INVERT_ABOVE_MEAN, MNIST_CLASSES, mnist_preparation_record
from cnnlab.data.transforms import RESIZE_ANTIALIAS, resize_description
from cnnlab.errors import CnnlabError
from cnnlab.files import check_writable
from cnnlab.layers.normalize import Normalize
from cnnlab.tasks.predict import Predictor, load_predictor
from cnnlab.train.saved import (
    DIGIT_CLASSIFIER,
    DIGIT_SCANNER,
    DIGIT_SEGMENTER,
    EXPORT_LAYOUT,
    EXPORT_RECORD_SUFFIX,
    IMAGE_CLASSIFIER,
    SEGMENTER,
    Ensemble,
    saved_meta,
)

__all__ = ["DEFAULT_OPSET", "EXPORT_FORMATS", "ONNX_OPSETS", "export_model"]

SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx", "pt2": ".pt2"}
EXPORT_FORMATS = tuple(SUFFIXES)
# 11 is the first opset whose Pad and Resize take sizes computed from the input, which every cnnlab network needs (the
# segmenters pad to their stride, EfficientNet pads like TensorFlow); 20 is the last the TorchScript-based exporter
# supports.
ONNX_OPSETS = range(11, 21)
DEFAULT_OPSET = 17
# How cnnlab decodes an image file before any resizing (`data.folder.load_image`), written beside every export: the
# record said nothing of it, and a deployment's plain Image.open(path).convert("RGB") gave a phone photo turned on its
# side, a transparent PNG its hidden colours and a 16-bit scan all white, so other probabilities than `cnnlab predict`.
# How it scales 16- and 32-bit grey is said exactly: "scaled to 8 bits" left a 12-bit scan (values up to 4095 in a
# 16-bit PNG) to be divided by 256, a near-black image, where cnnlab stretches it from its own range.
DECODE = (
    "decode the file as cnnlab.data.folder.load_image does: its EXIF orientation applied (ImageOps.exif_transpose), "
    "transparency (RGBA, LA, PA, a palette's or an RGB or grey PNG's transparent colour, of any bit depth, matched as"
    " its pixels decode to 8 bits) composited on white, 16- and 32-bit grey scaled to 8 bits (not clipped): v -> "
    "rint((v - low) / (high - low) * 255), its transparent pixels left out, with low, high = 0, 65535 for 16-bit "
    "(I;16) images whose largest value is above 4095, else the image's own smallest and largest values (12-bit "
    "sensors in 16-bit files, and 32-bit I and F images: of their finite values, NaN and -inf taken as the smallest, "
    "+inf as the largest), then RGB (PIL Image.convert('RGB'))"
)
LOADERS = {  # how a deployment loads each format (written beside the file)
    "torchscript": "torch.jit.load(path)",
    "onnx": "onnxruntime.InferenceSession(path), input name 'images'",
    "pt2": "torch.export.load(path).module()",
}


def export_format(fmt: str | None, output: str | os.PathLike[str] | None) -> str:
    """The format to write: ``fmt`` if given, else the one ``output``'s suffix names, else (no output) torchscript.

    Raises:
        CnnlabError: an unknown format; a format other than the one the output's suffix names (``-o m.onnx``
            with ``--format pt2`` would write a file every ONNX tool then fails to read); or, without ``fmt``, an
            output whose suffix names no format (``-o x.txt``: what it should hold is not said).
    """
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise CnnlabError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    named = {suffix: name for name, suffix in SUFFIXES.items()}.get(Path(output).suffix.lower()) if output else None
    if fmt is None:
        if output is not None and Path(output).is_dir():  # was "names no export format", a file name's fault
            _refuse_folder(Path(output), SUFFIXES["torchscript"])
        if output is not None and named is None:  # `-o x.txt` wrote a TorchScript zip under a text file's name
            raise CnnlabError(
                f"--output {output} names no export format: end the file name in "
                f"{', '.join(f'{suffix} ({name})' for name, suffix in SUFFIXES.items())}, or give --format to write "
                "that format under this name"
            )
        return named or "torchscript"
    if named is not None and named != fmt:
        raise CnnlabError(
            f"--output {output} names a {named} file but --format is {fmt}: end the file name in {SUFFIXES[fmt]}, "
            f"or leave out --format to write {named}"
        )
    return fmt


def export_model(
    model: str,
    fmt: str | None = None,
    output: str | os.PathLike[str] | None = None,
    opset: int | None = None,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``model`` (a run directory or a pretrained zoo model name) and check the export against eager PyTorch.

    Args:
        model: what `cnnlab.tasks.predict.load_predictor` accepts.
        fmt: ``torchscript`` (``.pt``, traced), ``onnx`` (``.onnx``) or ``pt2`` (``.pt2``, torch.export); the
            batch dimension is dynamic in each. None: the one ``output``'s suffix names, else torchscript.
        output: the file to write; default ``<run dir>/model<suffix>``, the run given as its folder or its
            ``model.json`` / ``model.safetensors`` (``./<name><suffix>`` for a zoo model).
        opset: ONNX opset, one of `ONNX_OPSETS` (None: `DEFAULT_OPSET`); refused for the other formats, which
            have no opset.
        log: called with a line saying what is written, once the options and the model are checked (tracing and
            checking a large network takes a while).
        overwrite: replace a file at ``output`` that no export wrote (without it, one is refused).

    Returns:
        Paths written and the largest absolute difference from the eager model on random batches of sizes the
        export did not see (1 and 3; a segmenter's and a converted network's at sizes it was not traced at too).
    """
    fmt = export_format(fmt, output)
    if opset is not None and fmt != "onnx":  # it was accepted and ignored
        raise CnnlabError(f"--opset {opset} applies to ONNX only: leave it out for --format {fmt}, or export onnx")
    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in ONNX_OPSETS:  # before a model is loaded or a weight downloaded
        raise CnnlabError(
            f"--opset {opset}: cnnlab exports ONNX opsets {ONNX_OPSETS.start} to {ONNX_OPSETS.stop - 1} (below 11, "
            "padding and resizing to the input's size cannot be written; 20 is the exporter's last)"
        )
    if fmt == "onnx":
        _check_onnx_packages()
    from cnnlab.tasks.segment_predict import is_segmentation_run

    if is_segmentation_run(model):
        return _export_segmenter(model, fmt, output, opset, log, overwrite)
    from cnnlab.fcn.scan import is_converted

    if is_converted(model):  # predict's refusal ("pass the run it was converted from") was all export said of it
        return _export_converted(model, fmt, output, opset, log, overwrite)
    if _is_canvas_run(model):
        return _export_segmenter(model, fmt, output, opset, log, overwrite)
    predictor = load_predictor(model)
    cfg = predictor.cfg
    suffix = SUFFIXES[fmt]
    output = _writable(Path(output) if output is not None else _default_output(model, suffix), suffix, overwrite)
    _say_exporting(log, model, output, fmt)
    if cfg is None:  # an MNIST run: digits in [0, 1], its normalisation already inside the model
        wrapped: nn.Module = predictor.model.cpu().eval()
        input_size: tuple[int, ...] = (1, 28, 28)
        preparation: dict[str, Any] = {
            "input": "float32 grey [N, 1, 28, 28] in [0, 1]: any batch size N, height and width fixed at 28x28; "
            "normalisation is inside the exported model",
            "prepare": "one light digit on black (dark ink on light paper inverted, the paper stretched to 0 and the "
            "ink to 1), its ink's bounding box scaled to fit 20x20 and its centre of mass put at pixel (14, 14) of "
            "28x28, as MNIST's digits are (cnnlab.data.mnist.mnist_preprocess; `prepare_steps` gives each step "
            "exactly)",
            "prepare_steps": mnist_preparation_record(),
        }
    else:  # the normalisation travels inside the exported graph: it takes float RGB in [0, 1]
        wrapped = nn.Sequential(Normalize(cfg.mean, cfg.std), predictor.model.cpu().eval()).eval()
        input_size = cfg.input_size
        height, width = input_size[1:]
        # it said [N, 3, H, W], as if any size went, where the ONNX and pt2 files take the crop's size alone and a
        # traced network that flattens its maps fails at any other: the size predict crops to is the file's
        preparation = {
            "input": f"float32 RGB [N, 3, {height}, {width}] in [0, 1]: any batch size N, height and width fixed at "
            "`center_crop`; mean/std normalisation is inside the exported model",
            "resize_shorter_side_to": cfg.resize_size,
            "interpolation": cfg.interpolation,
            "antialias": RESIZE_ANTIALIAS,  # plain bicubic gives other probabilities (data.transforms)
            "resize": resize_description(cfg),
            "center_crop": list(cfg.input_size[1:]),
        }
    example = torch.rand(2, *input_size)
    # batch sizes the export never saw: the batch dimension must stay dynamic. Batch 3 alone let through a graph that
    # differs at batch 1 (a branch on the batch size, frozen by the trace at 2), the size a server sends most.
    checks = [torch.rand(1, *input_size), torch.rand(3, *input_size)]
    with torch.inference_mode():
        expected = [wrapped(check) for check in checks]
    partial = _partial(output)
    # torch 2.14 marks torch.jit and the TorchScript-based ONNX exporter deprecated; both still work and need no
    # extra package (the dynamo exporter needs onnxscript), and the export is checked against eager PyTorch below.
    with _removed_unless_published(partial), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(wrapped, example)
            traced.save(str(partial))
            exported: Callable[[torch.Tensor], torch.Tensor] = torch.jit.load(str(partial))
        elif fmt == "pt2":
            exported = _export_program(wrapped, example, partial)
        else:
            exported = _export_onnx(wrapped, example, partial, opset)
        with torch.inference_mode():
            actual = [exported(check) for check in checks]
        max_difference = _faithful_difference(output, list(zip(actual, expected, strict=True)))
        record = {
            "layout": EXPORT_LAYOUT,
            "kind": DIGIT_CLASSIFIER if cfg is None else IMAGE_CLASSIFIER,
            "format": fmt,
            "load": LOADERS[fmt],
            "decode": DECODE,
            "input_shape": ["N", *input_size],  # "N": any batch size
            **preparation,
            "output": _classifier_output(predictor),
            "classes": predictor.classes,
            "views": list(predictor.views),
            "normalisation": _normalisation_inside(wrapped) if cfg is None else {"mean": cfg.mean, "std": cfg.std},
            **({"record": {k: v for k, v in vars(cfg).items() if k != "key_map"}} if cfg is not None else {}),
            "max_abs_difference_vs_eager": max_difference,
        }
        sidecar = _publish(partial, output, json.dumps(record, indent=1, default=list))
    summary = "grey 28x28 digits in [0, 1]" if cfg is None else f"RGB {input_size[1]}x{input_size[2]} in [0, 1]"
    return {
        "model": str(output),
        "format": fmt,
        "preprocessing": str(sidecar),
        "max_abs_difference": max_difference,
        "input": f"{summary}, normalisation inside",
    }


def _is_canvas_run(model: str) -> bool:
    """Whether `model` is a `cnnlab train segment` run on the MNIST canvases (without ``--data``)."""
    try:
        return saved_meta(model).get("kind") == DIGIT_SEGMENTER
    except CnnlabError:  # not a saved run: a zoo name, or what load_predictor then explains
        return False


def _normalisation_inside(model: nn.Module) -> dict[str, list[float]] | None:
    """The mean and std an MNIST network (or ensemble: its first member's, which all share) normalises its input with,
    as written (0.1307, not float32's 0.13069999...)."""
    normalize = next((module for module in model.modules() if isinstance(module, Normalize)), None)
    if normalize is None:  # a network that takes its input as it is
        return None
    return {
        name: [float(f"{value:.7g}") for value in getattr(normalize, name).flatten().tolist()]
        for name in ("mean", "std")
    }


def _classifier_output(predictor: Predictor) -> str:
    """What an exported classifier returns, for its record: said "logits averaged over views" of every model, where an
    ensemble returns the log of its members' mean probabilities, and did not say the views' logits (not their
    probabilities) are averaged."""
    if isinstance(predictor.model, Ensemble):
        return (
            f"[N, {len(predictor.classes)}] log of the mean of the {len(predictor.model.members)} members' softmax "
            "probabilities (each at least 1e-12), inside the model; softmax of it gives back those mean probabilities"
        )
    views = list(predictor.views)
    averaged = (
        f"the mean of the network's logits over the {len(views)} `views` of the image, each view applied inside the "
        "model (give it the image alone; the logits are averaged, not the probabilities)"
        if len(views) > 1
        else "logits"
    )
    return f"[N, {len(predictor.classes)}] {averaged}; softmax over them gives the class probabilities"


def _say_exporting(log: Callable[[str], None] | None, model: str, output: Path, fmt: str) -> None:
    if log is not None:
        log(f"exporting {model} to {output} ({fmt}), then checking it against PyTorch")


def _export_segmenter(
    run: str,
    fmt: str,
    output: str | os.PathLike[str] | None,
    opset: int,
    log: Callable[[str], None] | None,
    overwrite: bool,
) -> dict[str, Any]:
    """Export a segmentation run (`train segment --data`, or on the MNIST canvases) with dynamic height and width; the
    check runs sizes the trace never saw."""
    from cnnlab.tasks.segment_predict import is_segmentation_run, load_segmenter
    from cnnlab.train.saved import load_model

    segmenter = load_segmenter(run) if is_segmentation_run(run) else None
    if segmenter is not None:
        network = nn.Sequential(Normalize(segmenter.mean, segmenter.std), segmenter.model.cpu().eval()).eval()
        stride, channels = int(segmenter.model.output_stride), 3
    else:  # a canvas run: its network takes the canvases' grey in [0, 1] as it is (no normalisation recorded)
        network = load_model(run).cpu().eval()
        stride, channels = int(network.output_stride), 1
    suffix = SUFFIXES[fmt]
    output = _writable(Path(output) if output is not None else _default_output(run, suffix), suffix, overwrite)
    _say_exporting(log, run, output, fmt)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(1, channels, 64, 64, generator=generator)
    checks = [
        torch.rand(2, channels, 45, 71, generator=generator),
        torch.rand(1, channels, 96, 33, generator=generator),
    ]
    if fmt == "pt2":  # traced where both sides need padding, checked where neither does and at the smallest side
        example = torch.rand(2, channels, 3 * stride - 3, 4 * stride + 5, generator=generator)
        checks += [torch.rand(1, channels, 2 * stride, 3 * stride, generator=generator)]
        checks += [torch.rand(1, channels, stride + 1, 50, generator=generator)]
    partial = _partial(output)
    with _removed_unless_published(partial), warnings.catch_warnings():  # see export_model
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        exported = _export_any_size(network, fmt, example, partial, opset, (stride + 1, stride + 1))
        with torch.inference_mode():
            pairs = [(exported(x), network(x)) for x in checks]
        max_difference = _faithful_difference(output, pairs)
        sides = "any batch size N, " + (f"H and W of at least {stride + 1}" if fmt == "pt2" else "any H and W")
        record = {
            "layout": EXPORT_LAYOUT,
            "kind": SEGMENTER if segmenter is not None else DIGIT_SEGMENTER,
            "format": fmt,
            "load": LOADERS[fmt],
            "decode": DECODE,
            "input_shape": ["N", channels, "H", "W"],  # strings: any size (`input` says a pt2 file's least H and W)
            **(_folder_segmenter_fields(segmenter, sides) if segmenter is not None else _canvas_fields(run, sides)),
            "checked_sizes": [list(x.shape) for x in checks],
            "max_abs_difference_vs_eager": max_difference,
        }
        sidecar = _publish(partial, output, json.dumps(record, indent=1))
    shown = "RGB in [0, 1], {}, normalisation inside" if segmenter is not None else "grey digits in [0, 1], {}"
    return {
        "model": str(output),
        "format": fmt,
        "preprocessing": str(sidecar),
        "max_abs_difference": max_difference,
        "input": shown.format(sides),
    }


def _folder_segmenter_fields(segmenter: Any, sides: str) -> dict[str, Any]:
    """The record's fields of a `train segment --data` run (a `cnnlab.tasks.segment_predict.Segmenter`)."""
    return {
        "input": f"float32 RGB [N, 3, H, W] in [0, 1], {sides}; mean/std normalisation is inside the exported model",
        "max_side": segmenter.max_side,
        "resize": _segmenter_resize(segmenter.max_side),
        "output": "logits [N, classes, H, W]; argmax over classes gives the mask",
        "classes": segmenter.classes,
        "views": ["identity"],
        "normalisation": {"mean": list(segmenter.mean), "std": list(segmenter.std)},  # top-level mean, std before
        "background": segmenter.background,
        "colours": segmenter.colours.tolist(),
    }


def _canvas_fields(run: str, sides: str) -> dict[str, Any]:
    """The record's fields of a `train segment` run on the MNIST canvases: it was refused ("records no preparation
    for images other than its own canvases"), where its canvases are MNIST digits at their own size, light on black,
    in [0, 1], the input `cnnlab fcn scan` prepares for an MNIST classifier's windows, so that is its preparation."""
    from cnnlab.fcn.scan import scan_preparation_record

    classes = [str(name) for name in saved_meta(run)["classes"]]
    return {
        "input": f"float32 grey [N, 1, H, W] in [0, 1], {sides}; no normalisation (the network takes the canvases' "
        "values as they are)",
        "prepare": _digits_preparation("the canvases of MNIST digits it was trained on"),
        "prepare_steps": scan_preparation_record(),
        "invert_above_mean": INVERT_ABOVE_MEAN,
        "output": f"logits [N, {len(classes)}, H, W]; argmax over classes gives the mask: 0 for the background, "
        "1 + d for digit d",
        "classes": classes,
        "views": ["identity"],
        "normalisation": None,
        "background": 0,
    }


def _digits_preparation(trained_on: str) -> str:
    """How an image is made the grey digits a digit scanner or a canvas segmenter takes, in words: as `cnnlab fcn scan`
    reads one (`cnnlab.fcn.scan.scan_tensor`), the digits left at their size, that of the digits in `trained_on`."""
    return (
        "as `cnnlab fcn scan` reads an image (cnnlab.fcn.scan.scan_tensor): grey (PIL Image.convert('L')), divided by "
        "255, the paper told from the ink by Otsu's threshold (the paper holds the image's border; a table round a "
        "page goes to 0), dark ink on light paper inverted (MNIST's digits are light on black) and the paper's level "
        "stretched to 0 and the ink's to 1 "
        "(`prepare_steps` gives each step exactly); not resized, so its digits should be about MNIST's size (20 px "
        f"tall in a 28 px cell), as in {trained_on}"
    )


def _export_converted(
    folder: str,
    fmt: str,
    output: str | os.PathLike[str] | None,
    opset: int,
    log: Callable[[str], None] | None,
    overwrite: bool,
) -> dict[str, Any]:
    """Export a classifier `cnnlab fcn convert` made fully convolutional, with dynamic height and width: an image of
    digits in, the classifier's scores for every training-sized window out (`cnnlab fcn scan`'s network, which scan
    runs on tiles of the image); checked at batch 1 at the training size (one window) and at a larger batch and size,
    neither of which the trace saw.

    Raises:
        CnnlabError: the folder's network takes other than one grey channel or returns other than the 10 digits'
            scores (saved from Python, not by `fcn convert`, which converts MNIST runs alone): no preparation is
            known for its input; or what `load_fully_convolutional` refuses.
    """
    from cnnlab.fcn.scan import load_fully_convolutional, scan_preparation_record

    converted = load_fully_convolutional(folder)
    channels, height, width = converted.input_size
    with torch.inference_mode():
        at_training_size = converted(torch.zeros(1, channels, height, width)).shape
    if channels != 1 or at_training_size[1] != len(MNIST_CLASSES):
        raise CnnlabError(
            f"{folder} holds a network converted from a classifier of {channels}-channel images into "
            f"{at_training_size[1]} classes, not an MNIST run's (1 grey channel, 10 digits): cnnlab records no "
            "preparation for its input, so it does not export it; `cnnlab fcn convert` converts MNIST runs"
        )
    (window_height, window_width), (down, across) = converted.output_geometry()
    suffix = SUFFIXES[fmt]
    output = _writable(Path(output) if output is not None else _default_output(folder, suffix), suffix, overwrite)
    _say_exporting(log, folder, output, fmt)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 1, 2 * height + 5, 2 * width + 3, generator=generator)
    # a pt2 program specialises a one-location side away (as a segmenter's 1-pixel bottleneck): it takes sides that
    # give the map at least two, window + stride
    least = (height + down, width + across) if fmt == "pt2" else (height, width)
    checks = [torch.rand(1, 1, *least, generator=generator)]  # batch 1 at the least size (pt2: one window a side)
    checks += [torch.rand(3, 1, 3 * height + 1, 2 * width + 7, generator=generator)]
    partial = _partial(output)
    with _removed_unless_published(partial), warnings.catch_warnings():  # see export_model
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        exported = _export_any_size(converted, fmt, example, partial, opset, least)
        with torch.inference_mode():
            pairs = [(exported(x), converted(x)) for x in checks]
        max_difference = _faithful_difference(output, pairs)
        sides = "any batch size N, " + (
            f"H and W of at least {least[0]}" if least[0] == least[1] else f"H of at least {least[0]}, W of {least[1]}"
        )
        record = {
            "layout": EXPORT_LAYOUT,
            "kind": DIGIT_SCANNER,
            "format": fmt,
            "load": LOADERS[fmt],
            "decode": DECODE,
            "input_shape": ["N", 1, "H", "W"],  # strings: any size (`input` says the least H and W)
            "input": f"float32 grey [N, 1, H, W] in [0, 1], {sides}; normalisation is inside the exported model",
            "prepare": _digits_preparation(f"the {window_height}x{window_width} windows the classifier was trained on"),
            "prepare_steps": scan_preparation_record(),
            "invert_above_mean": INVERT_ABOVE_MEAN,
            "window": [window_height, window_width],
            "stride": [down, across],
            "output": _scanner_output(converted, at_training_size[-2:], (window_height, window_width), (down, across)),
            "classes": list(MNIST_CLASSES),
            "views": ["identity"],
            "normalisation": _normalisation_inside(converted),
            "checked_sizes": [list(x.shape) for x in checks],
            "max_abs_difference_vs_eager": max_difference,
        }
        sidecar = _publish(partial, output, json.dumps(record, indent=1))
    return {
        "model": str(output),
        "format": fmt,
        "preprocessing": str(sidecar),
        "max_abs_difference": max_difference,
        "input": f"grey digits in [0, 1], {sides}, normalisation inside",
    }


def _scanner_output(converted: nn.Module, cells: torch.Size, window: tuple[int, int], stride: tuple[int, int]) -> str:
    """What an exported converted classifier returns, for its record: `cells` is its map's size at the training
    input size (1x1 where each location scores one window; larger for a head converted with ``--pool none``)."""
    last = converted.head[-1] if len(converted.head) else None
    scores = {nn.Softmax: "probabilities", nn.LogSoftmax: "log-probabilities"}.get(type(last), "logits")
    if tuple(cells) != (1, 1):  # --pool none: feature-map cells, which no window is
        return (
            f"[N, 10, H', W'] the classifier's {scores} at each cell of its last feature map ({cells[0]}x{cells[1]} "
            f"cells at its {window[0]}x{window[1]} input, whose mean over them is its {scores} there), cells "
            f"{stride[0]} px apart down and {stride[1]} across (converted with --pool none: not windows)"
        )
    return (
        f"[N, 10, H', W'] the classifier's {scores} for each {window[0]}x{window[1]} window of the image: location "
        f"(i, j) scores the window whose top-left corner is at (i * {stride[0]}, j * {stride[1]}) px, as `cnnlab fcn "
        f"scan` places them; the first (H - {window[0]}) // {stride[0]} + 1 rows and (W - {window[1]}) // "
        f"{stride[1]} + 1 columns are the windows inside the image (a network that pads also scores windows running "
        "off its bottom and right edges, which scan drops). The classifier has no 'nothing here' class: scan shows "
        "a window with almost no ink as empty"
    )


def _segmenter_resize(max_side: int | None) -> str:
    """How `cnnlab predict` sizes an image for a segmenter trained with ``--max-side`` `max_side`, in words."""
    from cnnlab.data.segmentation import downscaled_size

    if max_side is None:
        return "none: the whole image at its own size"
    # the shorter side's rounding is said and shown: truncating it instead changes a quarter of a percent of a mask
    width, height = downscaled_size(3000, 2000, max_side)
    return (
        f"before the model, downscale an image whose longer side is above {max_side} px to exactly {max_side} px on "
        f"that side and round(shorter side x {max_side} / longer side) px, at least 1, on the other (3000x2000 px "
        f"becomes {width}x{height}), keeping the aspect ratio (PIL Image.resize, BILINEAR, which antialiases when it "
        "shrinks), as the model was trained; after it, upsample the logits bilinearly (align_corners=False) to the "
        "image's own size and take the argmax there, so the mask is the size of the image given"
    )


def _default_output(model: str, suffix: str) -> Path:
    """``<run dir>/model<suffix>`` for a run given as its folder or as a file in it (``model.json``,
    ``model.safetensors``: once ``RUN/model.json.pt``), else ``./<zoo name><suffix>``."""
    path = Path(model)
    if path.is_dir():
        return path / f"model{suffix}"
    if path.is_file():  # the loader accepted it, so it is a saved model's file
        return path.parent / f"model{suffix}"
    return Path(f"{model}{suffix}")


def _faithful_difference(output: Path, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The largest difference between the exported file's outputs and eager PyTorch's over the (exported, eager)
    `pairs`; an export that differs by more than float rounding explains (1e-3 of the logits' scale) is refused: it
    was reported and kept, and a 0.5% error of the ONNX padding went unnoticed that way.

    Raises:
        CnnlabError: the difference; the export is not moved to `output` (`_removed_unless_published` deletes it),
            so that nothing unfaithful is left to deploy.
    """
    difference = max(float((actual - expected).abs().max()) for actual, expected in pairs)
    tolerance = 1e-3 * max(1.0, max(float(expected.abs().max()) for _, expected in pairs))
    if difference <= tolerance:
        return difference
    raise CnnlabError(
        f"the exported model's outputs differ from PyTorch's by up to {difference:.2e} on the check images (more "
        f"than the {tolerance:.1e} float rounding explains), so it was deleted, not written to {output}: this model "
        "does not export faithfully to this format; try another --format, and please report it"
    )


def _partial(output: Path) -> Path:
    """Where the export is written and checked before it becomes `output` (hidden, beside it; its suffix kept for the
    writers that go by it)."""
    return output.with_name(f".{output.stem}.part{output.suffix}")


@contextlib.contextmanager
def _removed_unless_published(partial: Path) -> Iterator[None]:
    """Delete the unpublished export at `partial` when the block stops early: a refused check, an error, Ctrl+C."""
    try:
        yield
    finally:
        partial.unlink(missing_ok=True)


def _publish(partial: Path, output: Path, record: str) -> Path:
    """Move the checked export at `partial` to `output` and write `record` beside it as its preprocessing record;
    returns the record's path.

    The file was written at `output` itself, and its record only after the check: an export interrupted while it was
    written or checked (Ctrl+C, a kill) left a truncated or unchecked file at `output` that torch.jit.load or ONNX
    Runtime could not read, with no record beside it or the record of the export it replaced. Both are now renamed
    into place, once the export is whole and checked.
    """
    sidecar = output.with_name(output.name + EXPORT_RECORD_SUFFIX)
    sidecar_partial = sidecar.with_name(f".{sidecar.name}.part")
    sidecar_partial.write_text(record)
    os.replace(partial, output)
    os.replace(sidecar_partial, sidecar)
    return sidecar


# the files that make a folder a run (a model.json beside them): replaced, the run could not be loaded or resumed
RUN_OWN_FILES = frozenset(
    {"model.safetensors", "model.json", "checkpoint.pt", "config.yaml", "results.json", "sessions.json", "split.csv"}
)
CONVERTED_OWN_FILES = frozenset({"fcn.safetensors", "fcn.json"})  # what `cnnlab fcn convert` wrote (fcn.scan's names)


def _owner(output: Path) -> str | None:
    """What `output` is an own file of, if any: "a run" (it sits beside the run's model.json) or "a converted folder"
    (beside its fcn.json), which could not be loaded, resumed or read again if an export replaced it."""
    if not output.is_file():
        return None
    if output.name in RUN_OWN_FILES and (output.parent / "model.json").is_file():
        return "a run"
    if output.name in CONVERTED_OWN_FILES and (output.parent / "fcn.json").is_file():
        return "a converted folder"
    return None


def _refuse_folder(output: Path, suffix: str) -> None:
    """Refuse an --output that is a folder, naming a file in it to write instead.

    Raises:
        CnnlabError: always.
    """
    raise CnnlabError(f"--output {output} is a folder; name the file to write, such as {output / ('model' + suffix)}")


def _writable(output: Path, suffix: str, overwrite: bool = False) -> Path:
    """Create the file's folder and prove the file can be written there, before the model is traced.

    An existing file is replaced only when it is an earlier export (its record beside it), or with `overwrite`:
    ``-o photo.jpg --format onnx`` replaced the photo, ``-o RUN/model.safetensors`` the run's weights (no command
    could load the run again) and ``-o RUN/checkpoint.pt`` the checkpoint that resumes it. A run's or a converted
    folder's own files (`_owner`) are refused even with `overwrite`.

    Raises:
        CnnlabError: the path is a folder, lies under a file, or is another kind of file (an image, a run's weights)
            and `overwrite` is not given; or the folder cannot be made or written (the reason from the system).
    """
    if output.is_dir():
        _refuse_folder(output, suffix)
    owner = _owner(output)  # -o RUN/fcn/fcn.safetensors --overwrite replaced the converted network's weights
    if owner is not None:
        raise CnnlabError(
            f"--output {output} is {owner}'s own {output.name}, which no export replaces (--overwrite or not: it "
            f"could not be loaded or resumed again); name a new file, such as {output.with_name('exported' + suffix)}"
        )
    if output.is_file() and not overwrite and not output.with_name(output.name + EXPORT_RECORD_SUFFIX).is_file():
        raise CnnlabError(
            f"--output {output} is a file that `cnnlab export` did not write (no {output.name}{EXPORT_RECORD_SUFFIX} "
            f"beside it), which it would replace; name a new file, such as {output.with_name('exported' + suffix)}, "
            "or pass --overwrite to replace it"
        )
    check_writable(output)
    return output


def _export_any_size(
    model: nn.Module, fmt: str, example: torch.Tensor, partial: Path, opset: int, least: tuple[int, int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write `model` to `partial` in `fmt` with a dynamic batch, height and width (pt2: a height and width of at least
    `least`), traced at `example`; returns the written file, loaded, as a function of a batch of images."""
    if fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(partial))
        return torch.jit.load(str(partial))
    if fmt == "pt2":
        return _export_program(model, example, partial, min_side=least)
    axes = {0: "batch", 2: "height", 3: "width"}
    return _export_onnx(model, example, partial, opset, {"images": axes, "logits": axes})


def _export_program(
    model: nn.Module, example: torch.Tensor, output: Path, min_side: tuple[int, int] | None = None
) -> Any:
    """Write `model` as a torch.export ExportedProgram with a dynamic batch (and a height and width of at least
    `min_side`, when given: a segmenter, a converted classifier); returns the loaded file's module."""
    dims = {0: torch.export.Dim("batch", min=1)}
    if min_side is not None:
        dims |= {2: torch.export.Dim("height", min=min_side[0]), 3: torch.export.Dim("width", min=min_side[1])}
    with torch.no_grad():
        program = torch.export.export(
            model, (example,), dynamic_shapes=(dims,), prefer_deferred_runtime_asserts_over_guards=min_side is not None
        )
    torch.export.save(program, str(output))
    loaded = torch.export.load(str(output)).module()
    return lambda images: loaded(images).detach()


def _check_onnx_packages() -> None:
    """Refuse an ONNX export, before any model is loaded, where onnx or ONNX Runtime is missing.

    Without ONNX Runtime the check compared eager PyTorch with itself: the record said
    ``max_abs_difference_vs_eager`` 0.0 at its ``checked_sizes`` and the CLI "max |exported - PyTorch| 0.00e+00"
    of a file nothing had run, so a graph that fixed the batch or the image size, or computed other logits, was
    published as checked.

    Raises:
        CnnlabError: naming the missing packages and the command that installs them.
    """
    missing = []
    try:  # imported by name, each, so that the dependency check (deptry) sees them used
        import onnx  # noqa: F401
    except ImportError:
        missing.append("onnx")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        missing.append("onnxruntime")
    if missing:
        raise CnnlabError(
            f"ONNX export needs {' and '.join(missing)} (the file is run with ONNX Runtime and compared with "
            f"PyTorch before it is written); run `pip install {' '.join(missing)}`, or `pip install cnnlab[export]`"
        )


def _export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    output: Path,
    opset: int,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Any:
    """Write `model` as ONNX; returns a function that runs the file with ONNX Runtime (`_check_onnx_packages`)."""
    import onnxruntime

    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(output),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes=dynamic_axes or {"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # --threads, as torch's share of the check runs
    session = onnxruntime.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
