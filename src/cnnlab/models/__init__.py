"""The model zoo. Importing this package registers every family (one module each)."""

from cnnlab.models._registry import create_model, is_model, list_models, model_family, register_model

__all__ = ["create_model", "is_model", "list_models", "model_family", "register_model"]
