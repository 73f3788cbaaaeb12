"""When the fused Triton kernels run, and how their matrix products round.

The Triton kernels (``*_triton.py`` beside each operator's torch form) run on CUDA tensors in
float32 when Triton imports; every other case keeps the torch form. Setting the environment
variable ``RECBOLE_EFFICIENT_TRITON=0`` keeps the torch forms on CUDA too (to compare the
two, or to work around a driver that cannot compile them).

The kernel modules import Triton at module level; import them only through :func:`load`
after :func:`enabled` said yes, so that CPU users never pay Triton's import. Under
``TRITON_INTERPRET=1`` (set before the kernel module is first imported) Triton runs its
kernels in Python on CPU tensors: that is how the tests check them without a GPU.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

__all__ = ["available", "enabled", "load", "dot_precision", "ENV"]

ENV = "RECBOLE_EFFICIENT_TRITON"
_DTYPES = (torch.float32, torch.complex64)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Triton imports (CPU-only torch wheels for some platforms ship without it)."""
    try:
        importlib.import_module("triton")
    except Exception:  # ImportError, or a broken install raising something else
        return False
    return True


def enabled(*tensors) -> bool:
    """The fused kernels apply: every tensor given (``None`` skipped) is a CUDA tensor in
    float32 (complex64 for complex ones), Triton imports, and ``RECBOLE_EFFICIENT_TRITON`` is
    not ``0``."""
    if os.environ.get(ENV, "1") == "0":
        return False
    if not all(t.is_cuda and t.dtype in _DTYPES for t in tensors if t is not None):
        return False
    return available()


def load(name: str):
    """The kernel module ``recbole_efficient.kernels.<name>`` (imported on first use)."""
    return importlib.import_module(f"recbole_efficient.kernels.{name}")


def dot_precision() -> str:
    """``tl.dot``'s ``input_precision`` that matches torch's float32 matmuls: TF32 only where
    the user allowed it for matmuls (``torch.backends.cuda.matmul.fp32_precision``, or the
    older ``allow_tf32``; off by default), IEEE float32 otherwise."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")
    if precision in ("tf32", "ieee"):
        return precision
    try:
        return "tf32" if matmul.allow_tf32 else "ieee"
    except RuntimeError:  # torch refuses the old flag once the new API was used
        return "ieee"
