"""Tests for the LRU diagonal-recurrence kernels."""

import math

import pytest
import torch

from recbole_efficient.kernels import lru_scan as lru_scan_module
from recbole_efficient.kernels.lru_scan import lamb_powers, lru_scan, lru_scan_naive, lru_step

from helpers import interpreted_kernels

B, H = 3, 16


def _lamb(hidden, dtype, r_min=0.8, r_max=0.99, gen=None):
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    r = r_min + (r_max - r_min) * torch.rand(hidden, generator=gen, dtype=real)
    theta = 2 * math.pi * torch.rand(hidden, generator=gen, dtype=real)
    return torch.polar(r, theta)


def _inputs(length, dtype, seed=0, batch=B, hidden=H):
    gen = torch.Generator().manual_seed(seed)
    lamb = _lamb(hidden, dtype, gen=gen)
    u = torch.randn(batch, length, hidden, generator=gen, dtype=dtype)
    h0 = torch.randn(batch, hidden, generator=gen, dtype=dtype)
    return lamb, u, h0


LENGTHS = [1, 7, 200, 1000, 4097]  # one step, shorter than a chunk, chunks + left-over steps


@pytest.mark.parametrize("length", LENGTHS + [2, 3, 8, 16, 17, 129])
def test_fast_matches_naive_complex64(length):
    lamb, u, h0 = _inputs(length, torch.complex64, seed=length)
    out = lru_scan(lamb, u)
    assert out.shape == (B, length, H) and out.dtype == torch.complex64
    torch.testing.assert_close(out, lru_scan_naive(lamb, u), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lru_scan(lamb, u, h0), lru_scan_naive(lamb, u, h0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["loops", "matrix"])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_fast_matches_naive_values_and_gradients(length, with_h0, form, monkeypatch):
    """In complex128, so that a mistake in the hand-written backward shows above rounding.
    ``matrix``: the form CUDA runs (chunks as matrix products), forced here on the CPU."""
    if form == "matrix":
        monkeypatch.setattr(lru_scan_module, "_scan", lru_scan_module._matrix_scan)
    lamb, u, h0 = _inputs(length, torch.complex128, seed=20 + length, batch=2, hidden=5)
    weights = torch.randn(2, length, 5, dtype=torch.complex128,
                          generator=torch.Generator().manual_seed(length))
    results = []
    for fn in (lru_scan, lru_scan_naive):
        leaves = [x.clone().requires_grad_() for x in ((lamb, u, h0) if with_h0 else (lamb, u))]
        out = fn(*leaves)
        loss = (out * weights).real.sum() + out.abs().pow(2).mean()
        results.append((out, torch.autograd.grad(loss, leaves)))
    (fast, fast_grads), (ref, ref_grads) = results
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    for g_fast, g_ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-9)


def test_step_matches_scan_every_position():
    lamb, u, _ = _inputs(37, torch.complex128, seed=2)
    scan = lru_scan(lamb, u)
    h = torch.zeros(B, H, dtype=torch.complex128)
    for t in range(u.shape[1]):
        h = lru_step(lamb, h, u[:, t])
        torch.testing.assert_close(h, scan[:, t], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t", [0, 5, 12, 19])
def test_causality(t):
    lamb, u, h0 = _inputs(20, torch.complex128, seed=3)
    u2 = u.clone()
    u2[:, t + 1 :] = torch.randn_like(u2[:, t + 1 :]) * 100
    a, b = lru_scan(lamb, u, h0), lru_scan(lamb, u2, h0)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])


def test_gradcheck():
    """The hand-written backward against finite differences."""
    lamb, u, h0 = _inputs(6, torch.complex128, seed=4, batch=2, hidden=3)
    inputs = tuple(x.clone().requires_grad_() for x in (lamb, u, h0))
    assert torch.autograd.gradcheck(lru_scan, inputs)


def test_long_sequence_finite():
    gen = torch.Generator().manual_seed(6)
    theta = 2 * math.pi * torch.rand(H, generator=gen)
    lamb = torch.polar(torch.full((H,), 0.999), theta)
    u = torch.randn(2, 4096, H, generator=gen, dtype=torch.complex64)
    out = lru_scan(lamb, u)
    assert out.shape == (2, 4096, H)
    assert torch.isfinite(torch.view_as_real(out)).all()


def test_lamb_powers_accuracy():
    gen = torch.Generator().manual_seed(7)
    lamb = _lamb(H, torch.complex64, r_min=0.3, r_max=0.999, gen=gen)
    powers = lamb_powers(lamb, 4096)
    assert powers.shape == (4096, H) and powers.dtype == torch.complex64
    # Reference: exact powers of the same complex64 value, via polar form in double.
    lamb64 = lamb.to(torch.complex128)
    k = torch.arange(1, 4097, dtype=torch.float64).unsqueeze(1)
    ref = torch.polar(lamb64.abs() ** k, lamb64.angle() * k)
    err = (powers.to(torch.complex128) - ref).abs()
    assert (err <= 1e-6 * ref.abs() + 1e-30).all()  # float32 exp would fail this (~5e-5)
    torch.testing.assert_close(lamb_powers(lamb, 1)[0], lamb)
    assert lamb_powers(lamb, 0).shape == (0, H)


# -- the Triton kernel (CUDA's path), run by Triton's interpreter on CPU tensors -----------------
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("length", [1, 5, 8, 37])  # one step, part of a chunk, one, several + rest
def test_triton_scan_matches_naive_both_directions(length, dtype, monkeypatch):
    triton_scan = interpreted_kernels("lru_scan_triton").scan
    lamb, u, h0 = _inputs(length, dtype, seed=40 + length, batch=2, hidden=5)
    tol = 2e-6 if dtype == torch.complex64 else 1e-12
    for start in (None, h0):
        torch.testing.assert_close(triton_scan(lamb, u, start, chunk=8, block_h=4),
                                   lru_scan_naive(lamb, u, start), rtol=tol, atol=tol)
        backwards = triton_scan(lamb.conj(), u, start, reverse=True, chunk=8, block_h=4)
        torch.testing.assert_close(backwards.flip(1),
                                   lru_scan_naive(lamb.conj(), u.flip(1), start),
                                   rtol=tol, atol=tol)


def test_triton_scan_gives_lru_scan_its_gradients(monkeypatch):
    """``lru_scan``'s autograd function with the Triton kernel as its scan (what CUDA runs):
    values and the gradients of lamb, u and h0 equal the naive loop's."""
    triton = interpreted_kernels("lru_scan_triton")
    monkeypatch.setattr(lru_scan_module, "_scan",
                        lambda lamb, u, h0=None, reverse=False: triton.scan(
                            lamb, u, h0, reverse, chunk=4, block_h=4))
    lamb, u, h0 = _inputs(11, torch.complex128, seed=7, batch=2, hidden=5)
    weights = torch.randn(2, 11, 5, dtype=torch.complex128,
                          generator=torch.Generator().manual_seed(3))
    results = []
    for fn in (lru_scan, lru_scan_naive):
        leaves = [x.clone().requires_grad_() for x in (lamb, u, h0)]
        out = fn(*leaves)
        results.append((out, torch.autograd.grad((out * weights).real.sum(), leaves)))
    (fast, fast_grads), (ref, ref_grads) = results
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for g_fast, g_ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-10)
