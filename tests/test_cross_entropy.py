"""The fused output layer + cross-entropy kernel against F.cross_entropy."""

import pytest
import torch

from recbole_efficient.kernels import cross_entropy
from recbole_efficient.kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_naive


def _inputs(n, n_items, d, bias, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=dtype)
    weight = torch.randn(n_items, d, generator=gen, dtype=dtype)
    b = torch.randn(n_items, generator=gen, dtype=dtype) if bias else None
    targets = torch.randint(0, n_items, (n,), generator=gen)
    targets[:4] = 3  # repeated targets
    return hidden, weight, b, targets


@pytest.mark.parametrize("block_elements", [None, 120])  # one block; blocks of 2 rows
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n", [1, 37])
def test_fused_matches_naive_values_and_gradients(n, bias, block_elements, monkeypatch):
    if block_elements:
        monkeypatch.setattr(cross_entropy, "_BLOCK_ELEMENTS", block_elements)
    hidden, weight, b, targets = _inputs(n, 50, 8, bias)
    results = []
    for fn in (linear_cross_entropy, linear_cross_entropy_naive):
        leaves = [x.clone().requires_grad_() for x in (hidden, weight, b) if x is not None]
        loss = 2.5 * fn(leaves[0], leaves[1], leaves[2] if bias else None, targets)
        results.append((loss, torch.autograd.grad(loss, leaves)))
    (fast, fast_grads), (ref, ref_grads) = results
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for g_fast, g_ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-12, atol=1e-12)


def test_fused_float32():
    hidden, weight, b, targets = _inputs(20, 30, 6, True, dtype=torch.float32)
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, b, targets),
                               linear_cross_entropy_naive(hidden, weight, b, targets))


def test_second_backward_is_refused_not_wrong():
    """The backward reuses the logits' memory: a retained graph cannot run it twice."""
    hidden, weight, _, targets = _inputs(6, 9, 4, False, dtype=torch.float32)
    hidden.requires_grad_()
    loss = linear_cross_entropy(hidden, weight, None, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_autocast_uses_the_reference():
    hidden, weight, b, targets = _inputs(6, 9, 4, True, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden.requires_grad_(), weight, b, targets)
    loss.backward()
    assert torch.isfinite(loss) and hidden.grad.dtype == torch.float32
    assert loss.grad_fn.name() != "_LinearCrossEntropyBackward"
