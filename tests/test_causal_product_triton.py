"""The fused causal product (CUDA's sequence walk for LinRec and ELASTIC), run by Triton's
interpreter on CPU tensors: against its quadratic reference and LinRec's naive loop, values
and gradients, causality, strided inputs, the wiring in ``causal_linear_attention``."""

import pytest
import torch

from recbole_efficient.kernels import linear_attention, triton_support
from recbole_efficient.kernels.linear_attention import causal_linear_attention_naive, l2_elu

from helpers import interpreted_kernels

CHUNK = 16  # tl.dot's least size: the lengths below fall short of, fill and pass a chunk
TOL = {"rtol": 1e-5, "atol": 1e-5}


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def values_and_grads(fn, inputs, seed=1):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    weights = rand(*out.shape, seed=seed)
    return out, torch.autograd.grad((out * weights).sum(), leaves)


def assert_same(fast, ref, inputs):
    out, grads = values_and_grads(fast, inputs)
    expected, ref_grads = values_and_grads(ref, inputs)
    torch.testing.assert_close(out, expected, **TOL)
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, g_ref, **TOL)


@pytest.mark.parametrize("length", [1, 5, 16, 37])
@pytest.mark.parametrize("dims", [(8, 8), (12, 5)])  # (x and y, z): powers of two or not
def test_causal_product_equals_its_reference(length, dims):
    kernels = interpreted_kernels("causal_product_triton")
    dim_xy, dim_z = dims
    x, y = rand(2, 3, length, dim_xy, seed=length), rand(2, 3, length, dim_xy, seed=length + 1)
    z = rand(2, 3, length, dim_z, seed=length + 2)
    assert_same(lambda *t: kernels.causal_product(*t, chunk=CHUNK),
                kernels.causal_product_naive, [x, y, z])


def test_head_split_views_pass_as_they_are():
    """``[B, N, H, D]`` projections transposed to ``[B, H, N, D]`` (strided), as the models
    pass them."""
    kernels = interpreted_kernels("causal_product_triton")
    x, y, z = (rand(2, 21, 3, 8, seed=s).transpose(1, 2) for s in range(3))
    assert not x.is_contiguous()
    assert_same(lambda *t: kernels.causal_product(*t, chunk=CHUNK),
                kernels.causal_product_naive, [x, y, z])


@pytest.mark.parametrize("length", [1, 37])
@pytest.mark.parametrize("d", [8, 12])
def test_linrec_attention_through_the_product_equals_the_naive_loop(length, d):
    kernels = interpreted_kernels("causal_product_triton")

    def fused(q, k, v):
        return kernels.causal_product(l2_elu(q, scale=d ** -0.5), l2_elu(k), v, chunk=CHUNK)

    assert_same(fused, causal_linear_attention_naive,
                [rand(2, 3, length, d, seed=s) for s in range(3)])


def test_future_positions_change_no_earlier_output():
    kernels = interpreted_kernels("causal_product_triton")
    x, y, z = (rand(2, 3, 37, 8, seed=s) for s in range(3))
    out = kernels.causal_product(x, y, z, chunk=CHUNK)
    for t in (0, 20, 31):  # first position, inside a chunk, a chunk's last
        changed = [a.clone() for a in (x, y, z)]
        for a in changed:
            a[..., t + 1:, :] = 50 * torch.randn_like(a[..., t + 1:, :])
        assert torch.equal(kernels.causal_product(*changed, chunk=CHUNK)[..., :t + 1, :],
                           out[..., :t + 1, :])


@pytest.mark.parametrize("shape", [(2, 3, 21, 8), (21, 8), (2, 2, 3, 21, 8)])
def test_causal_linear_attention_takes_the_fused_path_where_enabled(shape, monkeypatch):
    """Any leading dimensions: the fused path sees them as [B, H, N, d]."""
    kernels = interpreted_kernels("causal_product_triton")
    loaded = []
    monkeypatch.setattr(triton_support, "enabled", lambda *tensors: True)
    monkeypatch.setattr(triton_support, "load", lambda name: loaded.append(name) or kernels)
    inputs = [rand(*shape, seed=s) for s in range(3)]
    out, grads = values_and_grads(linear_attention.causal_linear_attention, inputs)
    assert loaded and set(loaded) == {"causal_product_triton"}
    monkeypatch.undo()
    ref, ref_grads = values_and_grads(linear_attention.causal_linear_attention, inputs)
    torch.testing.assert_close(out, ref, **TOL)
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, g_ref, **TOL)


def test_empty_input_and_a_chunk_the_kernel_cannot_tile():
    kernels = interpreted_kernels("causal_product_triton")
    empty = [torch.zeros(2, 1, 0, 8, requires_grad=True) for _ in range(3)]
    out = kernels.causal_product(*empty)
    assert out.shape == (2, 1, 0, 8)
    out.sum().backward()
    x = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="power of two"):
        kernels.causal_product(x, x, x, chunk=24)


def test_dot_precision_follows_torch_float32_matmul_setting():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        assert triton_support.dot_precision() == ("tf32" if before == "tf32" else "ieee")
        matmul.fp32_precision = "tf32"
        assert triton_support.dot_precision() == "tf32"
        matmul.fp32_precision = "ieee"
        assert triton_support.dot_precision() == "ieee"
    finally:
        matmul.fp32_precision = before
