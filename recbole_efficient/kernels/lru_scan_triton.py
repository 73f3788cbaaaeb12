"""The LRU recurrence ``h_t = lamb * h_{t-1} + u_t`` as one Triton kernel launch.

Each program owns one row and a block of channels and walks the sequence in chunks of
``chunk`` steps: a parallel prefix scan (``tl.associative_scan`` over the affine maps
``x -> lamb x + u_t``) solves a chunk from a zero state, and the state carried in from the
previous chunk enters as ``lamb^(s+1) * h`` with exact powers read from a table
(:func:`lru_scan.lamb_powers`). Complex numbers travel as (real, imaginary) pairs, the layout
of ``torch.view_as_real``. The backward pass is the same kernel run from the right with
``conj(lamb)`` (see ``lru_scan._LRUScan``), so training costs one launch per direction
instead of the ~2 sqrt(L) launches of the chunked torch scan.

:func:`scan` is the entry point; ``lru_scan.lru_scan`` calls it on CUDA (complex64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from recbole_efficient.kernels.lru_scan import lamb_powers

__all__ = ["scan"]


@triton.jit
def _then(a_re, a_im, b_re, b_im, c_re, c_im, d_re, d_im):
    """The affine map ``x -> a x + b`` followed by ``x -> c x + d``, complex."""
    return (c_re * a_re - c_im * a_im, c_re * a_im + c_im * a_re,
            c_re * b_re - c_im * b_im + d_re, c_re * b_im + c_im * b_re + d_im)


@triton.jit
def _scan_kernel(u_ptr, out_ptr, lamb_ptr, powers_ptr, h0_ptr, length, hidden,
                 stride_b, stride_t,
                 HAS_H0: tl.constexpr, REVERSE: tl.constexpr, CHUNK: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    row = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    on = channels < hidden
    re = 2 * channels  # interleaved (real, imaginary)
    steps = tl.arange(0, CHUNK)
    lamb_re = tl.load(lamb_ptr + re, mask=on, other=0.0)
    lamb_im = tl.load(lamb_ptr + re + 1, mask=on, other=0.0)
    zero = tl.zeros((CHUNK, BLOCK_H), dtype=lamb_re.dtype)
    a_re, a_im = zero + lamb_re[None, :], zero + lamb_im[None, :]
    table = powers_ptr + steps[:, None] * (2 * hidden) + re[None, :]  # lamb^(s+1)
    p_re = tl.load(table, mask=on[None, :], other=0.0)
    p_im = tl.load(table + 1, mask=on[None, :], other=0.0)
    if HAS_H0:
        h_re = tl.load(h0_ptr + row * 2 * hidden + re, mask=on, other=0.0)
        h_im = tl.load(h0_ptr + row * 2 * hidden + re + 1, mask=on, other=0.0)
    else:
        h_re = tl.zeros((BLOCK_H,), dtype=lamb_re.dtype)
        h_im = tl.zeros((BLOCK_H,), dtype=lamb_re.dtype)
    last = steps[:, None] == CHUNK - 1
    for start in range(0, length, CHUNK):
        s = start + steps  # steps in scan order
        if REVERSE:
            t = length - 1 - s
        else:
            t = s
        inside = (s < length)[:, None] & on[None, :]
        offsets = row * stride_b + t[:, None] * stride_t + re[None, :]
        u_re = tl.load(u_ptr + offsets, mask=inside, other=0.0)
        u_im = tl.load(u_ptr + offsets + 1, mask=inside, other=0.0)
        _, _, x_re, x_im = tl.associative_scan((a_re, a_im, u_re, u_im), 0, _then)
        x_re += p_re * h_re[None, :] - p_im * h_im[None, :]
        x_im += p_re * h_im[None, :] + p_im * h_re[None, :]
        tl.store(out_ptr + offsets, x_re, mask=inside)
        tl.store(out_ptr + offsets + 1, x_im, mask=inside)
        # the chunk's last state carries on (past the end it is never read)
        h_re = tl.sum(tl.where(last, x_re, 0.0), axis=0)
        h_im = tl.sum(tl.where(last, x_im, 0.0), axis=0)


def scan(lamb, u, h0=None, reverse=False, chunk=64, block_h=16):
    """``h_t = lamb * h_{t-1} + u_t`` along dim 1 of ``u [B, L, H]`` (complex), from the right
    (``h_t = lamb * h_{t+1} + u_t``) when ``reverse``; ``h0 [B, H]`` enters before the first
    step. ``chunk`` and ``block_h`` are powers of two. One kernel launch."""
    batch, length, hidden = u.shape
    u = u.resolve_conj().contiguous()
    lamb = lamb.to(u.dtype).resolve_conj().contiguous()
    out = torch.empty_like(u)
    if length == 0 or batch == 0:
        return out
    u_real = torch.view_as_real(u)
    powers = torch.view_as_real(lamb_powers(lamb, chunk).contiguous())
    h0_real = torch.view_as_real(h0.to(u.dtype).resolve_conj().contiguous()) \
        if h0 is not None else u_real  # not read without h0
    grid = (batch, triton.cdiv(hidden, block_h))
    _scan_kernel[grid](u_real, torch.view_as_real(out), torch.view_as_real(lamb), powers,
                       h0_real, length, hidden, u_real.stride(0), u_real.stride(1),
                       HAS_H0=h0 is not None, REVERSE=reverse, CHUNK=chunk, BLOCK_H=block_h)
    return out
