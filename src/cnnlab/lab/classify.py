"""The Classify and explain page: top-k classes, Grad-CAM overlay, feature maps of a layer and first-layer filters.

The model and its preprocessing come from `cnnlab.tasks.explain.load_subject` (a zoo model with offline pretrained
weights, or a run), the maps from `cnnlab.report.explain`: the page computes what ``cnnlab explain`` computes and
returns it as images instead of writing PNG files.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.report.explain import feature_maps, filter_grid, first_conv_filters, no_maps_message, spatial_layers
from cnnlab.tasks.explain import Subject

__all__ = [
    "ClassifyView",
    "check_upload_size",
    "classify",
    "display_size",
    "drawing_to_image",
    "for_display",
    "open_upload",
    "pretrained_models",
    "upload_note",
    "without_bomb_warning",
]


@dataclass
class ClassifyView:
    """What the page shows for one image.

    Attributes:
        top: the k most probable classes with their probabilities, most probable first (a segmenter: the classes
            found, by their share of the pixels).
        gradcam: the input as the model sees it with the Grad-CAM heatmap of `explained` over it, uint8 [H, W, 3];
            a small input (MNIST's 28x28) enlarged a whole number of times (nearest), as the filters are.
        cam_layer: the layer Grad-CAM used.
        feature_maps: the chosen layer's most active channels tiled, uint8 [h, w, 3].
        feature_layer: the layer they come from.
        filters: the first convolution's kernels tiled, uint8, or None for a network without convolutions.
        layers: every layer with a spatial output, in the order they run (the choices for `feature_layer`).
        explained: the class Grad-CAM shows: the top one (a segmenter's largest but the background).
        pixel_shares: whether `top` holds a segmenter's pixel shares rather than probabilities.
        shown_member: an ensemble's member whose feature maps and filters are shown ("" for a single network).
        preprocessing: what was done to the image, for a run that records none (a segmentation run on the MNIST
            canvases: `cnnlab.tasks.explain.CANVAS_PREPROCESSING`); "" where the run's or the zoo's record says it.
    """

    top: list[tuple[str, float]]
    gradcam: np.ndarray
    cam_layer: str
    feature_maps: np.ndarray
    feature_layer: str
    filters: np.ndarray | None
    layers: list[str]
    explained: str = ""
    pixel_shares: bool = False
    shown_member: str = ""
    preprocessing: str = ""


def pretrained_models() -> list[str]:
    """Zoo models whose pretrained weights load offline (an installed package), from the recorded zoo figures."""
    from cnnlab.models._figures import recorded_figures
    from cnnlab.models._pretrained import weights_label

    return [name for name, figures in recorded_figures().items() if weights_label(figures.weights_source) == "offline"]


# What to do with a file over the lab's upload limit, in the refusal and in the note under each upload box.
_SMALLER = "downscale it or save it as a lower-quality JPEG, or start the lab with a larger `--max-upload-mb`"


def _mib(max_bytes: int) -> str:
    return f"{max_bytes / 2**20:.3g} MiB"  # as --max-upload-mb counts them


def check_upload_size(path: str | os.PathLike[str], max_bytes: int) -> None:
    """Refuse an uploaded file larger than the lab's limit (``--max-upload-mb``), in MiB as the option counts them.

    Raises:
        CnnlabError: the file is larger than `max_bytes`, or gone (see below).
    """
    try:
        size = os.path.getsize(path)
    except OSError as error:
        # The photo on show is read again for another model, layer or run: one that a cleaner of temporary files had
        # removed from Gradio's upload folder since was a FileNotFoundError traceback, naming Gradio's path.
        raise CnnlabError(
            f"the uploaded file is no longer on the server ({error.strerror or error}; a cleaner of temporary files "
            "may have removed it): upload it again"
        ) from None
    if size > max_bytes:
        limit = _mib(max_bytes)
        raise CnnlabError(f"the image is {size / 2**20:.2f} MiB; the lab takes images up to {limit}: {_SMALLER}")


def upload_note(max_bytes: int, pixels: str = "") -> str:
    """The line under an upload box (Markdown): its limit, said before a file is picked. Gradio refuses a larger file
    in the browser, before cnnlab sees it, in a note of its own that goes after 10 s ("File(s) exceed the maximum
    allowed size of 10.0 Mb"), the box then reading "Error" with no reason and no word of what to do.

    Args:
        max_bytes: the lab's upload limit (``--max-upload-mb``).
        pixels: the page's limit in pixels, where it has one ("4 MP"), said with the size.
    """
    return (
        f"Files up to {_mib(max_bytes)}{f' and {pixels}' if pixels else ''}. The browser refuses a larger file "
        '("File(s) exceed the maximum allowed size", then "Error" in the box): '
        f"{_SMALLER}."
    )


@contextlib.contextmanager
def without_bomb_warning() -> Iterator[None]:
    """Pillow's DecompressionBombWarning (an image over 89 MP "could be decompression bomb DOS attack") left out: it
    printed two lines of source in the server's log for each such upload, which the page takes or refuses by its own
    limits (the upload's MiB, the Scan page's pixels) and Pillow's guard at 179 MP, an error said in the page."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def open_upload(path: str | os.PathLike[str], max_bytes: int) -> Any:
    """An uploaded file as an RGB PIL image.

    Raises:
        CnnlabError: larger than `max_bytes`, or not a readable image (the reason is in the message).
    """
    from cnnlab.data.folder import decode_image, to_rgb, with_remedy

    check_upload_size(path, max_bytes)
    with without_bomb_warning():  # decoded once: checking and then loading it decoded it twice (2 s at 36 MP)
        image, _, reason = decode_image(path)
    if image is None:
        raise CnnlabError(f"cannot use this file: {with_remedy(reason, 'upload a PNG or JPEG photo')}")
    return to_rgb(image)


def display_size(width: int, height: int, min_side: int = 192, max_side: int = 1024) -> tuple[int, int]:
    """The size `for_display` shows a `width` x `height` image at: enlarged a whole number of times when its longer
    side is under `min_side`, shrunk to a longer side of `max_side` when over it, else its own."""
    longer = max(width, height)
    if longer > max_side:
        return max(1, round(width * max_side / longer)), max(1, round(height * max_side / longer))
    factor = max(1, min_side // longer)
    return width * factor, height * factor


def for_display(image: Any, min_side: int = 192, max_side: int = 1024) -> Any:
    """A PIL image at its `display_size`: enlarged a whole number of times (nearest) so that a 28x28 digit is not a
    few pixels tall on the page, or shrunk (Gradio took 4 s to encode a 36 MP photo for a page that shows it a few
    hundred pixels wide); others are returned as they are."""
    from PIL import Image

    size = display_size(*image.size, min_side, max_side)
    if size == image.size:
        return image
    if max(size) < max(image.size):
        return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)  # a box reduction first: 0.1 s
    return image.resize(size, Image.Resampling.NEAREST)


def drawing_to_image(drawing: np.ndarray) -> Any:
    """A canvas drawing (RGBA, transparent where nothing was drawn) as an RGB PIL image on white paper."""
    from PIL import Image

    if drawing.ndim == 2:
        return Image.fromarray(drawing.astype(np.uint8)).convert("RGB")
    rgba = Image.fromarray(drawing.astype(np.uint8)).convert("RGBA")
    paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(paper, rgba).convert("RGB")


def classify(subject: Subject, image: Any, layer: str | None = None, top_k: int = 5) -> ClassifyView:
    """Classify one PIL image and explain the top class.

    Args:
        subject: the model with its preprocessing.
        image: an RGB PIL image.
        layer: the layer whose feature maps to show (default: the middle one of `ClassifyView.layers`).
        top_k: how many classes to list.
    """
    subject.check_size(image, "the image")
    tensor = subject.preprocess(image).float()
    layers = [name for name, _ in spatial_layers(subject.model, tensor)]
    if not layers:
        # explain's words: a too-small input ("give it a larger input") is told from a dense network
        raise CnnlabError(no_maps_message(subject.model, tensor, "so there is nothing to show", subject.source))
    if layer is not None and layer not in layers:
        raise CnnlabError(f"{subject.source} has no spatial layer {layer!r}; pick one of the list")
    chosen = layer or layers[len(layers) // 2]
    # the run's views averaged, as predict gives them; a segmenter's shares of the mask at the image's size
    probabilities = subject.probabilities(tensor, (image.height, image.width))
    segmenter = subject.kind == "segment"  # pixel shares: only the classes found are listed
    top = subject.top_classes(probabilities, top_k)
    explained = subject.default_class(probabilities)  # the top class; a segmenter's largest but the background
    cam = subject.grad_cam(tensor, layer=None, class_index=explained)  # an ensemble's: its members' averaged
    display = subject.to_display(tensor).float()
    maps = feature_maps(subject.model, tensor, [chosen])[chosen]
    try:
        filters: np.ndarray | None = _to_uint8(_enlarge(filter_grid(first_conv_filters(subject.model)[1])))
    except CnnlabError:  # a network without convolutions
        filters = None
    overlay, tiles = _overlay(display, cam.heatmap), _tile_maps(maps)
    return ClassifyView(
        top, overlay, cam.where, tiles, chosen, filters, layers, subject.class_name(explained), segmenter,
        subject.shown_member, subject.preprocessing,
    )  # fmt: skip


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def _enlarge(image: torch.Tensor, min_side: int = 192) -> torch.Tensor:
    """[H, W, 3] repeated a whole number of times per pixel (nearest), so a grid of 3x3 kernels is not a speck."""
    factor = max(1, min_side // max(image.shape[:2]))
    return image.repeat_interleave(factor, 0).repeat_interleave(factor, 1)


def _overlay(display: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.45) -> np.ndarray:
    """The [H, W, 3] image with the [H, W] heatmap in the jet colour map over it."""
    from matplotlib import colormaps

    colours = torch.from_numpy(colormaps["jet"](heatmap.numpy())[..., :3]).float()
    return _to_uint8(_enlarge((1 - alpha) * display + alpha * colours))  # MNIST's 28x28 would be a few pixels tall


def _tile_maps(maps: torch.Tensor, count: int = 16, scale: int = 4) -> np.ndarray:
    """The `count` most active channels of [C, h, w] maps (highest mean), each scaled to [0, 1] on its own and shown
    in the viridis colour map, tiled in a square grid; small maps are enlarged `scale` times (nearest)."""
    from matplotlib import colormaps

    strongest = maps.mean(dim=(1, 2)).argsort(descending=True)[:count]
    chosen = maps[strongest]
    low = chosen.amin(dim=(1, 2), keepdim=True)
    high = chosen.amax(dim=(1, 2), keepdim=True)
    scaled = (chosen - low) / (high - low).clamp_min(1e-12)
    if scaled.shape[-1] < 64:
        scaled = scaled.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    columns = int(len(scaled) ** 0.5 + 0.999)
    rows = -(-len(scaled) // columns)
    height, width = scaled.shape[1:]
    gap = 2
    grid = np.ones((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), dtype=np.float32)
    coloured = colormaps["viridis"](scaled.numpy())[..., :3]
    for index in range(len(scaled)):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        grid[top : top + height, left : left + width] = coloured[index]
    return (grid * 255).round().astype(np.uint8)
