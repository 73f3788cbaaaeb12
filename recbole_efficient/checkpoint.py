"""Checkpoints that load with ``torch.load(weights_only=True)``, written atomically.

RecBole pickles its whole ``Config`` object into every checkpoint, and unpickling can run
arbitrary code. We store the config as plain data (the user's inputs plus the final values,
both reduced to primitives) so the default load never unpickles Python objects.

A training run writes into its own *run folder* ``<checkpoint_dir>/<Model>-<time>-<token>/``:
``best.pth`` (the best validation state, RecBole's ``saved_model_file``) and ``latest.pth``
(the state after the last completed epoch). Both hold the full training state, RNG states
included, so either one resumes the run.
"""

import enum
import os
import pickle
import random
import secrets
import tempfile
from pathlib import Path

import numpy as np
import torch
from recbole.utils import get_local_time

from recbole_efficient.config import Config
from recbole_efficient.model import get_model

FORMAT = "recbole_efficient/1"
BEST = "best.pth"
LATEST = "latest.pth"


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
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A crash or Ctrl-C during the write leaves the previous file intact.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state, format=FORMAT), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def make_run_dir(checkpoint_dir, model_name):
    """Create and return a new, unique run folder ``<Model>-<local time>-<random token>``.

    The folder is created exclusively, so two runs started in the same second never share it.
    """
    os.makedirs(checkpoint_dir, exist_ok=True)
    while True:
        path = Path(checkpoint_dir) / f"{model_name}-{get_local_time()}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def resume_file(path):
    """The checkpoint to resume from: ``path`` itself, or a run folder's ``latest.pth``."""
    path = Path(path)
    if path.is_dir():
        for name in (LATEST, BEST):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"{path} holds no {LATEST} or {BEST}: pass a run folder written by recbole_efficient "
            "(saved/<Model>-<time>-<token>/) or one of its .pth files.")
    if not path.is_file():
        raise FileNotFoundError(f"Nothing to resume at {path}: no such checkpoint or run folder.")
    return path


def rng_state(generator=None):
    """Python, NumPy and torch (CPU, CUDA) RNG states, and ``generator``'s, as plain data."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state() if generator is not None else None,
    }


def set_rng_state(state, generator=None):
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])


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


#: Inputs that describe the processes of a run, not the run itself (set again by ``run``).
_PROCESS_KEYS = ("local_rank", "world_size", "nproc", "ip", "port", "offset")


def config_from_checkpoint(checkpoint, config_dict=None, model=None, dataset=None,
                           config_file_list=None, read_cmd_line=False):
    """Rebuild the training Config from a checkpoint's plain-data config.

    ``config_dict`` (and the command line when ``read_cmd_line``) override the saved inputs;
    ``model``/``dataset``, when given, must match the checkpoint's.
    """
    saved = checkpoint["config"]
    if isinstance(saved, dict):
        for key, given in (("model", model), ("dataset", dataset)):
            if given is not None and given != saved[key]:
                raise ValueError(f"The checkpoint was trained with {key}={saved[key]}, not "
                                 f"{given}: drop --{key} when resuming, or give another checkpoint.")
        inputs = {k: v for k, v in saved["inputs"].items() if k not in _PROCESS_KEYS}
        inputs.update(config_dict or {})
        config = Config(model=saved["model"], dataset=saved["dataset"], config_dict=inputs,
                        config_file_list=config_file_list, read_cmd_line=read_cmd_line)
        _checkpoint_defaults(config, saved.get("final") or {})
        return config
    # A trusted RecBole-format checkpoint holds the Config object itself.
    _checkpoint_defaults(saved, saved.final_config_dict)
    for key, value in (config_dict or {}).items():
        saved[key] = value
    return saved


def _checkpoint_defaults(config, saved_keys):
    """Keys the model gained after a checkpoint was saved (absent from ``saved_keys``) get the
    value the checkpoint was trained with, unless this run sets them (``config_dict``, a yaml
    file or the command line)."""
    defaults = getattr(get_model(config["model"]), "checkpoint_defaults", {})
    given = getattr(config, "external_config_dict", {}) or {}
    for key, value in defaults.items():
        if key not in saved_keys and key not in given:
            config[key] = value
