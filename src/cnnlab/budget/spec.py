"""A compact layer spec for sequential CNNs, its analytic shape arithmetic, and the PyTorch module it builds.

One layer per string, a keyword then options::

    conv 100 k3 s2 same        # 100 filters, 3x3 kernel, stride 2, "same" padding (Keras/TF rule)
    conv 64 k3x5 s1 p1 relu    # explicit padding; a trailing activation becomes its own layer
    conv 64 k3 g64 same        # gN: N groups (grouped; depthwise when N is the input's channels)
    tconv 32 k3 s2 p1 op1      # transposed convolution (also deconv): opN is PyTorch's output_padding
    maxpool k2 s2              # also avgpool; kernel defaults to 2x2, stride to the kernel, padding to valid
    maxpool k3 s2 ceil         # rounds the output size up (PyTorch's ceil_mode=True, as GoogLeNet's pools do)
    gap                        # global average pooling to a vector
    flatten
    dense 10                   # fully connected; needs a flat input
    dense 10 in=784            # in=N: the input features (dense) or channels (conv) expected, checked
    bn                         # batch norm (2d or 1d, from the input's rank)
    relu | tanh | sigmoid | gelu | silu | leakyrelu | elu | softmax
    dropout 0.5
    lrn 5                      # local response normalization over 5 channels

Each kind takes its own options, each once: conv its filters, kN, sN, pN or same|valid, dN, gN, an activation,
nobias, in=N; tconv those and opN; dense its units, an activation, nobias, in=N; maxpool and avgpool kN, sN, pN or
same|valid, ceil; dropout its rate; lrn its size; the others none. Anything else is refused, naming it, rather than
ignored.

Padding: ``valid`` (the default, as in Keras and PyTorch) keeps only full windows: ``out = floor((in - k) / s) + 1``.
``same`` pads so that ``out = ceil(in / s)``: the total padding is ``max((out - 1) * s + k - in, 0)``, split with the
extra pixel after (Keras/TF), so stride 2 turns 75 into 38. ``pN`` pads N on every side (PyTorch's ``padding=N``).
A transposed convolution (``tconv``) runs a convolution backwards, so its size rule is the conv's turned around:
``out = (in - 1) * s - 2p + d * (k - 1) + op + 1`` (PyTorch's ``ConvTranspose2d``), with ``opN`` (``output_padding``,
below the stride or the dilation) adding N rows and columns at the end; ``same`` gives ``out = in * s`` (Keras'
``Conv2DTranspose``) with ``p = ceil((d * (k - 1) + 1 - s) / 2)`` and ``op = 2p - (d * (k - 1) + 1 - s)``.
A pooling layer's ``ceil`` rounds up instead: ``out = ceil((in + 2p - k) / s) + 1``, less one when that last window
would start beyond the input and its left padding (PyTorch's rule), so k3 s2 turns 14 into 7 where floor gives 6.
With ``same`` it pads as ``same`` does and then rounds up, as PyTorch's ``nn.MaxPool2d(k, s, padding=(k - 1) // 2,
ceil_mode=True)`` does (k3 s2 same ceil turns 14 into 8 where same gives 7); where ``same`` needs TF's uneven split
(an even kernel) the padded input holds whole windows, so ``ceil`` changes nothing.

The same spec may come from a YAML or JSON file: either a list of such strings, or a mapping with ``input``
("3x200x300" or [3, 200, 300]) and ``layers`` (strings, or mappings like
``{type: conv, filters: 100, kernel: 3, stride: 2, padding: same}``, where kernel, stride, dilation and padding are
one number or two for height and width: ``kernel: [3, 5]`` or ``kernel: 3x5``, as is a tconv's ``output_padding``;
``groups`` is one number; a pooling's ``ceil_mode: true`` is the word ``ceil``).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cnnlab.errors import CnnlabError, first_line
from cnnlab.layers.padding import AvgPool2dSame, Conv2dSame, MaxPool2dSame, same_padding_amounts

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "softmax": nn.Softmax,
}
LAYER_TYPES = ("conv", "tconv", "maxpool", "avgpool", "gap", "flatten", "dense", "bn", "dropout", "lrn", *ACTIVATIONS)
_ALIASES = {
    "pool": "maxpool",
    "linear": "dense",
    "fc": "dense",
    "batchnorm": "bn",
    "conv2d": "conv",
    "deconv": "tconv",
    "convtranspose": "tconv",
}


@dataclass
class LayerSpec:
    """One layer of a sequential spec, with its analytic output shape once `infer_shapes` has run."""

    kind: str
    name: str
    source: str
    filters: int | None = None  # conv filters or dense units
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: str | tuple[int, int] = "valid"  # "valid", "same" or explicit (pad_h, pad_w) on each side
    output_padding: tuple[int, int] = (0, 0)  # tconv: rows and columns added at the end (resolved for "same")
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1  # conv: each filter sees input channels / groups of the input's channels
    bias: bool = True
    rate: float | None = None  # dropout probability
    size: int | None = None  # LRN window
    in_features: int | None = None  # declared input channels (conv) or features (dense) to check against
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # (top, bottom, left, right) as applied
    ceil_mode: bool = False  # pooling: round the output size up (PyTorch's ceil_mode=True)
    extra: dict[str, Any] = field(default_factory=dict)


def parse_size(text: str, what: str = "size") -> tuple[int, ...]:
    """Parse ``"3x200x300"`` (or ``3,200,300``) into a tuple of positive ints."""
    parts = re.split(r"[x×,*\s]+", str(text).strip().lower())
    try:
        values = tuple(int(p) for p in parts if p)
    except ValueError:
        raise CnnlabError(f"cannot read {what} {text!r}: expected integers like 3x200x300") from None
    if not values or any(v <= 0 for v in values):
        raise CnnlabError(f"{what} {text!r} must be positive integers like 3x200x300")
    return values


# option letter: (what it sets, examples)
_WINDOW_OPTIONS = {
    "k": ("kernel", "k3 or k3x5"),
    "s": ("stride", "s2 or s2x1"),
    "p": ("padding", "p1 or p1x0"),
    "d": ("dilation", "d2 or d2x1"),
    "o": ("output_padding", "op1 or op1x0"),
}


def _pair(token: str, layer: LayerSpec) -> tuple[int, int]:
    """``k3`` or ``k3x5`` (also s, p, d) as (height, width); padding may be 0, the others must be positive."""
    prefix = token[0].lower()
    name, examples = _WINDOW_OPTIONS[prefix]
    parts = token[2 if prefix == "o" else 1 :].lower().split("x")  # op1: output padding
    smallest = 0 if prefix in "po" else 1
    if len(parts) > 2 or not all(part.isdigit() and int(part) >= smallest for part in parts):
        size = "non-negative" if smallest == 0 else "positive"
        raise CnnlabError(
            f"layer {layer.name} ({layer.source!r}): cannot read {token!r}: the {name.replace('_', ' ')} is one or "
            f"two {size} whole numbers (height x width), e.g. {examples}"
        )
    return int(parts[0]), int(parts[-1])


def _read_number(layer: LayerSpec, token: str) -> None:
    """The one bare number a layer takes: conv filters, dense units, LRN window (whole numbers), dropout rate.

    The token only looks like a number ("1.2.3", "."); what it cannot be is said here, naming it.
    """
    where = f"layer {layer.name} ({layer.source!r})"
    if layer.kind == "dropout":
        try:
            rate = float(token)
        except ValueError:
            rate = math.nan
        if not 0.0 <= rate < 1.0:  # a NaN fails this too
            raise CnnlabError(f"{where}: the dropout rate {token!r} must be a number in [0, 1), e.g. 'dropout 0.5'")
        layer.rate = rate
        return
    what, example = _NUMBER_NAMES[layer.kind], {"conv": 64, "tconv": 64, "dense": 10, "lrn": 5}[layer.kind]
    if not re.fullmatch(r"[-+]?\d+", token) or int(token) <= 0:
        raise CnnlabError(
            f"{where}: the {what} {token!r} must be a positive whole number, e.g. '{layer.kind} {example}'"
        )
    if layer.kind == "lrn":
        layer.size = int(token)
    else:
        layer.filters = int(token)


# The options each layer kind takes (see _option_of); a kind not listed takes none.
_TAKES = {
    "conv": ("number", "k", "s", "p", "same/valid", "d", "g", "activation", "nobias", "in="),
    "tconv": ("number", "k", "s", "p", "o", "same/valid", "d", "g", "activation", "nobias", "in="),
    "dense": ("number", "activation", "nobias", "in="),
    "maxpool": ("k", "s", "p", "same/valid", "ceil"),
    "avgpool": ("k", "s", "p", "same/valid", "ceil"),
    "dropout": ("number",),
    "lrn": ("number",),
}
# options that set the same thing, named as the error for giving both says it
_SETS = {
    "k": "kernel",
    "s": "stride",
    "p": "padding",
    "same/valid": "padding",
    "d": "dilation",
    "o": "output padding",
    "g": "groups",
    "nobias": "bias",
    "in=": "declared input size",
    "ceil": "rounding",
}
_NUMBER_NAMES = {
    "conv": "number of filters",
    "tconv": "number of filters",
    "dense": "number of units",
    "dropout": "rate",
    "lrn": "window size",
}


def _option_of(token: str) -> str | None:
    """Which option a lower-case token is, for `_TAKES`; None when it is none of them."""
    if token in ("same", "valid"):
        return "same/valid"
    if token in ACTIVATIONS:
        return "activation"
    if token in ("nobias", "bias=false"):
        return "nobias"
    if token == "ceil":
        return "ceil"
    if re.fullmatch(r"[kspd][\dx]+", token):
        return token[0]
    if re.fullmatch(r"op[\dx]+", token):
        return "o"
    if re.fullmatch(r"in=\d+", token):
        return "in="
    if re.fullmatch(r"g[\dx]+", token):  # not with k, s, p and d: groups are one number
        return "g"
    if re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", token):
        return "number"
    return None


def _describe(kind: str, option: str) -> str:
    """An option as the list of what a layer kind takes shows it."""
    if option == "number":
        return {
            "conv": "filters (64)",
            "tconv": "filters (64)",
            "dense": "units (10)",
            "dropout": "a rate (0.5)",
            "lrn": "a size (5)",
        }[kind]
    if option == "o":
        return "opN (output padding)"
    if option in _WINDOW_OPTIONS:
        return f"{option}N ({_WINDOW_OPTIONS[option][0]})"
    if option == "g":
        return "gN (groups)"
    if option == "in=":
        return "in=N (" + ("input features" if kind == "dense" else "input channels") + ", checked)"
    return {
        "same/valid": "same|valid",
        "activation": "an activation (relu, ...)",
        "ceil": "ceil (round the output size up)",
    }.get(option, option)


def _parse_line(text: str, index: int) -> list[LayerSpec]:
    tokens = text.replace(",", " ").split()
    if not tokens:
        raise CnnlabError(f"layer {index}: empty layer spec")
    kind = _ALIASES.get(tokens[0].lower(), tokens[0].lower())
    name = f"{index}:{kind}"
    if kind not in LAYER_TYPES:
        raise CnnlabError(
            f"layer {index} ({text!r}): unknown layer type {tokens[0]!r}; known: {', '.join(LAYER_TYPES)}"
        )
    layer = LayerSpec(kind=kind, name=name, source=text)
    trailing_activation: str | None = None
    explicit_stride = False
    given: dict[str, str] = {}  # what an option sets -> the token that set it
    refused: list[str] = []
    for token in tokens[1:]:
        low = token.lower()
        option = _option_of(low)
        if option is None:
            raise CnnlabError(f"layer {name} ({text!r}): cannot understand {token!r}")
        if option not in _TAKES.get(kind, ()):
            refused.append(token)
            continue
        sets = _NUMBER_NAMES[kind] if option == "number" else _SETS.get(option, option)
        if sets in given:  # the last one won without a word
            raise CnnlabError(f"layer {name} ({text!r}): {given[sets]!r} and {token!r} both set the {sets}; give one")
        given[sets] = token
        if option == "same/valid":
            layer.padding = low
        elif option == "activation":
            trailing_activation = low
        elif option == "nobias":
            layer.bias = False
        elif option == "ceil":
            layer.ceil_mode = True
        elif option in _WINDOW_OPTIONS:
            setattr(layer, _WINDOW_OPTIONS[option][0], _pair(token, layer))
            explicit_stride = explicit_stride or option == "s"
        elif option == "in=":
            layer.in_features = int(low[3:])
        elif option == "g":
            if not low[1:].isdigit() or int(low[1:]) < 1:
                raise CnnlabError(
                    f"layer {name} ({text!r}): cannot read {token!r}: the groups are one positive whole number, "
                    "e.g. g4 (g equal to the input channels: depthwise)"
                )
            layer.groups = int(low[1:])
        else:
            _read_number(layer, low)
    if refused:  # they were ignored: 'dense 10 k5 s3 same' was a plain dense layer
        takes = ", ".join(_describe(kind, option) for option in _TAKES.get(kind, ()))
        raise CnnlabError(
            f"layer {name} ({text!r}): {kind} takes no {', '.join(map(repr, refused))}; "
            + (f"it takes {takes}" if takes else f"give it alone, e.g. '{kind}'")
        )
    if kind in ("conv", "tconv", "dense") and layer.filters is None:
        what = "units" if kind == "dense" else "filters"
        raise CnnlabError(f"layer {name} ({text!r}): give the number of {what}, e.g. '{kind} 64'")
    if kind in ("maxpool", "avgpool"):  # 2x2 without a kernel, and the stride defaults to the kernel
        # told by the option given, not by the value: 'maxpool k1' became a 2x2 pooling of stride 2
        if "kernel" not in given:
            layer.kernel = (2, 2)
        if not explicit_stride:
            layer.stride = layer.kernel
    if kind == "tconv" and layer.padding == "same" and "output padding" in given:
        raise CnnlabError(
            f"layer {name} ({text!r}): 'same' chooses the output padding (out = in x stride); give 'same' or "
            f"{given['output padding']!r} with pN"
        )
    if kind == "dropout" and layer.rate is None:
        layer.rate = 0.5
    if kind == "lrn" and layer.size is None:
        layer.size = 5
    layers = [layer]
    if trailing_activation:
        layers.append(LayerSpec(kind=trailing_activation, name=f"{index}:{trailing_activation}", source=text))
    return layers


def parse_spec(lines: Sequence[str | dict[str, Any]]) -> list[LayerSpec]:
    """Parse layer strings (or mappings from a YAML/JSON file) into `LayerSpec` objects, numbered from 1."""
    if not lines:
        raise CnnlabError("the spec has no layers; give at least one, e.g. 'conv 32 k3'")
    lines = [piece for line in lines for piece in (split_layers(line) if isinstance(line, str) else [line])]
    _check_quoting(lines)
    layers: list[LayerSpec] = []
    for index, line in enumerate(lines, start=1):
        text = _mapping_to_line(line, index) if isinstance(line, dict) else str(line)
        layers.extend(_parse_line(text, index))
    return layers


_PARAMETER = re.compile(r"-?[\d.]+|[kspdg][\dx]+|op[\dx]+|in=\d+|same|valid|ceil|nobias|bias=false", re.IGNORECASE)


def _check_quoting(lines: Sequence[str | dict[str, Any]]) -> None:
    """Refuse layers split word by word, as an unquoted shell argument ``conv 8 k3`` arrives, naming the fix.

    A line that starts with a layer's parameter (a number, ``k3``, ``same``) cannot be a layer of its own; parsed
    as it stands, the error would blame the layer before it (``conv`` without its number of filters).
    """
    words = [line.split()[0] if isinstance(line, str) and line.split() else None for line in lines]
    if not any(word and _PARAMETER.fullmatch(word) for word in words[1:]):
        return
    groups: list[str] = []
    for line, word in zip(lines, words, strict=True):
        text = line if isinstance(line, str) else ""
        if groups and word and _PARAMETER.fullmatch(word):
            groups[-1] += f" {text}"
        else:
            groups.append(text)
    suggestion = " ".join(f'"{group}"' for group in groups)
    raise CnnlabError(
        f"{' '.join(str(line) for line in lines)!r} arrived as {len(lines)} separate layers: give each layer as one "
        f"quoted argument, e.g. {suggestion}"
    )


def split_layers(text: str) -> list[str]:
    """One argument holding several layers, ``"conv 64 k7 s2, maxpool k3 s2; dense 10"``, as one string per layer.

    ';' always ends a layer. ',' also separates a layer's own words (``"conv 64, k3"``), so it ends a layer only
    where the next word names a layer type; an activation after a conv or dense layer stays that layer's own
    (``"conv 8 k3, relu"`` is one conv with its ReLU, the same computation either way).
    """
    layers: list[str] = []
    for part in text.split(";"):
        current: list[str] = []
        for piece in part.split(","):
            joined = ",".join(current)
            head, kind = _first_word(piece), _first_word(joined)
            inline = head in ACTIVATIONS and kind in ("conv", "tconv", "dense")
            if joined.strip() and head in LAYER_TYPES and not inline:
                layers.append(joined.strip())
                current = []
            current.append(piece)
        if ",".join(current).strip():
            layers.append(",".join(current).strip())
    return layers or [text]


def _first_word(text: str) -> str:
    words = text.split()
    return _ALIASES.get(words[0].lower(), words[0].lower()) if words else ""


def _mapping_to_line(entry: dict[str, Any], index: int) -> str:
    entry = dict(entry)
    kind = entry.pop("type", None) or entry.pop("layer", None)
    if kind is None:
        raise CnnlabError(f"layer {index}: a mapping needs a 'type' key, got {sorted(entry)}")
    words = [str(kind)]
    for key in ("filters", "units", "rate", "size"):
        if key in entry:
            words.append(str(entry.pop(key)))
    prefixes = {"kernel": "k", "stride": "s", "dilation": "d", "groups": "g", "output_padding": "op"}
    for key, prefix in prefixes.items():
        if key in entry:
            words.append(prefix + _mapping_pair(entry.pop(key), key, index, kind))
    if "padding" in entry:
        pad = entry.pop("padding")
        words.append(pad if pad in ("same", "valid") else "p" + _mapping_pair(pad, "padding", index, kind))
    if "activation" in entry:
        words.append(str(entry.pop("activation")))
    if entry.pop("bias", True) is False:
        words.append("nobias")
    if entry.pop("ceil_mode", False) is True:
        words.append("ceil")
    if entry:
        raise CnnlabError(f"layer {index} ({kind}): unknown keys {sorted(entry)}")
    return " ".join(words)


def _mapping_pair(value: Any, key: str, index: int, kind: str) -> str:
    """A mapping's kernel, stride, dilation or padding as a layer string writes it: 3, [3, 5] or "3x5" -> "3x5".

    YAML's natural form for a non-square kernel is a list; it became the word 'k[3,5]', which the parser did not
    understand.
    """
    if isinstance(value, str):
        return value.replace(" ", "")  # "3x5": read, and checked, as the layer string's own
    values = value if isinstance(value, list) else [value]
    if 1 <= len(values) <= 2 and all(isinstance(item, int) and not isinstance(item, bool) for item in values):
        return "x".join(map(str, values))
    raise CnnlabError(
        f"layer {index} ({kind}): {key} {value!r} must be one or two whole numbers (height, width), e.g. 3, [3, 5] or "
        "3x5"
    )


def _file_input(value: Any, path: Path) -> tuple[int, ...]:
    """A spec file's ``input``: "3x200x300", or the list YAML and JSON write naturally, [3, 200, 300]."""
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        text = "x".join(map(str, value))
    else:
        text = str(value)
    try:
        return parse_size(text, "input")
    except CnnlabError:
        raise CnnlabError(
            f"spec file {str(path)!r}: input {value!r} must be the shape of one sample in positive whole numbers, "
            "as 3x200x300 or [3, 200, 300]"
        ) from None


def _python_file_hint(path: Path) -> str:
    """Why a .py file is not a spec, and which of its names to give: its top-level classes and functions, read
    without running it (a file with several networks was told only `FILE.py:build`, a name it may not define)."""
    message = f"{path} is Python, not a YAML/JSON spec: name the network class or the function that builds it"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8-sig"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return f"{message}, e.g. `cnnlab budget {path}:build --input 3x224x224`"
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]
    if not classes and not functions:
        return f"{message}; it defines no class or function at its top level"
    # a subclass of nn.Module, nn.Sequential, ... by its base's name (the file is not run to know more)
    networks = [
        c.name for c in classes if any(ast.unparse(base).endswith(("Module", "Sequential")) for base in c.bases)
    ]
    names = [*networks, *(c.name for c in classes if c.name not in networks), *functions]
    listed = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"{message}, e.g. `cnnlab budget {path}:{names[0]} --input 3x224x224`; it defines {listed}"


def load_spec_file(path: str | Path) -> tuple[tuple[int, ...] | None, list[LayerSpec]]:
    """Read a YAML or JSON spec file; returns (input shape or None, layers)."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"spec file {str(path)!r} does not exist")
    if path.suffix.lower() == ".py":  # it was parsed as YAML: "mapping values are not allowed here"
        raise CnnlabError(_python_file_hint(path))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise CnnlabError(
            f"spec file {str(path)!r} is not UTF-8 text (byte {error.start}); is it a spec file?"
        ) from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001 - any parse failure is a user error here
        reason = first_line(error)
        mark = getattr(error, "problem_mark", None)  # YAML's: its first line ("while parsing a flow sequence") alone
        if mark is not None:  # did not say where
            reason = f"{getattr(error, 'problem', None) or reason} at line {mark.line + 1}, column {mark.column + 1}"
        raise CnnlabError(f"cannot parse spec file {str(path)!r}: {reason}") from None
    input_shape = None
    if isinstance(data, dict):
        if "input" in data:
            input_shape = _file_input(data["input"], path)
        data = data.get("layers")
    if not isinstance(data, list):
        raise CnnlabError(f"spec file {str(path)!r}: expected a list of layers or a mapping with 'layers'")
    return input_shape, parse_spec(data)


def _conv_out(size: int, kernel: int, stride: int, pad_total: int, dilation: int = 1, ceil_mode: bool = False) -> int:
    span = size + pad_total - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    # PyTorch's rule: the last window must start inside the input or its left padding (pad_total // 2 each side)
    if (out - 1) * stride >= size + pad_total // 2:
        out -= 1
    return out


def _window_output(layer: LayerSpec, height: int, width: int) -> tuple[int, int]:
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.stride, layer.dilation
    if layer.padding == "same":
        native = _native_padding(layer)
        if native is None:  # the TF split, extra pixel after, as Conv2dSame / MaxPool2dSame pad
            top, bottom = same_padding_amounts(height, kh, sh, dh)
            left, right = same_padding_amounts(width, kw, sw, dw)
        else:  # the symmetric padding= the built nn.Conv2d / pool applies: the same output size
            (top, left), (bottom, right) = native, native
    elif layer.padding == "valid":
        top = bottom = left = right = 0
    else:
        top = bottom = layer.padding[0]
        left = right = layer.padding[1]
        if layer.kind != "conv" and (top > kh // 2 or left > kw // 2):  # torch's error did not name the layer
            raise CnnlabError(
                f"layer {layer.name} ({layer.source!r}): padding {top}x{left} is more than half the {kh}x{kw} "
                f"window; pooling pads at most half its window on each side: use p{kh // 2}x{kw // 2} or 'same'"
            )
    layer.pads = (top, bottom, left, right)
    out_h = _conv_out(height, kh, sh, top + bottom, dh, layer.ceil_mode)
    out_w = _conv_out(width, kw, sw, left + right, dw, layer.ceil_mode)
    if out_h <= 0 or out_w <= 0:
        raise CnnlabError(
            f"layer {layer.name} ({layer.source!r}): kernel {kh}x{kw} (dilation {dh}x{dw}) does not fit the "
            f"{height}x{width} input with {layer.padding if isinstance(layer.padding, str) else 'explicit'} padding; "
            "use 'same' padding or a smaller kernel"
        )
    return out_h, out_w


def _transposed_output(layer: LayerSpec, height: int, width: int) -> tuple[int, int]:
    """A tconv's output size, ``(in - 1) * s - 2p + d * (k - 1) + op + 1``, with `same` resolved to p and op."""
    sizes = []
    pads, output_pads = [], []
    for axis, size in ((0, height), (1, width)):
        kernel, stride, dilation = layer.kernel[axis], layer.stride[axis], layer.dilation[axis]
        if layer.padding == "same":  # out = in * s: 2p - op = d (k - 1) + 1 - s, with 0 <= op
            excess = dilation * (kernel - 1) + 1 - stride
            pad = max(-(-excess // 2), 0)
            output_pad = 2 * pad - excess
        else:
            pad = 0 if layer.padding == "valid" else layer.padding[axis]
            output_pad = layer.output_padding[axis]
        if output_pad >= max(stride, dilation):  # torch's error did not name the layer
            reason = (
                f"output padding {output_pad}" if layer.padding != "same" else f"'same' (output padding {output_pad})"
            )
            raise CnnlabError(
                f"layer {layer.name} ({layer.source!r}): {reason} must be smaller than the stride {stride} or the "
                f"dilation {dilation} (PyTorch's rule: it only picks among the sizes that stride could give)"
            )
        pads.append(pad)
        output_pads.append(output_pad)
        sizes.append((size - 1) * stride - 2 * pad + dilation * (kernel - 1) + output_pad + 1)
    layer.pads = (pads[0], pads[0], pads[1], pads[1])
    layer.output_padding = (output_pads[0], output_pads[1])
    if min(sizes) <= 0:
        raise CnnlabError(
            f"layer {layer.name} ({layer.source!r}): padding {pads[0]}x{pads[1]} removes more than the "
            f"{sizes[0] - 1 + 2 * pads[0]}x{sizes[1] - 1 + 2 * pads[1]} the transposed convolution makes of the "
            f"{height}x{width} input; pad less"
        )
    return sizes[0], sizes[1]


def infer_shapes(layers: list[LayerSpec], input_shape: tuple[int, ...]) -> list[LayerSpec]:
    """Fill each layer's input and output shape (without the batch dimension) by the padding arithmetic above.

    Raises:
        CnnlabError: naming the first layer whose input does not fit it.
    """
    if len(input_shape) not in (1, 3):
        raise CnnlabError(f"input shape {input_shape} must be CxHxW (e.g. 3x200x300) or a flat size")
    shape = tuple(input_shape)
    for layer in layers:
        layer.input_shape = shape
        if layer.kind in ("conv", "tconv", "maxpool", "avgpool", "gap", "lrn") and len(shape) != 3:
            raise CnnlabError(
                f"layer {layer.name} ({layer.source!r}) needs a CxHxW input, but receives shape {_fmt(shape)}"
            )
        source = "the input has" if layer is layers[0] else "the previous layer gives"
        if layer.kind in ("conv", "tconv"):
            if layer.in_features is not None and layer.in_features != shape[0]:
                raise CnnlabError(
                    f"layer {layer.name} ({layer.source!r}): shape mismatch, declared in={layer.in_features} but "
                    f"{source} {shape[0]} channel{'s' * (shape[0] != 1)}"
                )
            if shape[0] % layer.groups or layer.filters % layer.groups:
                raise CnnlabError(
                    f"layer {layer.name} ({layer.source!r}): g{layer.groups} must divide both the {shape[0]} input "
                    f"channels and the {layer.filters} filters"
                )
            window = _window_output if layer.kind == "conv" else _transposed_output
            out_h, out_w = window(layer, shape[1], shape[2])
            shape = (layer.filters, out_h, out_w)
        elif layer.kind in ("maxpool", "avgpool"):
            out_h, out_w = _window_output(layer, shape[1], shape[2])
            shape = (shape[0], out_h, out_w)
        elif layer.kind == "gap":
            shape = (shape[0],)
        elif layer.kind == "flatten":
            shape = (math.prod(shape),)
        elif layer.kind == "dense":
            if len(shape) != 1:
                raise CnnlabError(
                    f"layer {layer.name} ({layer.source!r}): shape mismatch, a dense layer needs a flat input but "
                    f"receives {_fmt(shape)}; add 'flatten' or 'gap' before it"
                )
            if layer.in_features is not None and layer.in_features != shape[0]:
                raise CnnlabError(
                    f"layer {layer.name} ({layer.source!r}): shape mismatch, declared in={layer.in_features} "
                    f"but {source} {shape[0]} feature{'s' * (shape[0] != 1)}"
                )
            shape = (layer.filters,)
        layer.output_shape = shape
    return layers


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def parameter_counts(layer: LayerSpec) -> tuple[int, int]:
    """Analytic (trainable parameters, buffer values) of one layer; BN's running mean and variance are buffers."""
    if layer.kind in ("conv", "tconv"):  # a tconv's weight is c_in x filters / groups x k_h x k_w: the same count
        kh, kw = layer.kernel
        return layer.filters * (kh * kw * layer.input_shape[0] // layer.groups + int(layer.bias)), 0
    if layer.kind == "dense":
        return layer.filters * (layer.input_shape[0] + int(layer.bias)), 0
    if layer.kind == "bn":
        channels = layer.input_shape[0]
        return 2 * channels, 2 * channels
    return 0, 0


def layer_macs(layer: LayerSpec) -> int:
    """Analytic multiply-accumulates of one layer for one sample (conv and dense; element-wise layers count 0)."""
    if layer.kind == "conv":
        kh, kw = layer.kernel
        return math.prod(layer.output_shape) * kh * kw * layer.input_shape[0] // layer.groups
    if layer.kind == "tconv":  # each input value is spread over k_h x k_w positions of filters / groups maps
        kh, kw = layer.kernel
        return math.prod(layer.input_shape) * kh * kw * layer.filters // layer.groups
    if layer.kind == "dense":
        return layer.filters * layer.input_shape[0]
    return 0


def _native_padding(layer: LayerSpec) -> tuple[int, int] | None:
    """Symmetric PyTorch padding giving this layer's output size, or None when only TF's asymmetric rule does.

    For "same" with an odd kernel, PyTorch's ``padding=(k - 1) // 2`` gives the Keras size ``ceil(in / stride)``
    without copying the input into a padded tensor (which TF-style padding must do, and autograd then keeps);
    the windows are the same size and count, aligned half a step differently when the Keras padding is uneven.
    """
    if layer.padding == "valid":
        return (0, 0)
    if layer.padding != "same":
        return tuple(layer.padding)
    pads = []
    for kernel, dilation in zip(layer.kernel, layer.dilation, strict=True):
        reach = dilation * (kernel - 1)
        if reach % 2 or (layer.kind != "conv" and reach // 2 > kernel // 2):
            return None
        pads.append(reach // 2)
    return tuple(pads)


def build_module(layers: list[LayerSpec]) -> nn.Sequential:
    """The PyTorch module of a spec whose shapes are inferred; children are named like the spec rows."""
    modules: dict[str, nn.Module] = {}
    for layer in layers:
        in_shape = layer.input_shape
        if layer.kind == "conv":
            options = dict(stride=layer.stride, dilation=layer.dilation, groups=layer.groups, bias=layer.bias)
            padding = _native_padding(layer)
            if padding is None:
                module: nn.Module = Conv2dSame(in_shape[0], layer.filters, layer.kernel, **options)
            else:
                module = nn.Conv2d(in_shape[0], layer.filters, layer.kernel, padding=padding, **options)
        elif layer.kind == "tconv":
            module = nn.ConvTranspose2d(
                in_shape[0],
                layer.filters,
                layer.kernel,
                stride=layer.stride,
                padding=(layer.pads[0], layer.pads[2]),
                output_padding=layer.output_padding,
                groups=layer.groups,
                bias=layer.bias,
                dilation=layer.dilation,
            )
        elif layer.kind in ("maxpool", "avgpool"):
            padding = _native_padding(layer)
            if padding is None:
                module = (MaxPool2dSame if layer.kind == "maxpool" else AvgPool2dSame)(layer.kernel, layer.stride)
            elif layer.kind == "maxpool":
                module = nn.MaxPool2d(layer.kernel, layer.stride, padding=padding, ceil_mode=layer.ceil_mode)
            else:
                module = nn.AvgPool2d(
                    layer.kernel, layer.stride, padding=padding, ceil_mode=layer.ceil_mode, count_include_pad=False
                )
        elif layer.kind == "gap":
            module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        elif layer.kind == "flatten":
            module = nn.Flatten()
        elif layer.kind == "dense":
            module = nn.Linear(in_shape[0], layer.filters, bias=layer.bias)
        elif layer.kind == "bn":
            module = nn.BatchNorm2d(in_shape[0]) if len(in_shape) == 3 else nn.BatchNorm1d(in_shape[0])
        elif layer.kind == "dropout":
            module = nn.Dropout(layer.rate)
        elif layer.kind == "lrn":
            module = nn.LocalResponseNorm(layer.size)
        elif layer.kind == "softmax":
            module = nn.Softmax(dim=1)
        else:
            module = ACTIVATIONS[layer.kind]()
        modules[layer.name.replace(":", "_")] = module
    return nn.Sequential(OrderedDict(modules))


def spec_from_strings(
    lines: Sequence[str | dict[str, Any]], input_shape: Sequence[int]
) -> tuple[list[LayerSpec], nn.Sequential]:
    """Parse, infer shapes and build: the one call most users need."""
    layers = infer_shapes(parse_spec(lines), tuple(input_shape))
    return layers, build_module(layers)
