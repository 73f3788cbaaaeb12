"""Product-key top-k retrieval over M = n^2 memory slots (Lample et al., NeurIPS 2019).

Slot ``i * n + j`` has the key ``[K1_i ; K2_j]`` (two sub-key sets of n keys of half the query
size), so its score ``q.key = q1.K1_i + q2.K2_j`` is a sum of two half scores. The global
top-k slots are always among the k x k pairs of each half's own top-k, hence:
:func:`product_key_topk` scores 2n sub-keys and k^2 candidate sums, O(n D + k^2) per query
whatever M; :func:`product_key_topk_naive` scores all M full keys (the reference).

Shapes: ``query [..., H, D]`` (H independent heads, D even), ``sub_keys [H, 2, n, D/2]``;
both return ``(scores [..., H, k], slots [..., H, k])`` in descending order of score.
"""

from __future__ import annotations

import torch

__all__ = ["product_key_topk", "product_key_topk_naive"]


def product_key_topk(query, sub_keys, topk):
    """Top-``topk`` slots through the two halves' own top-``topk``.

    The search runs without autograd; the winners' scores are then recomputed from their
    2 x ``topk`` sub-keys, so the backward pass costs O(topk D) per query, not O(n D), and
    only the selected sub-keys get gradients.
    """
    n = sub_keys.size(2)
    q1, q2 = query.chunk(2, -1)
    with torch.no_grad():
        # contiguous halves: the matmul reads strided ones at half speed
        s1, i1 = torch.einsum("...hd,hnd->...hn", q1.contiguous(), sub_keys[:, 0]).topk(
            topk, -1, sorted=False)
        s2, i2 = torch.einsum("...hd,hnd->...hn", q2.contiguous(), sub_keys[:, 1]).topk(
            topk, -1, sorted=False)
        best = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2).topk(topk, -1).indices
        first, second = i1.gather(-1, best // topk), i2.gather(-1, best % topk)  # [..., H, k]
    heads = torch.arange(sub_keys.size(0), device=query.device)[:, None]
    scores = ((q1.unsqueeze(-2) * sub_keys[:, 0][heads, first]).sum(-1)
              + (q2.unsqueeze(-2) * sub_keys[:, 1][heads, second]).sum(-1))
    return scores, first * n + second


def product_key_topk_naive(query, sub_keys, topk):
    """Reference: the full ``[M, D]`` key matrix, every slot scored, one top-k."""
    n = sub_keys.size(2)
    keys = torch.cat([sub_keys[:, 0].repeat_interleave(n, 1),          # slot i*n+j -> K1_i
                      sub_keys[:, 1].repeat(1, n, 1)], -1)              # slot i*n+j -> K2_j
    return torch.einsum("...hd,hmd->...hm", query, keys).topk(topk, -1)
