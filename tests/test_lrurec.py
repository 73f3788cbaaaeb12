"""LRURec: its streaming state, the LRU layer against a naive loop, its initialisation,
checkpoints and optimiser groups (what every model guarantees is in test_model_contract)."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from recbole_efficient import Config, get_trainer
from recbole_efficient.model.lru import LRULayer

import helpers
from helpers import TINY, right_padded

make_model = partial(helpers.make_model, "LRURec", MAX_ITEM_LIST_LENGTH=64)


@pytest.fixture
def model():
    return make_model(r_min=0.95, r_max=0.999)


def all_logits(model, seq, lengths):
    return model.logits(model.encode(seq, lengths))


# -- streaming state ------------------------------------------------------------------------
def test_state_is_a_complex_vector_per_layer(model):
    state = model.init_state(3)
    assert [tuple(h.shape) for h in state.layers] == [(3, 32), (3, 32)]
    assert all(h.dtype == torch.complex64 for h in state.layers)
    assert model.stream_limit() is None  # no learned positions


def test_lru_state_stays_single_precision_under_autocast(model):
    seq, lengths = right_padded([8, 5, 1, 3], 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.blocks[0].lru.states(model.embed(seq))
        scores = model.full_sort_predict({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
    assert h.dtype == torch.complex64 and torch.isfinite(scores).all()


# -- training -----------------------------------------------------------------------------------
def test_padded_batch_gives_every_parameter_a_finite_gradient():
    model = make_model().train()
    seq, lengths = right_padded([9, 1, 4], 9)
    loss = F.cross_entropy(model.logits(model.forward(seq, lengths)), torch.tensor([1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.blocks[0].lru.nu_log.grad.abs().sum() > 0


# -- the LRU layer against the recurrence written out ---------------------------------------
def naive_lru_layer(layer, x):
    """h_t = lam * h_{t-1} + gamma * (B x_t + b_B); y_t = LN(Re(C h_t + b_C) + x_t), in complex128."""
    c = torch.complex128
    lam = torch.exp(torch.complex(-torch.exp(layer.nu_log.double()),
                                  torch.exp(layer.theta_log.double())))
    gamma = torch.exp(layer.gamma_log.double())
    p, q = layer.in_proj, layer.out_proj
    B = torch.complex(p.weight_real.double(), p.weight_imag.double())
    b_B = torch.complex(p.bias_real.double(), p.bias_imag.double())
    C = torch.complex(q.weight_real.double(), q.weight_imag.double())
    b_C = q.bias_real.double()
    h = torch.zeros(x.size(0), B.size(0), dtype=c)
    ys, hs = [], []
    for t in range(x.size(1)):
        x_t = x[:, t].double().to(c)
        h = lam * h + gamma * (x_t @ B.T + b_B)
        y = (h @ C.T).real + b_C
        ys.append(F.layer_norm(y + x[:, t].double(), (x.size(-1),),
                               layer.layer_norm.weight.double(), layer.layer_norm.bias.double(),
                               layer.layer_norm.eps))
        hs.append(h)
    return torch.stack(ys, 1), torch.stack(hs, 1)


def test_lru_layer_matches_naive_loop_values_and_gradients():
    torch.manual_seed(0)
    layer = LRULayer(8, dropout=0.3).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorm affine
        for p in (layer.in_proj.bias_real, layer.in_proj.bias_imag, layer.out_proj.bias_real,
                  layer.layer_norm.weight, layer.layer_norm.bias):
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(3, 37, 8)
    y, h = layer(x)
    y_ref, h_ref = naive_lru_layer(layer, x)
    assert h.shape == (3, 37, 16) and h.dtype == torch.complex64
    torch.testing.assert_close(h, h_ref.to(h.dtype), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, y_ref.float(), atol=1e-5, rtol=1e-5)
    # step() is the same recurrence
    h_t = torch.zeros(3, 16, dtype=torch.complex64)
    for t in range(37):
        y_t, h_t = layer.step(x[:, t], h_t)
    torch.testing.assert_close(y_t, y[:, -1], atol=1e-5, rtol=1e-5)

    weights = torch.randn(3, 37, 8, dtype=torch.float64)
    grads = torch.autograd.grad((y.double() * weights).sum(), list(layer.parameters()))
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), list(layer.parameters()))
    for (name, _), g, g_ref in zip(layer.named_parameters(), grads, grads_ref):
        # float32 rounding, relative to the gradient's scale (a float32 loop does the same)
        assert (g.double() - g_ref).abs().max() <= 2e-5 * g_ref.abs().max(), name


def test_ring_init():
    torch.manual_seed(0)
    layer = LRULayer(64, r_min=0.8, r_max=0.99)
    modulus = layer.lamb().abs()
    assert layer.state_size == 128
    assert modulus.min() >= 0.8 - 1e-6 and modulus.max() <= 0.99 + 1e-6
    theta = torch.exp(layer.theta_log)
    assert theta.min() >= 0 and theta.max() <= 2 * math.pi
    torch.testing.assert_close(torch.exp(layer.gamma_log), torch.sqrt(1 - modulus ** 2))


def test_truncated_normal_init_and_zero_pad():
    model = make_model(trained_like=False)
    assert torch.count_nonzero(model.item_embedding.weight[0]) == 0
    for name, p in model.named_parameters():
        if "layer_norm" in name or name.endswith("_log"):
            continue
        assert p.abs().max() <= 0.04, name
        assert p.std() > 0.01, name


# -- checkpoints and optimiser -----------------------------------------------------------
def test_state_dict_round_trip_weights_only(tmp_path, model):
    path = tmp_path / "lrurec.pth"
    torch.save(model.state_dict(), path)
    loaded = torch.load(path, weights_only=True)
    assert all(not t.is_complex() for t in loaded.values())
    other = make_model(seed=123, r_min=0.95, r_max=0.999, trained_like=False)
    seq, lengths = right_padded([10, 4], 10)
    assert not torch.allclose(all_logits(other, seq, lengths), all_logits(model, seq, lengths))
    other.load_state_dict(loaded)
    assert torch.equal(all_logits(other, seq, lengths), all_logits(model, seq, lengths))


def test_optimizer_groups():
    model = make_model()
    decay, plain = model.optimizer_groups(0.01)
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in plain["params"]}
    assert decayed | not_decayed == set(names.values()) and not decayed & not_decayed
    assert all("bias" in n or "layer_norm" in n for n in not_decayed)
    assert {"output_bias", "emb_layer_norm.weight", "blocks.0.lru.layer_norm.weight",
            "blocks.1.feed_forward.w_1.bias", "blocks.0.lru.in_proj.bias_imag"} <= not_decayed
    assert {"item_embedding.weight", "blocks.0.lru.in_proj.weight_imag",
            "blocks.1.feed_forward.w_2.weight", "blocks.0.lru.nu_log"} <= decayed

    frozen_lru = make_model(lru_params_weight_decay=False)
    _, plain = frozen_lru.optimizer_groups(0.01)
    names = {id(p): n for n, p in frozen_lru.named_parameters()}
    assert {"blocks.0.lru.nu_log", "blocks.1.lru.theta_log", "blocks.1.lru.gamma_log"} <= \
        {names[id(p)] for p in plain["params"]}


def test_trainer_builds_adamw_with_groups(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = make_model()
    config = Config(model="LRURec", dataset="ml-100k", config_dict={"hidden_size": 16},
                    read_cmd_line=False)
    trainer = get_trainer(config["MODEL_TYPE"], "LRURec")(config, model)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.01, 0.0]
    assert config["clip_grad_norm"] == {"max_norm": 5.0}


def test_trained_checkpoint_reloads(tiny):
    from recbole_efficient import load_data_and_model, run_recbole_efficient

    _, cfg = tiny
    result = run_recbole_efficient("LRURec", TINY, config_dict=cfg(epochs=1), read_cmd_line=False)
    ckpt = torch.load(result["saved_model_file"], weights_only=True)
    assert len(ckpt["optimizer"]["param_groups"]) == 2
    config, model, *_ = load_data_and_model(result["saved_model_file"])
    assert type(model).__name__ == "LRURec" and config["learner"] == "adamw"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ckpt["state_dict"][name]), name


@pytest.mark.parametrize("complex_input", [False, True])
@pytest.mark.parametrize("real_output", [False, True])
def test_complex_linear_is_the_complex_affine_map(complex_input, real_output):
    """One real matmul on interleaved views == (Wr + i Wi) x + b, scale folded in."""
    from recbole_efficient.model.lru import ComplexLinear

    torch.manual_seed(0)
    layer = ComplexLinear(5, 3, real_output=real_output)
    x = torch.randn(2, 4, 5, dtype=torch.complex64) if complex_input else torch.randn(2, 4, 5)
    weight = torch.complex(layer.weight_real, layer.weight_imag)
    bias = layer.bias_real if real_output else torch.complex(layer.bias_real, layer.bias_imag)
    expected = x.to(torch.complex64) @ weight.T + bias
    if real_output:
        torch.testing.assert_close(layer(x), expected.real)
    else:
        scale = torch.rand(3) + 0.5
        torch.testing.assert_close(layer(x), expected)
        torch.testing.assert_close(layer(x, scale=scale), expected * scale)
