"""Efficient long-sequence sequential recommenders as a RecBole plugin.

Importing this package also makes RecBole 1.2.1 usable on NumPy 2 (see ``compat``). The
public names below load their modules (torch, RecBole) on first use, so the command line's
``--help``, ``download`` and ``convert`` start quickly.
"""

from recbole_efficient import compat
from recbole_efficient.lazy import lazy_getattr

compat.install_numpy_aliases()

__version__ = "0.1.0"

#: public name -> module that defines it
_PUBLIC = {
    "Config": "recbole_efficient.config",
    "SequentialDataset": "recbole_efficient.data",
    "create_dataset": "recbole_efficient.data",
    "data_preparation": "recbole_efficient.data",
    "MODELS": "recbole_efficient.model",
    "model_config_files": "recbole_efficient.property_files",
    "EfficientSequentialRecommender": "recbole_efficient.model",
    "Trainer": "recbole_efficient.trainer",
    "get_model": "recbole_efficient.utils",
    "get_trainer": "recbole_efficient.utils",
    "load_data_and_model": "recbole_efficient.quick_start",
    "objective_function": "recbole_efficient.quick_start",
    "run": "recbole_efficient.quick_start",
    "run_recbole_efficient": "recbole_efficient.quick_start",
    "tune_model": "recbole_efficient.tune",  # imports Ray only when called
}

__all__ = list(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC)


def __dir__():
    return sorted(__all__ + ["__version__"])
