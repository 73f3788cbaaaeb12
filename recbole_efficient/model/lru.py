"""The LRU stack of LRURec (Yue et al., WSDM 2024): complex linear maps, the LRU layer, the
point-wise feed-forward sublayer and the block that joins them.

Complex weights are stored as separate real and imaginary ``float`` parameters. Plain real
tensors work with every optimiser (AdamW weight decay included), ``clip_grad_norm_``, AMP,
FLOP counters and ``torch.load(weights_only=True)``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_efficient.kernels.lru_scan import lru_scan, lru_step
from recbole_efficient.model.shared import Dropout, padded_grid

__all__ = ["ComplexLinear", "LRULayer", "PointWiseFeedForward", "LRUBlock"]


class ComplexLinear(nn.Module):
    """``W x + b`` with complex ``W`` and ``b``, for real or complex ``x``.

    ``real_output=True`` computes only ``Re(W x + b)``. The imaginary part of the bias could
    never change that output, so it is not created. Each call is one real matmul: complex
    inputs and outputs are read and written as interleaved (re, im) real views, without copies.
    """

    def __init__(self, in_features, out_features, bias=True, real_output=False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.real_output = real_output
        self.weight_real = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_imag = nn.Parameter(torch.empty(out_features, in_features))
        if bias:
            self.bias_real = nn.Parameter(torch.empty(out_features))
            self.bias_imag = None if real_output else nn.Parameter(torch.empty(out_features))
        else:
            self.bias_real = self.bias_imag = None
        self.reset_parameters()

    def reset_parameters(self):
        # nn.Linear's default; models re-initialise (LRURec: truncated normal).
        bound = 1.0 / math.sqrt(self.in_features)
        for p in (self.weight_real, self.weight_imag, self.bias_real, self.bias_imag):
            if p is not None:
                nn.init.uniform_(p, -bound, bound)

    def _real_weight(self, complex_input):
        """The real matrix acting on (interleaved) inputs, giving (interleaved) outputs."""
        w_re, w_im = self.weight_real, self.weight_imag
        # Re(W x) = Wr xr - Wi xi; Im(W x) = Wi xr + Wr xi.
        re_rows = torch.stack([w_re, -w_im], -1).flatten(-2) if complex_input else w_re
        if self.real_output:
            return re_rows
        im_rows = torch.stack([w_im, w_re], -1).flatten(-2) if complex_input else w_im
        return torch.stack([re_rows, im_rows], 1)  # [out, 2, in']

    def forward(self, x, scale=None):
        """``x [..., in]`` -> ``[..., out]``: complex, or real with ``real_output``.

        ``scale [out]`` (real, complex output only) multiplies the output; it is folded into
        the weight and bias, so it costs no pass over the activations.
        """
        complex_input = x.is_complex()
        inp = torch.view_as_real(x).flatten(-2) if complex_input else x
        weight = self._real_weight(complex_input)
        if self.real_output:
            return F.linear(inp, weight, self.bias_real)
        bias = None
        if self.bias_real is not None:
            bias = torch.stack([self.bias_real, self.bias_imag], 1)
        if scale is not None:
            weight = weight * scale[:, None, None]
            bias = None if bias is None else bias * scale[:, None]
        out = F.linear(inp, weight.flatten(0, 1), None if bias is None else bias.flatten())
        # float(): under autocast the matmul runs in half precision, the state does not.
        return torch.view_as_complex(out.float().unflatten(-1, (-1, 2)))

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias_real is not None}, real_output={self.real_output}")


def ring_init(state_size, r_min=0.8, r_max=0.99, max_phase=2 * math.pi):
    """``(nu_log, theta_log, gamma_log)`` with ``|lambda|`` uniform on the ring [r_min, r_max].

    ``|lambda|^2`` is drawn uniformly from ``[r_min^2, r_max^2]`` and the phase uniformly from
    ``[0, max_phase)`` (Orvieto et al., 2023); ``gamma = sqrt(1 - |lambda|^2)`` normalises the
    input so that the state's variance does not grow with ``|lambda| -> 1``.
    """
    u1 = torch.rand(state_size)
    u2 = torch.rand(state_size).clamp_min(1e-7)  # theta_log = log(0) would be -inf
    nu_log = torch.log(-0.5 * torch.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2))
    theta_log = torch.log(u2 * max_phase)
    modulus_sq = torch.exp(-2 * torch.exp(nu_log))  # |lambda|^2 = exp(-2 nu)
    gamma_log = torch.log(torch.sqrt(1 - modulus_sq))
    return nu_log, theta_log, gamma_log


class LRULayer(nn.Module):
    """Linear recurrent unit with a residual and post-LayerNorm.

    ``h_t = lambda * h_{t-1} + gamma * (B x_t + b_B)``,
    ``y_t = LayerNorm(Dropout(Re(C h_t + b_C)) + x_t)``,
    with ``lambda = exp(-exp(nu_log) + i exp(theta_log))`` and ``gamma = exp(gamma_log)``.
    The state is complex with ``state_size`` (default ``2 * d_model``) entries. ``states``
    runs the recurrence over a whole sequence (chunked scan), ``output`` is the position-wise
    rest, ``step`` advances one item. Causal: the output at t depends on ``x_0..x_t`` only,
    so right padding is harmless.
    """

    def __init__(self, d_model, state_size=None, dropout=0.0, r_min=0.8, r_max=0.99,
                 max_phase=2 * math.pi, layer_norm_eps=1e-5):
        super().__init__()
        self.d_model = d_model
        self.state_size = state_size or 2 * d_model
        nu_log, theta_log, gamma_log = ring_init(self.state_size, r_min, r_max, max_phase)
        self.nu_log = nn.Parameter(nu_log)
        self.theta_log = nn.Parameter(theta_log)
        self.gamma_log = nn.Parameter(gamma_log)
        self.in_proj = ComplexLinear(d_model, self.state_size)                       # B
        self.out_proj = ComplexLinear(self.state_size, d_model, real_output=True)   # C
        self.dropout = Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def log_parameters(self):
        return [self.nu_log, self.theta_log, self.gamma_log]

    def lamb(self):
        """The diagonal of the recurrence, complex ``[state_size]``."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def state_input(self, x):
        """``gamma * (B x + b_B)``: complex ``[..., state_size]`` (gamma scales the bias too)."""
        return self.in_proj(x, scale=torch.exp(self.gamma_log))

    def states(self, x, h0=None):
        """``x [B, L, d]`` (optional initial state ``h0 [B, H]``) -> ``h [B, L, H]``."""
        return lru_scan(self.lamb(), self.state_input(x), h0)

    def packed_states(self, x, mask):
        """:meth:`states` at the real positions only: ``x [n, d]`` holds the positions where
        ``mask [B, L]`` is True, row-major. The projection runs on those n positions; the scan
        runs on the ``[B, L]`` grid with zero inputs at the pads (right padding: they come
        after every real position of their row, so they change no real state)."""
        return lru_scan(self.lamb(), padded_grid(self.state_input(x), mask))[mask]

    def output(self, h, x):
        """Position-wise: ``h [..., H]``, ``x [..., d]`` -> ``y [..., d]``."""
        return self.layer_norm(self.dropout(self.out_proj(h)) + x)

    def forward(self, x, h0=None):
        """``x [B, L, d]`` -> ``(y [B, L, d], h [B, L, H])``."""
        h = self.states(x, h0)
        return self.output(h, x), h

    def step(self, x, h_prev):
        """One item: ``x [B, d]``, ``h_prev [B, H]`` -> ``(y [B, d], h [B, H])``."""
        h = lru_step(self.lamb(), h_prev, self.state_input(x))
        return self.output(h, x), h


class PointWiseFeedForward(nn.Module):
    """``LayerNorm(Dropout(W2 Dropout(GELU(W1 x))) + x)`` (official LRURec code: no outer GELU)."""

    def __init__(self, d_model, inner_size=None, dropout=0.0, layer_norm_eps=1e-5):
        super().__init__()
        inner_size = inner_size or 4 * d_model
        self.w_1 = nn.Linear(d_model, inner_size)
        self.w_2 = nn.Linear(inner_size, d_model)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def forward(self, x):
        inner = self.dropout(self.activation(self.w_1(x)))
        return self.layer_norm(self.dropout(self.w_2(inner)) + x)


class LRUBlock(nn.Module):
    """LRU layer followed by the feed-forward sublayer.

    ``lru = None`` (set by ``LRURec.drop_sequence_mixer``) leaves the feed-forward only.
    """

    def __init__(self, d_model, lru_dropout=0.0, hidden_dropout=0.0, r_min=0.8, r_max=0.99,
                 max_phase=2 * math.pi, layer_norm_eps=1e-5, inner_size=None, state_size=None):
        super().__init__()
        self.lru = LRULayer(d_model, state_size=state_size, dropout=lru_dropout, r_min=r_min,
                            r_max=r_max, max_phase=max_phase, layer_norm_eps=layer_norm_eps)
        self.feed_forward = PointWiseFeedForward(d_model, inner_size, hidden_dropout,
                                                 layer_norm_eps)

    def output(self, h, x):
        """Position-wise work after the recurrence: LRU output, then the feed-forward."""
        return self.feed_forward(self.lru.output(h, x))

    def forward(self, x, h0=None):
        if self.lru is None:
            return self.feed_forward(x), None
        h = self.lru.states(x, h0)
        return self.output(h, x), h

    def forward_packed(self, x, mask):
        """The block at the real positions of ``mask [B, L]`` only (``x [n, d]``)."""
        if self.lru is None:
            return self.feed_forward(x)
        return self.output(self.lru.packed_states(x, mask), x)

    def step(self, x, h_prev):
        y, h = self.lru.step(x, h_prev)
        return self.feed_forward(y), h
