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
import torch.nn.functional as F

__all__ = ["product_key_topk", "product_key_topk_naive"]


class _ProductKeySearch(torch.autograd.Function):
    """The search without autograd; the winners' scores are read from the search's own half
    scores, and the backward pass touches only the selected sub-keys: O(topk D) per query,
    not O(n D) (two row gathers and one scatter-add instead of autograd through gathers and
    broadcast products)."""

    @staticmethod
    def forward(ctx, query, sub_keys, topk):
        heads, _, n, half = sub_keys.shape
        if query.shape[-2:] != (heads, 2 * half):
            raise ValueError(f"query [..., {heads}, {2 * half}] expected for sub_keys of shape "
                             f"{tuple(sub_keys.shape)}, got {tuple(query.shape)}")
        rows = query.numel() // (heads * 2 * half)
        q = query.reshape(rows, heads * 2, half)
        keys = sub_keys.reshape(heads * 2, n, half)
        # one mm and top-k per head and half (CPU bmm is up to 2x slower on these shapes);
        # contiguous query halves: the matmul reads strided ones at half speed
        found = [torch.mm(q[:, i].contiguous(), keys[i].t()).topk(topk, -1)
                 for i in range(heads * 2)]
        half_scores = torch.stack([f.values for f in found]).view(heads, 2, rows, topk)
        index = torch.stack([f.indices for f in found]).view(heads, 2, rows, topk)
        pairs = half_scores[:, 0, :, :, None] + half_scores[:, 1, :, None, :]  # [H, R, k, k]
        scores, best = pairs.flatten(-2).topk(topk, -1)                       # [H, R, k]
        first = index[:, 0].gather(-1, best.div(topk, rounding_mode="floor"))
        second = index[:, 1].gather(-1, best.remainder(topk))
        # rows of the [2H n, D/2] sub-key table each winner read, per half: [R, H, 2, k]
        offsets = torch.arange(0, 2 * heads * n, n, device=query.device).view(heads, 2, 1, 1)
        table_rows = (torch.stack([first, second], 1) + offsets).permute(2, 0, 1, 3)
        shape = query.shape[:-1] + (topk,)
        slots = (first * n + second).permute(1, 0, 2).reshape(shape)
        ctx.save_for_backward(query, sub_keys, table_rows)
        ctx.mark_non_differentiable(slots)
        dtype = torch.promote_types(query.dtype, sub_keys.dtype)
        if scores.dtype != dtype:
            # autocast ran the search in half precision: the winners' scores are recomputed
            # in the dtype autograd through query and sub_keys would give them (O(k D) each)
            halves = query.reshape(rows, heads, 2, 1, half).to(dtype)
            table = sub_keys.reshape(-1, half).to(dtype)
            return (table[table_rows] * halves).sum((-1, -3)).reshape(shape), slots
        return scores.permute(1, 0, 2).reshape(shape), slots

    @staticmethod
    def backward(ctx, grad_scores, _):
        query, sub_keys, table_rows = ctx.saved_tensors
        heads, _, n, half = sub_keys.shape
        rows, topk = table_rows.size(0), table_rows.size(-1)
        table = sub_keys.reshape(-1, half)
        # both halves of a score get the same gradient: [R, H, 2, k]
        grad = grad_scores.reshape(rows, heads, 1, topk).expand(-1, -1, 2, -1)
        grad_query = grad_keys = None
        if ctx.needs_input_grad[0]:
            weights = grad.reshape(-1, topk).to(table.dtype)
            grad_query = F.embedding_bag(table_rows.reshape(-1, topk), table, mode="sum",
                                         per_sample_weights=weights)
            grad_query = grad_query.view(query.shape).to(query.dtype)
        if ctx.needs_input_grad[1]:
            rows_grad = grad.unsqueeze(-1) * query.reshape(rows, heads, 2, 1, half)
            grad_keys = torch.zeros_like(table).index_add_(
                0, table_rows.flatten(), rows_grad.reshape(-1, half).to(table.dtype))
            grad_keys = grad_keys.view(sub_keys.shape)
        return grad_query, grad_keys, None


def product_key_topk(query, sub_keys, topk):
    """Top-``topk`` slots through the two halves' own top-``topk``. Only the query and the
    selected sub-keys get gradients."""
    return _ProductKeySearch.apply(query, sub_keys, topk)


def product_key_topk_naive(query, sub_keys, topk):
    """Reference: the full ``[M, D]`` key matrix, every slot scored, one top-k."""
    n = sub_keys.size(2)
    keys = torch.cat([sub_keys[:, 0].repeat_interleave(n, 1),          # slot i*n+j -> K1_i
                      sub_keys[:, 1].repeat(1, n, 1)], -1)              # slot i*n+j -> K2_j
    return torch.einsum("...hd,hmd->...hm", query, keys).topk(topk, -1)
