"""The fused Triton path of causal dispatcher attention (CUDA's path in float32), run by Triton's
interpreter on CPU tensors: values and gradients against the naive loop, causality, dropout
against the chunked torch form, and the dispatch from ``dispatch_causal``."""

import pytest
import torch

from recbole_efficient.kernels import dispatcher_attention, triton_support
from recbole_efficient.kernels.dispatcher_attention import dispatch_causal, dispatch_causal_naive

from helpers import interpreted_kernels

B, H, E, M_EXTRA = 2, 3, 5, 2
CHUNK = 16  # the kernels' smallest chunk: 37 positions are two chunks and a remainder


def inputs(length, dim, extras, seed=0):
    """Float32 leaves: q, k, v as head-split views of ``[B, N, H, D]`` (strided, like ELASTIC's
    projections), experts ``[H, E, D]``, extras per position or one set per row."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).requires_grad_()

    leaves = [rand(B, length, H, dim) for _ in range(3)] + [rand(H, E, dim)]
    if extras != "none":
        positions = length if extras == "per_position" else 1
        leaves += [rand(B, H, positions, M_EXTRA, dim) for _ in range(2)]
    return leaves


def call(fn, leaves, *args, **kwargs):
    q, k, v = (t.transpose(1, 2) for t in leaves[:3])
    extras = leaves[4:] if len(leaves) > 4 else [None, None]
    return fn(q, k, v, leaves[3], *args, *extras, **kwargs)


def values_and_grads(out, leaves):
    # drawn in float64 for every dtype: float32 draws are other numbers, not a rounding
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(9),
                          dtype=torch.float64).to(out.dtype)
    return out, torch.autograd.grad((out * weights).sum(), leaves)


@pytest.mark.parametrize("dim", [8, 12])
@pytest.mark.parametrize("extras", ["none", "per_position", "per_row"])
@pytest.mark.parametrize("length", [1, 11, 37])
def test_fused_equals_naive_values_and_gradients(length, extras, dim):
    fused = interpreted_kernels("dispatcher_attention_triton")
    leaves = inputs(length, dim, extras, seed=length)
    out, grads = values_and_grads(call(fused.dispatch_causal, leaves, chunk=CHUNK), leaves)
    # reference in float64: what is compared is the fused path's float32 rounding only
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    ref, ref_grads = values_and_grads(call(dispatch_causal_naive, leaves64), leaves64)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float(), atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, g_ref.float(), atol=1e-5, rtol=1e-5)


def test_fused_output_depends_on_the_prefix_only():
    fused = interpreted_kernels("dispatcher_attention_triton")
    leaves = [t.detach() for t in inputs(37, 8, "per_position")]
    out = call(fused.dispatch_causal, leaves, chunk=CHUNK)
    changed = [t.clone() for t in leaves]
    for i in (0, 1, 2):  # [B, N, H, D]
        changed[i][:, 20:] = torch.randn_like(changed[i][:, 20:])
    for i in (4, 5):     # [B, H, N, m, D]
        changed[i][:, :, 20:] = torch.randn_like(changed[i][:, :, 20:])
    out2 = call(fused.dispatch_causal, changed, chunk=CHUNK)
    torch.testing.assert_close(out2[:, :, :20], out[:, :, :20], atol=0, rtol=0)
    assert not torch.allclose(out2[:, :, 20:], out[:, :, 20:])


@pytest.mark.parametrize("length,chunk_size", [(13, 32), (24, 8)])  # no padded position
def test_fused_dropout_equals_torch_form_under_one_seed(length, chunk_size):
    """Both draw the mask over the same positions in the same order: same values and
    gradients (``test_dropout.py`` checks the mask's statistics)."""
    fused = interpreted_kernels("dispatcher_attention_triton")
    leaves = inputs(length, 8, "per_position", seed=5)
    torch.manual_seed(11)
    out, grads = values_and_grads(call(fused.dispatch_causal, leaves, dropout_p=0.3,
                                       training=True, chunk=CHUNK), leaves)
    torch.manual_seed(11)
    ref, ref_grads = values_and_grads(call(dispatch_causal, leaves, chunk_size, dropout_p=0.3,
                                           training=True), leaves)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
    # dropout did act, and only in training
    evaluated = call(fused.dispatch_causal, leaves, dropout_p=0.3, training=False, chunk=CHUNK)
    assert not torch.allclose(out, evaluated)
    torch.testing.assert_close(evaluated, call(dispatch_causal, leaves, chunk_size), atol=1e-5,
                               rtol=1e-5)


def test_dispatch_causal_takes_the_fused_path_where_enabled(monkeypatch):
    """``dispatch_causal`` hands float32 inputs to the fused module where Triton is enabled
    (here: forced on CPU), and returns the values' dtype under autocast."""
    fused = interpreted_kernels("dispatcher_attention_triton")
    calls = []

    def load(name):
        calls.append(name)
        return fused

    monkeypatch.setattr(triton_support, "enabled", lambda *tensors: True)
    monkeypatch.setattr(triton_support, "load", load)
    leaves = [t.detach() for t in inputs(11, 8, "per_position", seed=2)]
    out = call(dispatcher_attention.dispatch_causal, leaves, 4)
    ref = call(dispatch_causal_naive, leaves)
    assert calls == ["dispatcher_attention_triton"]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = call(dispatcher_attention.dispatch_causal, [t.bfloat16() for t in leaves], 4)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()


def test_fused_survives_underflowing_pack_weights():
    fused = interpreted_kernels("dispatcher_attention_triton")
    leaves = [t.detach() for t in inputs(9, 8, "none", seed=3)]
    # elu(x) + 1 = exp(x) underflows to 0 below x ~ -104: every weight of expert 0 is 0
    leaves[1] = leaves[1].abs()
    leaves[3][:, 0] = -1e4
    leaves = [t.requires_grad_() for t in leaves]
    out, grads = values_and_grads(call(fused.dispatch_causal, leaves, chunk=CHUNK), leaves)
    assert all(torch.isfinite(t).all() for t in (out, *grads))
