"""ELASTIC's kernels against their naive references: linear dispatcher attention (non-causal,
chunked causal, running state) and product-key top-k, values and gradients."""

import pytest
import torch

from recbole_efficient.kernels.chunking import balanced_chunks
from recbole_efficient.kernels.dispatcher_attention import (
    causal_readout, causal_state, causal_state_update, dispatch_causal, dispatch_causal_naive,
    dispatch_noncausal, dispatch_noncausal_naive)
from recbole_efficient.kernels.product_key import product_key_topk, product_key_topk_naive

B, H, D, E, M_EXTRA = 3, 2, 8, 5, 2


def inputs(length, n_query=None, extras="none", seed=0):
    """q, k, v, experts (+ extras per query position, or one set per row) in float64."""
    gen = torch.Generator().manual_seed(seed)
    n_query = length if n_query is None else n_query

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    q, k, v = rand(B, H, n_query, D), rand(B, H, length, D), rand(B, H, length, D)
    experts = rand(H, E, D)
    ek = ev = None
    if extras != "none":
        positions = n_query if extras == "per_position" else 1
        ek, ev = rand(B, H, positions, M_EXTRA, D), rand(B, H, positions, M_EXTRA, D)
    return q, k, v, experts, ek, ev


def assert_same_values_and_grads(fast, naive, tensors):
    torch.testing.assert_close(fast, naive, atol=1e-12, rtol=1e-10)
    weights = torch.randn(fast.shape, generator=torch.Generator().manual_seed(9),
                          dtype=torch.float64)
    tensors = [t for t in tensors if t is not None]
    grads = torch.autograd.grad((fast * weights).sum(), tensors)
    grads_ref = torch.autograd.grad((naive * weights).sum(), tensors)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-10)


# -- non-causal ------------------------------------------------------------------------
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("extras", ["none", "per_row"])
def test_noncausal_equals_explicit_reference(masked, extras):
    q, k, v, experts, ek, ev = inputs(11, extras=extras)
    mask = torch.arange(11)[None] < torch.tensor([11, 4, 1])[:, None] if masked else None
    fast = dispatch_noncausal(q, k, v, experts, mask, ek, ev)
    naive = dispatch_noncausal_naive(q, k, v, experts, mask, ek, ev)
    assert_same_values_and_grads(fast, naive, [q, k, v, experts, ek, ev])


def test_noncausal_ignores_padded_items_and_survives_empty_rows():
    q, k, v, experts, _, _ = inputs(6)
    mask = torch.arange(6)[None] < torch.tensor([6, 3, 0])[:, None]
    out = dispatch_noncausal(q, k, v, experts, mask)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[1, :, 3:], v2[1, :, 3:] = 1e3, -1e3   # anything at the pads
    torch.testing.assert_close(dispatch_noncausal(q, k2, v2, experts, mask)[:2], out[:2])
    assert torch.isfinite(out).all()          # row 2 has no real item


# -- causal ----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 4, 8, 64])
@pytest.mark.parametrize("extras", ["none", "per_position"])
def test_chunked_causal_equals_naive_loop(chunk, extras):
    # 13 positions: not a multiple of 4 or 8, and shorter than 64
    q, k, v, experts, ek, ev = inputs(13, extras=extras)
    fast = dispatch_causal(q, k, v, experts, chunk, ek, ev)
    naive = dispatch_causal_naive(q, k, v, experts, ek, ev)
    assert_same_values_and_grads(fast, naive, [q, k, v, experts, ek, ev])


def test_causal_output_depends_on_the_prefix_only():
    q, k, v, experts, ek, ev = (t if t is None else t.detach()
                                for t in inputs(20, extras="per_position"))
    out = dispatch_causal(q, k, v, experts, 8, ek, ev)
    changed = [t.clone() for t in (q, k, v, ek, ev)]
    for t in changed:
        t[:, :, 9:] = torch.randn_like(t[:, :, 9:])
    out2 = dispatch_causal(changed[0], changed[1], changed[2], experts, 8, *changed[3:])
    torch.testing.assert_close(out2[:, :, :9], out[:, :, :9], atol=0, rtol=0)
    assert not torch.allclose(out2[:, :, 9:], out[:, :, 9:])


def test_running_state_equals_chunked_form_at_every_step():
    q, k, v, experts, ek, ev = (t.detach() for t in inputs(17, extras="per_position"))
    full = dispatch_causal(q, k, v, experts, 4, ek, ev)
    state = tuple(torch.zeros(shape, dtype=torch.float64)
                  for shape in ((B, H, D, E), (B, H, E, D), (B, H, E)))
    for t in range(17):
        state = causal_state_update(state, k[:, :, t], v[:, :, t], experts)
        out = causal_readout(q[:, :, t], state, ek[:, :, t], ev[:, :, t])
        torch.testing.assert_close(out, full[:, :, t], atol=1e-12, rtol=1e-10)
    # the state of a masked batch is the state after each row's last real item
    lengths = torch.tensor([17, 5, 1])
    state = causal_state(k, v, experts, torch.arange(17)[None] < lengths[:, None])
    rows = torch.arange(B)
    out = causal_readout(q[rows, :, lengths - 1], state, ek[rows, :, lengths - 1],
                         ev[rows, :, lengths - 1])
    torch.testing.assert_close(out, full[rows, :, lengths - 1], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_autocast_stays_finite_and_close(dtype):
    assert_half_precision_autocast_stays_finite_and_close(dtype, "cpu")


def assert_half_precision_autocast_stays_finite_and_close(dtype, device):
    """Under autocast every form computes in float32: in float16 the pack weights of a
    prefix summed below 1/65504 where expert logits are very negative, and pi / Z overflowed
    (ELASTIC's loss went NaN after 15 epochs of CUDA AMP). Outputs keep the values' dtype."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 50, 32, generator=gen).to(device) for _ in range(3))
    experts = 10 * torch.randn(2, 16, 32, generator=gen).to(device)
    ek, ev = (torch.randn(2, 2, 50, 3, 32, generator=gen).to(device) for _ in range(2))
    mask = (torch.arange(50)[None] < torch.tensor([50, 7])[:, None]).to(device)
    state = causal_state(k, v, experts, mask)
    refs = [dispatch_causal(q, k, v, experts, 32, ek, ev),
            dispatch_noncausal(q, k, v, experts, mask, ek[:, :, :1], ev[:, :, :1]),
            causal_readout(q[:, :, 0], state, ek[:, :, 0], ev[:, :, 0])]
    half = [t.to(dtype) for t in (q, k, v, ek, ev)]
    with torch.autocast(torch.device(device).type, dtype=dtype):
        hq, hk, hv, hek, hev = half
        hstate = causal_state(hk, hv, experts, mask)
        outs = [dispatch_causal(hq, hk, hv, experts, 32, hek, hev),
                dispatch_noncausal(hq, hk, hv, experts, mask, hek[:, :, :1], hev[:, :, :1]),
                causal_readout(hq[:, :, 0], hstate, hek[:, :, 0], hev[:, :, 0])]
        stepped = causal_state_update(hstate, hk[:, :, 0], hv[:, :, 0], experts)
    assert all(t.dtype == torch.float32 for t in hstate + stepped)
    for out, ref in zip(outs, refs):
        assert out.dtype == dtype and torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


def test_causal_underflowing_pack_weights_give_no_nan():
    q, k, v, experts, _, _ = (t if t is None else t.detach() for t in inputs(9))
    # elu(x) + 1 = exp(x) underflows to 0 for x < -104: every weight of expert 0 is 0
    k, experts = k.abs(), experts.clone()
    experts[:, 0] = -1e4
    out = dispatch_causal(q, k, v, experts, 4)
    assert torch.isfinite(out).all()


# -- product keys ------------------------------------------------------------------------
@pytest.mark.parametrize("n_sub,topk", [(6, 3), (10, 10), (1, 1)])
def test_product_key_topk_equals_brute_force(n_sub, topk):
    gen = torch.Generator().manual_seed(n_sub)
    query = torch.randn(5, 4, 3, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    sub_keys = torch.randn(3, 2, n_sub, 6, generator=gen, dtype=torch.float64,
                           requires_grad=True)
    scores, slots = product_key_topk(query, sub_keys, topk)
    ref_scores, ref_slots = product_key_topk_naive(query, sub_keys, topk)
    assert slots.shape == (5, 4, 3, topk) and int(slots.max()) < n_sub ** 2
    torch.testing.assert_close(scores, ref_scores, atol=1e-12, rtol=1e-12)
    assert torch.equal(slots, ref_slots)
    # gradients reach the query and the selected sub-keys exactly as through the full scores
    weights = torch.randn(scores.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((scores * weights).sum(), [query, sub_keys])
    grads_ref = torch.autograd.grad((ref_scores * weights).sum(), [query, sub_keys])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-12)


def test_product_key_scores_stay_single_precision_under_autocast():
    """Autocast runs the search in bf16; the winners' scores are those of the fp32 keys."""
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(64, 2, 16, generator=gen, requires_grad=True)
    sub_keys = torch.randn(2, 2, 8, 8, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, slots = product_key_topk(query, sub_keys, 3)
    n = sub_keys.size(2)
    keys = torch.cat([sub_keys[:, 0].repeat_interleave(n, 1), sub_keys[:, 1].repeat(1, n, 1)], -1)
    exact = torch.einsum("rhd,rhkd->rhk", query, keys[torch.arange(2)[:, None], slots])
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, exact, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(scores.sum(), [query, sub_keys])
    assert [g.dtype for g in grads] == [torch.float32] * 2


def test_product_key_search_rejects_a_query_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"query \[\.\.\., 2, 16\] expected"):
        product_key_topk(torch.randn(4, 1, 16), torch.randn(2, 2, 8, 8), 2)


@pytest.mark.parametrize("length,chunk_size", [(1, 64), (13, 4), (200, 64), (2000, 64), (64, 64),
                                               (65, 64), (7, 1)])
def test_balanced_chunks_cover_the_length_with_little_padding(length, chunk_size):
    chunk, n_chunks = balanced_chunks(length, chunk_size)
    assert chunk <= chunk_size and n_chunks == -(-length // chunk_size)
    assert 0 <= chunk * n_chunks - length < n_chunks
