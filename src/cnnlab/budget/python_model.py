"""A network named by Python code, for `cnnlab budget`: ``MODULE:CALLABLE`` or ``FILE.py:CALLABLE``.

The zoo, a run, a spec file and layer strings cover cnnlab's own networks; "any CNN" also means the one in a user's
own file or in another library. ``torchvision.models:mobilenet_v3_small`` imports the module and calls the function;
``models.py:build(width=32)`` loads the file and calls ``build`` with literal arguments (numbers, strings, tuples,
...; anything else is refused, so the command line is never evaluated as code). A name that is already a module
instance (``models.py:net``) is taken as it is.

Only the command line resolves such a target (it imports what the user named in their own shell); `budget()` and the
lab take modules, zoo names, runs and specs, so a web form never imports anything.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import re
import sys
import sysconfig
import threading
import traceback
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError

__all__ = ["build_python_model", "declared_input_size", "is_python_target", "user_code_line"]

# MODULE (dotted names) or a .py file, a colon, then a name with optional literal arguments
_TARGET = re.compile(r"^(?P<source>[A-Za-z_][\w.]*|[^:]+\.py):(?P<call>[A-Za-z_][\w.]*\s*(\(.*\))?)$", re.DOTALL)


def is_python_target(text: str) -> bool:
    """Whether `text` has the form ``MODULE:NAME``, ``FILE.py:NAME`` or either with ``(literal arguments)``."""
    return _TARGET.match(text.strip()) is not None


def build_python_model(text: str, on_meta: bool = True) -> nn.Module:
    """Import what `text` names and build the network.

    Args:
        text: ``torchvision.models:resnet18``, ``path/models.py:build(num_classes=10)``, ``models.py:net``.
        on_meta: build it on the meta device (shapes without weights: instant for any size); a constructor that
            cannot run there (it loads weights, say) is run again on the CPU.

    Raises:
        CnnlabError: the module or file cannot be imported, the name is missing, an argument is not a literal, the
            call fails, or it gives something other than a `torch.nn.Module`.
    """
    match = _TARGET.match(text.strip())
    if match is None:
        raise CnnlabError(f"{text!r} is not MODULE:NAME or FILE.py:NAME (e.g. torchvision.models:resnet18)")
    module = _import(match["source"])
    name, args, kwargs = _parse_call(match["call"], text)
    target: Any = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise CnnlabError(f"{match['source']} has no {name!r}; `{text}` names something it does not define")
        target = getattr(target, part)
    if isinstance(target, nn.Module):
        if args or kwargs:
            raise CnnlabError(f"{name} in {match['source']} is a module instance, not a function: drop the arguments")
        return target
    if not callable(target):
        raise CnnlabError(f"{name} in {match['source']} is a {type(target).__name__}, not a function or a network")
    built = _call(target, args, kwargs, text, on_meta)
    if not isinstance(built, nn.Module):
        raise CnnlabError(f"`{text}` returned a {type(built).__name__}, not a torch.nn.Module")
    return built


def declared_input_size(module: nn.Module) -> tuple[tuple[int, ...], str | None] | None:
    """The input size a network declares, and where it came from (None for cnnlab's own), else None.

    cnnlab's networks carry ``default_input_size``; timm's carry ``pretrained_cfg`` (``default_cfg`` in older
    versions), whose ``input_size`` is the size its weights were trained at (efficientnet_b3: 3x288x288). A timm
    network built with other ``in_chans`` keeps the record's 3 channels, so the channels are its first
    convolution's.
    """
    own = getattr(module, "default_input_size", None)
    if own is not None:
        return tuple(own), None
    for attribute in ("pretrained_cfg", "default_cfg"):
        record = getattr(module, attribute, None)
        size = record.get("input_size") if isinstance(record, dict) else None
        if not (isinstance(size, (tuple, list)) and len(size) >= 2 and all(isinstance(n, int) for n in size)):
            continue
        shape, source = tuple(size), f"its {attribute}'s input_size (the size its weights were trained at)"
        first = next((layer for layer in module.modules() if isinstance(layer, nn.modules.conv._ConvNd)), None)
        if first is not None and len(shape) == first.weight.dim() - 1 and shape[0] != first.in_channels:
            shape, source = (first.in_channels, *shape[1:]), f"{source}, with its first convolution's channels"
        return shape, source
    return None


def _import(source: str) -> Any:
    """The module named by a dotted name (found from the current folder too, as `python -m` finds it) or a file."""
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise CnnlabError(f"{source}: no such file")
        if (package := _package_of(path.resolve())) is not None:  # its relative imports need its package
            root, dotted = package
            with _on_path(root), _on_path(path.resolve().parent):
                return _run_import(lambda: importlib.import_module(dotted), source)
        spec = importlib.util.spec_from_file_location(f"cnnlab_budget_target_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise CnnlabError(f"{source}: Python cannot load it as a module")
        module = importlib.util.module_from_spec(spec)
        with _on_path(path.resolve().parent):  # so that it can import the files beside it
            _run_import(lambda: spec.loader.exec_module(module), source)  # type: ignore[union-attr]
        return module
    with _on_path(Path.cwd()):
        return _run_import(lambda: importlib.import_module(source), source)


def _package_of(path: Path) -> tuple[Path, str] | None:
    """For a file inside a package (its folder has an ``__init__.py``): the folder above the outermost package and the
    file's dotted name (``nets/blocks/vgg.py`` -> ``nets.blocks.vgg``), so that ``from .layers import X`` works as
    under ``python -m nets.blocks.vgg``; None for a file on its own, or where that top name is taken already (a
    package of that name imported from elsewhere)."""
    parts, folder = [path.stem], path.parent
    while (folder / "__init__.py").is_file() and folder.name.isidentifier() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    if len(parts) == 1 or not path.stem.isidentifier():
        return None
    loaded = sys.modules.get(parts[0])
    if loaded is not None and Path(getattr(loaded, "__file__", None) or "").parent != folder / parts[0]:
        return None
    return folder, ".".join(parts)


def _run_import(load: Any, source: str) -> Any:
    try:
        return load()
    except ModuleNotFoundError as error:
        raise CnnlabError(
            f"cannot import {source}: {error}{user_code_line(error)}; name an installed module or a .py file"
        ) from None
    except Exception as error:  # noqa: BLE001 - the user's own code: any failure is reported on one line
        where = user_code_line(error)
        raise CnnlabError(f"importing {source} failed: {type(error).__name__}: {error}{where}") from None


# where Python's own modules and installed packages live: a frame there is not the user's code
_LIBRARY_FOLDERS = tuple(
    str(Path(folder).resolve())
    for name in ("stdlib", "platstdlib", "purelib", "platlib")
    if (folder := sysconfig.get_paths().get(name))
) + (str(Path(__file__).resolve().parents[1]),)  # cnnlab itself


def user_code_line(error: BaseException) -> str:
    """`` (nets.py, line 12: `self.bad = undefined`)``: the innermost line of the user's own code in `error`'s
    traceback (not Python's, an installed package's or cnnlab's), else "": a one-line error that names the line to
    fix, where the bare message ("name 'undefined' is not defined") left the user to guess which file raised it."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        filename = frame.filename
        if filename.startswith("<") or str(Path(filename).resolve()).startswith(_LIBRARY_FOLDERS):
            continue
        with contextlib.suppress(ValueError):
            filename = str(Path(filename).resolve().relative_to(Path.cwd()))
        code = f": `{frame.line.strip()}`" if frame.line and frame.line.strip() else ""
        return f" ({filename}, line {frame.lineno}{code})"
    return ""


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))


def _parse_call(call: str, text: str) -> tuple[str, list[Any], dict[str, Any]]:
    """``build(3, width=8)`` -> ("build", [3], {"width": 8}); only literal arguments are accepted."""
    try:
        node = ast.parse(call.strip(), mode="eval").body
    except SyntaxError as error:
        raise CnnlabError(f"cannot read {call!r} in `{text}`: {error.msg}") from None
    function = node.func if isinstance(node, ast.Call) else node
    name = _dotted(function)
    if name is None:
        raise CnnlabError(f"{call!r} in `{text}` is not a name such as build or models.build")
    if not isinstance(node, ast.Call):
        return name, [], {}
    try:
        args = [ast.literal_eval(arg) for arg in node.args]
        kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords if keyword.arg}
    except ValueError:
        raise CnnlabError(
            f"the arguments in `{text}` must be literals (numbers, strings, True/False/None, tuples, lists, dicts)"
        ) from None
    if any(keyword.arg is None for keyword in node.keywords):
        raise CnnlabError(f"`{text}`: write each keyword argument out (no **)")
    return name, args, kwargs


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        parent = _dotted(node.value)
        return None if parent is None else f"{parent}.{node.attr}"
    return None


def _call(function: Any, args: list[Any], kwargs: dict[str, Any], text: str, on_meta: bool) -> Any:
    _check_arguments(function, args, kwargs, text)
    if on_meta:
        try:
            with torch.device("meta"):
                return function(*args, **kwargs)
        except Exception:  # noqa: BLE001, S110 - it computes with tensors while it builds: tried again below
            pass
        try:
            with _parameters_on_meta():
                return function(*args, **kwargs)
        except Exception:  # noqa: BLE001, S110 - it cannot be built without real tensors: built on the CPU below
            pass
    try:
        return function(*args, **kwargs)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        # torchvision's segmentation and detection builders fetch their backbone's ImageNet weights by default
        # (fcn_resnet50: weights_backbone=ResNet50_Weights.IMAGENET1K_V1), which sizing does not need
        raise CnnlabError(
            f"`{text}` tried to download weights and could not ({type(error).__name__}: {error}); sizing needs no "
            "weights: build it without them (torchvision: weights=None, weights_backbone=None; timm: "
            "pretrained=False), e.g. `torchvision.models.segmentation:fcn_resnet50(weights_backbone=None)`"
        ) from None
    except Exception as error:  # noqa: BLE001 - the user's own code: any failure is reported on one line
        raise CnnlabError(f"`{text}` raised {type(error).__name__}: {error}{user_code_line(error)}") from None


def _check_arguments(function: Any, args: list[Any], kwargs: dict[str, Any], text: str) -> None:
    """Refuse a call its signature does not take, saying which arguments to write and how: a class whose
    ``__init__`` needs arguments (``Net(width)``) was "`nets.py:Net` raised TypeError: Net.__init__() missing 1
    required positional argument: 'width'", with no word of the form that gives it."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin or extension type without a signature Python can read
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        written = {**dict(zip(signature.parameters, args, strict=False)), **kwargs}
        needed = [
            f"{parameter.name}=..."
            for parameter in signature.parameters.values()
            if parameter.default is inspect.Parameter.empty
            and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and parameter.name not in written
        ]
        example = ""
        if needed:
            call = ", ".join([*(repr(value) for value in args), *(f"{k}={v!r}" for k, v in kwargs.items()), *needed])
            match = _TARGET.match(text.strip())
            if match is not None:
                name = match["call"].split("(", 1)[0].strip()
                example = f': give them as literals, e.g. "{match["source"]}:{name}({call})" (quoted for the shell)'
        raise CnnlabError(f"`{text}` cannot be called so: {error}{example}") from None


_ON_META = threading.Lock()  # one build at a time patches nn.Module (the lab sizes networks from several threads)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter and buffer a module registers in this thread is moved to the meta device as it is registered;
    other tensors stay on the CPU.

    torchvision's RegNets compute their widths with tensors while they build (``torch.round(...).int().tolist()``),
    which under ``torch.device("meta")`` have no values: built on the CPU instead, regnet_y_128gf allocated and
    initialised 645 M parameters (2.6 GB) before being sized. Here each layer's weights are allocated once, moved
    off, and the initialisation that follows runs on the meta device (as accelerate's ``init_empty_weights`` does).
    ``nn.Module``'s two methods are replaced while the network builds, for every thread: another thread's modules (the
    lab loading a model for its Classify page meanwhile) keep the usual methods' behaviour.
    """
    with _ON_META:
        register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer
        builder = threading.get_ident()

        def parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
            register_parameter(module, name, param)
            if threading.get_ident() == builder and param is not None and param.device.type != "meta":
                kept = module._parameters[name]
                module._parameters[name] = type(kept)(kept.to("meta"), requires_grad=kept.requires_grad)

        def buffer(module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
            if threading.get_ident() == builder and tensor is not None:
                tensor = tensor.to("meta")
            register_buffer(module, name, tensor, persistent)

        nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer  # type: ignore[method-assign]
