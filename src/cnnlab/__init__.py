"""cnnlab: understand, size, build, train, transfer and convert convolutional neural networks."""

from __future__ import annotations

from typing import Any

from cnnlab.errors import CnnlabError

__version__ = "0.1.0"
__all__ = ["CnnlabError", "__version__", "load_model", "create_model", "list_models", "budget"]


def __getattr__(name: str) -> Any:
    # Lazy attributes keep `import cnnlab` (and the CLI's start-up) fast: torch loads only when needed.
    if name in ("create_model", "list_models"):
        from cnnlab import models

        return getattr(models, name)
    if name == "budget":
        from cnnlab.budget import budget

        return budget
    if name == "load_model":
        from cnnlab.train.saved import load_model

        return load_model
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
