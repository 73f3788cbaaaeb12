"""LinRecBERT: LinRec's L2-normalised linear attention in a BERT4Rec backbone.

BERT4Rec's architecture (Sun et al., CIKM 2019; RecBole's ``BERT4Rec``): item embeddings with
an extra ``[mask]`` token, learned positions, ``n_layers`` bidirectional post-LN blocks, an
output head (dense -> GELU -> LayerNorm) scored against the item embeddings plus a per-item
bias. Its attention is LinRec's (``recbole_efficient.model.linear_attention``), bidirectional and
padding-masked: pads add nothing to ``K^T V``.

Training (``train_mode: cloze``, the default) follows the BERT4Rec paper: one row per user
window of at most ``MAX_ITEM_LIST_LENGTH`` items, each real item replaced by ``[mask]`` with
probability ``mask_ratio`` (fresh masks every batch, at least one per row), and the loss at
the masked positions only; a share ``ft_ratio`` of the rows masks only its last item instead
(BERT4Rec's fine-tuning rows: the task evaluation asks for). An epoch therefore costs what an ``all_positions`` epoch costs.
``augmented`` (RecBole's prefix rows) trains on the evaluation task directly.

Prediction appends ``[mask]`` after the history and scores the items at that position; a
history of ``MAX_ITEM_LIST_LENGTH`` items drops its oldest item to make room (positions are
learned up to that length). Bidirectional: no streaming inference.
"""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_efficient.data.dataset import cloze_mask
from recbole_efficient.model.base import EfficientSequentialRecommender
from recbole_efficient.model.linear_attention import LINEAR_ATTENTION_SPEC, LinearAttentionEncoder
from recbole_efficient.model.shared import TransformerInput
from recbole_efficient.validation import Float, Prob


class LinRecBERT(TransformerInput, EfficientSequentialRecommender):
    causal = False
    config_spec = LINEAR_ATTENTION_SPEC + (
        Float("mask_ratio", 0, 1, low_open=True, high_open=True),
        Prob("ft_ratio"),
    )
    #: Built before ``ft_ratio`` existed: those checkpoints trained without fine-tuning rows.
    checkpoint_defaults = {"ft_ratio": 0.0}

    @classmethod
    def train_modes(cls, config):
        return ("cloze", "augmented")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.mask_ratio = config["mask_ratio"]
        self.ft_ratio = config["ft_ratio"]
        eps = config["layer_norm_eps"]
        self.mask_token = self.n_items
        self._build_input(config, n_embeddings=self.n_items + 1)  # + the [mask] token
        self.encoder = LinearAttentionEncoder(
            n_layers=config["n_layers"], hidden_size=self.hidden_size, n_heads=config["n_heads"],
            inner_size=config["inner_size"], hidden_dropout_prob=config["hidden_dropout_prob"],
            hidden_act=config["hidden_act"], layer_norm_eps=eps, causal=False,
            k_norm_axis=config["k_norm_axis"])
        self.output_ffn = nn.Linear(self.hidden_size, self.hidden_size)
        self.output_gelu = nn.GELU()
        self.output_ln = nn.LayerNorm(self.hidden_size, eps=eps)
        self.output_bias = nn.Parameter(torch.zeros(self.n_items))
        self.apply(self._init_weights)

    def _head(self, hidden):
        return self.output_ln(self.output_gelu(self.output_ffn(hidden)))

    def _encode_body(self, item_seq, item_seq_len):
        x, mask = self._embed_seq(item_seq, item_seq_len)
        return self.encoder(x, mask)

    def encode(self, item_seq, item_seq_len):
        """Bidirectional hidden states ``[B, L, d]`` of the sequence as given (head applied)."""
        return self._head(self._encode_body(item_seq, item_seq_len))

    def append_mask(self, item_seq, item_seq_len):
        """``[mask]`` after each history: ``(item_seq [B, W'], item_seq_len + 1)``; a history
        of ``max_seq_length`` items drops its oldest one."""
        seq = F.pad(item_seq, (0, 1))
        seq[torch.arange(seq.size(0), device=seq.device), item_seq_len] = self.mask_token
        length = item_seq_len + 1
        if seq.size(1) > self.max_seq_length:
            full = length > self.max_seq_length
            seq = torch.where(full[:, None], seq[:, 1:], seq[:, :-1])
            length = length - full.long()
        return seq, length

    def encode_last(self, item_seq, item_seq_len):
        """Hidden state ``[B, d]`` that predicts the next item: at a ``[mask]`` appended to the
        history (not at the last history item, as a causal model's)."""
        seq, length = self.append_mask(item_seq, item_seq_len)
        x, mask = self._embed_seq(seq, length)
        return self._head(self.encoder.forward_last(x, mask, length - 1))

    def output_embedding(self):
        return self.item_embedding.weight[:self.n_items], self.output_bias

    def calculate_loss(self, interaction):
        if self.train_mode != "cloze":
            return super().calculate_loss(interaction)
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        masked = cloze_mask(item_seq_len, item_seq.size(1), self.mask_ratio,
                            ft_ratio=self.ft_ratio)
        hidden = self._encode_body(item_seq.masked_fill(masked, self.mask_token), item_seq_len)
        # the head is position-wise: applied at the masked positions only
        return self._positions_loss(self._head(hidden[masked]), item_seq[masked])

    def position_wise_modules(self):
        return list(self.encoder.feed_forward)

    def drop_sequence_mixer(self):
        """Every attention sublayer becomes the identity (embeddings, feed-forward stack,
        output head remain)."""
        self.encoder.drop_attention()
        self.mixer_dropped = True
        return self


__all__ = ["LinRecBERT"]
