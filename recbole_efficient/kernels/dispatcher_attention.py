"""Linear dispatcher attention (LDA): E learned expert vectors compress a sequence of N items
into E packed interests, and every position reads the packed interests back. Cost O(N E D).

Non-causal form (Luna's pack / unpack; Set Transformer's ISAB):

* pack: ``alpha_e = softmax over the real positions j of p_e.k_j / sqrt(D)``,
  ``K~_e = sum_j alpha_ej k_j``, ``V~_e = sum_j alpha_ej v_j`` (pads get weight 0);
* unpack: ``o_t = sum_e pi_te V~_e`` with ``pi_t = softmax over experts of q_t.K~_e / sqrt(D)``.

Causal form (Luna's causal prefix form, normalised per expert): the packed interests at t
are weighted means over the prefix ``j <= t`` with positive weights that do not depend on t,

* ``a_je = elu(p_e.k_j / sqrt(D)) + 1``, ``Z_te = sum_{j<=t} a_je``,
* ``K~_te = sum_{j<=t} a_je k_j / Z_te``, ``V~_te = sum_{j<=t} a_je v_j / Z_te``,
* ``o_t = sum_e pi_te V~_te`` with ``pi_t = softmax_e(q_t.K~_te / sqrt(D))``,

so the state ``(sum_j k_j a_j^T [D, E], sum_j a_j^T v_j [E, D], Z [E])`` is a running sum
(O(1) per streamed item). A softmax over the prefix would need a running maximum that
changes with t; elu + 1 keeps the weights positive and t-independent, which is what makes
the chunked form below exact. Like the softmax pack, each packed interest is a convex
combination of the values (Luna divides by t instead; normalising by Z keeps the scale of
the packed interests independent of the weights' scale).

Both forms take optional *extra* interests per query position (``extra_k``/``extra_v``,
``[..., m, D]``, e.g. retrieved from a memory): they join the E experts in the unpack
softmax, ``pi_t = softmax over [E experts; m extras]``, and add ``sum_i pi_ti ev_ti``.

Shapes: ``q [B, H, Nq, D]``, ``k, v [B, H, N, D]``, ``experts [H, E, D]``, ``mask [B, N]``
(True at real positions), extras broadcastable to ``[B, H, Nq, m, D]``. Functions:

* :func:`dispatch_noncausal` / :func:`dispatch_noncausal_naive` (per row, real items only,
  with the Nq x N mixing matrix materialised);
* :func:`dispatch_causal` (balanced chunks of at most C positions, O(N (C + E)) memory per
  head, no ``[N, E, D]`` tensor) / :func:`dispatch_causal_naive` (a loop over t over
  explicit prefixes);
* :func:`causal_state`, :func:`causal_state_update`, :func:`causal_readout`: the running
  state after a (masked) sequence, one more item, and the output of one query position.

The fast forms compute in float32 or wider with autocast off and return the values' dtype:
in float16 the pack weights of a prefix (``exp(x)`` for negative logits) sum to less than
1/65504 and ``pi / Z`` overflows (ELASTIC trained into NaN under CUDA AMP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recbole_efficient.kernels import triton_support
from recbole_efficient.kernels.chunking import balanced_chunks
from recbole_efficient.kernels.dropout import dropout
from recbole_efficient.kernels.precision import single_precision

__all__ = ["causal_pack_weights", "dispatch_noncausal", "dispatch_noncausal_naive",
           "dispatch_causal", "dispatch_causal_naive", "causal_state", "causal_state_update",
           "causal_readout"]


def causal_pack_weights(k, experts):
    """``a = elu(k . p^T / sqrt(D)) + 1 > 0``: ``k [..., N, D]``, ``experts [H, E, D]``
    -> ``[..., N, E]``."""
    return F.elu(k @ experts.transpose(-1, -2) * k.size(-1) ** -0.5) + 1


def _unpack(scores, q, extra_k, dropout_p, training):
    """Probabilities over the E experts (``scores [..., E]``) and the m extras."""
    n_experts = scores.size(-1)
    if extra_k is not None:
        extra = (q.unsqueeze(-2) * extra_k).sum(-1) * q.size(-1) ** -0.5
        scores = torch.cat([scores, extra.expand(*scores.shape[:-1], -1)], -1)
    probs = dropout(scores.softmax(-1), dropout_p, training)
    return probs[..., :n_experts], probs[..., n_experts:]


def _extra_output(pi_extra, extra_v):
    return (pi_extra.unsqueeze(-1) * extra_v).sum(-2)


def _floor(z):
    """Sums of pack weights floored at 1e-12: an empty prefix, or weights that all underflow
    (``elu(x) + 1 = exp(x)``, 0 below x ~ -104), give a zero expert, not 0/0, and the
    backward pass's 1/z^2 stays finite."""
    return z.clamp_min(1e-12)


def dispatch_noncausal(q, k, v, experts, mask=None, extra_k=None, extra_v=None,
                       dropout_p=0.0, training=False):
    """Non-causal LDA; ``q`` may hold any query positions (e.g. only the last one)."""
    out_dtype = v.dtype
    ctx, (q, k, v, experts, extra_k, extra_v) = single_precision(q, k, v, experts, extra_k,
                                                                 extra_v)
    with ctx:
        scale = k.size(-1) ** -0.5
        logits = experts @ k.transpose(-1, -2) * scale                      # [B, H, E, N]
        if mask is not None:
            # finfo.min, not -inf: a row without any real item gets uniform weights, not NaN
            logits = logits.masked_fill(~mask[:, None, None, :], torch.finfo(logits.dtype).min)
        alpha = logits.softmax(-1)
        packed_k, packed_v = alpha @ k, alpha @ v                            # [B, H, E, D]
        pi, pi_extra = _unpack(q @ packed_k.transpose(-1, -2) * scale, q, extra_k, dropout_p,
                               training)
        out = pi @ packed_v
        if extra_k is not None:
            out = out + _extra_output(pi_extra, extra_v)
    return out.to(out_dtype)


def dispatch_noncausal_naive(q, k, v, experts, mask=None, extra_k=None, extra_v=None):
    """Reference: each row on its real items only, through the explicit ``[Nq, N]`` matrix
    ``sum_e pi_te alpha_ej`` built from the materialised ``[E, N]`` pack weights."""
    scale = k.size(-1) ** -0.5
    batch, _, n_query, dim = q.shape
    shape = (batch, q.size(1), n_query)
    ek = None if extra_k is None else extra_k.expand(*shape, -1, dim)
    ev = None if extra_v is None else extra_v.expand(*shape, -1, dim)
    rows = []
    for b in range(batch):
        # [H, n, D] over the real items only
        kb, vb = (k[b], v[b]) if mask is None else (k[b][:, mask[b]], v[b][:, mask[b]])
        w = torch.exp(experts @ kb.transpose(-1, -2) * scale)
        alpha = w / w.sum(-1, keepdim=True)                               # [H, E, n]
        scores = q[b] @ (alpha @ kb).transpose(-1, -2) * scale            # [H, Nq, E]
        if ek is not None:
            scores = torch.cat([scores, torch.einsum("hqd,hqmd->hqm", q[b], ek[b]) * scale], -1)
        probs = torch.exp(scores) / torch.exp(scores).sum(-1, keepdim=True)
        mixing = probs[..., :experts.size(1)] @ alpha                     # [H, Nq, n]
        out = mixing @ vb
        if ev is not None:
            out = out + torch.einsum("hqm,hqmd->hqd", probs[..., experts.size(1):], ev[b])
        rows.append(out)
    return torch.stack(rows)


def _exclusive_cumsum(x, dim):
    """Sums of the entries strictly before each index along ``dim``."""
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([zero, x.narrow(dim, 0, x.size(dim) - 1).cumsum(dim)], dim)


def dispatch_causal(q, k, v, experts, chunk_size=32, extra_k=None, extra_v=None,
                    dropout_p=0.0, training=False):
    """Causal LDA over chunks of at most ``chunk_size`` positions, all chunks at once.

    Inside a chunk the prefix sums are two masked ``[C, C]`` products (scores
    ``tril(Q K^T) A``, outputs ``tril(W A^T) V`` with ``W = pi / Z``); across chunks the
    state entering each chunk is an exclusive cumulative sum of per-chunk ``K^T A`` and
    ``A^T V``; ``Z`` is one cumulative sum over the sequence. Memory per head: O(N (C + E))
    plus O(N D E / C) for the chunk states. Output at t depends on positions <= t only;
    right padding never reaches a real position. On CUDA in float32 the prefix sums and chunk
    products run as fused Triton kernels instead (``dispatcher_attention_triton.py``, two
    launches per direction, with their own chunk length).
    """
    out_dtype = v.dtype
    ctx, (q, k, v, experts, extra_k, extra_v) = single_precision(q, k, v, experts, extra_k,
                                                                 extra_v)
    with ctx:
        if triton_support.enabled(q, k, v, experts):
            fused = triton_support.load("dispatcher_attention_triton")
            return fused.dispatch_causal(q, k, v, experts, extra_k, extra_v, dropout_p,
                                         training).to(out_dtype)
        batch, heads, length, dim = q.shape
        n_experts = experts.size(1)
        scale = dim ** -0.5
        chunk, n_chunks = balanced_chunks(length, chunk_size)
        padded = chunk * n_chunks
        # One contiguous copy each (padded at the end: positions after the last one change no
        # earlier output), instead of one per matmul that reads the head-split views.
        q, k, v = (F.pad(t, (0, 0, 0, padded - length)) if padded > length else t.contiguous()
                   for t in (q, k, v))
        a = causal_pack_weights(k, experts)                                   # [B, H, N', E]
        rz = _floor(a.cumsum(2)).reciprocal()                                 # 1 / Z
        qc, kc, vc, ac = (t.view(batch, heads, n_chunks, chunk, -1) for t in (q, k, v, a))
        rz = rz.view(batch, heads, n_chunks, chunk, n_experts)
        sum_k = _exclusive_cumsum(kc.transpose(-1, -2) @ ac, 2)               # [B, H, n, D, E]
        sum_v = _exclusive_cumsum(ac.transpose(-1, -2) @ vc, 2)               # [B, H, n, E, D]
        future = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
        local = (qc @ kc.transpose(-1, -2)).masked_fill_(future, 0)           # [B, H, n, C, C]
        scores = (local @ ac).add_(qc @ sum_k) * (rz * scale)
        if extra_k is not None:
            extra = (q[:, :, :length].unsqueeze(-2) * extra_k).sum(-1) * scale   # [B, H, N, m]
            extra = F.pad(extra.expand(batch, heads, length, -1), (0, 0, 0, padded - length))
            scores = torch.cat([scores, extra.view(batch, heads, n_chunks, chunk, -1)], -1)
        probs = dropout(scores.softmax(-1), dropout_p, training)
        w = probs[..., :n_experts] * rz
        mixing = (w @ ac.transpose(-1, -2)).masked_fill_(future, 0)           # [B, H, n, C, C]
        out = (mixing @ vc).add_(w @ sum_v).flatten(2, 3)[:, :, :length]
        if extra_k is not None:
            out = out + _extra_output(probs[..., n_experts:].flatten(2, 3)[:, :, :length],
                                      extra_v)
    return out.to(out_dtype)


def dispatch_causal_naive(q, k, v, experts, extra_k=None, extra_v=None):
    """Reference: a loop over t, each output from its explicit prefix ``0..t``."""
    scale = q.size(-1) ** -0.5
    shape = q.shape[:3]
    ek = None if extra_k is None else extra_k.expand(*shape, -1, q.size(-1))
    ev = None if extra_v is None else extra_v.expand(*shape, -1, q.size(-1))
    outs = []
    for t in range(q.size(2)):
        kp, vp = k[:, :, :t + 1], v[:, :, :t + 1]                          # [B, H, t+1, D]
        a = F.elu(experts @ kp.transpose(-1, -2) * scale) + 1             # [B, H, E, t+1]
        z = a.sum(-1, keepdim=True)
        packed_k, packed_v = (a @ kp) / z, (a @ vp) / z                   # [B, H, E, D]
        scores = torch.einsum("bhd,bhed->bhe", q[:, :, t], packed_k) * scale
        if ek is not None:
            scores = torch.cat([scores, torch.einsum("bhd,bhmd->bhm", q[:, :, t],
                                                     ek[:, :, t]) * scale], -1)
        probs = scores.softmax(-1)
        out = torch.einsum("bhe,bhed->bhd", probs[..., :experts.size(1)], packed_v)
        if ev is not None:
            out = out + torch.einsum("bhm,bhmd->bhd", probs[..., experts.size(1):], ev[:, :, t])
        outs.append(out)
    return torch.stack(outs, 2)


def causal_state(k, v, experts, mask=None):
    """Running state ``(sum k a^T [B, H, D, E], sum a^T v [B, H, E, D], Z [B, H, E])`` after
    the positions where ``mask [B, N]`` is True (all positions without a mask), in float32
    or wider."""
    ctx, (k, v, experts) = single_precision(k, v, experts)
    with ctx:
        a = causal_pack_weights(k, experts)
        if mask is not None:
            a = a * mask[:, None, :, None]
        return k.transpose(-1, -2) @ a, a.transpose(-1, -2) @ v, a.sum(-2)


def causal_state_update(state, k, v, experts):
    """The state after one more item: ``k, v [B, H, D]``."""
    ctx, (k, v, experts) = single_precision(k, v, experts)
    with ctx:
        sum_k, sum_v, z = state
        a = causal_pack_weights(k.unsqueeze(-2), experts).squeeze(-2)        # [B, H, E]
        return (sum_k + k.unsqueeze(-1) * a.unsqueeze(-2),
                sum_v + a.unsqueeze(-1) * v.unsqueeze(-2), z + a)


def causal_readout(q, state, extra_k=None, extra_v=None, dropout_p=0.0, training=False):
    """Output of one query position per row, ``q [B, H, D]``, given the state of its prefix;
    extras ``[B, H, m, D]``."""
    out_dtype = q.dtype
    ctx, (q, extra_k, extra_v) = single_precision(q, extra_k, extra_v)
    with ctx:
        sum_k, sum_v, z = state
        z = _floor(z)
        scores = (q.unsqueeze(-2) @ sum_k).squeeze(-2) / z * q.size(-1) ** -0.5
        pi, pi_extra = _unpack(scores, q, extra_k, dropout_p, training)
        out = ((pi / z).unsqueeze(-2) @ sum_v).squeeze(-2)
        if extra_k is not None:
            out = out + _extra_output(pi_extra, extra_v)
    return out.to(out_dtype)
