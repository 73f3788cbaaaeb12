"""Model and trainer lookup, where RecBole keeps them (``recbole.utils``): recbole_efficient
first, then RecBole."""

from recbole_efficient.model import available_models, get_model
from recbole_efficient.trainer import get_trainer

__all__ = ["get_model", "get_trainer", "available_models"]
