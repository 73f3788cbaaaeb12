"""Models of recbole_efficient, by class name, and the lookup of any model by name.

Every public :class:`EfficientSequentialRecommender` subclass that a module of this package
lists in its ``__all__`` is a model: adding one is writing its file (plus its yaml in
``properties/model/``), with nothing to register here.
"""

import importlib
import pkgutil

from recbole.utils import get_model as recbole_get_model

from recbole_efficient.compat import keep_autograd_anomaly_mode
from recbole_efficient.model.base import EfficientSequentialRecommender, is_efficient_model


def _discover():
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if is_efficient_model(value) and value is not EfficientSequentialRecommender \
                    and value.__module__ == module.__name__:
                found[name] = value
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


#: Our models, by class name (case-insensitive alphabetical order).
MODELS = _discover()
globals().update(MODELS)


def available_models():
    """Our model names, then RecBole's sequential model names."""
    with keep_autograd_anomaly_mode():
        seq = importlib.import_module("recbole.model.sequential_recommender")
    recbole_names = sorted(n for n, v in vars(seq).items() if isinstance(v, type) and n[0].isupper())
    return list(MODELS), recbole_names


def get_model(model_name):
    """Model class named ``model_name`` from recbole_efficient, else from RecBole."""
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


__all__ = ["EfficientSequentialRecommender", "MODELS", "available_models", "get_model",
           "is_efficient_model", *MODELS]
