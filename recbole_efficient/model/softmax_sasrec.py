"""SoftmaxSASRec: the softmax-attention reference on the shared base.

SASRec's architecture (RecBole's Transformer layers, learned positions, causal mask) so
that every efficient model can be compared with softmax attention under identical data,
loss and protocol. Attention runs through PyTorch's fused ``scaled_dot_product_attention``
(flash attention on CUDA): the strongest softmax reference a user would pick. Cost grows as
O(L^2) in the sequence length.
"""

import torch
import torch.nn.functional as F
from torch import nn
from recbole.model.layers import MultiHeadAttention, TransformerEncoder

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
        for layer in self.trm_encoder.layer:
            # The same module, parameters and state-dict keys, only its forward replaced:
            # building new modules would draw other random numbers than RecBole's SASRec.
            layer.multi_head_attention.__class__ = FusedCausalAttention
        self.apply(self._init_weights)

    def encode(self, item_seq, item_seq_len):
        x, _ = self._embed_seq(item_seq, item_seq_len)
        # No mask: attention is causal, and right padding only follows the real positions.
        return self.trm_encoder(x, None, output_all_encoded_layers=True)[-1]

    def encode_last(self, item_seq, item_seq_len):
        """In eval mode, the last layer attends from each row's last real position only and
        runs its feed-forward there; the layers below run at every position."""
        if self.training or self.mixer_dropped:
            # training scores every position
            return super().encode_last(item_seq, item_seq_len)
        x, _ = self._embed_seq(item_seq, item_seq_len)
        *below, top = self.trm_encoder.layer
        for layer in below:
            x = layer(x, None)
        last = item_seq_len - 1
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        visible = (positions[None] <= last[:, None])[:, None, None, :]  # the causal row at `last`
        query = self.gather_indexes(x, last)[:, None]
        out = top.multi_head_attention.attend(query, x, visible)
        return top.feed_forward(out)[:, 0]

    def position_wise_modules(self):
        return [layer.feed_forward for layer in self.trm_encoder.layer]

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


class FusedCausalAttention(MultiHeadAttention):
    """RecBole's ``MultiHeadAttention`` (same parameters, dropout and output sublayer) with its
    scores, mask, softmax, dropout and weighted sum in one ``F.scaled_dot_product_attention``
    call."""

    def forward(self, input_tensor, attention_mask=None):
        """Causal self-attention over ``input_tensor [B, L, d]``; ``attention_mask`` is unused
        (the encoder's argument): the causal mask alone is exact at the real positions of
        right-padded rows, and lets PyTorch pick its flash kernel."""
        return self.attend(input_tensor, input_tensor, None)

    def attend(self, query, keys, visible):
        """``query [B, q, d]`` over ``keys [B, L, d]``; ``visible`` bool ``[B, 1, q, L]`` (True
        where a query may look), or None for the causal mask (``q = L``)."""
        def heads(t):  # [B, n, d] -> [B, heads, n, head size]
            return t.unflatten(-1, (self.num_attention_heads, self.attention_head_size)) \
                .transpose(1, 2)

        q, k, v = heads(self.query(query)), heads(self.key(keys)), heads(self.value(keys))
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=visible, is_causal=visible is None,
            dropout_p=self.attn_dropout.p if self.training else 0.0)
        context = context.transpose(1, 2).reshape(*query.shape[:-1], self.all_head_size)
        return self.LayerNorm(self.out_dropout(self.dense(context)) + query)


__all__ = ["SoftmaxSASRec"]
