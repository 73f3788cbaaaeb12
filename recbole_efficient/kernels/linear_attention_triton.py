"""Causal linear attention without a normaliser, ``O = tril(Q K^T) V``, as one Triton launch
per direction.

The feature maps are applied before (``linear_attention.causal_linear_attention`` passes
``Q = phi(q) / sqrt(d_h)`` and ``K = phi(k)``; autograd differentiates them). One program per
row of ``[..., L, d]`` walks the sequence in chunks of ``chunk`` positions with a running
``d x d`` state ``S = sum K_j^T V_j`` of the chunks before, kept in registers::

    O_c  = tril(Q_c K_c^T) V_c + Q_c S        S += K_c^T V_c

The backward, with ``R = sum Q_t^T dO_t`` over the chunks after (a reverse walk)::

    dQ_c = tril(dO_c V_c^T) K_c + dO_c S^T
    dK_c = tril(dO_c V_c^T)^T Q_c + V_c R^T
    dV_c = tril(Q_c K_c^T)^T dO_c + K_c R

Both walks of the backward run in the same program, so training costs two launches in all
and nothing of size ``L x L`` or ``L x d x d`` is stored. Products accumulate in float32;
``tl.dot`` rounds its inputs as :func:`triton_support.dot_precision` says, so the results
match torch's float32 matmuls unless TF32 was allowed there.

:func:`causal_linear_attention_fused` is the entry point.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from recbole_efficient.kernels import triton_support

__all__ = ["causal_linear_attention_fused"]


@triton.jit
def _chunk_offsets(row, start, length, d, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Offsets of one chunk of a row and the mask of its real (position, feature) pairs."""
    positions = start + tl.arange(0, CHUNK)
    features = tl.arange(0, BLOCK_D)
    # int64: B * H * L * d can pass 2^31 where int32 offsets would wrap
    offsets = row.to(tl.int64) * length * d + positions[:, None] * d + features[None, :]
    inside = (positions < length)[:, None] & (features < d)[None, :]
    return offsets, inside


@triton.jit
def _forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, length, d,
                    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0)
    steps = tl.arange(0, CHUNK)
    causal = steps[:, None] >= steps[None, :]
    state = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    for start in range(0, length, CHUNK):
        offsets, inside = _chunk_offsets(row, start, length, d, CHUNK, BLOCK_D)
        # zeros past the end and past d: they add nothing to any product
        q = tl.load(q_ptr + offsets, mask=inside, other=0.0)
        k = tl.load(k_ptr + offsets, mask=inside, other=0.0)
        v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
        scores = tl.where(causal, tl.dot(q, tl.trans(k), input_precision=PRECISION), 0.0)
        out = tl.dot(scores, v, input_precision=PRECISION)
        out += tl.dot(q, state, input_precision=PRECISION)
        tl.store(o_ptr + offsets, out, mask=inside)
        state += tl.dot(tl.trans(k), v, input_precision=PRECISION)


@triton.jit
def _backward_kernel(q_ptr, k_ptr, v_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, length, d,
                     CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0)
    steps = tl.arange(0, CHUNK)
    causal = steps[:, None] >= steps[None, :]
    # dQ needs the state of the keys before, dK and dV that of the queries after: one walk
    # each way
    state = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    for start in range(0, length, CHUNK):
        offsets, inside = _chunk_offsets(row, start, length, d, CHUNK, BLOCK_D)
        k = tl.load(k_ptr + offsets, mask=inside, other=0.0)
        v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
        do = tl.load(do_ptr + offsets, mask=inside, other=0.0)
        d_scores = tl.where(causal, tl.dot(do, tl.trans(v), input_precision=PRECISION), 0.0)
        dq = tl.dot(d_scores, k, input_precision=PRECISION)
        dq += tl.dot(do, tl.trans(state), input_precision=PRECISION)
        tl.store(dq_ptr + offsets, dq, mask=inside)
        state += tl.dot(tl.trans(k), v, input_precision=PRECISION)

    # the transposed scores directly (key j, query t), so only the lower mask flips
    anti_causal = steps[:, None] <= steps[None, :]
    later = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    n_chunks = tl.cdiv(length, CHUNK)
    for i in range(n_chunks):
        start = (n_chunks - 1 - i) * CHUNK
        offsets, inside = _chunk_offsets(row, start, length, d, CHUNK, BLOCK_D)
        q = tl.load(q_ptr + offsets, mask=inside, other=0.0)
        k = tl.load(k_ptr + offsets, mask=inside, other=0.0)
        v = tl.load(v_ptr + offsets, mask=inside, other=0.0)
        do = tl.load(do_ptr + offsets, mask=inside, other=0.0)
        d_scores_t = tl.where(anti_causal, tl.dot(v, tl.trans(do), input_precision=PRECISION),
                              0.0)
        dk = tl.dot(d_scores_t, q, input_precision=PRECISION)
        dk += tl.dot(v, tl.trans(later), input_precision=PRECISION)
        tl.store(dk_ptr + offsets, dk, mask=inside)
        scores_t = tl.where(anti_causal, tl.dot(k, tl.trans(q), input_precision=PRECISION), 0.0)
        dv = tl.dot(scores_t, do, input_precision=PRECISION)
        dv += tl.dot(k, later, input_precision=PRECISION)
        tl.store(dv_ptr + offsets, dv, mask=inside)
        later += tl.dot(tl.trans(q), do, input_precision=PRECISION)


def _launch(kernel, tensors, chunk):
    """One program per row of ``tensors[0]`` (``[..., L, d]``), none for an empty tensor."""
    length, d = tensors[0].shape[-2:]
    if tensors[0].numel():
        kernel[(tensors[0].numel() // (length * d),)](
            *tensors, length, d, CHUNK=chunk, BLOCK_D=max(16, triton.next_power_of_2(d)),
            PRECISION=triton_support.dot_precision())


class _CausalLinearAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, chunk):
        q, k, v = (t.contiguous() for t in (q, k, v))
        out = torch.empty_like(v)
        _launch(_forward_kernel, (q, k, v, out), chunk)
        ctx.save_for_backward(q, k, v)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
        _launch(_backward_kernel, (q, k, v, d_out.contiguous(), dq, dk, dv), ctx.chunk)
        return dq, dk, dv, None


def causal_linear_attention_fused(q_hat, k_hat, v, chunk=64):
    """``out_t = sum_{j<=t} (q_hat_t . k_hat_j) v_j`` for float32 ``q_hat, k_hat, v`` of one
    shape ``[..., L, d]`` (feature maps and scale already applied), differentiable in all
    three. ``chunk``: positions per step of the walk, a power of two >= 16 (``tl.dot``'s
    least size)."""
    if not q_hat.shape == k_hat.shape == v.shape:
        raise ValueError(f"q_hat, k_hat and v must share a shape, got {tuple(q_hat.shape)}, "
                         f"{tuple(k_hat.shape)} and {tuple(v.shape)}")
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two >= 16, got {chunk}")
    return _CausalLinearAttention.apply(q_hat, k_hat, v, chunk)
