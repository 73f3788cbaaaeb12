"""Real-time serving of a trained checkpoint: ``recbole-efficient serve``.

:class:`Engine` (users' states, events, recommendations), :func:`create_app` (the HTTP API)
and :class:`StateStore` (write-ahead log and snapshots). Names load their modules on first
use, so ``recbole-efficient serve --help`` starts quickly.
"""

from recbole_efficient.lazy import lazy_getattr

_PUBLIC = {
    "Engine": "recbole_efficient.serve.engine",
    "BadRequest": "recbole_efficient.serve.common",
    "ServeError": "recbole_efficient.serve.common",
    "StateStore": "recbole_efficient.serve.log",
    "Batcher": "recbole_efficient.serve.batcher",
    "create_app": "recbole_efficient.serve.app",
}

__all__ = list(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC)
