"""LRURec: incremental inference == full forward, padding, causality, the LRU layer against a
naive loop, checkpoints, optimiser groups, and learning on ml-100k."""

import math

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from recbole_efficient import Config, get_model, get_trainer
from recbole_efficient.model.lru import LRULayer

import conftest
from conftest import (StubDataset, assert_built_state_is_stepped_state,
                      assert_packed_training_is_padded_training,
                      assert_step_after_build_state_is_full_forward)

N_ITEMS = 50


def make_model(seed=0, **overrides):
    cfg = {"hidden_size": 16, "n_layers": 2, "MAX_ITEM_LIST_LENGTH": 64}
    cfg.update(overrides)
    config = Config(model="LRURec", dataset="ml-100k", config_dict=cfg, read_cmd_line=False)
    torch.manual_seed(seed)
    return get_model("LRURec")(config, StubDataset(N_ITEMS)).eval()


def trained_like(model):
    """Give the freshly initialised model O(1) logits, so that absolute tolerances mean
    something (at init the scores are ~1e-2)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.item_embedding.weight[1:].normal_(generator=gen)
        model.output_bias.normal_(generator=gen)
    return model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops: with several OpenMP threads on a busy CI machine, every op can wait a full
    scheduler slice (~10 ms) for its threads; one thread keeps this file fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model():
    # |lambda| close to 1: long memory, the hard case for scan vs step agreement.
    return trained_like(make_model(r_min=0.95, r_max=0.999))


right_padded = partial(conftest.right_padded, n_items=N_ITEMS)


def all_logits(model, seq, lengths):
    return model.logits(model.encode(seq, lengths))


# -- incremental inference ---------------------------------------------------------------
def test_step_scores_equal_full_forward_at_every_step(model):
    seq, lengths = right_padded([64, 64, 64], 64)
    full = all_logits(model, seq, lengths)
    state = model.init_state(3)
    assert [tuple(h.shape) for h in state.layers] == [(3, 32), (3, 32)]
    assert all(h.dtype == torch.complex64 for h in state.layers)
    for t in range(64):
        scores, state = model.step(seq[:, t], state)
        torch.testing.assert_close(scores, full[:, t], atol=2e-5, rtol=1e-5)
    assert scores.shape == (3, N_ITEMS)
    assert state.length.tolist() == [64, 64, 64]


def test_build_state_then_step_equals_full_forward_on_extended_history(model):
    lengths = [300, 17, 1, 0]
    seq, lens = right_padded(lengths, 301, seed=3)
    nxt = torch.randint(1, N_ITEMS, (4,), generator=torch.Generator().manual_seed(4))
    state = assert_step_after_build_state_is_full_forward(model, seq, lens, nxt, atol=5e-5)
    assert_built_state_is_stepped_state(model, state, seq, row=1, length=17)
    assert all(torch.equal(h[3], torch.zeros_like(h[3])) for h in state.layers)  # empty history
    assert state.length.tolist() == lengths  # no position limit: 300 > MAX_ITEM_LIST_LENGTH


def test_step_does_not_modify_state_and_needs_eval_mode(model):
    state = model.init_state(2)
    _, new = model.step(torch.tensor([3, 4]), state)
    assert all(torch.count_nonzero(h) == 0 for h in state.layers)
    assert all(torch.count_nonzero(h) > 0 for h in new.layers)
    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        model.step(torch.tensor([3, 4]), state)
    with pytest.raises(RuntimeError, match="eval"):
        model.build_state(torch.tensor([[3, 4]]), torch.tensor([2]))


# -- padding and causality ---------------------------------------------------------------
def test_right_padding_does_not_change_real_positions(model):
    seq, lengths = right_padded([5, 1, 3], 5)
    out = model.encode(seq, lengths)
    padded = F.pad(seq, (0, 27))  # 32 wide: zeros appended
    out_padded = model.encode(padded, lengths)
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out_padded[row, :n], out[row, :n], atol=1e-6, rtol=1e-6)
        # every row equals the same row encoded alone, without any padding
        alone = model.encode(seq[row:row + 1, :n], lengths[row:row + 1])
        torch.testing.assert_close(out_padded[row, :n], alone[0], atol=1e-6, rtol=1e-6)
    assert torch.isfinite(out_padded).all()
    single = model.full_sort_predict({model.ITEM_SEQ: torch.tensor([[7]]),
                                      model.ITEM_SEQ_LEN: torch.tensor([1])})
    assert single.shape == (1, N_ITEMS) and torch.isfinite(single).all()


def test_padded_batch_trains_without_nan():
    model = make_model().train()
    seq, lengths = right_padded([9, 1, 4], 9)
    loss = F.cross_entropy(model.logits(model.forward(seq, lengths)), torch.tensor([1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.blocks[0].lru.nu_log.grad.abs().sum() > 0


def test_causal_output_unchanged_by_later_items(model):
    seq, lengths = right_padded([12, 12], 12)
    changed = seq.clone()
    changed[:, 6:] = (seq[:, 6:] % (N_ITEMS - 1)) + 1
    out, out2 = model.encode(seq, lengths), model.encode(changed, lengths)
    torch.testing.assert_close(out[:, :6], out2[:, :6], atol=0, rtol=0)
    assert not torch.allclose(out[:, 6:], out2[:, 6:])


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
    model = make_model()
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
    other = make_model(seed=123, r_min=0.95, r_max=0.999)
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

    from conftest import TINY

    _, cfg = tiny
    result = run_recbole_efficient("LRURec", TINY, config_dict=cfg(epochs=1), read_cmd_line=False)
    ckpt = torch.load(result["saved_model_file"], weights_only=True)
    assert len(ckpt["optimizer"]["param_groups"]) == 2
    config, model, *_ = load_data_and_model(result["saved_model_file"])
    assert type(model).__name__ == "LRURec" and config["learner"] == "adamw"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ckpt["state_dict"][name]), name


# -- learning ---------------------------------------------------------------------------
def _ndcg_at_10(scores, target):
    scores = scores.clone()
    scores[:, 0] = -math.inf
    # rank = items scored strictly higher: ties count in the target's favour
    rank = (scores > scores.gather(1, target[:, None])).sum(1)
    return torch.where(rank < 10, 1 / torch.log2(rank.float() + 2), torch.zeros(()))


def test_learns_ml100k_better_than_popularity(tmp_path, monkeypatch):
    from recbole.data import data_preparation

    import recbole_efficient
    from recbole_efficient.data import create_dataset
    from recbole_efficient.data.dataset import target_list_field

    monkeypatch.chdir(tmp_path)
    cfg = {"epochs": 2, "learning_rate": 0.003, "hidden_size": 32, "MAX_ITEM_LIST_LENGTH": 32,
           "show_progress": False, "eval_step": 100, "seed": 2020, "metrics": ["NDCG"],
           "topk": [10], "valid_metric": "NDCG@10"}
    result = recbole_efficient.run_recbole_efficient(
        model="LRURec", dataset="ml-100k", config_dict=cfg, read_cmd_line=False, saved=False)
    model_ndcg = float(result["test_result"]["ndcg@10"])

    # Popularity over the training windows' targets, ranked on the same test rows.
    config = Config(model="LRURec", dataset="ml-100k", config_dict=cfg, read_cmd_line=False)
    train, _, test = data_preparation(config, create_dataset(config))
    n_items = train._dataset.num(config["ITEM_ID_FIELD"])
    counts = torch.zeros(n_items)
    for batch in train:
        targets = batch[target_list_field(config)]
        counts += torch.bincount(targets[targets > 0], minlength=n_items).float()
    pop = torch.cat([_ndcg_at_10(counts.expand(len(inter), -1), inter["item_id"])
                     for inter, *_ in test])
    assert len(pop) == 943
    pop_ndcg = pop.mean().item()
    assert model_ndcg > 1.2 * pop_ndcg, (model_ndcg, pop_ndcg)


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


def test_packed_training_equals_the_padded_grid_in_value_and_gradient():
    """``all_positions`` training runs LRURec's position-wise work on the real positions only."""
    model = trained_like(make_model(hidden_dropout_prob=0.0, lru_dropout_prob=0.0)).train()
    assert_packed_training_is_padded_training(model, make_model().drop_sequence_mixer(), N_ITEMS)
