"""SoftmaxSASRec: the softmax-attention reference on the shared base.

SASRec's architecture (RecBole's Transformer layers, learned positions, causal mask) so
that every efficient model can be compared with softmax attention under identical data,
loss and protocol. Cost grows as O(L^2) in the sequence length.
"""

import torch
from torch import nn
from recbole.model.layers import TransformerEncoder

from recbole_efficient.model.base import EfficientSequentialRecommender
from recbole_efficient.model.shared import TransformerInput
from recbole_efficient.validation import TRANSFORMER_SPEC


class SoftmaxSASRec(TransformerInput, EfficientSequentialRecommender):
    causal = True
    config_spec = TRANSFORMER_SPEC

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self._build_input(config)
        self.trm_encoder = TransformerEncoder(
            n_layers=config["n_layers"],
            n_heads=config["n_heads"],
            hidden_size=self.hidden_size,
            inner_size=config["inner_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"],
        )
        self.apply(self._init_weights)

    def encode(self, item_seq, item_seq_len):
        x, _ = self._embed_seq(item_seq, item_seq_len)
        if self.mixer_dropped:  # no attention, no mask to build
            return self.trm_encoder(x, None, output_all_encoded_layers=True)[-1]
        mask = self.get_attention_mask(item_seq, bidirectional=False)
        return self.trm_encoder(x, mask, output_all_encoded_layers=True)[-1]

    def encode_last(self, item_seq, item_seq_len):
        """In eval mode, the last layer attends from each row's last real position only and
        runs its feed-forward there; the layers below run at every position."""
        if self.training or self.mixer_dropped:
            # Training keeps the full path: its dropout draws the same random numbers as
            # RecBole's SASRec, so augmented runs of both stay identical.
            return super().encode_last(item_seq, item_seq_len)
        x, _ = self._embed_seq(item_seq, item_seq_len)
        *below, top = self.trm_encoder.layer
        if below:
            mask = self.get_attention_mask(item_seq, bidirectional=False)
            for layer in below:
                x = layer(x, mask)
        last = item_seq_len - 1
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        # The causal mask's row at `last` (same additive values as get_attention_mask).
        visible = (item_seq != 0) & (positions[None] <= last[:, None])
        row_mask = torch.where(visible, 0.0, -10000.0)[:, None, None, :]
        query = self.gather_indexes(x, last)[:, None]
        out = _attend(top.multi_head_attention, query, x, row_mask)
        return top.feed_forward(out)[:, 0]

    def drop_sequence_mixer(self):
        """Remove every attention sublayer (attention, its residual and norm): embeddings,
        feed-forward sublayers and output layer remain."""
        for layer in self.trm_encoder.layer:
            layer.multi_head_attention = _NoAttention()
        self.mixer_dropped = True
        return self


class _NoAttention(nn.Module):
    """Stands in for a removed attention sublayer: its input goes through unchanged."""

    def forward(self, hidden, attention_mask):
        return hidden


def _attend(mha, query, keys, mask):
    """RecBole ``MultiHeadAttention`` ``mha`` for ``query [B, q, d]`` over ``keys [B, L, d]``
    with additive ``mask [B, 1, q, L]`` (the full layer is the case ``query = keys``)."""
    def heads(t):  # [B, n, d] -> [B, heads, n, head size]
        return t.unflatten(-1, (mha.num_attention_heads, mha.attention_head_size)).transpose(1, 2)

    q, k, v = heads(mha.query(query)), heads(mha.key(keys)), heads(mha.value(keys))
    scores = q @ k.transpose(-1, -2) / mha.sqrt_attention_head_size + mask
    context = mha.attn_dropout(mha.softmax(scores)) @ v
    context = context.transpose(1, 2).reshape(*query.shape[:-1], mha.all_head_size)
    return mha.LayerNorm(mha.out_dropout(mha.dense(context)) + query)


__all__ = ["SoftmaxSASRec"]
