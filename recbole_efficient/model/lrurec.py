"""LRURec: Linear Recurrent Units for Sequential Recommendation (Yue et al., WSDM 2024).

Item embedding (no positions) -> Dropout -> LayerNorm, then ``n_layers`` blocks of
[LRU layer (complex diagonal linear recurrence, state size 2d) + point-wise feed-forward],
scored against the item embeddings plus a per-item bias. Training runs the recurrence as a
chunked scan (``kernels/lru_scan.py``); scoring runs the last layer's position-wise work at
the last position only; inference can also advance one item at a time with a fixed-size
state per layer (the base's streaming protocol: ``init_state``/``build_state``/``step``), at a
cost that does not grow with the history length.

Architecture and initialisation follow the official code (github.com/yueqirex/LRURec):
dropout before the embedding LayerNorm, no outer GELU in the feed-forward, complex biases
in B and C with gamma scaling B's bias, max phase 2*pi, truncated-normal init (std 0.02,
cut at +-0.04) of every weight and bias, real and imaginary parts alike.
"""

import torch
from torch import nn

from recbole_efficient.model.base import EfficientSequentialRecommender
from recbole_efficient.model.lru import LRUBlock, LRULayer
from recbole_efficient.validation import Bool, Float, Prob, Rule


class LRURec(EfficientSequentialRecommender):
    causal = True
    config_spec = (
        Prob("lru_dropout_prob"),
        Float("r_min", 0, 1, low_open=True, high_open=True),
        Float("r_max", 0, 1, low_open=True, high_open=True),
        Float("max_phase", 0, low_open=True),
        Bool("lru_params_weight_decay"),
        Rule(("r_min", "r_max"), lambda c, m: c["r_min"] < c["r_max"],
             "r_min={r_min} must be below r_max={r_max} (|lambda| is drawn from the ring "
             "[r_min, r_max]); e.g. --r_min=0.8 --r_max=0.99."),
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.initializer_range = config["initializer_range"]
        self.lru_params_weight_decay = bool(config["lru_params_weight_decay"])
        eps = config["layer_norm_eps"]

        # padding_idx=0 (RecBole convention): the pad row starts at zero. RecBole right-pads and
        # the recurrence is causal, so pad inputs never reach a real position and the pad row
        # only serves as the output vector of item 0 (in the softmax like in the official code,
        # never recommended: full-sort evaluation masks item 0). The official code's left
        # padding makes the pad a learnt BOS input; RecBole windows have no BOS position.
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.emb_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.emb_layer_norm = nn.LayerNorm(self.hidden_size, eps=eps)
        self.blocks = nn.ModuleList([
            LRUBlock(self.hidden_size,
                     lru_dropout=config["lru_dropout_prob"],
                     hidden_dropout=config["hidden_dropout_prob"],
                     r_min=config["r_min"], r_max=config["r_max"],
                     max_phase=config["max_phase"], layer_norm_eps=eps)
            for _ in range(self.n_layers)
        ])
        self.output_bias = nn.Parameter(torch.zeros(self.n_items))
        self.mixer_dropped = False
        self._init_weights()

    # -- initialisation and optimiser ----------------------------------------------------
    def _lru_log_params(self):
        return [p for m in self.modules() if isinstance(m, LRULayer) for p in m.log_parameters()]

    def _layer_norm_params(self):
        return [p for m in self.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]

    def _init_weights(self):
        """Truncated normal (std ``initializer_range``, cut at 2 std) for every parameter but
        LayerNorm (default 1/0) and the LRU log-parameters (ring init)."""
        std = self.initializer_range
        skip = {id(p) for p in self._lru_log_params() + self._layer_norm_params()}
        with torch.no_grad():
            for p in self.parameters():
                if id(p) not in skip:
                    nn.init.trunc_normal_(p, mean=0.0, std=std, a=-2 * std, b=2 * std)
            self.item_embedding.weight[0].zero_()

    def optimizer_groups(self, weight_decay):
        """AdamW groups: no decay for biases and LayerNorm parameters.

        The LRU log-parameters (nu, theta, gamma) are decayed as in the official code unless
        ``lru_params_weight_decay: False``; decay pulls them towards 0, i.e. towards
        ``|lambda| = exp(-1)``, ``theta = 1`` and ``gamma = 1``.
        """
        no_decay = {id(p) for p in self._layer_norm_params()}
        if not self.lru_params_weight_decay:
            no_decay |= {id(p) for p in self._lru_log_params()}
        decay, plain = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if id(p) in no_decay or "bias" in leaf:
                plain.append(p)
            else:
                decay.append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": plain, "weight_decay": 0.0}]

    # -- training / full-sequence inference -----------------------------------------------
    def embed(self, item_seq):
        return self.emb_layer_norm(self.emb_dropout(self.item_embedding(item_seq)))

    def encode(self, item_seq, item_seq_len):
        x = self.embed(item_seq)
        for block in self.blocks:
            x, _ = block(x)
        return x

    def encode_packed(self, item_seq, item_seq_len, mask):
        """Training on every position: embedding, projections, norms and feed-forward run on
        the real positions only, the scan on the padded grid (``LRULayer.packed_states``)."""
        x = self.embed(item_seq[mask])
        for block in self.blocks:
            x = block.forward_packed(x, mask)
        return x

    def encode_last(self, item_seq, item_seq_len):
        """Every layer at every position, but the last layer's output projection and
        feed-forward at each row's last real position only."""
        if self.mixer_dropped:
            return super().encode_last(item_seq, item_seq_len)
        x = self.embed(item_seq)
        for block in self.blocks[:-1]:
            x, _ = block(x)
        top = self.blocks[-1]
        last = item_seq_len - 1
        h = top.lru.states(x)
        return top.output(self.gather_indexes(h, last), self.gather_indexes(x, last))

    def position_wise_modules(self):
        return [block.feed_forward for block in self.blocks]

    def drop_sequence_mixer(self):
        """Remove every LRU layer (recurrence, projections, its norm): embedding, feed-forward
        blocks and output layer remain."""
        for block in self.blocks:
            block.lru = None
        self.mixer_dropped = True
        return self

    def output_embedding(self):
        return self.item_embedding.weight, self.output_bias

    # -- streaming inference (protocol on the base) ---------------------------------------
    # State: one complex [B, 2 * hidden_size] vector per layer; no positions, so no limit.
    def _stream_init(self, batch_size):
        device = self.item_embedding.weight.device
        return [torch.zeros(batch_size, block.lru.state_size, dtype=torch.complex64, device=device)
                for block in self.blocks]

    def _stream_build(self, item_seq, item_seq_len):
        last = (item_seq_len - 1).clamp_min(0)
        empty = (item_seq_len == 0)[:, None]
        x = self.embed(item_seq)
        states = []
        for i, block in enumerate(self.blocks):
            h = block.lru.states(x)
            states.append(self.gather_indexes(h, last).masked_fill(empty, 0))
            if i + 1 < len(self.blocks):  # the last layer's outputs are not part of the state
                x = block.output(h, x)
        return states

    def _stream_step(self, item_ids, positions, layers):
        x = self.embed(item_ids)
        new_layers = []
        for block, h_prev in zip(self.blocks, layers):
            x, h = block.step(x, h_prev)
            new_layers.append(h)
        return x, new_layers

    def extra_repr(self):
        return f"lru_params_weight_decay={self.lru_params_weight_decay}"


__all__ = ["LRURec"]
