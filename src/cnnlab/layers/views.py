"""Label-preserving views of an image: the flips and rotations of a square (the dihedral group D4), and the
test-time augmentation that averages a classifier's logits over them.

Photos have an up and a down, so only the horizontal flip preserves their label. Solar cells, micrographs, satellite
and X-ray tiles have no canonical orientation: all 8 flips and rotations are the same object, so they are free extra
training data and free test-time averaging. Every view is an exact permutation of the pixels (no interpolation), on
the last two dimensions of any tensor, so it applies to images and to feature maps alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from cnnlab.errors import CnnlabError

__all__ = ["VIEWS", "VIEW_SETS", "ViewAverage", "apply_view", "parse_views"]


def _rot90(x: Tensor) -> Tensor:  # counter-clockwise on screen
    return x.transpose(-2, -1).flip(-2)


def _rot270(x: Tensor) -> Tensor:
    return x.transpose(-2, -1).flip(-1)


# The 8 elements of D4 as pixel permutations of the last two dimensions (H, W); rot90/rot270/transpose need H == W
# to keep the shape.
VIEWS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": _rot90,
    "rot180": lambda x: x.flip(-2, -1),
    "rot270": _rot270,
    "transpose": lambda x: x.transpose(-2, -1),
    "antitranspose": lambda x: x.transpose(-2, -1).flip(-2, -1),
}
VIEW_SETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "hflip": ("identity", "hflip"),
    "dihedral": tuple(VIEWS),
}


def parse_views(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The views a ``--views`` value names: ``none``, ``hflip`` (photos), ``dihedral`` (all 8; no up or down) or a
    comma-separated list of `VIEWS` names and sets, in any case. The identity view always comes first (the
    single-view prediction).

    Raises:
        CnnlabError: for an unknown name.
    """
    names = [spec] if isinstance(spec, str) else list(spec)
    if len(names) == 1 and names[0].strip().lower() in VIEW_SETS:
        return VIEW_SETS[names[0].strip().lower()]
    parts = [part.strip().lower() for name in names for part in name.split(",") if part.strip()]
    # a set named in a list stands for its views ("dihedral,hflip" was "unknown view(s) dihedral")
    chosen = [view for part in parts for view in VIEW_SETS.get(part, (part,))]
    unknown = [name for name in chosen if name not in VIEWS]
    if unknown or not chosen:
        raise CnnlabError(
            f"--views {','.join(names)!r}: unknown view(s) {', '.join(unknown) or '(none given)'}; use "
            f"{', '.join(VIEW_SETS)} or a comma-separated list of {', '.join(VIEWS)}"
        )
    ordered = ["identity", *(name for name in dict.fromkeys(chosen) if name != "identity")]
    return tuple(ordered)


def apply_view(x: Tensor, name: str) -> Tensor:
    """`x` seen through the view `name` (a new tensor; `x` is not changed)."""
    return VIEWS[name](x).contiguous()


class ViewAverage(nn.Module):
    """Test-time augmentation: ``model``'s logits averaged over `views` of the input.

    Exportable (flips and transposes only), so an exported model applies exactly the views its run recorded.

    Args:
        model: a classifier returning logits [N, classes].
        views: `VIEWS` names; the identity alone makes this the plain model.
    """

    def __init__(self, model: nn.Module, views: Sequence[str]) -> None:
        super().__init__()
        unknown = [name for name in views if name not in VIEWS]
        if unknown or not views:
            raise CnnlabError(f"unknown view(s) {unknown}; known: {', '.join(VIEWS)}")
        self.model = model
        self.views = tuple(views)

    def forward(self, x: Tensor) -> Tensor:
        logits = [self.model(VIEWS[name](x)) for name in self.views]
        return torch.stack(logits).mean(0)
