"""Diagonal linear recurrence h_t = lamb * h_{t-1} + u_t for the LRU layer.

Three forms of the same recurrence:

* :func:`lru_scan_naive` -- a Python loop over time; the reference.
* :func:`lru_scan` -- a chunked scan with a hand-written backward, for training and
  full-sequence inference (on the CPU short loops; on CUDA one Triton kernel launch per
  direction, ``lru_scan_triton.py``, or matrix products where Triton is off).
* :func:`lru_step` -- one step, for O(1)-per-item incremental inference.

Shapes: ``lamb`` is ``[H]`` (complex, ``|lamb| < 1``), ``u`` is ``[B, L, H]``
and ``h0`` is ``[B, H]``; outputs are ``[B, L, H]``.
"""

from __future__ import annotations

import math

import torch

from recbole_efficient.kernels import triton_support

__all__ = ["lamb_powers", "lru_scan", "lru_scan_naive", "lru_step"]


def _result_dtype(lamb: torch.Tensor, u: torch.Tensor) -> torch.dtype:
    return torch.promote_types(lamb.dtype, u.dtype)


def lamb_powers(lamb: torch.Tensor, n: int) -> torch.Tensor:
    """Return ``[lamb^1, ..., lamb^n]`` with shape ``[n, *lamb.shape]``.

    Computed as ``exp(k * log(lamb))`` in complex128 and cast back to
    ``lamb.dtype``. In complex64 the rounding of ``log(lamb)`` is multiplied
    by ``k`` (measured ~5e-5 relative error at ``k = 4096``) and a sequential
    product drifts with ``k`` as well (~1e-6). In double the result is exact
    up to the final cast (~6e-8 for complex64), for O(n*H) extra work, and
    it stays differentiable.
    Large ``k`` with small ``|lamb|`` underflows cleanly to 0.
    ``lamb`` must be non-zero (``log(0)`` makes the gradient NaN).
    """
    return _powers(lamb, torch.arange(1, n + 1, dtype=torch.float64, device=lamb.device))


def _powers(lamb, exponents):
    """``lamb ** exponents`` (float64 exponents ``[n]``) -> ``[n, *lamb.shape]``, as
    :func:`lamb_powers` computes them."""
    k = exponents.reshape(-1, *([1] * lamb.dim()))
    return torch.exp(k * torch.log(lamb.to(torch.complex128))).to(lamb.dtype)


def lru_scan_naive(lamb: torch.Tensor, u: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Reference scan: a sequential loop over the time axis (dim 1)."""
    dtype = _result_dtype(lamb, u)
    batch, _, hidden = u.shape
    h = torch.zeros(batch, hidden, dtype=dtype, device=u.device) if h0 is None else h0.to(dtype)
    out = []
    for t in range(u.shape[1]):
        h = lamb * h + u[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def _chunked_scan(lamb, u, h0=None, reverse=False):
    """``h_t = lamb * h_{t-1} + u_t`` along dim 1 of contiguous ``u``, or from the right
    (``h_t = lamb * h_{t+1} + u_t``) when ``reverse``; ``h0`` enters before the first step.

    The sequence is cut into ``nc`` chunks of ``C ~ sqrt(L)`` steps: C vectorised steps scan
    every chunk at once from a zero state, nc small steps carry the chunks' end states across
    chunks, one pass adds ``lamb^k * carry`` to each chunk, and the ``L - nc*C`` steps left
    over run one at a time. About 2*sqrt(L) kernel calls and three passes over memory, no
    padding, every value exact up to float rounding.
    """
    batch, length, hidden = u.shape
    chunk = max(1, math.isqrt(length))
    n_chunks = length // chunk
    main = n_chunks * chunk
    rest = length - main
    out = torch.empty_like(u)
    lo = rest if reverse else 0  # the left-over steps come after the chunks in scan order
    u4 = u[:, lo:lo + main].view(batch, n_chunks, chunk, hidden)
    o4 = out[:, lo:lo + main].view(batch, n_chunks, chunk, hidden)

    first, last, step = (chunk - 1, 0, -1) if reverse else (0, chunk - 1, 1)
    o4[:, :, first] = u4[:, :, first]
    for t in range(first + step, last + step, step):
        torch.addcmul(u4[:, :, t], o4[:, :, t - step], lamb, out=o4[:, :, t])

    # carry[k]: state entering chunk k in scan order (h0 for the first one).
    powers = lamb_powers(lamb, chunk)
    if reverse:
        powers = powers.flip(0)  # position t of a chunk is chunk - t steps after its carry
    lamb_c = powers[last]  # lamb^C
    order = range(n_chunks - 1, -1, -1) if reverse else range(n_chunks)
    carry = u.new_zeros(batch, n_chunks, hidden)
    prev = None
    for k in order:
        if prev is None:
            if h0 is not None:
                carry[:, k] = h0
        else:
            torch.addcmul(o4[:, prev, last], carry[:, prev], lamb_c, out=carry[:, k])
        prev = k
    # Without h0 the first chunk in scan order has no carry.
    carried = slice(None) if h0 is not None else \
        slice(0, n_chunks - 1) if reverse else slice(1, n_chunks)
    o4[:, carried].addcmul_(powers, carry[:, carried, None])

    # Left-over steps, continuing from the state after the last chunk.
    h = o4[:, order[-1], last]
    times = range(rest - 1, -1, -1) if reverse else range(main, length)
    for t in times:
        torch.addcmul(u[:, t], h, lamb, out=out[:, t])
        h = out[:, t]
    return out


def _matrix_scan(lamb, u, h0=None, reverse=False):
    """The same recurrence as :func:`_chunked_scan` in a few large matrix products, for GPUs
    (where each of the chunked scan's ~2 sqrt(L) small steps is a kernel launch).

    Chunks of ``C ~ sqrt(L)`` steps: every chunk's scan from a zero state is one product with
    the ``[C, C]`` Toeplitz matrix ``lamb^(i-j)`` (i >= j), the states entering the chunks are
    one product of the chunks' end states with the ``[n, n]`` matrix ``lamb^(C(k-1-m))``
    (m < k), and each chunk adds ``lamb^(i+1) * carry``. O(L sqrt(L) H) arithmetic and
    O(L H) memory per row; the end of the sequence is zero-padded to whole chunks. The
    products are complex GEMMs: they follow torch's TF32 setting for matmuls (off by default).
    """
    if reverse:
        return _matrix_scan(lamb, u.flip(1), h0).flip(1)
    batch, length, hidden = u.shape
    chunk = max(1, math.isqrt(length))
    n_chunks = -(-length // chunk)
    if n_chunks * chunk > length:
        u = torch.cat([u, u.new_zeros(batch, n_chunks * chunk - length, hidden)], 1)
    u = u.view(batch, n_chunks, chunk, hidden)
    exponents = torch.arange(n_chunks * chunk + 1, dtype=torch.float64, device=u.device)
    pw = _powers(lamb, exponents)                     # [nC + 1, H]: lamb^0 ... lamb^(nC)
    pw[0] = 1  # exp(0 * log 0) would be NaN
    steps = torch.arange(chunk, device=u.device)
    diff = steps[:, None] - steps[None]               # i - j
    toeplitz = pw[diff.clamp_min(0)] * (diff >= 0)[..., None]                  # [C, C, H]
    local = torch.einsum("ijh,bnjh->bnih", toeplitz, u)
    blocks = torch.arange(n_chunks, device=u.device)
    gap = blocks[:, None] - 1 - blocks[None]          # k - 1 - m
    across = pw[(chunk * gap).clamp_min(0)] * (gap >= 0)[..., None]            # [n, n, H]
    carry = torch.einsum("kmh,bmh->bkh", across, local[:, :, -1])
    if h0 is not None:
        carry = carry + pw[chunk * blocks] * h0[:, None]                       # lamb^(Ck) h0
    out = local + pw[1:chunk + 1] * carry[:, :, None]                          # lamb^(i+1)
    return out.view(batch, n_chunks * chunk, hidden)[:, :length]


def _scan(lamb, u, h0=None, reverse=False):
    if triton_support.enabled(lamb, u, h0):  # complex64 on CUDA: one Triton launch
        return triton_support.load("lru_scan_triton").scan(lamb, u, h0, reverse)
    return (_matrix_scan if u.is_cuda else _chunked_scan)(lamb, u, h0, reverse)


class _LRUScan(torch.autograd.Function):
    """Chunked scan; backward is the adjoint recurrence run in reverse with conj(lamb)."""

    @staticmethod
    def forward(ctx, lamb, u, h0):
        h = _scan(lamb, u, h0)
        ctx.save_for_backward(lamb, h, h0)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        lamb, h, h0 = ctx.saved_tensors
        # g_t = dL/dh_t + conj(lamb) * g_{t+1}: the gradient of every u_t.
        g = _scan(lamb.conj(), grad_h.contiguous(), reverse=True)
        grad_lamb = grad_h0 = None
        if ctx.needs_input_grad[0]:
            # dL/dlamb = sum_t g_t * conj(h_{t-1}), h_{-1} = h0.
            grad_lamb = (g[:, 1:] * h[:, :-1].conj()).sum((0, 1))
            if h0 is not None:
                grad_lamb = grad_lamb + (g[:, 0] * h0.conj()).sum(0)
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = lamb.conj() * g[:, 0]
        return grad_lamb, g if ctx.needs_input_grad[1] else None, grad_h0


def lru_scan(lamb: torch.Tensor, u: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Chunked scan (:func:`_chunked_scan`; on CUDA the Triton kernel in complex64, else
    :func:`_matrix_scan`) with a hand-written backward.

    Equal to :func:`lru_scan_naive` up to rounding, values and gradients (first order).
    """
    dtype = _result_dtype(lamb, u)
    lamb = lamb.to(dtype)
    u = u.to(dtype).contiguous()
    if h0 is not None:
        h0 = h0.to(dtype)
    return _LRUScan.apply(lamb, u, h0)


def lru_step(lamb: torch.Tensor, h_prev: torch.Tensor, u_t: torch.Tensor) -> torch.Tensor:
    """One recurrence step ``lamb * h_prev + u_t`` (shapes ``[B, H]``)."""
    return lamb * h_prev + u_t
