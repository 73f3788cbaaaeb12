"""RecBole ``Config`` that knows our models, our yaml files and current NumPy."""

from pathlib import Path

import recbole
from recbole.config import Config as RecBoleConfig

from recbole_efficient import compat

TRAIN_MODES = ("augmented", "all_positions")


def properties_dir() -> Path:
    """``properties/`` of a source checkout, else the copy packaged inside the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "properties", here / "properties"):
        if (candidate / "overall.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"recbole_efficient properties/ not found next to {here}")


class Config(RecBoleConfig):
    """RecBole's Config plus our defaults and models.

    Precedence (low to high): RecBole defaults < ``properties/overall.yaml`` < our model yaml
    < dataset yaml < ``config_file_list`` < ``config_dict`` < command line ``--key=value``.
    ``read_cmd_line=False`` ignores ``sys.argv`` (for library use, tests and Ray workers).
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 read_cmd_line=True):
        self._read_cmd_line = read_cmd_line
        super().__init__(model=model, dataset=dataset, config_file_list=config_file_list,
                         config_dict=config_dict)
        self._check_efficient_settings()

    def compatibility_settings(self):
        compat.install_numpy_aliases()
        compat.install_builtin_aliases()

    def _load_cmd_line(self):
        return super()._load_cmd_line() if self._read_cmd_line else {}

    def _get_model_and_dataset(self, model, dataset):
        from recbole_efficient.utils import get_model

        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError("No model given: pass --model=<Name> (or model=... in a config file).")
        if dataset is None:
            dataset = self.external_config_dict.get("dataset", "ml-100k")
        if isinstance(model, str):
            return model, get_model(model), dataset
        return model.__name__, model, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        props = properties_dir()
        rb_props = Path(recbole.__file__).resolve().parent / "properties"
        layered = [
            props / "overall.yaml",
            props / "model" / f"{model}.yaml",
            # Dataset yaml re-applied so that it beats our model defaults.
            rb_props / "dataset" / f"{dataset}.yaml",
            props / "dataset" / f"{dataset}.yaml",
        ]
        for file in layered:
            if file.is_file():
                self._update_internal_config_dict(str(file))

    def _check_efficient_settings(self):
        """Reject bad combinations before any data is loaded or any training starts."""
        mode = self.final_config_dict.get("train_mode") or "augmented"
        if mode not in TRAIN_MODES:
            raise ValueError(
                f"train_mode={mode!r} is not known; use one of {list(TRAIN_MODES)} "
                "(e.g. --train_mode=all_positions)."
            )
        self.final_config_dict["train_mode"] = mode
        if mode == "all_positions":
            from recbole_efficient.model.base import EfficientSequentialRecommender

            if not (isinstance(self.model_class, type)
                    and issubclass(self.model_class, EfficientSequentialRecommender)):
                raise ValueError(
                    f"train_mode=all_positions needs a model built on recbole_efficient's base; "
                    f"{self.model} trains only in RecBole's augmented mode. Use --train_mode=augmented."
                )
            if not self.model_class.causal:
                raise ValueError(
                    f"train_mode=all_positions needs a causal encoder, but {self.model} sees future "
                    "items at every position (the loss would leak targets). Use --train_mode=augmented."
                )
            split = (self.final_config_dict.get("eval_args") or {}).get("split") or {}
            if "LS" not in split:
                raise ValueError(
                    f"train_mode=all_positions supports the leave-one-out split only "
                    f"(eval_args.split: {{LS: valid_and_test}}), got {split}."
                )
        if not isinstance(self.final_config_dict.get("exclude_history", False), bool):
            raise ValueError("exclude_history must be True or False.")
