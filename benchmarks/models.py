"""Which models a benchmark runs, and each one built from its yaml defaults on a synthetic
dataset stub.

Kept apart from running the models (:mod:`benchmarks.steps`) and from measuring them
(:mod:`benchmarks.measure`): this is the only module that knows how a model's settings are
found (RecBole's yaml, then ours, then the command line's sizes and overrides).
"""

from __future__ import annotations

import torch

import recbole_efficient
from recbole_efficient.data.dataset import target_list_field
from recbole_efficient.model import (MODELS, EfficientSequentialRecommender, get_model,
                                     is_efficient_model)
from recbole_efficient.optim import build_optimizer
from recbole_efficient.property_files import (merged_yaml, properties_dir,
                                              recbole_properties_dir)

from benchmarks.steps import recbole_all_positions_loss

# Sequence lengths and hidden sizes: keys by which each model spells them (first match wins
# for reading, every key the model has is written).
SIZE_KEYS = {
    "hidden_size": ("hidden_size", "embedding_size"),
    "n_layers": ("n_layers", "num_layers"),
}


def default_models(baselines=("SASRec",)):
    """Our registered models, then RecBole's ``baselines`` that are not among them."""
    return list(MODELS) + [name for name in baselines if name not in MODELS]


def model_yaml_defaults(name):
    """The model's own yaml keys: RecBole's ``properties/model/<name>.yaml`` then ours."""
    return merged_yaml([recbole_properties_dir() / "model" / f"{name}.yaml",
                        properties_dir() / "model" / f"{name}.yaml"])


def has_floor(name):
    """Whether model ``name`` implements ``drop_sequence_mixer`` (RecBole's models do not)."""
    cls = get_model(name)
    return is_efficient_model(cls) and \
        cls.drop_sequence_mixer is not EfficientSequentialRecommender.drop_sequence_mixer


def size_overrides(name, hidden_size=None, n_layers=None, extra=None):
    """Config keys to override for ``name``: only keys its yaml defines.

    ``hidden_size`` sets every size key of the model (GRU4Rec: ``embedding_size`` and the
    GRU's ``hidden_size``); ``n_layers`` sets ``n_layers`` or ``num_layers``; ``extra``
    (``{key: value}``) is applied where the model's yaml has the key.
    """
    defaults = model_yaml_defaults(name)
    out = {}
    for value, keys in ((hidden_size, SIZE_KEYS["hidden_size"]), (n_layers, SIZE_KEYS["n_layers"])):
        if value is None:
            continue
        for key in keys:
            if key in defaults:
                out[key] = value
    for key, value in (extra or {}).items():
        if key in defaults:
            out[key] = value
    return out


class SyntheticDataset:
    """The little of a RecBole dataset that sequential model constructors read."""

    def __init__(self, config, n_items, n_users=2):
        self.config = config
        self.iid_field = config["ITEM_ID_FIELD"]
        self.uid_field = config["USER_ID_FIELD"]
        self.item_num = n_items
        self.user_num = n_users

    def num(self, field):
        if field == self.iid_field:
            return self.item_num
        if field == self.uid_field:
            return self.user_num
        raise KeyError(f"SyntheticDataset has no field {field!r} (only item and user ids).")


def allow_many_graphs(limit=64):
    """Let one process compile the sublayers of many models: ``torch.compile`` keeps at most
    ``recompile_limit`` (8) graphs per function and runs eager past it, and every model, mode
    and dropout rate of a benchmark's list adds graphs of the same feed-forward code."""
    torch._dynamo.config.recompile_limit = max(limit, torch._dynamo.config.recompile_limit)


def build_model(name, max_len, n_items, overrides=None, train_mode=None, device="cpu", seed=0,
                floor=False):
    """``(model, config, info)`` for model ``name`` with ``MAX_ITEM_LIST_LENGTH = max_len``.

    ``n_items`` is the item vocabulary including the padding id 0 (``dataset.num(item)``).
    ``train_mode`` (None: the model's yaml default) is our models' training mode; RecBole's
    models train ``augmented``, or with ``all_positions`` through
    :func:`benchmarks.steps.recbole_all_positions_loss` (``info["loss_fn"]``). ``floor``: the
    model with its sequence mixer removed (``drop_sequence_mixer``), the floor its cost is
    compared with.
    """
    cls = get_model(name)
    efficient = is_efficient_model(cls)
    if str(device).startswith("cuda"):
        # RecBole's Config sets CUDA_VISIBLE_DEVICES=gpu_id; once CUDA is initialised that
        # no longer changes which device "cuda:i" means.
        torch.cuda.init()
    config_dict = {"MAX_ITEM_LIST_LENGTH": int(max_len), "show_progress": False, "seed": seed}
    config_dict.update(overrides or {})
    if efficient and train_mode:
        config_dict["train_mode"] = train_mode
    loss_type = config_dict.get("loss_type", model_yaml_defaults(name).get("loss_type", "CE"))
    if loss_type == "CE":
        config_dict["train_neg_sample_args"] = None
    config = recbole_efficient.Config(model=name, dataset="ml-100k", config_dict=config_dict,
                                      read_cmd_line=False)
    torch.manual_seed(seed)
    model = cls(config, SyntheticDataset(config, n_items))
    if floor:
        model.drop_sequence_mixer()
    model = model.to(device)
    if hasattr(model, "device"):  # RecBole models create some tensors on self.device
        model.device = torch.device(device)
    config["device"] = torch.device(device)
    mode = (config["train_mode"] or "augmented") if efficient else "augmented"
    loss_fn = None
    if not efficient and train_mode == "all_positions":
        mode = "all_positions"
        target = target_list_field(config)
        loss_fn = lambda m, batch: recbole_all_positions_loss(m, batch, target)  # noqa: E731
    info = {
        "model": name,
        "train_mode": mode,
        "loss_fn": loss_fn,
        "floor": bool(floor),
        "n_params": sum(p.numel() for p in model.parameters()),
        "loss_type": config["loss_type"],
        "overrides": dict(overrides or {}),
    }
    return model, config, info


def optimizer_for(model, config):
    """The optimiser our trainer builds from ``learner`` / ``learning_rate`` / ``weight_decay``."""
    return build_optimizer(model, config["learner"], config["learning_rate"],
                           config["weight_decay"])
