"""L2-normalised linear attention kernels against their naive references."""

import pytest
import torch

from recbole_efficient.kernels.linear_attention import (
    causal_linear_attention, causal_linear_attention_naive, kv_state, l2_elu, linear_attention,
    linear_attention_naive, linear_attention_step)

B, H, D = 2, 3, 8


def qkv(length, seed=0, dtype=torch.float64, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(B, H, length, D, generator=gen, dtype=dtype) for _ in range(3)]


def lengths_mask(lengths, width):
    """bool [B, 1, width]: True at real positions, broadcast over heads."""
    return (torch.arange(width)[None] < torch.tensor(lengths)[:, None])[:, None]


def grads(fn, inputs, seed=1):
    leaves = [x.clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                          dtype=out.dtype)
    return torch.autograd.grad((out * weights).sum(), leaves)


@pytest.mark.parametrize("axis", ["features", "sequence"])
@pytest.mark.parametrize("lengths", [None, [13, 5]])
def test_linear_form_equals_quadratic_form(axis, lengths):
    q, k, v = qkv(13, seed=3)
    mask = None if lengths is None else lengths_mask(lengths, 13)
    fast = lambda q, k, v: linear_attention(q, k, v, mask, axis)  # noqa: E731
    ref = lambda q, k, v: linear_attention_naive(q, k, v, mask, axis)  # noqa: E731
    torch.testing.assert_close(fast(q, k, v), ref(q, k, v), rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(grads(fast, (q, k, v)), grads(ref, (q, k, v))):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("axis", ["features", "sequence"])
def test_padding_contributes_nothing(axis):
    q, k, v = qkv(9, seed=4)
    mask = lengths_mask([9, 4], 9)
    out = linear_attention(q, k, v, mask, axis)
    alone = linear_attention(q[1:, :, :4], k[1:, :, :4], v[1:, :, :4], None, axis)
    torch.testing.assert_close(out[1:, :, :4], alone, rtol=1e-12, atol=1e-12)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 4:], v2[1, :, 4:] = 100.0, -100.0
    torch.testing.assert_close(linear_attention(q, k2, v2, mask, axis)[1, :, :4],
                               out[1, :, :4], rtol=0, atol=0)


def test_sequence_axis_normalises_each_feature_over_real_positions():
    _, k, _ = qkv(7, seed=5)
    mask = lengths_mask([7, 3], 7)
    k_hat = l2_elu(k, dim=-2, mask=mask)
    norms = k_hat.pow(2).sum(-2).sqrt()
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert torch.count_nonzero(k_hat[1, :, 3:]) == 0


@pytest.mark.parametrize("length,chunk", [(1, 4), (7, 1), (16, 4), (37, 8), (37, 64), (50, 16)])
def test_chunked_causal_equals_naive_loop(length, chunk):
    q, k, v = qkv(length, seed=length)
    fast = lambda q, k, v: causal_linear_attention(q, k, v, chunk_size=chunk)  # noqa: E731
    torch.testing.assert_close(fast(q, k, v), causal_linear_attention_naive(q, k, v),
                               rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(grads(fast, (q, k, v)), grads(causal_linear_attention_naive, (q, k, v))):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_chunked_causal_float32_long():
    q, k, v = qkv(300, seed=6, dtype=torch.float32)
    out = causal_linear_attention(q, k, v, chunk_size=32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, causal_linear_attention_naive(q.double(), k.double(),
                                                                  v.double()).float(),
                               rtol=1e-5, atol=1e-5)


def test_causal_last_position_equals_non_causal_and_future_is_ignored():
    q, k, v = qkv(20, seed=7)
    causal = causal_linear_attention(q, k, v, chunk_size=6)
    torch.testing.assert_close(causal[..., -1, :], linear_attention(q, k, v)[..., -1, :])
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[..., 11:, :] = torch.randn_like(t[..., 11:, :]) * 50
    assert torch.equal(causal_linear_attention(q2, k2, v2, chunk_size=6)[..., :11, :],
                       causal[..., :11, :])


def test_step_and_kv_state_equal_causal_form():
    q, k, v = qkv(25, seed=8)
    full = causal_linear_attention_naive(q, k, v)
    state = torch.zeros(B, H, D, D, dtype=torch.float64)
    for t in range(25):
        out, state = linear_attention_step(q[..., t, :], k[..., t, :], v[..., t, :], state)
        torch.testing.assert_close(out, full[..., t, :], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, kv_state(k, v), rtol=1e-10, atol=1e-10)
    # a masked state is the state of the real prefix
    mask = lengths_mask([25, 10], 25)
    torch.testing.assert_close(kv_state(k, v, mask)[1], kv_state(k[1, :, :10], v[1, :, :10]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_no_nan_on_zero_rows_and_length_one(dtype):
    """All-zero projections (ELU(0) = 0: the norm is 0) and a single position stay finite,
    in values and gradients."""
    zeros = [torch.zeros(B, H, 5, D, dtype=dtype) for _ in range(3)]
    one = [t[..., :1, :].to(dtype) for t in qkv(1, seed=9, dtype=torch.float32)]
    all_pad = torch.zeros(B, 1, 5, dtype=torch.bool)
    for inputs in (zeros, one):
        for fn in (lambda q, k, v: causal_linear_attention(q, k, v, chunk_size=2),
                   lambda q, k, v: linear_attention(q, k, v),
                   lambda q, k, v: linear_attention(q, k, v, k_norm_axis="sequence")):
            leaves = [x.clone().requires_grad_() for x in inputs]
            out = fn(*leaves)
            assert out.dtype == dtype and torch.isfinite(out).all()
            out.float().sum().backward()
            assert all(torch.isfinite(x.grad).all() for x in leaves)
    q, k, v = (x.clone().requires_grad_() for x in zeros)
    for axis in ("features", "sequence"):
        out = linear_attention(q, k, v + 1, all_pad, axis)
        assert torch.equal(out, torch.zeros_like(out))
        out.float().sum().backward()
        assert torch.isfinite(k.grad).all()
    state = torch.zeros(B, H, D, D)
    out, state = linear_attention_step(zeros[0][..., 0, :], zeros[1][..., 0, :],
                                       zeros[2][..., 0, :], state)
    assert torch.isfinite(out).all() and torch.isfinite(state).all()


def test_bfloat16_close_to_float32():
    q, k, v = qkv(40, seed=10, dtype=torch.float32)
    ref = causal_linear_attention(q, k, v, chunk_size=16)
    low = causal_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), chunk_size=16)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)


def test_autocast_keeps_the_state_in_float32():
    q, k, v = qkv(30, seed=11, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = kv_state(k, v)
        out = causal_linear_attention(q, k, v, chunk_size=8)
    assert state.dtype == torch.float32 and out.dtype == torch.float32
    torch.testing.assert_close(out, causal_linear_attention(q, k, v, chunk_size=8))


def test_bad_arguments():
    q, k, v = qkv(4)
    with pytest.raises(ValueError, match="chunk_size"):
        causal_linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="k_norm_axis"):
        linear_attention(q, k, v, k_norm_axis="rows")
