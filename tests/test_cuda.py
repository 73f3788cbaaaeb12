"""On a CUDA device (skipped without one; `pytest tests/test_cuda.py` on a GPU machine): every
kernel equals its naive reference (the Triton kernels at real sizes, and the torch forms with
RECBOLE_EFFICIENT_TRITON=0), every model gives the CPU's outputs (compiled position-wise work
included) and streams as it encodes (step and its CUDA graph), and every model trains through
RecBole's trainer with AMP (fp16 autocast and GradScaler) without NaN and beats popularity on
ml-100k."""

import copy
import math

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_efficient import MODELS, Config, get_model, run_recbole_efficient
from recbole_efficient.data.dataset import target_list_field
from recbole_efficient.kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_naive
from recbole_efficient.kernels.dispatcher_attention import (
    dispatch_causal, dispatch_causal_naive, dispatch_noncausal, dispatch_noncausal_naive)
from recbole_efficient.kernels.dropout import dropout
from recbole_efficient.kernels.linear_attention import (
    causal_linear_attention, causal_linear_attention_naive, linear_attention,
    linear_attention_naive)
from recbole_efficient.kernels.lru_scan import lru_scan, lru_scan_naive
from recbole_efficient.kernels import triton_support
from recbole_efficient.kernels.product_key import product_key_topk, product_key_topk_naive

from helpers import POPULARITY_NDCG10, TINY, StubDataset, right_padded
from test_elastic_kernels import assert_half_precision_autocast_stays_finite_and_close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
OUR_MODELS = sorted(MODELS)


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def assert_same_on_cuda(fast, naive, inputs, tol):
    """``fast`` and ``naive`` on CUDA copies of ``inputs``: same values, same gradients of a
    random projection of the output."""
    results = []
    for fn in (fast, naive):
        leaves = [x.detach().to(CUDA).requires_grad_() for x in inputs]
        out = fn(*leaves)
        assert out.device.type == "cuda"
        weights = randn(*out.shape, dtype=out.dtype, seed=99).to(CUDA)
        loss = (out * weights).real.sum() if out.is_complex() else (out * weights).sum()
        results.append((out, torch.autograd.grad(loss, leaves)))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, g_ref, atol=tol, rtol=tol)


# -- kernels ------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 7, 200, 4097])
def test_lru_scan(length):
    gen = torch.Generator().manual_seed(length)
    r = 0.8 + 0.19 * torch.rand(5, dtype=torch.float64, generator=gen)
    lamb = torch.polar(r, 2 * math.pi * torch.rand(5, dtype=torch.float64, generator=gen))
    u, h0 = randn(2, length, 5, dtype=torch.complex128), randn(2, 5, dtype=torch.complex128)
    assert_same_on_cuda(lru_scan, lru_scan_naive, [lamb, u, h0], 1e-9)


@pytest.mark.parametrize("length", [1, 200, 4097])
def test_lru_scan_triton_kernel_at_real_sizes(length, monkeypatch):
    """complex64 on CUDA takes the Triton kernel, one launch per direction: values and
    gradients equal the naive loop's, and the torch form's when RECBOLE_EFFICIENT_TRITON=0."""
    gen = torch.Generator().manual_seed(length)
    lamb = torch.polar(0.8 + 0.19 * torch.rand(128, generator=gen),
                       2 * math.pi * torch.rand(128, generator=gen))
    u = torch.randn(3, length, 128, dtype=torch.complex64, generator=gen)
    h0 = torch.randn(3, 128, dtype=torch.complex64, generator=gen)
    calls = count_calls(monkeypatch, triton_support.load("lru_scan_triton"), "scan")
    assert_same_on_cuda(lru_scan, lru_scan_naive, [lamb, u, h0], 2e-4)
    assert len(calls) == 2
    out = lru_scan(*(t.to(CUDA) for t in (lamb, u, h0)))
    monkeypatch.setenv(triton_support.ENV, "0")
    torch.testing.assert_close(lru_scan(*(t.to(CUDA) for t in (lamb, u, h0))), out,
                               atol=2e-4, rtol=2e-4)
    assert len(calls) == 3


def count_calls(monkeypatch, module, name):
    """A list that grows by one at each call of ``module.name`` (looked up at call time)."""
    calls, fn = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or fn(*a, **k))
    return calls


@pytest.mark.parametrize("length", [13, 300, 2000])
def test_fused_linear_attention_at_real_sizes(length, monkeypatch):
    """float32 on CUDA takes the Triton kernel; float64 the torch form: same values and
    gradients."""
    calls = count_calls(monkeypatch, triton_support.load("causal_product_triton"),
                        "causal_product")
    q, k, v = (randn(4, 2, length, 32, seed=s) for s in range(3))
    fused = lambda *t: causal_linear_attention(*(x.float() for x in t)).double()  # noqa: E731
    assert_same_on_cuda(fused, causal_linear_attention, [q, k, v], 2e-4)
    assert len(calls) == 1


@pytest.mark.parametrize("length", [13, 300, 2000])
def test_fused_dispatcher_at_real_sizes(length, monkeypatch):
    calls = count_calls(monkeypatch, triton_support.load("dispatcher_attention_triton"),
                        "causal_product")
    q, k, v = (randn(4, 2, length, 32, seed=s) for s in range(3))
    experts = randn(2, 8, 32, seed=3)
    ek, ev = randn(4, 2, length, 4, 32, seed=4), randn(4, 2, length, 4, 32, seed=5)

    def fused(*t):
        return dispatch_causal(*(x.float() for x in t[:4]), 64, *(x.float() for x in t[4:])) \
            .double()

    assert_same_on_cuda(fused, lambda *t: dispatch_causal(*t[:4], 64, *t[4:]),
                        [q, k, v, experts, ek, ev], 2e-4)
    assert len(calls) == 2  # the two prefix sums


@pytest.mark.parametrize("length", [13, 300])
def test_linear_attention(length):
    q, k, v = (randn(2, 3, length, 8, seed=s) for s in range(3))
    mask = (torch.arange(length)[None] < torch.tensor([length, 5])[:, None])[:, None].to(CUDA)
    for axis in ("features", "sequence"):
        assert_same_on_cuda(lambda q, k, v: linear_attention(q, k, v, mask, axis),
                            lambda q, k, v: linear_attention_naive(q, k, v, mask, axis),
                            [q, k, v], 1e-10)
    assert_same_on_cuda(causal_linear_attention, causal_linear_attention_naive, [q, k, v], 1e-10)


@pytest.mark.parametrize("length", [13, 300])
def test_dispatcher_attention(length):
    q, k, v = (randn(3, 2, length, 8, seed=s) for s in range(3))
    experts = randn(2, 5, 8, seed=3)
    ek, ev = randn(3, 2, length, 2, 8, seed=4), randn(3, 2, length, 2, 8, seed=5)
    assert_same_on_cuda(lambda q, k, v, e, ek, ev: dispatch_causal(q, k, v, e, 32, ek, ev),
                        dispatch_causal_naive, [q, k, v, experts, ek, ev], 1e-10)
    mask = (torch.arange(length)[None] < torch.tensor([length, 4, 1])[:, None]).to(CUDA)
    assert_same_on_cuda(lambda *t: dispatch_noncausal(*t[:4], mask, *t[4:]),
                        lambda *t: dispatch_noncausal_naive(*t[:4], mask, *t[4:]),
                        [q, k, v, experts, ek[:, :, :1], ev[:, :, :1]], 1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dispatcher_attention_under_autocast(dtype):
    assert_half_precision_autocast_stays_finite_and_close(dtype, CUDA)


def test_product_key_topk():
    query, sub_keys = randn(5, 40, 2, 12, seed=1), randn(2, 2, 16, 6, seed=2)
    assert_same_on_cuda(lambda q, s: product_key_topk(q, s, 8)[0],  # scores
                        lambda q, s: product_key_topk_naive(q, s, 8)[0], [query, sub_keys], 1e-10)
    _, slots = product_key_topk(query.to(CUDA), sub_keys.to(CUDA), 8)
    _, ref_slots = product_key_topk_naive(query.to(CUDA), sub_keys.to(CUDA), 8)
    assert torch.equal(slots, ref_slots)


def test_linear_cross_entropy():
    hidden, weight, bias = randn(300, 16, seed=1), randn(3417, 16, seed=2), randn(3417, seed=3)
    targets = torch.randint(0, 3417, (300,), generator=torch.Generator().manual_seed(4)).to(CUDA)
    assert_same_on_cuda(lambda h, w, b: linear_cross_entropy(h, w, b, targets),
                        lambda h, w, b: linear_cross_entropy_naive(h, w, b, targets),
                        [hidden, weight, bias], 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dropout_rate(dtype):
    x = torch.ones(1_000_000, dtype=dtype, device=CUDA)
    for p in (0.1, 0.5, 0.999):
        kept = dropout(x, p) != 0
        bound = 5 * math.sqrt(p * (1 - p) / x.numel()) + 1e-6
        assert abs(1 - kept.double().mean().item() - p) < bound, (dtype, p)


# -- models ------------------------------------------------------------------------------
@pytest.fixture
def tiny_models(tiny):
    """name -> (config, CPU model in eval mode, its CUDA copy)."""
    _, cfg = tiny

    def make(name):
        config = Config(model=name, dataset=TINY, read_cmd_line=False,
                        config_dict=cfg(n_layers=2, MAX_ITEM_LIST_LENGTH=40))
        torch.manual_seed(0)
        cpu = get_model(name)(config, StubDataset(30)).eval()
        return config, cpu, copy.deepcopy(cpu).to(CUDA)

    return make


def _batch(config, on):
    seq, lengths = right_padded([40, 17, 1, 33], 40, 30, seed=5)
    targets = (seq * 7 % 29) + 1
    return Interaction({"item_id_list": seq, "item_length": lengths,
                        target_list_field(config): targets, "item_id": targets[:, 0]}).to(on)


@pytest.mark.parametrize("name", OUR_MODELS)
def test_model_on_cuda_gives_the_cpu_outputs(tiny_models, name):
    """Same weights: same scores on either device, and for next-item models (no random
    masks) the same loss and gradients."""
    config, cpu, gpu = tiny_models(name)
    results = []
    for model, on in ((cpu, "cpu"), (gpu, CUDA)):
        batch = _batch(config, on)
        scores = model.full_sort_predict(batch)
        if not model.causal:  # cloze masks: one random draw per device
            results.append((scores.cpu(), 1.0, {"-": torch.zeros(1)}))
            continue
        loss = model.calculate_loss(batch)  # eval mode: no dropout
        loss.backward()
        grads = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).cpu()
                 for n, p in model.named_parameters() if p.grad is not None}
        results.append((scores.cpu(), loss.item(), grads))
    (scores, loss, grads), (ref_scores, ref_loss, ref_grads) = results[1], results[0]
    torch.testing.assert_close(scores, ref_scores, atol=1e-4, rtol=1e-4)
    assert abs(loss - ref_loss) < 1e-4 * abs(ref_loss)
    assert grads.keys() == ref_grads.keys() and grads
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-4, rtol=1e-3, msg=n)


@pytest.mark.parametrize("name", OUR_MODELS)
def test_streaming_on_cuda_equals_the_full_forward(tiny_models, name):
    """step, and the same step as a CUDA graph (``cuda_graph_step``), equal the full forward."""
    config, _, model = tiny_models(name)
    if not model.supports_streaming():
        pytest.skip(f"{name} does not stream")
    seq, lengths = right_padded([30, 12, 1, 25], 40, 30, seed=8)
    seq, lengths = seq.to(CUDA), lengths.to(CUDA)
    state = model.build_state(seq[:, :-1], lengths)
    graphed = model.cuda_graph_step(state)
    for t in range(3):  # three new items, one step each
        nxt = torch.tensor([3 + t, 7, 11, 29 - t], device=CUDA)
        scores, state = model.step(nxt, state)
        torch.testing.assert_close(graphed(nxt), scores, atol=1e-5, rtol=1e-5)
        assert torch.equal(graphed.state.length, state.length)
        seq[torch.arange(4, device=CUDA), lengths] = nxt
        lengths = lengths + 1
        full = model.full_sort_predict({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
        torch.testing.assert_close(scores, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", OUR_MODELS)
def test_compile_auto_is_on_for_cuda_and_equals_eager(tiny_models, name):
    config, cpu, model = tiny_models(name)
    assert model.position_wise_compiled  # compile: auto, moved to CUDA
    cpu.compile_setting = False
    eager = copy.deepcopy(cpu).to(CUDA)
    assert not eager.position_wise_compiled
    batch = _batch(config, CUDA)
    torch.testing.assert_close(model.full_sort_predict(batch), eager.full_sort_predict(batch),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", OUR_MODELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_loss_and_gradients_are_finite(tiny_models, name, dtype):
    config, _, model = tiny_models(name)
    model.train()
    batch = _batch(config, CUDA)
    torch.manual_seed(1)
    fp32 = model.calculate_loss(batch).item()
    torch.manual_seed(1)  # same dropout masks
    with torch.autocast("cuda", dtype=dtype):
        mixed = model.calculate_loss(batch)
    mixed.backward()
    assert torch.isfinite(mixed) and abs(mixed.item() - fp32) < 0.05 * fp32, (mixed, fp32)
    for pname, p in model.named_parameters():
        grad = p.grad.coalesce().values() if p.grad is not None and p.grad.is_sparse else p.grad
        assert grad is None or torch.isfinite(grad).all(), pname


# -- RecBole's trainer with AMP ----------------------------------------------------------------
@pytest.mark.parametrize("name", OUR_MODELS)
def test_learns_ml100k_with_enable_amp_and_enable_scaler(tmp_path, monkeypatch, name):
    """Through the CLI's code path on the GPU (RecBole's ``gpu_id``), fp16 autocast and
    GradScaler: no NaN stop, and better than popularity on ml-100k."""
    monkeypatch.chdir(tmp_path)
    # the accuracy benchmark's defaults (20 epochs: every model above popularity on the CPU)
    cfg = {"epochs": 40 if name == "LinRecBERT" else 20, "gpu_id": "0", "enable_amp": True,
           "enable_scaler": True, "show_progress": False, "eval_step": 100, "seed": 2020,
           "metrics": ["NDCG"], "topk": [10], "valid_metric": "NDCG@10"}
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = run_recbole_efficient(model=name, dataset="ml-100k", config_dict=cfg,
                                   read_cmd_line=False, saved=False)
    assert torch.cuda.max_memory_allocated() > before + 2 ** 20  # it ran on the GPU
    ndcg = float(result["test_result"]["ndcg@10"])
    print(f"{name}: test NDCG@10 {ndcg:.4f} after {cfg['epochs']} epochs with fp16 AMP on "
          f"{torch.cuda.get_device_name()}")
    assert ndcg > POPULARITY_NDCG10, result
