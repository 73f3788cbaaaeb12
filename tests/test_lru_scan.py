"""Tests for the LRU diagonal-recurrence kernels."""

import math

import pytest
import torch

from recbole_efficient.kernels.lru_scan import lamb_powers, lru_scan, lru_scan_naive, lru_step

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


@pytest.mark.parametrize("length", [1, 2, 3, 7, 8, 50, 129, 200])
def test_parallel_matches_naive_complex64(length):
    lamb, u, _ = _inputs(length, torch.complex64, seed=length)
    out = lru_scan(lamb, u)
    assert out.shape == (B, length, H) and out.dtype == torch.complex64
    torch.testing.assert_close(out, lru_scan_naive(lamb, u), rtol=1e-5, atol=1e-5)


def test_parallel_matches_naive_complex128_long():
    lamb, u, _ = _inputs(1000, torch.complex128, seed=1)
    torch.testing.assert_close(lru_scan(lamb, u), lru_scan_naive(lamb, u), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("length", [1, 5, 64])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_parallel_matches_naive_with_h0(length, dtype):
    lamb, u, h0 = _inputs(length, dtype, seed=10 + length)
    tol = 1e-5 if dtype == torch.complex64 else 1e-10
    torch.testing.assert_close(lru_scan(lamb, u, h0), lru_scan_naive(lamb, u, h0), rtol=tol, atol=tol)


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
    lamb, u, h0 = _inputs(6, torch.complex128, seed=4, batch=2, hidden=3)
    inputs = tuple(x.clone().requires_grad_() for x in (lamb, u, h0))
    assert torch.autograd.gradcheck(lru_scan, inputs)


def test_grads_match_naive():
    lamb, u, h0 = _inputs(45, torch.complex128, seed=5)
    grads = []
    for fn in (lru_scan, lru_scan_naive):
        leaves = [x.clone().requires_grad_() for x in (lamb, u, h0)]
        out = fn(*leaves)
        loss = (out.real * out.imag.cos()).sum() + out.abs().pow(2).mean()
        grads.append(torch.autograd.grad(loss, leaves))
    for g_fast, g_ref in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-8, atol=1e-8)


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
