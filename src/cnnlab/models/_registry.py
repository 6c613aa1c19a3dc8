"""The model registry: `@register_model`, `create_model`, `list_models`.

A registered entry point is a function `name(pretrained: bool = False, **kwargs) -> nn.Module`. The function's name is
the model's name; registering a name twice is an error, so two families can never silently shadow each other.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from cnnlab.errors import CnnlabError

_EntryPoint = TypeVar("_EntryPoint", bound=Callable[..., nn.Module])

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_model_family: dict[str, str] = {}


def register_model(fn: _EntryPoint) -> _EntryPoint:
    """Register a model constructor under its function name.

    Raises:
        ValueError: if the name is already registered.
    """
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f"model {name!r} is registered twice ({_model_family[name]} and {fn.__module__})")
    _model_entrypoints[name] = fn
    _model_family[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Names of registered models matching a shell-style pattern (e.g. ``"resnet*"``), sorted."""
    names = [n for n in _model_entrypoints if fnmatch.fnmatch(n, pattern)]
    if family is not None:
        names = [n for n in names if _model_family[n] == family]
    return sorted(names)


def is_model(name: str) -> bool:
    """Whether `name` is a registered model."""
    return name in _model_entrypoints


def model_family(name: str) -> str:
    """The module (family) a registered model comes from, e.g. ``"resnet"`` for ``"seresnet50"``."""
    _check_known(name)
    return _model_family[name]


def _check_known(name: str) -> None:
    if name not in _model_entrypoints:
        close = difflib.get_close_matches(name.lower(), _model_entrypoints, n=3)  # the names are lower case
        hint = f"; did you mean {', '.join(close)}?" if close else "; `cnnlab zoo` lists the models"
        raise CnnlabError(f"unknown model {name!r}{hint}")


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    drop_rate: float | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered model name (see `list_models`).
        pretrained: load the model's default pretrained weights (their record is `model.pretrained_cfg`).
        num_classes: classifier outputs; the model's default when None.
        in_chans: input channels; the model's default when None.
        drop_rate: dropout before the classifier; the model's default when None.
        **kwargs: family-specific options passed to the constructor.

    Raises:
        CnnlabError: for an unknown name.
    """
    _check_known(name)
    options = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans), ("drop_rate", drop_rate))}
    options = {k: v for k, v in options.items() if v is not None}
    return _model_entrypoints[name](pretrained=pretrained, **options, **kwargs)
