"""Datasets: RecBole's with our training modes, fetching by name, converting your own logs.

``SequentialDataset``, ``create_dataset`` and ``data_preparation`` load torch and RecBole on
first use; the fetching and conversion modules do not need them.
"""

from recbole_efficient.lazy import lazy_getattr

_PUBLIC = {
    "SequentialDataset": "recbole_efficient.data.dataset",
    "create_dataset": "recbole_efficient.data.dataset",
    "data_preparation": "recbole_efficient.data.dataloader",
}

__all__ = list(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC)
