"""Single-precision math for kernels whose sums or divisions do not fit half precision."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["single_precision"]


def single_precision(*tensors):
    """``(context, tensors)``: ``tensors`` in at least float32 (``None`` stays ``None``), and a
    context with autocast off for the math, since autocast would run matmuls in half precision
    again."""
    first = next(t for t in tensors if t is not None)
    dtype = torch.promote_types(first.dtype, torch.float32)
    device = first.device.type
    # Entering autocast and no-op conversions cost microseconds each: skip them where they
    # change nothing (streaming steps in float32).
    ctx = torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) \
        else contextlib.nullcontext()
    return ctx, [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]
