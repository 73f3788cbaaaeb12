"""Compatibility shims that let RecBole 1.2.1 run on NumPy 2 and torch >= 2.6.

RecBole calls ``np.float_``/``np.complex_``/``np.unicode_`` (removed in NumPy 2) from
``Config.compatibility_settings`` and uses ``np.float``/``np.bool`` in its metrics. We
restore the removed NumPy 1 spellings as aliases of the types they always meant; nothing
else in NumPy is touched. Importing :mod:`recbole_efficient` applies this in every process
that imports it, Ray workers included.
"""

from contextlib import contextmanager

import numpy as np

# NumPy 1 names removed in NumPy 2 -> what they were aliases of.
_REMOVED_NUMPY_NAMES = {
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "bool8": np.bool_,
    "int0": np.intp,
    "uint0": np.uintp,
}

# Builtin aliases that RecBole's Config sets and its metrics use (np.float, np.bool, ...).
_BUILTIN_ALIASES = {
    "bool": bool,
    "int": int,
    "float": float,
    "complex": complex,
    "object": object,
    "str": str,
    "long": int,
    "unicode": str,
}


def install_numpy_aliases():
    """Add the NumPy 1 names RecBole needs when they are missing; idempotent."""
    for name, target in _REMOVED_NUMPY_NAMES.items():
        if name not in np.__dict__:
            setattr(np, name, target)


def install_builtin_aliases():
    """What RecBole's ``Config.compatibility_settings`` intends, without ``np.float_``."""
    for name, target in _BUILTIN_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, target)


@contextmanager
def keep_autograd_anomaly_mode():
    """Importing RecBole's model modules runs ``torch.autograd.set_detect_anomaly(True)`` (in
    ``sequential_recommender/sine.py``), which slows every backward pass of the process many
    times over and turns harmless NaNs into errors. Around such imports, keep the mode the
    process had."""
    import torch

    enabled, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    try:
        yield
    finally:
        torch.autograd.set_detect_anomaly(enabled, check_nan)
