"""Chunk sizes of the chunked causal kernels (linear attention, dispatcher attention)."""

__all__ = ["balanced_chunks"]


def balanced_chunks(length, chunk_size):
    """``(chunk, n_chunks)``: as few equal chunks of at most ``chunk_size`` positions as cover
    ``length``, so that the padding ``chunk * n_chunks - length`` is less than ``n_chunks``
    (200 positions at ``chunk_size`` 64: 4 chunks of 50, none padded, not 4 of 64)."""
    n_chunks = max(1, -(-length // max(1, chunk_size)))
    return -(-length // n_chunks), n_chunks
