"""Efficient long-sequence sequential recommenders as a RecBole plugin.

Importing this package also makes RecBole 1.2.1 usable on NumPy 2 (see ``compat``).
"""

from recbole_efficient import compat

compat.install_numpy_aliases()

from recbole_efficient.config import Config  # noqa: E402
from recbole_efficient.data import SequentialDataset, create_dataset, data_preparation  # noqa: E402
from recbole_efficient.model import MODELS, EfficientSequentialRecommender  # noqa: E402
from recbole_efficient.trainer import Trainer  # noqa: E402
from recbole_efficient.utils import get_model, get_trainer  # noqa: E402
from recbole_efficient.quick_start import (  # noqa: E402
    load_data_and_model,
    objective_function,
    run,
    run_recbole_efficient,
)
from recbole_efficient.tune import tune_model  # noqa: E402  (imports Ray only when called)

__version__ = "0.1.0"

__all__ = [
    "Config", "SequentialDataset", "create_dataset", "data_preparation", "MODELS",
    "EfficientSequentialRecommender", "Trainer", "get_model", "get_trainer", "load_data_and_model",
    "objective_function", "run", "run_recbole_efficient", "tune_model", "model_config_files",
]


def model_config_files(model_name):
    """Our yaml files for ``model_name``, for RecBole's own ``Config(config_file_list=...)``."""
    from recbole_efficient.config import properties_dir

    files = [properties_dir() / "overall.yaml", properties_dir() / "model" / f"{model_name}.yaml"]
    return [str(f) for f in files if f.is_file()]
