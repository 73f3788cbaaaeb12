"""SoftmaxSASRec: the softmax-attention reference on the shared base.

SASRec's architecture (RecBole's Transformer layers, learned positions, causal mask) so
that every efficient model can be compared with softmax attention under identical data,
loss and protocol. Cost grows as O(L^2) in the sequence length.
"""

from functools import partial

import torch
from torch import nn
from recbole.model.layers import TransformerEncoder

from recbole_efficient.model.attention import init_normal
from recbole_efficient.model.base import EfficientSequentialRecommender
from recbole_efficient.validation import TRANSFORMER_SPEC


class SoftmaxSASRec(EfficientSequentialRecommender):
    causal = True
    config_spec = TRANSFORMER_SPEC

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.initializer_range = config["initializer_range"]
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
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
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.apply(partial(init_normal, std=self.initializer_range))

    def encode(self, item_seq, item_seq_len):
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        x = self.item_embedding(item_seq) + self.position_embedding(positions)[None]
        x = self.dropout(self.LayerNorm(x))
        mask = self.get_attention_mask(item_seq, bidirectional=False)
        return self.trm_encoder(x, mask, output_all_encoded_layers=True)[-1]
