"""The causal product ``out_t = sum_{j<=t} (x_t . y_j) z_j`` (causal linear attention without a
normaliser) as fused Triton kernels, the sequence walks of LinRec's causal linear attention
(``x = phi(q)/sqrt(d), y = phi(k), z = v``) and of ELASTIC's causal dispatcher (its two prefix
sums, ``dispatcher_attention_triton.py``).

One program per (batch, head) walks the sequence in chunks of ``chunk`` positions: inside a
chunk ``tril(X Y^T) Z``, across chunks the running state ``sum_j y_j z_j^T`` (``[Dx, Dz]``) kept
in registers. The gradients are causal products too (``g`` the output's gradient):

* ``dx_t = sum_{j<=t} (g_t . z_j) y_j`` (forward in time),
* ``dy_j = sum_{t>=j} (z_j . g_t) x_t`` and ``dz_j = sum_{t>=j} (y_j . x_t) g_t`` (backward),

which one launch runs side by side (a second grid axis picks the gradient): one launch per
direction, whatever the length, and nothing of size ``L x L`` or ``L x Dx x Dz`` is stored.
Products accumulate in float32; ``tl.dot`` rounds its inputs as
:func:`triton_support.dot_precision` says, so results match torch's float32 matmuls unless
TF32 was allowed there.

:func:`causal_product` is the fused operator, :func:`causal_product_naive` its reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from recbole_efficient.kernels import triton_support

__all__ = ["causal_product", "causal_product_naive"]


@triton.jit
def _sweep(x, sx, y, sy, z, sz, out, so, length, dim_x, dim_z,
           REVERSE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_X: tl.constexpr,
           BLOCK_Z: tl.constexpr, PRECISION: tl.constexpr):
    """One row's causal product: ``x, y [length, dim_x]``, ``z, out [length, dim_z]`` at
    position strides ``sx, sy, sz, so`` (unit stride along features); ``j >= t`` instead of
    ``j <= t`` when ``REVERSE``."""
    steps = tl.arange(0, CHUNK)
    cols_x = tl.arange(0, BLOCK_X)
    cols_z = tl.arange(0, BLOCK_Z)
    on_x = (cols_x < dim_x)[None, :]
    on_z = (cols_z < dim_z)[None, :]
    if REVERSE:
        keep = steps[:, None] <= steps[None, :]
    else:
        keep = steps[:, None] >= steps[None, :]
    state = tl.zeros((BLOCK_X, BLOCK_Z), dtype=tl.float32)
    for start in range(0, length, CHUNK):
        if REVERSE:  # chunks from the end; the first one read may start before position 0
            t = length - start - CHUNK + steps
        else:
            t = start + steps
        inside = ((t >= 0) & (t < length))[:, None]
        # positions outside the sequence load as zeros: they add nothing to the state
        xc = tl.load(x + t[:, None] * sx + cols_x[None, :], mask=inside & on_x, other=0.0)
        yc = tl.load(y + t[:, None] * sy + cols_x[None, :], mask=inside & on_x, other=0.0)
        zc = tl.load(z + t[:, None] * sz + cols_z[None, :], mask=inside & on_z, other=0.0)
        xc, yc, zc = xc.to(tl.float32), yc.to(tl.float32), zc.to(tl.float32)
        mixing = tl.dot(xc, tl.trans(yc), input_precision=PRECISION)
        mixing = tl.where(keep, mixing, 0.0)
        result = tl.dot(mixing, zc, input_precision=PRECISION)
        result += tl.dot(xc, state, input_precision=PRECISION)
        tl.store(out + t[:, None] * so + cols_z[None, :], result.to(out.dtype.element_ty),
                 mask=inside & on_z)
        state += tl.dot(tl.trans(yc), zc, input_precision=PRECISION)


@triton.jit
def _product_kernel(x, y, z, out, sxb, sxh, sxn, syb, syh, syn, szb, szh, szn,
                    heads, length, dim_x, dim_z,
                    CHUNK: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_Z: tl.constexpr,
                    PRECISION: tl.constexpr):
    row = tl.program_id(0)
    b, h = row // heads, row % heads
    _sweep(x + b * sxb + h * sxh, sxn, y + b * syb + h * syh, syn, z + b * szb + h * szh, szn,
           out + row * length * dim_z, dim_z, length, dim_x, dim_z,
           False, CHUNK, BLOCK_X, BLOCK_Z, PRECISION)


@triton.jit
def _product_backward_kernel(x, y, z, g, dx, dy, dz, sxb, sxh, sxn, syb, syh, syn,
                             szb, szh, szn, sgb, sgh, sgn, heads, length, dim_x, dim_z,
                             CHUNK: tl.constexpr, BLOCK_X: tl.constexpr,
                             BLOCK_Z: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0)
    which = tl.program_id(1)
    b, h = row // heads, row % heads
    x += b * sxb + h * sxh
    y += b * syb + h * syh
    z += b * szb + h * szh
    g += b * sgb + h * sgh
    if which == 0:    # dx_t = sum_{j<=t} (g_t . z_j) y_j
        _sweep(g, sgn, z, szn, y, syn, dx + row * length * dim_x, dim_x, length, dim_z, dim_x,
               False, CHUNK, BLOCK_Z, BLOCK_X, PRECISION)
    elif which == 1:  # dy_j = sum_{t>=j} (z_j . g_t) x_t
        _sweep(z, szn, g, sgn, x, sxn, dy + row * length * dim_x, dim_x, length, dim_z, dim_x,
               True, CHUNK, BLOCK_Z, BLOCK_X, PRECISION)
    else:             # dz_j = sum_{t>=j} (y_j . x_t) g_t
        _sweep(y, syn, x, sxn, g, sgn, dz + row * length * dim_z, dim_z, length, dim_x, dim_z,
               True, CHUNK, BLOCK_X, BLOCK_Z, PRECISION)


def _rows(t):
    """``t [B, H, N, d]`` with unit stride along d (head-split views pass without a copy) and
    its strides along B, H, N."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t, t.stride()[:3]


def _block(dim):
    return max(16, triton.next_power_of_2(dim))


class _CausalProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, z, chunk):
        (x, sx), (y, sy), (z, sz) = _rows(x), _rows(y), _rows(z)
        batch, heads, length, dim_x = x.shape
        dim_z = z.size(-1)
        out = x.new_empty(batch, heads, length, dim_z)
        ctx.save_for_backward(x, y, z)
        ctx.chunk = chunk
        if out.numel():
            _product_kernel[(batch * heads,)](
                x, y, z, out, *sx, *sy, *sz, heads, length, dim_x, dim_z, CHUNK=chunk,
                BLOCK_X=_block(dim_x), BLOCK_Z=_block(dim_z),
                PRECISION=triton_support.dot_precision())
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y, z = ctx.saved_tensors
        (_, sx), (_, sy), (_, sz), (grad, sg) = _rows(x), _rows(y), _rows(z), _rows(grad)
        batch, heads, length, dim_x = x.shape
        dim_z = z.size(-1)
        dx, dy, dz = (x.new_empty(batch, heads, length, d) for d in (dim_x, dim_x, dim_z))
        if dx.numel() and dz.numel():
            _product_backward_kernel[(batch * heads, 3)](
                x, y, z, grad, dx, dy, dz, *sx, *sy, *sz, *sg, heads, length, dim_x, dim_z,
                CHUNK=ctx.chunk, BLOCK_X=_block(dim_x), BLOCK_Z=_block(dim_z),
                PRECISION=triton_support.dot_precision())
        else:
            dx, dy, dz = (t.zero_() for t in (dx, dy, dz))
        return dx, dy, dz, None


def causal_product(x, y, z, chunk=32):
    """``out_t = sum_{j<=t} (x_t . y_j) z_j`` along dim 2 of ``x, y [B, H, N, Dx]``,
    ``z [B, H, N, Dz]`` (float32), differentiable; ``chunk`` a power of two >= 16. One kernel
    launch per direction."""
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two >= 16, got {chunk}")
    return _CausalProduct.apply(x, y, z, chunk)


def causal_product_naive(x, y, z):
    """Reference for :func:`causal_product`: the ``[N, N]`` matrix ``tril(x y^T)``, written
    out."""
    length = x.size(-2)
    causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
    return ((x @ y.transpose(-1, -2)) * causal) @ z
