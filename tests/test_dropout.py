"""The mixers' dropout against ``torch.nn.functional.dropout``: same distribution, scaling
and gradient, identity when off."""

import pytest
import torch
import torch.nn.functional as F

from recbole_efficient.kernels.dropout import dropout
from recbole_efficient.model.shared import Dropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_dropout_has_the_distribution_and_scale_of_torch_dropout(p):
    torch.manual_seed(0)
    x = torch.rand(200_000, dtype=torch.float64) + 1  # no zeros of its own
    ours, ref = dropout(x, p), F.dropout(x, p)
    n = x.numel()
    bound = 5 * (p * (1 - p) / n) ** 0.5  # 5 standard deviations of the dropped fraction
    for out in (ours, ref):
        dropped = out == 0
        assert abs(dropped.double().mean().item() - p) < bound
        torch.testing.assert_close(out[~dropped], x[~dropped] / (1 - p))


def test_dropout_gradient_goes_through_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    out = dropout(x, 0.3)
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    kept = out != 0
    torch.testing.assert_close(grad, weights * kept / 0.7)


def test_dropout_is_the_identity_when_off_and_zero_at_p_one():
    x = torch.randn(8, 4)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    out = dropout(x, 1.0)
    assert torch.equal(out, torch.zeros_like(x))  # not NaN: 0 * 1 / (1 - 1)


def test_dropout_module_follows_train_and_eval_and_the_seed():
    layer = Dropout(0.5)
    x = torch.randn(100, 10).abs() + 1
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    assert torch.equal(layer(x), first)  # RecBole's seed reproduces the masks
    assert (first == 0).any() and first.dtype == x.dtype
    assert layer.eval()(x) is x
    assert Dropout(0.5).train()(x.half()).dtype == torch.float16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_dropout_keeps_its_rate(dtype):
    """Uniforms drawn in the input's half precision would be coarse and biased: at p=0.999 in
    bf16 every entry was dropped."""
    torch.manual_seed(0)
    x = torch.ones(1_000_000, dtype=dtype)
    kept = int((dropout(x, 0.999) != 0).sum())
    assert 800 < kept < 1200  # 1000 expected, sd ~32
    out = dropout(x, 0.2)
    assert out.dtype == dtype and abs((out == 0).double().mean().item() - 0.2) < 0.002


def test_dropout_rejects_a_probability_outside_0_1():
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(torch.ones(3), -0.1)
