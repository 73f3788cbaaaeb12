"""What the serving modules share and the command line needs before torch loads."""

import hashlib
from pathlib import Path


class ServeError(ValueError):
    """Bad start-up input: the server cannot start (one line)."""


class BadRequest(ValueError):
    """A request that cannot be served as sent; nothing of it was applied."""


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_file(path):
    """``path`` as a ``Path``; :class:`ServeError` when no file is there."""
    if not Path(path).is_file():
        raise ServeError(f"no checkpoint at {path}: pass a .pth file written by training "
                         "(saved/<Model>-<time>-<token>/best.pth).")
    return Path(path)
