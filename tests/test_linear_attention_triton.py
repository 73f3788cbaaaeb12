"""The fused causal linear attention kernel, run by Triton's interpreter on CPU tensors,
against the naive loop: values, gradients through the feature maps, causality."""

import pytest
import torch

from recbole_efficient.kernels import linear_attention, triton_support
from recbole_efficient.kernels.linear_attention import causal_linear_attention_naive, l2_elu

from helpers import interpreted_kernels

CHUNK = 16  # tl.dot's least size: the lengths below fall short of, fill and pass a chunk
TOL = {"rtol": 1e-5, "atol": 1e-5}


def qkv(length, d, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(2, 3, length, d, generator=gen) for _ in range(3)]


def fused_operator(module, chunk=CHUNK):
    """``causal_linear_attention`` with the kernel in place of the torch walk."""
    def attend(q, k, v):
        d = q.size(-1)
        return module.causal_linear_attention_fused(l2_elu(q, scale=d ** -0.5), l2_elu(k), v,
                                                    chunk=chunk)
    return attend


def values_and_grads(fn, inputs, seed=1):
    leaves = [x.clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return out, torch.autograd.grad((out * weights).sum(), leaves)


@pytest.mark.parametrize("length", [1, 5, 16, 37])
@pytest.mark.parametrize("d", [8, 12])
def test_fused_equals_naive_values_and_gradients(length, d):
    fused = fused_operator(interpreted_kernels("linear_attention_triton"))
    inputs = qkv(length, d, seed=length + d)
    out, grads = values_and_grads(fused, inputs)
    ref, ref_grads = values_and_grads(causal_linear_attention_naive, inputs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, **TOL)
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, g_ref, **TOL)


def test_future_positions_change_no_earlier_output():
    fused = fused_operator(interpreted_kernels("linear_attention_triton"))
    q, k, v = qkv(37, 8, seed=2)
    out = fused(q, k, v)
    for t in (0, 20, 31):  # first position, inside a chunk, a chunk's last
        changed = [x.clone() for x in (q, k, v)]
        for x in changed:
            x[..., t + 1:, :] = 50 * torch.randn_like(x[..., t + 1:, :])
        assert torch.equal(fused(*changed)[..., :t + 1, :], out[..., :t + 1, :])


def test_causal_linear_attention_takes_the_fused_path_where_enabled(monkeypatch):
    module = interpreted_kernels("linear_attention_triton")
    monkeypatch.setattr(triton_support, "enabled", lambda *tensors: True)
    monkeypatch.setattr(triton_support, "load", lambda name: module)
    inputs = qkv(21, 8, seed=3)
    out, grads = values_and_grads(linear_attention.causal_linear_attention, inputs)
    monkeypatch.undo()
    ref, ref_grads = values_and_grads(linear_attention.causal_linear_attention, inputs)
    torch.testing.assert_close(out, ref, **TOL)
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, g_ref, **TOL)


def test_empty_input_and_bad_arguments():
    module = interpreted_kernels("linear_attention_triton")
    empty = [torch.zeros(2, 0, 8, requires_grad=True) for _ in range(3)]
    out = module.causal_linear_attention_fused(*empty)
    assert out.shape == (2, 0, 8)
    out.sum().backward()
    q, k, v = qkv(4, 8)
    with pytest.raises(ValueError, match="chunk"):
        module.causal_linear_attention_fused(q, k, v, chunk=24)
    with pytest.raises(ValueError, match="shape"):
        module.causal_linear_attention_fused(q, k[..., :2, :], v)
