"""LinRec: L2-normalised linear attention in a SASRec backbone (Liu et al., SIGIR 2023).

SASRec's architecture (item + learned position embeddings -> LayerNorm -> Dropout, then
``n_layers`` post-LN blocks of attention + feed-forward, scored against the item embeddings)
with softmax attention replaced by ``phi(Q) (phi(K)^T V) / sqrt(d_h)``,
``phi(x) = ELU(x) / ||ELU(x)||_2`` (``recbole_efficient.kernels.linear_attention``), so a
sequence of L items costs O(L d^2) instead of O(L^2 d).

Unlike the released code, attention is padding-masked (pads add nothing to ``K^T V``, so a
row's output does not depend on how much padding it carries) and, by default, causal
(``causal: True``: output t sees items 0..t, computed chunk-wise), which is what
``all_positions`` training needs. ``causal: False`` is the released code's bidirectional form
(plus the padding mask), for RecBole's ``augmented`` mode only; it alone admits
``k_norm_axis: sequence``.

Streaming (causal only): each layer keeps ``sum_j phi(k_j)^T v_j`` per head (``d_h x d_h``),
so appending an item costs O(n_layers d^2) whatever the history length. Positions are learned
up to ``MAX_ITEM_LIST_LENGTH``: ``build_state``/``step`` refuse longer histories (rebuild the
state from the most recent items, or train with a larger ``MAX_ITEM_LIST_LENGTH``).
"""

import torch
import torch.nn.functional as F

from recbole_efficient.model.base import EfficientSequentialRecommender
from recbole_efficient.model.linear_attention import LINEAR_ATTENTION_SPEC, LinearAttentionEncoder
from recbole_efficient.model.shared import TransformerInput
from recbole_efficient.validation import Bool, Int, Rule


class LinRec(TransformerInput, EfficientSequentialRecommender):
    config_spec = LINEAR_ATTENTION_SPEC + (
        Bool("causal"),
        Int("chunk_size", 1, example=32),
        Rule(("k_norm_axis", "causal"),
             lambda c, m: not (c["causal"] and c["k_norm_axis"] == "sequence"),
             "k_norm_axis=sequence normalises each key feature over the whole sequence, so it "
             "needs future items and works only with --causal=False (and "
             "--train_mode=augmented); use --k_norm_axis=features for the causal form."),
    )

    @classmethod
    def is_causal(cls, config):
        return bool(config["causal"]) if "causal" in config else True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self._build_input(config)
        self.encoder = LinearAttentionEncoder(
            n_layers=config["n_layers"], hidden_size=self.hidden_size, n_heads=config["n_heads"],
            inner_size=config["inner_size"], hidden_dropout_prob=config["hidden_dropout_prob"],
            hidden_act=config["hidden_act"], layer_norm_eps=config["layer_norm_eps"],
            causal=self.causal, k_norm_axis=config["k_norm_axis"],
            chunk_size=config["chunk_size"])
        self.apply(self._init_weights)

    def encode(self, item_seq, item_seq_len):
        x, mask = self._embed_seq(item_seq, item_seq_len)
        return self.encoder(x, mask)

    def encode_packed(self, item_seq, item_seq_len, mask):
        """Training on every position: embeddings, projections, norms and feed-forward run on
        the real positions only, the attention on the padded grid."""
        return self.encoder.forward_packed(self._embed_packed(item_seq, mask), mask)

    def encode_last(self, item_seq, item_seq_len):
        x, mask = self._embed_seq(item_seq, item_seq_len)
        return self.encoder.forward_last(x, mask, item_seq_len - 1)

    def position_wise_modules(self):
        return list(self.encoder.feed_forward)

    def drop_sequence_mixer(self):
        """Every attention sublayer becomes the identity (embeddings, feed-forward stack and
        output layer remain)."""
        self.encoder.drop_attention()
        self.mixer_dropped = True
        return self

    # -- streaming inference (protocol on the base) ---------------------------------------
    def _stream_init(self, batch_size):
        device = self.item_embedding.weight.device
        return [torch.zeros(batch_size, a.n_heads, a.head_size, a.head_size, device=device)
                for a in self.encoder.attention]

    def _stream_build(self, item_seq, item_seq_len):
        x, mask = self._embed_seq(item_seq, item_seq_len)
        return self.encoder.build_states(x, mask)

    def _gather_stream_weights(self):
        ln = self.LayerNorm
        return (self.item_embedding.weight, self.position_embedding.weight,
                (ln.normalized_shape, ln.weight, ln.bias, ln.eps), self.encoder.step_weights())

    def _stream_step(self, item_ids, positions, layers):
        items, positions_table, norm, weights = self._stream_weights()
        # _embed written out (eval: no dropout), as the encoder's step is
        x = F.layer_norm(F.embedding(item_ids, items) + F.embedding(positions, positions_table),
                         *norm)
        return self.encoder.step(x, layers, weights)

    def extra_repr(self):
        return f"causal={self.causal}"


__all__ = ["LinRec"]
