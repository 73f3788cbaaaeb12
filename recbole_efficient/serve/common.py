"""What the serving modules share and the command line needs before torch loads."""

import hashlib


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
