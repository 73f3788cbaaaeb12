"""Pieces several models share: the input block of the Transformer backbones (item and
learned position embeddings, LayerNorm, dropout, padding mask), BERT/SASRec initialisation,
the sequence mixers' dropout, and a few tensor helpers.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_efficient.kernels.dropout import dropout

__all__ = ["TransformerInput", "init_normal", "Dropout", "fused_linear", "padded_grid",
           "eval_activation"]


class TransformerInput:
    """Mixin of the SASRec-style models: ``item + position embedding -> LayerNorm -> dropout``.

    :meth:`_build_input` registers ``item_embedding``, ``position_embedding``, ``LayerNorm``
    and ``dropout`` on the model itself (the names RecBole's SASRec and BERT4Rec use, so
    checkpoints keep their keys), with ``hidden_size`` and ``initializer_range``; call it first
    in ``__init__``, before the encoder, and ``self.apply(self._init_weights)`` last. Learned
    positions also bound streaming (:meth:`stream_limit`).
    """

    def _build_input(self, config, n_embeddings=None):
        """``n_embeddings``: rows of the item table (default ``n_items``; BERT-style models
        add a mask token)."""
        self.hidden_size = hidden = config["hidden_size"]
        self.initializer_range = config["initializer_range"]
        self.item_embedding = nn.Embedding(n_embeddings or self.n_items, hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])

    def _init_weights(self, module):
        """For ``self.apply``, once every module is built."""
        init_normal(module, self.initializer_range)

    def _embed(self, item_seq, positions):
        """Input vectors of ``item_seq`` at 0-based ``positions`` (any matching shapes)."""
        x = self.item_embedding(item_seq) + self.position_embedding(positions)
        return self.dropout(self.LayerNorm(x))

    def _embed_seq(self, item_seq, item_seq_len):
        """Inputs ``[B, L, d]`` of right-padded ``item_seq`` and its mask ``[B, L]`` (True at
        real positions)."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        mask = positions[None, :] < item_seq_len[:, None]
        return self._embed(item_seq, positions[None]), mask

    def stream_limit(self):
        # positions past the learned ones were never trained
        return self.max_seq_length

    def _embed_packed(self, item_seq, mask):
        """Inputs ``[n, d]`` at the real positions of ``mask`` only (row-major)."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device).expand_as(item_seq)
        return self._embed(item_seq[mask], positions[mask])


def init_normal(module, std):
    """BERT/SASRec initialisation: N(0, std) weights, zero biases, LayerNorm 1/0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()


class Dropout(nn.Dropout):
    """``nn.Dropout`` with :func:`recbole_efficient.kernels.dropout.dropout` (same
    distribution, mask drawn at about half the CPU cost); used inside the sequence mixers.
    Not in place."""

    def __init__(self, p=0.5):
        super().__init__(p)

    def forward(self, x):
        return dropout(x, self.p, self.training)




def fused_linear(x, *linears):
    """``cat([f(x) for f in linears], -1)`` for ``nn.Linear`` layers with biases, as one
    matmul: one pass over ``x`` (and, backwards, over its gradient) instead of one each."""
    weight = torch.cat([f.weight for f in linears])
    bias = torch.cat([f.bias for f in linears])
    return F.linear(x, weight, bias)


def padded_grid(packed, mask):
    """``packed [n, ...]`` (the positions where ``mask [B, L]`` is True, row-major) back on
    the ``[B, L, ...]`` grid, zeros at the other positions."""
    grid = packed.new_zeros(*mask.shape, *packed.shape[1:])
    grid[mask] = packed
    return grid


def _gelu(x):
    # RecBole's exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)), in place after the first op: at
    # batch 1 this beats F.gelu's call overhead (~250 vs ~277 us per LinRec step here)
    return torch.erf(x * _SQRT_HALF).add_(1.0).mul_(x).mul_(0.5)


_SQRT_HALF = 1 / math.sqrt(2.0)


def eval_activation(ffn):
    """The activation of RecBole's ``FeedForward`` ``ffn`` for an inference path where each
    operator call counts: its GELU with in-place operators, its swish as ``F.silu`` (the same
    functions); the others as they are."""
    act = ffn.intermediate_act_fn
    if getattr(act, "__self__", None) is ffn:  # RecBole's own methods
        return {"gelu": _gelu, "swish": F.silu}.get(act.__name__, act)
    return act
