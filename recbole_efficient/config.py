"""RecBole ``Config`` that knows our models, our yaml files and current NumPy."""

import functools
import sys
from logging import getLogger

import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType, argument_list

from recbole_efficient import compat, distributed
from recbole_efficient.model import MODELS, get_model, is_efficient_model
from recbole_efficient.property_files import properties_dir, recbole_properties_dir
from recbole_efficient.validation import (BASELINE_SPECS, COMMON_SPEC, Choice, ConfigError, Rule,
                                          collect_spec, likely_typos, spec_keys, validate)

TRAIN_MODES = ("augmented", "all_positions", "cloze")


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
        if not self._read_cmd_line:
            return {}
        try:
            cmd = super()._load_cmd_line()
        except SyntaxError:  # RecBole's message for a key given twice with different values
            seen, twice = {}, []
            for arg in sys.argv[1:]:
                key, _, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
                if key in seen and seen[key] != value and key not in twice:
                    twice.append(key)
                seen.setdefault(key, value)
            if not twice:
                raise
            raise ConfigError([f"--{key} is given twice with different values; keep one of them."
                               for key in twice]) from None
        cmd.pop("resume", None)  # a flag of run_recbole_efficient.py, not a setting of the run
        return cmd

    def _get_model_and_dataset(self, model, dataset):
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
        props, rb_props = properties_dir(), recbole_properties_dir()
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
        # Right after the merge, before RecBole's own checks (whose bare errors would speak
        # first), devices, samplers and any data.
        cfg = self.final_config_dict
        cfg["model"], cfg["dataset"] = self.model, self.dataset
        cfg["train_mode"] = cfg.get("train_mode") or "augmented"
        if "local_rank" not in cfg:  # multi-process workers: run() has warned once already
            for key, meant in likely_typos(self.external_config_dict, known_keys()):
                getLogger().warning(f"Unknown config key '{key}': did you mean '{meant}'? "
                                    "Nothing reads it as spelled.")
        self._default_negative_sampling()
        validate(cfg, self.model_class, extra_spec=FRAMEWORK_SPEC, defaults=self.internal_config_dict)
        try:
            super()._set_default_parameters()
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as err:
            raise ConfigError([str(err)]) from None

    def _default_negative_sampling(self):
        """Unless the user set ``train_neg_sample_args``, a sequential model samples what its
        loss needs: nothing for CE (RecBole's default draws a negative per row, which CE
        refuses; RecBole-GNN's sequential base yaml makes the same choice), RecBole's uniform
        sampler for BPR in augmented mode (our model yamls set none, for CE)."""
        cfg = self.final_config_dict
        if "train_neg_sample_args" in self.external_config_dict \
                or not _samples_by_loss_type(cfg, self.model_class):
            return
        if cfg.get("loss_type") == "CE":
            cfg["train_neg_sample_args"] = None
        elif cfg.get("loss_type") == "BPR" and cfg["train_mode"] == "augmented" \
                and cfg.get("train_neg_sample_args") is None:
            cfg["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": 1}

    def _init_device(self):
        if "local_rank" in self.final_config_dict:
            distributed.init_process_group(self.final_config_dict)
        else:
            super()._init_device()


def supported_train_modes(model_class, cfg):
    """Training modes ``model_class`` can use with this config (RecBole's models: augmented)."""
    return model_class.train_modes(cfg) if is_efficient_model(model_class) else ("augmented",)


def _train_mode_message(cfg, model_class):
    mode, name = cfg["train_mode"], cfg["model"]
    modes = supported_train_modes(model_class, cfg)
    if mode == "all_positions" and not is_efficient_model(model_class):
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


def _samples_by_loss_type(cfg, model_class):
    """Sequential models whose ``loss_type`` decides negative sampling (RecBole's rule)."""
    return cfg.get("MODEL_TYPE") == ModelType.SEQUENTIAL and not hasattr(model_class, "input_type")


def _negatives_match_loss(cfg, model_class):
    if not _samples_by_loss_type(cfg, model_class):
        return True
    sampling = cfg.get("train_neg_sample_args") is not None
    if cfg["loss_type"] == "CE":
        return not sampling
    return sampling or cfg["loss_type"] != "BPR" or cfg["train_mode"] != "augmented"


def _negatives_message(cfg, model_class):
    value = cfg["train_neg_sample_args"]
    if cfg["loss_type"] == "CE":
        return (f"train_neg_sample_args={value!r} must be None with loss_type=CE: CE scores "
                "every item, so no negatives are drawn. Drop train_neg_sample_args, or use "
                "--loss_type=BPR.")
    return (f"train_neg_sample_args={value!r}: loss_type=BPR in train_mode=augmented needs a "
            "negative item per row. Drop train_neg_sample_args (RecBole's uniform sampler), "
            "or set e.g. --train_neg_sample_args=\"{'distribution': 'uniform', 'sample_num': 1}\".")


#: Checked for every model, RecBole's included, on top of each model's ``config_spec``.
FRAMEWORK_SPEC = COMMON_SPEC + distributed.DISTRIBUTED_SPEC + (
    Rule(("loss_type", "train_neg_sample_args", "train_mode"), _negatives_match_loss,
         _negatives_message),
    Choice("train_mode", TRAIN_MODES),
    Rule(("train_mode", "model"),
         lambda c, m: c["train_mode"] in supported_train_modes(m, c), _train_mode_message),
    Rule(("train_mode", "eval_args"), _split_is_leave_one_out,
         lambda c, m: (f"train_mode={c['train_mode']} supports the leave-one-out split only "
                       f"(eval_args.split: {{LS: valid_and_test}}), got "
                       f"{(c.get('eval_args') or {}).get('split')}.")),
)


#: Flags of the command line and of RecBole's multi-process path that reach the config.
_RUN_KEYS = ("model", "dataset", "config_files", "nproc", "world_size", "ip", "port",
             "group_offset", "offset", "local_rank")


@functools.lru_cache(maxsize=1)
def known_keys():
    """Every key RecBole or we know: all yaml files (RecBole's and ours), RecBole's argument
    lists, every declared spec, and the run flags."""
    names = set(_RUN_KEYS)
    for file in [*recbole_properties_dir().rglob("*.yaml"), *properties_dir().rglob("*.yaml")]:
        if file.name not in ("url.yaml", "kg_url.yaml"):  # dataset names -> download links
            names.update(yaml.safe_load(file.read_text(encoding="utf-8")) or {})
    for group in ("general_arguments", "training_arguments", "evaluation_arguments",
                  "dataset_arguments"):
        names.update(getattr(argument_list, group))
    specs = [FRAMEWORK_SPEC, *BASELINE_SPECS.values()]
    for model_class in MODELS.values():
        keys, rules = collect_spec(model_class)
        specs.append([*keys.values(), *rules])
    for spec in specs:
        names.update(spec_keys(spec))
    return frozenset(names)
