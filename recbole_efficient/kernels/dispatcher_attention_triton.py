"""Causal linear dispatcher attention with its prefix sums in fused Triton kernels.

Both prefix sums of the causal form are one operator, the causal product
``out_t = sum_{j<=t} (x_t . y_j) z_j`` (:mod:`causal_product_triton`, which LinRec uses too):

* expert scores ``S_te = q_t . sum_{j<=t} a_je k_j``: ``x = q, y = k, z = a``;
* outputs ``o_t = sum_e W_te sum_{j<=t} a_je v_j`` with ``W = pi / Z``: ``x = W, y = a, z = v``.

So a training step costs two launches per direction for the prefix sums, whatever the
length. Torch does the position-wise rest with its own autograd: the pack weights ``a`` (a
small matmul and elu), ``Z`` (one cumulative sum), the extras' scores, softmax and dropout.

:func:`dispatch_causal` is the entry point; ``dispatcher_attention.dispatch_causal`` calls it
on CUDA in float32.
"""

from __future__ import annotations

from recbole_efficient.kernels.causal_product_triton import causal_product
from recbole_efficient.kernels.dispatcher_attention import (_extra_output, _floor, _unpack,
                                                           causal_pack_weights)

__all__ = ["dispatch_causal"]


def dispatch_causal(q, k, v, experts, extra_k=None, extra_v=None, dropout_p=0.0,
                    training=False, chunk=32):
    """Causal LDA (``dispatcher_attention.dispatch_causal``'s semantics, float32): the two
    prefix sums in :func:`causal_product`, the rest in torch. Dropout draws its mask over
    ``[B, H, N, E + m]`` like the torch form's unpadded chunks, so both agree under one seed
    where the torch form pads nothing."""
    scale = q.size(-1) ** -0.5
    a = causal_pack_weights(k, experts)                                   # [B, H, N, E]
    rz = _floor(a.cumsum(2)).reciprocal()                                 # 1 / Z
    scores = causal_product(q, k, a, chunk) * (rz * scale)
    pi, pi_extra = _unpack(scores, q, extra_k, dropout_p, training)
    out = causal_product(pi * rz, a, v, chunk)
    if extra_k is not None:
        out = out + _extra_output(pi_extra, extra_v)
    return out
