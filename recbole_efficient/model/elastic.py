"""ELASTIC-style model: linear dispatcher attention over a fixed set of interest experts, with
sparse retrieval from a large interest memory.

**A reconstruction from the abstract** of "ELASTIC: Efficient Linear Attention for SequenTial
Interest Compression" (Deng et al., arXiv 2408.09380, withdrawn by its authors in 2025; no
body text or code was ever published). The abstract names a Linear Dispatcher Attention (LDA)
layer, in which a fixed number k of learnable interest experts compress the behaviour
sequence in time linear in N, and an Interest Memory Retrieval (IMR) module that sparsely
retrieves a user's interests from a vast learnable memory bank at a cost that does not grow
with the bank. Everything below the abstract's level is our design, built from the published
constructions it points to (Luna, Set Transformer's ISAB, product-key memory):

* Input: item embedding + learned absolute position, LayerNorm, dropout (as SASRec, so that
  the comparison with ``SoftmaxSASRec`` changes only the sequence mixer). Output: dot product
  with the item embeddings.
* ``n_layers`` blocks of [LDA sublayer ``LN(x + Dropout(W_o LDA(x)))`` + RecBole's
  feed-forward sublayer]. Each LDA sublayer has its own ``n_experts`` expert vectors per head,
  used as the pack queries (Luna would carry the packed experts to the next layer; in the
  causal form they differ per position, which would cost an ``[N, k, d]`` tensor, so the
  layers' experts are separate parameters in both forms).
* Non-causal form (``lda_causal: False``, ``augmented`` training, last position scored):
  Luna's pack (softmax over the real positions, pads masked) and unpack (softmax over the
  experts). Strictly causal form (default, ``all_positions``): Luna's causal prefix form with
  positive pack weights ``elu(.) + 1`` and per-expert weighted prefix means, computed
  chunk-wise in O(N (chunk_size + k)) memory per head, never an ``[N, k, d]`` tensor; see
  ``recbole_efficient/kernels/dispatcher_attention.py``.
  Its state is a running sum, so the model streams (``init_state``/``build_state``/``step``)
  at O(1) cost per item, up to ``MAX_ITEM_LIST_LENGTH`` items (learned positions).
* IMR (``use_imr``): a bank of ``memory_size`` = n^2 interest vectors addressed by product
  keys. The query at position t is ``LN(W [mean of the inputs 0..t ; input t])`` per each of
  ``memory_heads`` heads: a causal summary plus the current item (LayerNorm, not the
  BatchNorm of product-key memory, whose batch statistics would mix other users and future
  positions into a query). The top ``memory_topk`` slots are found among n + n sub-keys and
  ``memory_topk^2`` candidate sums; their softmax-weighted sum, LayerNorm-ed, is one
  retrieved interest. The causal form queries at the anchors t = 0, s, 2s, ... of
  ``memory_stride`` s, and the interests retrieved at an anchor serve the s positions from it
  (s = 1: a retrieval at every position; a retrieval at position t sees positions <= t only,
  so the form stays causal and streams, retrieving every s items). The non-causal form
  queries once per user with the whole-sequence mean and the last item.
* The retrieved interests *augment* the experts of the last LDA sublayer (the one whose
  output is scored): projected like items, they enter its unpack softmax beside the k packed
  experts, so each position chooses between interests compressed from its history and
  interests recalled from the memory. As pack queries they would make the pack weights
  depend on t and break the linear-time causal form; feeding only the last sublayer means
  that scoring one position (``encode_last``) needs one retrieval per user.
* Only the retrieved slots get gradients (``embedding_bag``). The bank is a ``sparse`` group
  in ``optimizer_groups``, which our trainer gives LazyAdam (lr x ``memory_lr_scale``, no
  weight decay) with row-sparse gradients (``use_sparse_gradients``), so a step does the same
  work at M = 1e6 as at 1e4 apart from the 2 sqrt(M) sub-key scores per query. Elsewhere
  (RecBole's own trainer: one torch optimiser over every parameter) the bank's gradient is
  dense, with the same values.
"""

import math

import torch
import torch.nn.functional as F
from recbole.model.layers import FeedForward
from torch import nn

from recbole_efficient.kernels.dispatcher_attention import (
    causal_readout, causal_state, causal_state_update, dispatch_causal, dispatch_noncausal)
from recbole_efficient.kernels.product_key import product_key_topk
from recbole_efficient.model.base import EfficientSequentialRecommender
from recbole_efficient.model.shared import Dropout, TransformerInput, fused_linear, padded_grid
from recbole_efficient.validation import TRANSFORMER_SPEC, Bool, Float, Int, Rule


def _imr_rule(check):
    # IMR keys matter only with the memory on
    return lambda c, m: not c["use_imr"] or check(c)


def _topk_message(c, m):
    n = math.isqrt(c["memory_size"])
    if c["memory_topk"] > c["memory_size"]:
        return (f"memory_topk={c['memory_topk']} exceeds memory_size={c['memory_size']}: "
                f"at most memory_size slots can be retrieved; use --memory_topk={n} or less.")
    return (f"memory_topk={c['memory_topk']} is larger than sqrt(memory_size)={n}: product keys "
            f"take the top-k of each of two sets of sqrt(memory_size) sub-keys; use "
            f"--memory_topk={n} or less, or a larger --memory_size.")


class InterestMemory(nn.Module):
    """IMR: ``heads`` product-key retrievals from a bank of ``memory_size`` interest vectors.

    ``forward(summary, current)`` (both ``[..., d]``) -> retrieved interests ``[..., heads, d]``.
    """

    def __init__(self, hidden_size, memory_size, topk, heads, layer_norm_eps):
        super().__init__()
        self.heads, self.topk, self.hidden_size = heads, topk, hidden_size
        n_sub = math.isqrt(memory_size)
        self.query = nn.Linear(2 * hidden_size, heads * hidden_size)
        self.query_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.sub_keys = nn.Parameter(torch.randn(heads, 2, n_sub, hidden_size // 2)
                                     * (hidden_size // 2) ** -0.5)
        self.values = nn.Parameter(torch.empty(memory_size, hidden_size))
        self.out_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.sparse = False  # row-sparse gradients for ``values`` (LazyAdam only)

    def forward(self, summary, current):
        query = self.query(torch.cat([summary, current], -1))
        query = self.query_norm(query.unflatten(-1, (self.heads, self.hidden_size)))
        scores, slots = product_key_topk(query, self.sub_keys, self.topk)
        # embedding_bag: the weighted sum without a [..., k, d] tensor; sparse gradient rows
        out = F.embedding_bag(slots.reshape(-1, self.topk), self.values, mode="sum",
                              per_sample_weights=scores.softmax(-1).reshape(-1, self.topk),
                              sparse=self.sparse)
        return self.out_norm(out.view(*slots.shape[:-1], self.hidden_size))


class DispatcherAttention(nn.Module):
    """LDA sublayer ``LN(x + Dropout(W_o LDA(x)))``, causal or not (see the module docstring)."""

    def __init__(self, hidden_size, n_heads, n_experts, causal, chunk_size, attn_dropout,
                 hidden_dropout, layer_norm_eps, memory_stride=1):
        super().__init__()
        self.n_heads, self.head_size = n_heads, hidden_size // n_heads
        self.causal, self.chunk_size, self.attn_dropout = causal, chunk_size, attn_dropout
        self.memory_stride = memory_stride
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.experts = nn.Parameter(torch.empty(n_heads, n_experts, self.head_size))
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = Dropout(hidden_dropout)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def _heads(self, x):
        """``[B, ..., d]`` -> ``[B, H, ..., D]``."""
        return x.unflatten(-1, (self.n_heads, self.head_size)).movedim(-2, 1)

    def _merge(self, x, out):
        out = out.movedim(1, -2).flatten(-2)
        return self.LayerNorm(x + self.dropout(self.dense(out)))

    def _extras(self, interests, grid=None, length=None):
        """Retrieved interests ``[B, ..., m, d]`` as extra keys and values ``[B, H, ..., m, D]``;
        packed ones ``[n, m, d]`` are put back on the ``grid`` mask first. With ``length``, the
        interests lie on the causal form's anchors ``[B, A, m, d]`` (positions 0, s, 2s, ...
        for ``memory_stride`` s) and each anchor's keys and values serve its s positions."""
        if interests is None:
            return None, None
        kv = fused_linear(interests, self.key, self.value)
        if grid is not None:
            kv = padded_grid(kv, grid)
        if length is not None and self.memory_stride > 1:
            kv = kv.repeat_interleave(self.memory_stride, 1)[:, :length]
        return (self._heads(t) for t in kv.chunk(2, -1))

    def _qkv(self, x, grid=None):
        """Query, key and value heads from one matmul (one pass over ``x`` and its gradient);
        a packed ``x [n, d]`` is put back on the ``grid`` mask's ``[B, L]`` after it."""
        qkv = fused_linear(x, self.query, self.key, self.value)
        if grid is not None:
            qkv = padded_grid(qkv, grid)
        return (self._heads(t) for t in qkv.chunk(3, -1))

    def _dispatch(self, q, k, v, mask, extra_k, extra_v):
        drop = self.attn_dropout if self.training else 0.0
        if self.causal:
            return dispatch_causal(q, k, v, self.experts, self.chunk_size, extra_k, extra_v,
                                   drop, self.training)
        return dispatch_noncausal(q, k, v, self.experts, mask, extra_k, extra_v, drop,
                                  self.training)

    def forward(self, x, mask, interests=None):
        """``x [B, L, d]``; interests on the anchors ``[B, A, m, d]`` (causal form) or one set
        per row ``[B, 1, m, d]``."""
        length = x.size(1) if self.causal else None
        return self._merge(x, self._dispatch(*self._qkv(x), mask,
                                             *self._extras(interests, length=length)))

    def forward_packed(self, x, mask, interests=None):
        """:meth:`forward` at the real positions only: ``x [n, d]`` holds the positions where
        ``mask [B, L]`` is True, row-major, and interests ``[n_a, m, d]`` the real anchors.
        Projections, residual and norm run on those n; the dispatcher on the ``[B, L]`` grid
        with zeros at the pads."""
        extras = self._extras(interests, grid=mask[:, ::self.memory_stride], length=mask.size(1))
        out = self._dispatch(*self._qkv(x, grid=mask), mask, *extras)
        return self._merge(x, out.movedim(1, -2)[mask])  # [n, H, D]: _merge's movedim is a no-op

    def forward_last(self, x, x_last, mask, interests_last=None):
        """The sublayer's output at each row's last real position only: ``x_last [B, d]``,
        ``interests_last [B, m, d]`` -> ``[B, d]``. Exact in both forms: the last position's
        prefix is the whole real sequence."""
        k, v = self._heads(self.key(x)), self._heads(self.value(x))
        q = self._heads(self.query(x_last))                               # [B, H, D]
        extra_k, extra_v = self._extras(interests_last)                   # [B, H, m, D]
        drop = self.attn_dropout if self.training else 0.0
        if self.causal:
            out = causal_readout(q, causal_state(k, v, self.experts, mask), extra_k, extra_v,
                                 drop, self.training)
        else:
            extras = [e if e is None else e[:, :, None] for e in (extra_k, extra_v)]
            out = dispatch_noncausal(q[:, :, None], k, v, self.experts, mask, *extras, drop,
                                     self.training)[:, :, 0]
        return self._merge(x_last, out)

    # -- streaming (causal form) ----------------------------------------------------------
    def state(self, x, mask):
        """Running state after the real positions of ``x [B, N, d]``."""
        return causal_state(self._heads(self.key(x)), self._heads(self.value(x)), self.experts,
                            mask)

    def step(self, x, state, interests=None):
        """One item ``x [B, d]`` (interests ``[B, m, d]``) -> ``(output [B, d], new state)``."""
        q, k, v = self._qkv(x)
        state = causal_state_update(state, k, v, self.experts)
        extra_k, extra_v = self._extras(interests)
        return self._merge(x, causal_readout(q, state, extra_k, extra_v)), state


class ELASTICBlock(nn.Module):
    """LDA sublayer + feed-forward sublayer; ``lda`` is None once the mixer is dropped."""

    def __init__(self, config, causal):
        super().__init__()
        d, eps = config["hidden_size"], config["layer_norm_eps"]
        self.lda = DispatcherAttention(d, config["n_heads"], config["n_experts"], causal,
                                       config["chunk_size"], config["attn_dropout_prob"],
                                       config["hidden_dropout_prob"], eps,
                                       config["memory_stride"])
        self.feed_forward = FeedForward(d, config["inner_size"], config["hidden_dropout_prob"],
                                        config["hidden_act"], eps)

    def forward(self, x, mask, interests=None):
        if self.lda is not None:
            x = self.lda(x, mask, interests)
        return self.feed_forward(x)

    def forward_packed(self, x, mask, interests=None):
        if self.lda is not None:
            x = self.lda.forward_packed(x, mask, interests)
        return self.feed_forward(x)

    def forward_last(self, x, x_last, mask, interests_last=None):
        if self.lda is not None:
            x_last = self.lda.forward_last(x, x_last, mask, interests_last)
        return self.feed_forward(x_last)


def _anchor_queries(x, mask, stride):
    """What the causal memory queries read at the anchors (positions 0, s, 2s, ...): the mean
    of ``x[:, :t+1]`` and ``x[:, t]``, ``[B, A, d]`` each, and which anchors are real
    ``[B, A]`` (right padding only follows the real positions)."""
    count = torch.arange(1, x.size(1) + 1, device=x.device, dtype=x.dtype)
    means = x.cumsum(1) / count[:, None]
    return means[:, ::stride], x[:, ::stride], mask[:, ::stride]


class ELASTIC(TransformerInput, EfficientSequentialRecommender):
    config_spec = TRANSFORMER_SPEC + (
        Int("n_experts", 1, example=16),
        Bool("lda_causal"),
        Int("chunk_size", 1, example=32),
        Bool("use_imr"),
        Int("memory_size", 1, example=65536),
        Int("memory_topk", 1, example=4),
        Int("memory_heads", 1, example=1),
        Int("memory_stride", 1, example=8),
        Float("memory_lr_scale", 0, low_open=True, example=1.0),
        Rule(("use_imr", "memory_size"),
             _imr_rule(lambda c: math.isqrt(c["memory_size"]) ** 2 == c["memory_size"]),
             lambda c, m: (f"memory_size={c['memory_size']} is not a perfect square: product keys "
                           f"address n x n slots; use e.g. --memory_size="
                           f"{max(1, round(math.sqrt(c['memory_size']))) ** 2}.")),
        Rule(("use_imr", "memory_size", "memory_topk"),
             _imr_rule(lambda c: c["memory_topk"] <= math.isqrt(c["memory_size"])),
             _topk_message),
        Rule(("use_imr", "hidden_size"), _imr_rule(lambda c: c["hidden_size"] % 2 == 0),
             "hidden_size={hidden_size} is odd: product keys split the memory query into two "
             "halves; use an even --hidden_size or --use_imr=False."),
    )

    # the memory was queried at every position before memory_stride existed
    checkpoint_defaults = {"memory_stride": 1}

    @classmethod
    def is_causal(cls, config):
        return bool(config["lda_causal"])

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.memory_lr_scale = config["memory_lr_scale"]
        self.memory_stride = config["memory_stride"]
        self._build_input(config)
        self.blocks = nn.ModuleList([ELASTICBlock(config, self.causal)
                                     for _ in range(config["n_layers"])])
        self.imr = None
        if config["use_imr"]:
            self.imr = InterestMemory(self.hidden_size, config["memory_size"],
                                      config["memory_topk"], config["memory_heads"],
                                      config["layer_norm_eps"])
        self.apply(self._init_weights)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DispatcherAttention):
            module.experts.data.normal_(mean=0.0, std=1.0)
        elif isinstance(module, InterestMemory):
            module.values.data.normal_(mean=0.0, std=self.initializer_range)

    def optimizer_groups(self, weight_decay):
        """Dense parameters under ``learner``; the memory bank as a ``sparse`` group (the
        trainer gives it LazyAdam: only retrieved rows and their moments are updated)."""
        if self.imr is None:
            return [{"params": [p for p in self.parameters() if p.requires_grad],
                     "weight_decay": weight_decay}]
        bank = self.imr.values
        dense = [p for p in self.parameters() if p.requires_grad and p is not bank]
        return [{"params": dense, "weight_decay": weight_decay},
                {"params": [bank], "sparse": True, "lr_scale": self.memory_lr_scale}]

    def use_sparse_gradients(self, enabled=True):
        super().use_sparse_gradients(enabled)
        if self.imr is not None:
            self.imr.sparse = self.sparse_gradients

    # -- encoder ----------------------------------------------------------------------------
    def _interests(self, x, item_seq_len, mask, every_position):
        """Retrieved interests: ``[B, A, m, d]`` at every anchor (positions 0, s, 2s, ... for
        ``memory_stride`` s; every position at s = 1) from its prefix, or ``[B, m, d]`` for
        the last real position (the causal form: from its anchor's prefix; the non-causal
        form: from the whole real sequence). None without IMR."""
        if self.imr is None:
            return None
        if every_position:
            summary, current, anchors = _anchor_queries(x, mask, self.memory_stride)
            if bool(anchors.all()):  # no pads: no gather and scatter
                return self.imr(summary, current)
            # pads retrieve nothing (their outputs are never used, and the memory rows they
            # would hit must get no gradient entry, which LazyAdam would act on)
            out = x.new_zeros(*current.shape[:2], self.imr.heads, x.size(-1))
            out[anchors] = self.imr(summary[anchors], current[anchors])
            return out
        last = item_seq_len.clamp_min(1) - 1
        if self.causal:
            last = last - last % self.memory_stride
        prefix = mask & (torch.arange(x.size(1), device=x.device) <= last[:, None])
        summary = (x * prefix[..., None]).sum(1) / (last + 1)[:, None]
        return self.imr(summary, self.gather_indexes(x, last))

    def encode(self, item_seq, item_seq_len):
        x, mask = self._embed_seq(item_seq, item_seq_len)
        interests = self._interests(x, item_seq_len, mask, every_position=self.causal)
        if interests is not None and not self.causal:
            interests = interests[:, None]
        for block in self.blocks[:-1]:
            x = block(x, mask)
        return self.blocks[-1](x, mask, interests)

    def encode_packed(self, item_seq, item_seq_len, mask):
        """Training on every position (causal form): embeddings, projections, norms,
        feed-forward and memory queries at the real positions only, the dispatcher on the
        padded grid."""
        if not self.causal:
            return super().encode_packed(item_seq, item_seq_len, mask)
        x = self._embed_packed(item_seq, mask)                              # [n, d]
        interests = None
        if self.imr is not None:  # at the real anchors: [n_a, m, d]
            summary, current, anchors = _anchor_queries(padded_grid(x, mask), mask,
                                                        self.memory_stride)
            interests = self.imr(summary[anchors], current[anchors])
        for block in self.blocks[:-1]:
            x = block.forward_packed(x, mask)
        return self.blocks[-1].forward_packed(x, mask, interests)

    def encode_last(self, item_seq, item_seq_len):
        x, mask = self._embed_seq(item_seq, item_seq_len)
        interests = self._interests(x, item_seq_len, mask, every_position=False)
        for block in self.blocks[:-1]:
            x = block(x, mask)
        last = self.gather_indexes(x, (item_seq_len - 1).clamp_min(0))
        return self.blocks[-1].forward_last(x, last, mask, interests)

    def position_wise_modules(self):
        return [block.feed_forward for block in self.blocks]

    def drop_sequence_mixer(self):
        """Identity in place of every LDA sublayer; IMR, which only feeds them, goes too."""
        for block in self.blocks:
            block.lda = None
        self.imr = None
        self.mixer_dropped = True
        return self

    # -- streaming inference (protocol on the base) -----------------------------------------
    # State: one (sum k a^T, sum a^T v, Z) triple per layer, then (with IMR) the running sum of
    # the inputs for the memory query and the interests retrieved at the last anchor (reused
    # until the next one). Learned positions: at most max_seq_length items.
    def _stream_init(self, batch_size):
        device = self.item_embedding.weight.device
        layers = []
        for block in self.blocks:
            heads, experts, size = block.lda.experts.shape
            layers.append((torch.zeros(batch_size, heads, size, experts, device=device),
                           torch.zeros(batch_size, heads, experts, size, device=device),
                           torch.zeros(batch_size, heads, experts, device=device)))
        if self.imr is not None:
            layers += [torch.zeros(batch_size, self.hidden_size, device=device),
                       torch.zeros(batch_size, self.imr.heads, self.hidden_size, device=device)]
        return layers

    def _stream_build(self, item_seq, item_seq_len):
        x, mask = self._embed_seq(item_seq, item_seq_len)
        memory = []
        if self.imr is not None:
            # an empty row keeps the empty state: its next item is an anchor and retrieves
            interests = self._interests(x, item_seq_len, mask, every_position=False)
            memory = [(x * mask[..., None]).sum(1),
                      interests * (item_seq_len > 0)[:, None, None].to(x.dtype)]
        layers = []
        for block in self.blocks[:-1]:
            layers.append(block.lda.state(x, mask))
            x = block(x, mask)
        return layers + [self.blocks[-1].lda.state(x, mask)] + memory

    def _stream_step(self, item_ids, positions, layers):
        x = self._embed(item_ids, positions)
        interests, memory, new_layers = None, [], []
        if self.imr is not None:
            total, interests = layers[-2] + x, layers[-1]
            anchor = positions % self.memory_stride == 0
            summary = total / (positions + 1)[:, None].to(x.dtype)
            if self.static_stream:  # every row queries, anchors keep theirs: no host sync
                interests = torch.where(anchor[:, None, None], self.imr(summary, x), interests)
            elif bool(anchor.any()):  # only the rows at an anchor query the memory
                if bool(anchor.all()):
                    interests = self.imr(summary, x)
                else:
                    interests = interests.clone()
                    interests[anchor] = self.imr(summary[anchor], x[anchor])
            memory = [total, interests]
        for i, (block, state) in enumerate(zip(self.blocks, layers)):
            x, state = block.lda.step(x, state, interests if i == len(self.blocks) - 1 else None)
            x = block.feed_forward(x)
            new_layers.append(state)
        return x, new_layers + memory


__all__ = ["ELASTIC"]
