"""Split a classifier at a block boundary into a frozen lower part and a trainable upper part.

Partial fine-tuning trains only the top blocks and the head. The lower part's output depends only on the image, so
it can be computed once per image (and per view) and cached; the upper part then trains on the cache. Any zoo
classifier whose `forward_features` calls its blocks one after the other can be split: the blocks are found by
running a small input through `forward_features` and recording the order in which its top-level modules (and the
children of top-level `nn.Sequential`s) are called, and the split is accepted only if running the two parts one
after the other gives `forward_features`' output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlab.errors import CnnlabError

__all__ = ["ClassifierSplit", "split_classifier", "trainable_blocks"]


@dataclass
class ClassifierSplit:
    """A classifier cut in two: ``upper(lower(x))`` equals ``model(x)`` (in eval mode).

    Attributes:
        lower: the frozen part; its output is what a cache stores (maps, or pooled features when nothing of the
            backbone is trained).
        upper: the trained part: the top blocks and the head. Its modules are the model's own (not copies), so
            training it trains the model.
        top_blocks: how many parameterised blocks of the backbone the upper part holds.
        cut: the name of the last block of the lower part ("" when the lower part is the whole backbone and its
            pooling, "input" when it is empty).
        feature_shape: the lower part's output for one sample at the probed input size.
    """

    lower: nn.Module
    upper: nn.Module
    top_blocks: int
    cut: str
    feature_shape: tuple[int, ...]


class _PooledFeatures(nn.Module):
    """The backbone and the head's pooling: the features the classifier sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


class _Upper(nn.Module):
    """The top blocks, then the model's own head (pooling, dropout, classifier)."""

    def __init__(self, blocks: nn.Sequential, model: nn.Module) -> None:
        super().__init__()
        self.blocks = blocks
        self.head = _Head(model)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x))


class _Head(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_head(x)


def _called_blocks(model: nn.Module, probe: Tensor) -> list[tuple[str, nn.Module]]:
    """The modules `forward_features` calls, in call order (top-level children, Sequentials expanded one level)."""
    candidates: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child) > 1:
            candidates += [(f"{name}.{sub}", module) for sub, module in child.named_children()]
        else:
            candidates.append((name, child))
    calls: list[tuple[str, nn.Module]] = []
    hooks = [
        module.register_forward_hook(lambda m, _i, _o, name=name: calls.append((name, m)))
        for name, module in candidates
    ]
    try:
        with torch.no_grad():
            model.forward_features(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def trainable_blocks(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> list[str]:
    """The names of the parameterised blocks `forward_features` runs, from input to output (a model on the meta
    device answers too, without a weight)."""
    size = input_size or getattr(model, "default_input_size", (3, 224, 224))
    probe = torch.zeros(1, *size, device=next(model.parameters()).device)
    modes = {module: module.training for module in model.modules()}  # frozen batch norms stay in eval mode
    model.eval()  # in training mode, batch norm refuses one sample on a 1x1 map (a 32 px EfficientNet input)
    try:
        calls = _called_blocks(model, probe)
    finally:
        for module, mode in modes.items():
            module.train(mode)
    return [name for name, module in calls if any(True for _ in module.parameters())]


def check_unfreeze(top_blocks: int, blocks: int, model: nn.Module) -> None:
    """Refuse `top_blocks` (``--unfreeze``) outside `model`'s `blocks` parameterised blocks.

    Raises:
        CnnlabError: naming the range there is to choose from.
    """
    if not 0 <= top_blocks <= blocks:
        raise CnnlabError(
            f"--unfreeze {top_blocks} is outside the backbone: {type(model).__name__} has {blocks} blocks (choose "
            f"0..{blocks}; 0 trains the classifier alone)"
        )


def split_classifier(
    model: nn.Module, top_blocks: int, input_size: tuple[int, int, int] | None = None, head_dropout: float = 0.2
) -> ClassifierSplit:
    """Cut `model` so that the upper part holds its top `top_blocks` parameterised blocks and the head.

    Args:
        model: a zoo classifier (``forward_features`` / ``forward_head`` / ``get_classifier``), in eval mode for the
            check.
        top_blocks: blocks trained; 0 trains the classifier alone on pooled features (with dropout `head_dropout`).
        input_size: (C, H, W) of the inputs; default the model's.
        head_dropout: dropout before the classifier when `top_blocks` is 0 (pooled features carry no dropout).

    Raises:
        CnnlabError: when `top_blocks` is outside the backbone, or the model's blocks do not run one after the other.
    """
    if not hasattr(model, "forward_features") or not hasattr(model, "get_classifier"):
        raise CnnlabError(f"{type(model).__name__} lacks the classifier surface (forward_features/forward_head)")
    size = input_size or getattr(model, "default_input_size", (3, 224, 224))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        probe = torch.randn(2, *size, generator=torch.Generator().manual_seed(0)).to(device)
        calls = _called_blocks(model, probe)
        names = [name for name, _ in calls]
        parameterised = [i for i, (_, module) in enumerate(calls) if any(True for _ in module.parameters())]
        check_unfreeze(top_blocks, len(parameterised), model)
        if top_blocks == 0:
            lower: nn.Module = _PooledFeatures(model)
            classifier = model.get_classifier()
            upper: nn.Module = nn.Sequential(nn.Dropout(head_dropout), classifier)
            with torch.no_grad():
                shape = tuple(lower(probe).shape[1:])
            return ClassifierSplit(lower, upper, 0, "", shape)
        if len(set(names)) != len(names):
            raise CnnlabError(f"{type(model).__name__} calls a block twice; it cannot be split for partial training")
        cut = parameterised[-top_blocks]
        lower = nn.Sequential(*(module for _, module in calls[:cut]))
        upper_blocks = nn.Sequential(*(module for _, module in calls[cut:]))
        with torch.no_grad():
            maps = lower(probe)
            rejoined, whole = upper_blocks(maps), model.forward_features(probe)
        if rejoined.shape != whole.shape or not torch.allclose(rejoined, whole, rtol=1e-4, atol=1e-5):
            raise CnnlabError(
                f"{type(model).__name__} does not run its blocks one after the other, so it cannot be split for "
                "partial training; use --recipe full"
            )
        cut_name = names[cut - 1] if cut > 0 else "input"
        return ClassifierSplit(lower, _Upper(upper_blocks, model), top_blocks, cut_name, tuple(maps.shape[1:]))
    finally:
        model.train(was_training)
