"""Checkpoints that load with ``torch.load(weights_only=True)``.

RecBole pickles its whole ``Config`` object into every checkpoint, and unpickling can run
arbitrary code. We store the config as plain data (the user's inputs plus the final values,
both reduced to primitives) so the default load never unpickles Python objects.
"""

import enum
import pickle

import torch

FORMAT = "recbole_efficient/1"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs full unpickling, which the caller has not allowed."""


def to_primitive(value):
    """``value`` as nested dict/list/str/int/float/bool/None, or ``None`` if impossible."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return None
    if isinstance(value, (list, tuple)):
        return [to_primitive(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_primitive(v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return value.item()
    return None


def config_state(config):
    """Plain-data picture of a RecBole/recbole_efficient ``Config``."""
    inputs = getattr(config, "external_config_dict", {}) or {}
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "inputs": {k: to_primitive(v) for k, v in inputs.items()},
        "final": {k: to_primitive(v) for k, v in config.final_config_dict.items()},
    }


def save_checkpoint(path, state):
    state = dict(state, format=FORMAT)
    torch.save(state, path)


def load_checkpoint(path, map_location="cpu", trust_checkpoint=False):
    """Load ``path`` with ``weights_only=True``; full unpickling only if trusted."""
    path = str(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_checkpoint:
            raise UnsafeCheckpointError(
                f"{path} is not a safe recbole_efficient checkpoint: it contains pickled Python "
                "objects (RecBole's own checkpoints pickle their Config), and unpickling can run "
                "arbitrary code. If, and only if, you trust where this file came from, load it "
                "with trust_checkpoint=True (CLI: --trust_checkpoint=True)."
            ) from err
    return torch.load(path, map_location=map_location, weights_only=False)
