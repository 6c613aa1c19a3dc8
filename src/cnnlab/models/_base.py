"""What every cnnlab classifier shares: the model surface and its published-figures record.

The surface (timm's): ``forward_features(x)`` -> feature map, ``forward_head(x, pre_logits=False)`` -> logits (or the
pooled features), ``reset_classifier(num_classes)``, ``get_classifier()``, ``num_features``, ``pretrained_cfg``,
``default_input_size`` and ``model_info``. Fine-tuning, the FCN converter and the CLI rely on nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from cnnlab.models._pretrained import PretrainedCfg

__all__ = ["ClassifierMixin", "ModelInfo", "model_info", "register_info"]


@dataclass(frozen=True)
class ModelInfo:
    """Published facts about a registered model, stored once and checked by the tests.

    Attributes:
        paper: the paper that introduced it.
        innovation: one sentence on what it introduced (shown by ``cnnlab zoo show``).
        published_params: parameter count at 1000 classes and 3 input channels (1 channel, 10 classes for LeNet-5),
            from the reference implementation, without auxiliary heads.
        published_params_aux: the same with the auxiliary classifiers (GoogLeNet, Inception-v3), else None.
        published_gmacs: published multiply-accumulates (G) at the default resolution, where a reference gives them.
        innovation_code: where the innovation lives in cnnlab.
        params_note: where ``published_params`` comes from when no publication or reference implementation gives it
            (a cnnlab variant that differs from the paper by design), and what the paper's own figure is.
        params_source: who publishes ``published_params`` (the reference implementation, its metadata or the
            publication), shown by ``cnnlab zoo show``; every record has this or a ``params_note``.
    """

    paper: str
    innovation: str
    published_params: int
    published_params_aux: int | None = None
    published_gmacs: float | None = None
    innovation_code: str = ""
    params_note: str = ""
    params_source: str = ""


_model_info: dict[str, ModelInfo] = {}


def register_info(name: str, info: ModelInfo) -> None:
    """Attach a record to a registered model name (called by each family module at import)."""
    _model_info[name] = info


def model_info(name: str) -> ModelInfo | None:
    """The published-figures record of a registered model; None for a cnnlab design with no published reference.

    Raises:
        CnnlabError: for an unknown model name.
    """
    from cnnlab.models._registry import _check_known

    _check_known(name)
    return _model_info.get(name)


class ClassifierMixin:
    """The shared classifier surface. Subclasses define ``forward_features``, ``forward_head`` and set
    ``num_features``; the final ``nn.Linear`` lives in the attribute named by ``classifier_attr``."""

    classifier_attr: str = "fc"
    num_features: int
    pretrained_cfg: PretrainedCfg | None = None
    default_input_size: tuple[int, int, int] = (3, 224, 224)
    model_info: ModelInfo | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]

    def get_classifier(self) -> nn.Module:
        """The final classification layer (an ``nn.Linear``, or ``nn.Identity`` after ``reset_classifier(0)``)."""
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer by a freshly initialised one with ``num_classes`` outputs (0: no classifier, the
        model then returns pooled features)."""
        reference = next(self.parameters())  # type: ignore[attr-defined]
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        setattr(self, self.classifier_attr, head.to(device=reference.device, dtype=reference.dtype))
        self.num_classes = num_classes
