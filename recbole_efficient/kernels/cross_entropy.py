"""Next-item cross-entropy over all items, with the output layer fused in.

At every position of a training window the item logits are an ``[N, n_items]`` matrix, the
largest tensor of a training step. Two forms of the same loss:

* :func:`linear_cross_entropy_naive` -- ``F.cross_entropy(F.linear(...))``; the reference.
* :func:`linear_cross_entropy` -- a hand-written backward that turns the saved logits into
  their own gradient in place: one ``[N, n_items]`` tensor per step instead of four
  (log-softmax output, a zero-filled gradient, the log-softmax gradient). The element-wise
  work runs over blocks of rows small enough to stay in cache, and a fresh large tensor
  costs more than its arithmetic on CPU (every page is faulted in on first touch); on CUDA
  the blocks are 16 times larger (a few kernel launches per step).

Shapes: ``hidden [N, d]``, ``weight [n_items, d]``, ``bias [n_items]`` or None,
``targets [N]``; the result is the mean loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear_cross_entropy", "linear_cross_entropy_naive"]

_BLOCK_ELEMENTS = 1 << 20  # ~4 MB of float32 per block of rows
# On CUDA each block costs kernel launches and no cache is to be kept: large blocks, capped so
# that the forward's buffer stays a fraction of the logits.
_CUDA_BLOCK_ELEMENTS = 1 << 24


def _row_blocks(logits):
    limit = _CUDA_BLOCK_ELEMENTS if logits.is_cuda else _BLOCK_ELEMENTS
    return max(1, limit // max(1, logits.size(1)))


def linear_cross_entropy_naive(hidden, weight, bias, targets):
    """Reference: ``mean_n -log softmax(hidden_n @ weight.T + bias)[targets_n]``."""
    return F.cross_entropy(F.linear(hidden, weight, bias), targets)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        logits = F.linear(hidden, weight, bias)
        rows = _row_blocks(logits)
        lse = logits.new_empty(logits.size(0))
        buffer = logits.new_empty(min(rows, logits.size(0)), logits.size(1))
        for block, block_lse in zip(logits.split(rows), lse.split(rows)):
            top = block.amax(1, keepdim=True)
            exp = torch.sub(block, top, out=buffer[:len(block)]).exp_()
            torch.add(exp.sum(1).log_(), top[:, 0], out=block_lse)
        loss = (lse - logits.gather(1, targets[:, None])[:, 0]).mean()
        ctx.has_bias = bias is not None
        # backward overwrites `logits`: a second backward fails autograd's version check.
        ctx.save_for_backward(hidden, weight, logits, lse, targets)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        hidden, weight, logits, lse, targets = ctx.saved_tensors
        n = logits.size(0)
        scale = grad_loss / n
        # d loss / d logits = (softmax(logits) - onehot(targets)) * grad / N
        rows = _row_blocks(logits)
        for block, block_lse in zip(logits.split(rows), lse.split(rows)):
            block.sub_(block_lse[:, None]).exp_().mul_(scale)
        grad = logits
        grad.index_put_((torch.arange(n, device=grad.device), targets), -scale.expand(n),
                        accumulate=True)
        grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ hidden if ctx.needs_input_grad[1] else None
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = sum(block.sum(0) for block in grad.split(rows))
        return grad_hidden, grad_weight, grad_bias, None


def linear_cross_entropy(hidden, weight, bias, targets):
    """Mean cross-entropy of ``softmax(hidden @ weight.T + bias)`` against ``targets``.

    Equal to :func:`linear_cross_entropy_naive` up to rounding, values and gradients (first
    order). Under autocast, or with mixed dtypes, it is the reference: half-precision logits
    would need autocast's casts in the backward too.
    """
    if torch.is_autocast_enabled(hidden.device.type) or hidden.dtype != weight.dtype:
        return linear_cross_entropy_naive(hidden, weight, bias, targets)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets)
