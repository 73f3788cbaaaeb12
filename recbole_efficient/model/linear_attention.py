"""LinRec's L2-normalised linear attention: the sublayer, its encoder (attention + RecBole's
feed-forward, post-LN) and the config keys both LinRec backbones (LinRec, LinRecBERT) read.
"""

import torch
import torch.nn.functional as F
from recbole.model.layers import FeedForward
from torch import nn

from recbole_efficient.kernels.linear_attention import (
    K_NORM_AXES, causal_linear_attention, kv_state, linear_attention, linear_attention_step,
    state_attention)
from recbole_efficient.model.shared import Dropout, eval_activation, fused_linear, padded_grid
from recbole_efficient.validation import TRANSFORMER_SPEC, Choice

__all__ = ["LINEAR_ATTENTION_SPEC", "LinearAttention", "LinearAttentionEncoder"]

#: Keys of both LinRec backbones (SASRec's Transformer keys, without attention dropout).
LINEAR_ATTENTION_SPEC = TRANSFORMER_SPEC + (Choice("k_norm_axis", K_NORM_AXES),)


class LinearAttention(nn.Module):
    """Multi-head L2-normalised linear attention, then ``LayerNorm(Dropout(W_O o) + x)``.

    ``causal``: output t sees positions 0..t (chunked form, right padding needs no mask);
    otherwise every real position sees every real position (``mask`` excludes padding).
    ``k_norm_axis``: see ``recbole_efficient.kernels.linear_attention`` (``sequence`` is
    non-causal only). There is no attention dropout: no attention matrix exists (the
    released code builds one and never applies it).
    """

    def __init__(self, hidden_size, n_heads, hidden_dropout_prob, layer_norm_eps, causal=True,
                 k_norm_axis="features", chunk_size=32):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by n_heads={n_heads}")
        if causal and k_norm_axis != "features":
            raise ValueError("k_norm_axis='sequence' needs every key: it is non-causal only")
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.causal = causal
        self.k_norm_axis = k_norm_axis
        self.chunk_size = chunk_size
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_dropout = Dropout(hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def _heads(self, x):
        """``[..., L, d]`` -> ``[..., H, L, d_h]`` (``[B, d]`` -> ``[B, H, d_h]``)."""
        if x.dim() == 2:
            return x.view(x.size(0), self.n_heads, self.head_size)
        return x.view(*x.shape[:-1], self.n_heads, self.head_size).transpose(-3, -2).contiguous()

    def _qkv(self, x):
        """Query, key and value heads from one matmul (and, for ``[B, L, d]``, one copy)."""
        qkv = fused_linear(x, self.query, self.key, self.value)
        if x.dim() == 2:
            return qkv.unflatten(-1, (3, self.n_heads, self.head_size)).unbind(1)
        return self._split(qkv)

    def _split(self, qkv):
        """``[B, L, 3d]`` -> query, key and value heads ``[B, H, L, d_h]`` (one copy)."""
        qkv = qkv.unflatten(-1, (3, self.n_heads, self.head_size))
        return qkv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)  # [3, B, H, L, d_h]

    def _merge(self, o):
        if o.dim() == 3:
            return o.reshape(o.size(0), -1)
        return o.transpose(-3, -2).reshape(*o.shape[:-3], o.size(-2), -1)

    def _output(self, o, x):
        return self.LayerNorm(self.out_dropout(self.dense(self._merge(o).to(x.dtype))) + x)

    def _attend(self, q, k, v, mask):
        if self.causal:
            return causal_linear_attention(q, k, v, self.chunk_size)
        return linear_attention(q, k, v, mask[:, None], self.k_norm_axis)

    def forward(self, x, mask):
        """``x [B, L, d]``, ``mask [B, L]`` (True at real positions) -> ``[B, L, d]``."""
        return self._output(self._attend(*self._qkv(x), mask), x)

    def forward_packed(self, x, mask):
        """:meth:`forward` at the real positions only: ``x [n, d]`` holds the positions where
        ``mask [B, L]`` is True, row-major. Projections, residual and norm run on those n; the
        attention on the ``[B, L]`` grid with zeros at the pads (masked, or after every real
        position of their row when causal)."""
        grid = padded_grid(fused_linear(x, self.query, self.key, self.value), mask)
        o = self._attend(*self._split(grid), mask)                  # [B, H, L, d_h]
        return self._output(o.transpose(1, 2)[mask], x)             # [n, H, d_h] merged

    def state(self, x, mask):
        """``sum_j k^_j^T v_j`` over the real positions: ``[B, H, d_h, d_h]`` (float32)."""
        return kv_state(self._heads(self.key(x)), self._heads(self.value(x)), mask[:, None],
                        self.k_norm_axis)

    def forward_last(self, x, mask, last):
        """Output at position ``last [B]`` only, attending to every real position
        (with right padding and ``last`` the last real one, equal to ``forward`` there)."""
        x_last = x[torch.arange(x.size(0), device=x.device), last]
        q = self._heads(self.query(x_last))
        return self._output(state_attention(q, self.state(x, mask)), x_last)


class LinearAttentionEncoder(nn.Module):
    """``n_layers`` x [linear attention sublayer, RecBole's ``FeedForward`` (post-LN)]."""

    def __init__(self, n_layers, hidden_size, n_heads, inner_size, hidden_dropout_prob,
                 hidden_act, layer_norm_eps, causal=True, k_norm_axis="features", chunk_size=32):
        super().__init__()
        self.attention = nn.ModuleList([
            LinearAttention(hidden_size, n_heads, hidden_dropout_prob, layer_norm_eps, causal,
                            k_norm_axis, chunk_size) for _ in range(n_layers)])
        self.feed_forward = nn.ModuleList([
            FeedForward(hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps)
            for _ in range(n_layers)])

    def forward(self, x, mask):
        for attention, ffn in zip(self.attention, self.feed_forward):
            x = ffn(attention(x, mask))
        return x

    def forward_packed(self, x, mask):
        """:meth:`forward` at the real positions of ``mask [B, L]`` only (``x [n, d]``)."""
        for attention, ffn in zip(self.attention, self.feed_forward):
            x = ffn(attention.forward_packed(x, mask))
        return x

    def forward_last(self, x, mask, last):
        """Hidden state at position ``last [B]``: the last layer works at that position only."""
        *layers, (attention, ffn) = zip(self.attention, self.feed_forward)
        for att, f in layers:
            x = f(att(x, mask))
        return ffn(attention.forward_last(x, mask, last))

    def build_states(self, x, mask):
        """Each layer's state over the real positions (the last layer's output is not needed)."""
        states = []
        for i, (attention, ffn) in enumerate(zip(self.attention, self.feed_forward)):
            states.append(attention.state(x, mask))
            if i + 1 < len(self.attention):
                x = ffn(attention(x, mask))
        return states

    def step_weights(self):
        """Per layer, the parameters :meth:`step` reads (live, not copies)."""
        def norm(ln):
            return ln.normalized_shape, ln.weight, ln.bias, ln.eps

        return [(a.n_heads, a.query.weight, a.query.bias, a.key.weight, a.key.bias,
                 a.value.weight, a.value.bias, a.dense.weight, a.dense.bias, norm(a.LayerNorm),
                 f.dense_1.weight, f.dense_1.bias, eval_activation(f), f.dense_2.weight,
                 f.dense_2.bias, norm(f.LayerNorm))
                for a, f in zip(self.attention, self.feed_forward)]

    def step(self, x, states, weights):
        """One more position through every layer, eval mode (no dropout): ``x [B, d]``,
        per-layer ``states [B, H, d_h, d_h]``, ``weights`` from :meth:`step_weights`.

        The sublayers written out with functional calls: at batch 1 a step is ~60 operators
        of a few microseconds each, and module calls and weight lookups would double that.
        """
        new_states = []
        for (n_heads, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, norm_1, w_1, b_1, act, w_2, b_2,
             norm_2), state in zip(weights, states):
            q, k, v = (F.linear(x, w, b).view(x.size(0), n_heads, -1)
                       for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v)))
            o, state = linear_attention_step(q, k, v, state)
            x = F.layer_norm(F.linear(o.flatten(1).to(x.dtype), w_o, b_o) + x, *norm_1)
            x = F.layer_norm(F.linear(act(F.linear(x, w_1, b_1)), w_2, b_2) + x, *norm_2)
            new_states.append(state)
        return x, new_states

    def drop_attention(self):
        """Every attention sublayer (projections, attention, residual, LayerNorm) becomes the
        identity: what remains is the feed-forward stack."""
        self.attention = nn.ModuleList([_Identity() for _ in self.attention])


class _Identity(nn.Module):
    def forward(self, x, mask):
        return x

    def forward_packed(self, x, mask):
        return x

    def forward_last(self, x, mask, last):
        return x[torch.arange(x.size(0), device=x.device), last]
