"""Model and trainer lookup: recbole_efficient first, then RecBole."""

import importlib

from recbole.utils import get_model as recbole_get_model

from recbole_efficient.compat import keep_autograd_anomaly_mode
from recbole_efficient.trainer import get_trainer

__all__ = ["get_model", "get_trainer", "available_models"]


def available_models():
    """Our model names, then RecBole's sequential model names."""
    from recbole_efficient.model import MODELS

    with keep_autograd_anomaly_mode():
        seq = importlib.import_module("recbole.model.sequential_recommender")
    recbole_names = sorted(n for n, v in vars(seq).items() if isinstance(v, type) and n[0].isupper())
    return list(MODELS), recbole_names


def get_model(model_name):
    """Model class named ``model_name`` from recbole_efficient, else from RecBole."""
    from recbole_efficient.model import MODELS

    if model_name in MODELS:
        return MODELS[model_name]
    try:
        with keep_autograd_anomaly_mode():
            return recbole_get_model(model_name)
    except (ValueError, AttributeError, ImportError):  # exlib needs lightgbm/xgboost
        ours, theirs = available_models()
        raise ValueError(
            f"Unknown model {model_name!r}. recbole_efficient models: {', '.join(ours)}. "
            f"RecBole sequential models: {', '.join(theirs)} (RecBole's general and "
            "context-aware models are accepted by their class name as well)."
        ) from None
