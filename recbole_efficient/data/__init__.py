"""Datasets: RecBole's with our training modes, fetching by name, converting your own logs.

``SequentialDataset``, ``create_dataset`` and ``data_preparation`` load torch and RecBole on
first use; the fetching and conversion modules do not need them.
"""

import importlib

_PUBLIC = {
    "SequentialDataset": "recbole_efficient.data.dataset",
    "create_dataset": "recbole_efficient.data.dataset",
    "data_preparation": "recbole_efficient.data.dataloader",
}

__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'recbole_efficient.data' has no attribute {name!r}")
