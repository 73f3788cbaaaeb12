"""RecBole ``Config`` that knows our models, our yaml files and current NumPy."""

from pathlib import Path

import recbole
from recbole.config import Config as RecBoleConfig

from recbole_efficient import compat
from recbole_efficient.validation import COMMON_SPEC, Choice, Rule, validate

TRAIN_MODES = ("augmented", "all_positions", "cloze")


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

    def _set_default_parameters(self):
        super()._set_default_parameters()
        # Right after the merge: before RecBole sets up devices or samplers, and before any data.
        self.final_config_dict["train_mode"] = self.final_config_dict.get("train_mode") or "augmented"
        validate(self.final_config_dict, self.model_class, extra_spec=FRAMEWORK_SPEC,
                 defaults=self.internal_config_dict)


def _is_efficient(model_class):
    from recbole_efficient.model.base import EfficientSequentialRecommender

    return isinstance(model_class, type) and issubclass(model_class, EfficientSequentialRecommender)


def supported_train_modes(model_class, cfg):
    """Training modes ``model_class`` can use with this config (RecBole's models: augmented)."""
    return model_class.train_modes(cfg) if _is_efficient(model_class) else ("augmented",)


def _train_mode_message(cfg, model_class):
    mode, name = cfg["train_mode"], cfg["model"]
    modes = supported_train_modes(model_class, cfg)
    if mode == "all_positions" and not _is_efficient(model_class):
        why = (f"train_mode=all_positions needs a model built on recbole_efficient's base; "
               f"{name} trains only in RecBole's augmented mode")
    elif mode == "all_positions" and not model_class.is_causal(cfg):
        why = (f"train_mode=all_positions needs a causal encoder, but {name} with this config "
               "sees future items at every position (the loss would leak targets)")
    else:
        why = f"{name} does not train in train_mode={mode}"
    return f"{why}. Use " + " or ".join(f"--train_mode={m}" for m in modes) + "."


def _split_is_leave_one_out(cfg, model_class):
    split = (cfg.get("eval_args") or {}).get("split") or {}
    return cfg["train_mode"] == "augmented" or "LS" in split


#: Checked for every model, RecBole's included, on top of each model's ``config_spec``.
FRAMEWORK_SPEC = COMMON_SPEC + (
    Choice("train_mode", TRAIN_MODES),
    Rule(("train_mode", "model"),
         lambda c, m: c["train_mode"] in supported_train_modes(m, c), _train_mode_message),
    Rule(("train_mode", "eval_args"), _split_is_leave_one_out,
         lambda c, m: (f"train_mode={c['train_mode']} supports the leave-one-out split only "
                       f"(eval_args.split: {{LS: valid_and_test}}), got "
                       f"{(c.get('eval_args') or {}).get('split')}.")),
)
