"""L2-normalised linear attention (LinRec, Liu et al., SIGIR 2023).

Per head, with raw projections ``q, k, v`` of shape ``[..., L, d_h]``::

    phi(x)  = ELU(x) / max(||ELU(x)||_2, eps)           (plain ELU, as the released code)
    out_i   = sum_j (phi(q_i) . k^_j) v_j / sqrt(d_h)  = phi(q_i) (K^T V) / sqrt(d_h)

``K^T V`` (``d_h x d_h``) is formed first, so the cost is O(L d_h^2) and no ``L x L`` matrix
exists. Two readings of the paper's "column-wise" normalisation of K:

* ``k_norm_axis="features"``: ``k^_j = phi(k_j)``, each key normalised over its ``d_h``
  features (the released code). Causal use is possible.
* ``k_norm_axis="sequence"``: ``k^_{j,c} = ELU(k)_{j,c} / ||ELU(k)_{:,c}||_2``, each feature
  column normalised over the (real) positions. It needs every key, so it is non-causal only.

Forms of the same operator, each with a naive reference beside it:

* :func:`linear_attention` (non-causal, padding-masked) -- :func:`linear_attention_naive`
  (the explicit quadratic form);
* :func:`causal_linear_attention` (chunked: a masked matmul inside chunks of ``chunk_size``
  plus the running ``d_h x d_h`` state of the chunks before; memory O(L d_h + L chunk_size),
  no per-position state is materialised) -- :func:`causal_linear_attention_naive` (a loop);
* :func:`kv_state` (the state ``sum_j k^_j^T v_j`` of a masked sequence),
  :func:`state_attention` (one query against a state) and :func:`linear_attention_step`
  (append one position to a state), for streaming and for the last position only.

Everything is computed in at least float32, autocast off (the ``d_h x d_h`` state sums L
terms; ``eps`` must not underflow), and returned in ``v``'s dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recbole_efficient.kernels import triton_support
from recbole_efficient.kernels.chunking import balanced_chunks
from recbole_efficient.kernels.precision import single_precision

__all__ = ["K_NORM_AXES", "EPS", "l2_elu", "kv_state", "linear_attention",
           "linear_attention_naive", "causal_linear_attention", "causal_linear_attention_naive",
           "linear_attention_step", "state_attention"]

K_NORM_AXES = ("features", "sequence")
#: Smallest norm divided by: a zero row stays zero (no NaN), in any input dtype.
EPS = 1e-6


def _check_axis(k_norm_axis):
    if k_norm_axis not in K_NORM_AXES:
        raise ValueError(f"k_norm_axis must be one of {K_NORM_AXES}, got {k_norm_axis!r}")


def l2_elu(x, dim=-1, mask=None, eps=EPS, scale=1.0):
    """``scale * ELU(x) / max(||ELU(x)||_2, eps)`` along ``dim``, positions outside ``mask``
    zeroed first (``mask``: bool broadcastable to ``x.shape[:-1]``, True at real positions).
    """
    x = F.elu(x)
    if mask is not None:
        x = x * mask.unsqueeze(-1).to(x.dtype)
    # One multiply by a broadcast factor: cheaper than F.normalize's broadcast division.
    return x * (x.pow(2).sum(dim, keepdim=True).clamp_min(eps * eps).rsqrt() * scale)


def _keys(k, mask, k_norm_axis, eps):
    _check_axis(k_norm_axis)
    if k_norm_axis == "sequence":
        return l2_elu(k, dim=-2, mask=mask, eps=eps)
    k_hat = l2_elu(k, eps=eps)
    return k_hat if mask is None else k_hat * mask.unsqueeze(-1).to(k_hat.dtype)


def kv_state(k, v, mask=None, k_norm_axis="features", eps=EPS):
    """``sum_j k^_j^T v_j`` over the positions in ``mask``: ``[..., d_h, d_h]`` (float32+)."""
    ctx, (k, v) = single_precision(k, v)
    with ctx:
        return _keys(k, mask, k_norm_axis, eps).transpose(-1, -2) @ v


def linear_attention(q, k, v, mask=None, k_norm_axis="features", eps=EPS):
    """Non-causal attention of every query over the keys in ``mask`` (all when None).

    ``q, k, v``: ``[..., L, d_h]``; ``mask``: bool broadcastable to ``[..., L]``. Padded
    positions contribute nothing to any output (their own outputs are computed but
    meaningless). Returns ``[..., L, d_h]``.
    """
    out_dtype = v.dtype
    ctx, (q, k, v) = single_precision(q, k, v)
    with ctx:
        state = _keys(k, mask, k_norm_axis, eps).transpose(-1, -2) @ v
        out = l2_elu(q, eps=eps, scale=q.size(-1) ** -0.5) @ state
    return out.to(out_dtype)


def linear_attention_naive(q, k, v, mask=None, k_norm_axis="features", eps=EPS):
    """Reference for :func:`linear_attention`: the ``L x L`` score matrix, written out."""
    _check_axis(k_norm_axis)
    out_dtype = v.dtype
    ctx, (q, k, v) = single_precision(q, k, v)
    with ctx:
        real = torch.ones(q.shape[:-1], dtype=q.dtype, device=q.device) if mask is None \
            else mask.to(q.dtype).expand(q.shape[:-1])
        eq, ek = F.elu(q), F.elu(k)
        q_hat = eq / eq.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(eps)
        if k_norm_axis == "features":
            k_hat = ek / ek.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(eps)
        else:  # pads excluded from each column's norm
            ek = ek * real.unsqueeze(-1)
            k_hat = ek / ek.pow(2).sum(-2, keepdim=True).sqrt().clamp_min(eps)
        scores = (q_hat @ k_hat.transpose(-1, -2)) * real.unsqueeze(-2)  # [..., L, L]
        out = scores @ v / math.sqrt(q.size(-1))
    return out.to(out_dtype)


def causal_linear_attention(q, k, v, chunk_size=32, eps=EPS):
    """``out_t = phi(q_t) sum_{j<=t} phi(k_j)^T v_j / sqrt(d_h)``, chunk by chunk.

    Chunks of at most ``chunk_size`` positions, balanced (:func:`balanced_chunks`). Inside a
    chunk: the ``chunk x chunk`` scores with the upper triangle zeroed; across
    chunks: each chunk's queries times the exclusive prefix sum of the chunks' ``d_h x d_h``
    states (``L / chunk_size`` states, not ``L``). Right padding needs no mask: it only
    follows the real positions. ``q, k, v``: ``[..., L, d_h]`` -> ``[..., L, d_h]``.
    On CUDA below float64 the same walk runs as one fused Triton launch per direction
    (``causal_product_triton.py``, chunks of its own size), Triton permitting.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype = v.dtype
    ctx, (q, k, v) = single_precision(q, k, v)
    with ctx:
        *batch, length, d = q.shape
        size, n_chunks = balanced_chunks(length, chunk_size)
        pad = n_chunks * size - length
        q_hat, k_hat = l2_elu(q, eps=eps, scale=d ** -0.5), l2_elu(k, eps=eps)
        if triton_support.enabled(q, k, v):
            fused = triton_support.load("causal_product_triton").causal_product
            flat = [t.reshape(-1, 1, length, d) if t.dim() != 4 else t for t in (q_hat, k_hat, v)]
            return fused(*flat).reshape(*batch, length, d).to(out_dtype)
        if pad:  # zero keys and values at the end change no earlier output
            q_hat, k_hat, v = (F.pad(t, (0, 0, 0, pad)) for t in (q_hat, k_hat, v))
        qc, kc, vc = (t.reshape(*batch, n_chunks, size, d) for t in (q_hat, k_hat, v))
        future = torch.ones(size, size, dtype=torch.bool, device=q.device).triu(1)
        intra = (qc @ kc.transpose(-1, -2)).masked_fill_(future, 0) @ vc  # faster than tril
        chunk_states = kc.transpose(-1, -2) @ vc                      # [..., n, d, d]
        before = torch.cat([torch.zeros_like(chunk_states[..., :1, :, :]),
                            chunk_states[..., :-1, :, :].cumsum(-3)], dim=-3)
        out = (intra + qc @ before).reshape(*batch, n_chunks * size, d)[..., :length, :]
    return out.to(out_dtype)


def causal_linear_attention_naive(q, k, v, eps=EPS):
    """Reference for :func:`causal_linear_attention`: a loop over t of the explicit sum."""
    out_dtype = v.dtype
    ctx, (q, k, v) = single_precision(q, k, v)
    with ctx:
        eq, ek = F.elu(q), F.elu(k)
        q_hat = eq / eq.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(eps)
        k_hat = ek / ek.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(eps)
        outs = []
        for t in range(q.size(-2)):
            weights = (q_hat[..., t:t + 1, :] * k_hat[..., :t + 1, :]).sum(-1)  # [..., t+1]
            outs.append((weights.unsqueeze(-1) * v[..., :t + 1, :]).sum(-2))
        out = torch.stack(outs, dim=-2) / math.sqrt(q.size(-1))
    return out.to(out_dtype)


def _query_state(q, state, eps):
    return (l2_elu(q, eps=eps, scale=q.size(-1) ** -0.5).unsqueeze(-2) @ state).squeeze(-2)


def state_attention(q, state, eps=EPS):
    """``phi(q) state / sqrt(d_h)`` for one query per state: ``q [..., d_h]``,
    ``state [..., d_h, d_h]`` (from :func:`kv_state`) -> ``[..., d_h]`` in ``state``'s dtype."""
    ctx, (q, state) = single_precision(q, state)
    with ctx:
        return _query_state(q, state, eps)


def linear_attention_step(q_t, k_t, v_t, state, eps=EPS):
    """One more position: ``q_t, k_t, v_t [..., d_h]`` (one shape), ``state [..., d_h, d_h]``
    (from :func:`kv_state` or a previous step) -> ``(out_t [..., d_h], new_state)``; O(d_h^2).

    Written for batch-1 latency, where each operator call costs more than its arithmetic:
    query and key are normalised together and the state update is one fused op.
    """
    if q_t.dtype == k_t.dtype == v_t.dtype == state.dtype == torch.float32 \
            and not torch.is_autocast_enabled(q_t.device.type):
        return _step(q_t, k_t, v_t, state, eps)
    out_dtype = v_t.dtype
    ctx, (q_t, k_t, v_t, state) = single_precision(q_t, k_t, v_t, state)
    with ctx:
        out, state = _step(q_t, k_t, v_t, state, eps)
        return out.to(out_dtype), state


def _step(q_t, k_t, v_t, state, eps):
    qk = F.elu(torch.stack([q_t, k_t]))
    qk = qk / torch.linalg.vector_norm(qk, dim=-1, keepdim=True).clamp_min(eps)
    state = torch.addcmul(state, qk[1].unsqueeze(-1), v_t.unsqueeze(-2))
    return (qk[0].unsqueeze(-2) @ state).squeeze(-2).mul_(q_t.size(-1) ** -0.5), state
