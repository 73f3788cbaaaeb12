"""ELASTIC: the memory retrieval (causal, at stride anchors, in streaming too), sparse memory
gradients and their optimiser, config errors, checkpoints (what every model guarantees is in
test_model_contract)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from recbole_efficient import Config, get_trainer
from recbole_efficient.model import elastic as elastic_module
from recbole_efficient.optim import LazyAdam, OptimizerChain
from recbole_efficient.optim import build_optimizer
from recbole_efficient.validation import ConfigError

import helpers
from helpers import N_ITEMS, SMALL, TINY, right_padded


def make_model(seed=0, **overrides):
    if overrides.get("lda_causal") is False:
        overrides.setdefault("train_mode", "augmented")
    return helpers.make_model("ELASTIC", seed, **overrides)


FORMS = [pytest.param(True, id="causal"), pytest.param(False, id="noncausal")]


STRIDES = [pytest.param(1, id="stride1"), pytest.param(3, id="stride3")]


# -- the memory retrieval ----------------------------------------------------------------------
@pytest.mark.parametrize("stride", STRIDES)
def test_the_retrieval_is_causal(stride):
    """The interests of positions 0..10 do not move when later items change (the outputs'
    causality is the model contract's)."""
    model = make_model(memory_stride=stride)
    seq, lengths = right_padded([20, 20], 20)
    changed = seq.clone()
    changed[:, 11:] = (seq[:, 11:] % (N_ITEMS - 1)) + 1
    x, mask = model._embed_seq(seq, lengths)
    x2, _ = model._embed_seq(changed, lengths)
    interests = model._interests(x, lengths, mask, every_position=True)
    interests2 = model._interests(x2, lengths, mask, every_position=True)
    anchors = 10 // stride + 1  # the anchors at positions <= 10
    torch.testing.assert_close(interests2[:, :anchors], interests[:, :anchors], atol=0, rtol=0)
    assert not torch.equal(interests2[:, anchors:], interests[:, anchors:])


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("causal", FORMS)
def test_the_last_position_path_takes_empty_rows_without_nan(causal):
    """Unlike the base's, ELASTIC's ``encode_last`` accepts rows of no item."""
    model = make_model(lda_causal=causal).train()
    seq, lengths = right_padded([6, 1, 0], 6)
    # anomaly mode: no NaN even in intermediate gradients
    with torch.autograd.detect_anomaly():
        loss = F.cross_entropy(model.logits(model.encode_last(seq, lengths)),
                               torch.tensor([1, 2, 3]))
        loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        if p.grad is not None:
            grad = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            assert torch.isfinite(grad).all(), name


def test_dropping_the_mixer_drops_the_memory_too():
    model = make_model().drop_sequence_mixer()
    assert model.imr is None and all(block.lda is None for block in model.blocks)
    assert not any("lda" in name or "imr" in name for name, _ in model.named_parameters())


def test_memory_stride_retrieves_at_anchors_and_each_retrieval_serves_its_positions():
    """Stride s: the interests at anchor j are stride 1's at position j * s, and positions
    j * s .. j * s + s - 1 read them (so a change of the item at a non-anchor position moves
    no retrieval, and the outputs differ from stride 1's between anchors only)."""
    every, strided = make_model(memory_stride=1), make_model(memory_stride=3)
    seq, lengths = right_padded([20, 14], 20)
    x, mask = every._embed_seq(seq, lengths)
    per_position = every._interests(x, lengths, mask, every_position=True)
    at_anchors = strided._interests(x, lengths, mask, every_position=True)
    assert at_anchors.shape[1] == 7  # positions 0, 3, ..., 18
    real = mask[:, ::3]
    torch.testing.assert_close(at_anchors[real], per_position[:, ::3][real])
    assert (at_anchors[~real] == 0).all()
    changed = seq.clone()
    changed[:, 4] = (seq[:, 4] % (N_ITEMS - 1)) + 1  # position 4: not an anchor
    x2, _ = strided._embed_seq(changed, lengths)
    moved = (strided._interests(x2, lengths, mask, every_position=True) != at_anchors)
    assert not moved[:, :2].any() and moved[real][2:].any()  # anchors 0, 3 keep theirs
    out_every, out_strided = every.encode(seq, lengths), strided.encode(seq, lengths)
    torch.testing.assert_close(out_strided[:, ::3][real], out_every[:, ::3][real])
    assert not torch.allclose(out_strided[:, 1], out_every[:, 1])


# -- streaming ----------------------------------------------------------------------------
@pytest.mark.parametrize("use_imr", [True, False])
def test_state_per_layer_and_for_the_memory(use_imr):
    """Each layer's running sums, then with IMR the memory query's sum and the interests
    retrieved at the last anchor."""
    state = make_model(use_imr=use_imr).init_state(3)
    assert len(state.layers) == 2 + 2 * use_imr


@pytest.mark.parametrize("stride", STRIDES)
def test_streaming_reads_the_memory_at_anchors_only(stride, monkeypatch):
    """(That the steps' scores are the full forward's is the model contract's.)"""
    model = make_model(memory_stride=stride)
    seq, _ = right_padded([24, 24, 24], 24)
    state = model.init_state(3)
    queries = []
    monkeypatch.setattr(model.imr, "forward", lambda *a, f=model.imr.forward:
                        queries.append(a[0].shape[0]) or f(*a))
    for t in range(24):
        _, state = model.step(seq[:, t], state)
    assert len(queries) == 24 // stride


def test_streaming_rows_at_different_positions_query_the_memory_at_their_own_anchors(
        monkeypatch):
    model = make_model(memory_stride=3)
    seq, _ = right_padded([12, 12, 12], 12, seed=5)
    full = model.logits(model.encode(seq, torch.full((3,), 12)))
    built = torch.tensor([2, 1, 0])  # histories of 2, 1 and 0 items: the rows' residues differ
    state = model.build_state(seq[:, :2], built)
    rows = []
    monkeypatch.setattr(model.imr, "forward", lambda *a, f=model.imr.forward:
                        rows.append(a[0].shape[0]) or f(*a))
    for step in range(6):
        position = built + step
        scores, state = model.step(seq[torch.arange(3), position], state)
        torch.testing.assert_close(scores, full[torch.arange(3), position], atol=2e-5, rtol=1e-5)
    assert sum(rows) == 6  # each row: 2 anchors among its 6 positions, not all 3 rows each step


def test_static_streaming_for_cuda_graphs_gives_the_same_scores():
    """``static_stream`` (set while a CUDA graph captures the step): every row queries the
    memory and only the anchors keep the result, with no host sync; the same scores and state
    as the branching step, for rows at different residues."""
    model = make_model(memory_stride=3)
    seq, _ = right_padded([12, 12, 12], 12, seed=5)
    built = torch.tensor([2, 1, 0])
    states = [model.build_state(seq[:, :2], built) for _ in range(2)]
    for step in range(6):
        items = seq[torch.arange(3), built + step]
        scores, states[0] = model.step(items, states[0])
        model.static_stream = True
        try:
            static_scores, states[1] = model.step(items, states[1])
        finally:
            model.static_stream = False
        torch.testing.assert_close(static_scores, scores, atol=1e-6, rtol=1e-6)
    for a, b in zip(helpers.state_tensors(states[0].layers),
                    helpers.state_tensors(states[1].layers)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_noncausal_form_trains_augmented_only():
    with pytest.raises(ConfigError, match="needs a causal encoder"):
        make_model(lda_causal=False, train_mode="all_positions")


# -- the memory: sparse gradients, optimiser, clipping ------------------------------------------
def test_only_retrieved_slots_get_gradients_and_updates(monkeypatch):
    retrieved, search = [], elastic_module.product_key_topk

    def recording_search(query, sub_keys, topk):
        scores, slots = search(query, sub_keys, topk)
        retrieved.append(slots.flatten())
        return scores, slots

    monkeypatch.setattr(elastic_module, "product_key_topk", recording_search)
    model = make_model(memory_size=256, memory_topk=2, memory_heads=1).train()
    seq, lengths = right_padded([5, 5], 5)
    batch = {model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths,
             model.TARGET_SEQ: torch.randint(1, N_ITEMS, (2, 5))}
    # Until an optimiser that takes sparse rows is built, any torch optimiser can step the bank.
    torch.manual_seed(3)  # the same dropout masks in both passes
    model.calculate_loss(batch).backward()
    dense_grad = model.imr.values.grad
    assert not dense_grad.is_sparse
    model.zero_grad(set_to_none=True)
    retrieved.clear()

    optimizer = build_optimizer(model, "adam", 0.01, 0.0)
    assert isinstance(optimizer, OptimizerChain)
    assert [type(o).__name__ for o in optimizer.optimizers] == ["Adam", "LazyAdam"]
    torch.manual_seed(3)
    model.calculate_loss(batch).backward()
    hit = torch.zeros(256, dtype=torch.bool)
    hit[torch.cat(retrieved)] = True
    grad = model.imr.values.grad
    assert grad.is_sparse and 0 < int(hit.sum()) <= 2 * 5 * 2
    dense = grad.to_dense()
    torch.testing.assert_close(dense, dense_grad)            # same values either way
    assert torch.count_nonzero(dense[~hit]) == 0            # every other slot: exactly zero
    assert (dense[hit].abs().sum(1) > 0).all()

    before = model.imr.values.detach().clone()
    assert torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3) > 1e-3
    optimizer.step()
    moved = (model.imr.values.detach() != before).any(1)
    assert torch.equal(moved, hit)                             # LazyAdam: retrieved rows only


def test_gradient_clipping_counts_sparse_rows_once_coalesced():
    model = make_model(memory_size=16, memory_topk=4, memory_heads=2, memory_stride=1).train()
    model.use_sparse_gradients()
    seq, lengths = right_padded([8, 8], 8)
    model.calculate_loss({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths,
                          model.TARGET_SEQ: torch.randint(1, N_ITEMS, (2, 8))}).backward()
    grads = [p.grad.to_dense() for p in model.parameters() if p.grad is not None]
    expected = torch.cat([g.flatten() for g in grads]).norm()
    # 16 slots, 128 retrievals (every position, 2 heads): the sparse gradient repeats rows
    assert model.imr.values.grad._nnz() > 16
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
    torch.testing.assert_close(total, expected)
    clipped = torch.cat([p.grad.to_dense().flatten() for p in model.parameters()
                         if p.grad is not None]).norm()
    torch.testing.assert_close(clipped, torch.tensor(0.5), atol=1e-5, rtol=1e-5)


def test_lazy_adam_is_adam_on_the_rows_it_sees():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    lazy_param = torch.nn.Parameter(table.clone())
    dense_param = torch.nn.Parameter(table[:4].clone())
    lazy, adam = LazyAdam([lazy_param], lr=0.1), torch.optim.Adam([dense_param], lr=0.1)
    for _ in range(3):
        # rows 0..3 in every gradient (row 2 twice: duplicates are summed), rows 4, 5 never
        rows = torch.tensor([2, 0, 1, 2, 3])
        values = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        lazy_param.grad = torch.sparse_coo_tensor(rows[None], values, (6, 3),
                                                  check_invariants=True)
        dense_param.grad = torch.zeros(4, 3, dtype=torch.float64).index_add_(0, rows, values)
        lazy.step()
        adam.step()
    torch.testing.assert_close(lazy_param.detach()[:4], dense_param.detach(), atol=1e-12,
                               rtol=1e-12)
    assert torch.equal(lazy_param.detach()[4:], table[4:])
    assert torch.count_nonzero(lazy.state[lazy_param]["exp_avg"][4:]) == 0
    # A dense gradient (multi-process training's zero-sum sync) updates its non-zero rows
    # exactly as the same rows given sparse.
    twin = torch.nn.Parameter(lazy_param.detach().clone())
    twin_opt = LazyAdam([twin], lr=0.1)
    twin_opt.load_state_dict(copy.deepcopy(lazy.state_dict()))
    rows = torch.tensor([1, 4])
    values = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    lazy_param.grad = torch.sparse_coo_tensor(rows[None], values, (6, 3))
    twin.grad = torch.zeros(6, 3, dtype=torch.float64).index_add_(0, rows, values)
    lazy.step()
    twin_opt.step()
    assert torch.equal(twin.detach(), lazy_param.detach())
    assert torch.equal(twin_opt.state[twin]["exp_avg"], lazy.state[lazy_param]["exp_avg"])


def test_optimizer_groups_and_trainer_optimizer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = make_model(memory_lr_scale=10.0)
    dense, sparse = model.optimizer_groups(0.01)
    assert sparse == {"params": [model.imr.values], "sparse": True, "lr_scale": 10.0}
    assert len(dense["params"]) == sum(1 for _ in model.parameters()) - 1
    config = Config(model="ELASTIC", dataset="ml-100k", config_dict=dict(SMALL),
                    read_cmd_line=False)
    trainer = get_trainer(config["MODEL_TYPE"], "ELASTIC")(config, model)
    assert isinstance(trainer.optimizer, OptimizerChain)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.001, 0.01])
    plain = make_model(use_imr=False)
    assert len(plain.optimizer_groups(0.0)) == 1
    trainer = get_trainer(config["MODEL_TYPE"], "ELASTIC")(config, plain)
    assert isinstance(trainer.optimizer, torch.optim.Adam)


def test_trained_checkpoint_reloads_with_both_optimizers(tiny):
    from recbole_efficient import load_data_and_model, run_recbole_efficient

    _, cfg = tiny
    result = run_recbole_efficient("ELASTIC", TINY, read_cmd_line=False, config_dict=cfg(
        epochs=1, n_experts=4, memory_size=64, memory_topk=4))
    ckpt = torch.load(result["saved_model_file"], weights_only=True)
    assert [len(o["param_groups"]) for o in ckpt["optimizer"]["chain"]] == [1, 1]
    config, model, *_ = load_data_and_model(result["saved_model_file"])
    assert type(model).__name__ == "ELASTIC" and config["memory_size"] == 64
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ckpt["state_dict"][name]), name
    trainer = get_trainer(config["MODEL_TYPE"], "ELASTIC")(config, model)
    trainer.optimizer.load_state_dict(ckpt["optimizer"])  # resumable


def test_checkpoint_saved_before_memory_stride_reloads_with_a_retrieval_per_position():
    """A checkpoint whose saved config lacks ``memory_stride`` was trained querying the memory
    at every position: it is rebuilt that way, not with today's default."""
    from recbole_efficient.checkpoint import config_from_checkpoint

    state = {"model": "ELASTIC", "dataset": "ml-100k", "inputs": {"epochs": 1},
             "final": {"memory_size": 65536}}
    assert config_from_checkpoint({"config": state})["memory_stride"] == 1
    assert config_from_checkpoint({"config": state},
                                  {"memory_stride": 4})["memory_stride"] == 4
    state["final"]["memory_stride"] = 8
    assert config_from_checkpoint({"config": state})["memory_stride"] == 8


def test_old_checkpoint_default_yields_to_a_yaml_file_and_covers_recbole_format(tmp_path):
    from recbole_efficient.checkpoint import config_from_checkpoint

    state = {"model": "ELASTIC", "dataset": "ml-100k", "inputs": {}, "final": {}}
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("memory_stride: 4\n")
    assert config_from_checkpoint({"config": state},
                                  config_file_list=[str(yaml_file)])["memory_stride"] == 4
    # a trusted RecBole-format checkpoint holds the Config object itself
    saved = Config(model="ELASTIC", dataset="ml-100k", config_dict={"epochs": 1},
                   read_cmd_line=False)
    del saved.final_config_dict["memory_stride"]
    assert config_from_checkpoint({"config": saved})["memory_stride"] == 1


def test_noncausal_form_trains_augmented_end_to_end(tiny):
    from recbole_efficient import run_recbole_efficient

    _, cfg = tiny
    result = run_recbole_efficient("ELASTIC", TINY, read_cmd_line=False, saved=False,
                                   config_dict=cfg(lda_causal=False, train_mode="augmented",
                                                   memory_size=64, memory_topk=4))
    assert 0 <= float(result["test_result"]["ndcg@10"]) <= 1


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    ({"n_experts": 0}, "n_experts=0 must be an integer >= 1; use --n_experts=16 (the default)."),
    ({"memory_topk": 80, "memory_size": 64},
     "memory_topk=80 exceeds memory_size=64: at most memory_size slots can be retrieved; use "
     "--memory_topk=8 or less."),
    ({"memory_topk": 9, "memory_size": 64},
     "memory_topk=9 is larger than sqrt(memory_size)=8: product keys take the top-k of each of "
     "two sets of sqrt(memory_size) sub-keys; use --memory_topk=8 or less, or a larger "
     "--memory_size."),
    ({"memory_size": 1000},
     "memory_size=1000 is not a perfect square: product keys address n x n slots; use e.g. "
     "--memory_size=1024."),
    ({"hidden_size": 30, "n_heads": 4},
     "hidden_size=30 is not divisible by n_heads=4: each head gets hidden_size / n_heads "
     "features; choose n_heads among the divisors of hidden_size."),
    ({"hidden_size": 15, "n_heads": 1},
     "hidden_size=15 is odd: product keys split the memory query into two halves; use an even "
     "--hidden_size or --use_imr=False."),
    ({"chunk_size": 0}, "chunk_size=0 must be an integer >= 1; use --chunk_size=32 (the "
                        "default)."),
    ({"memory_lr_scale": 0}, "memory_lr_scale=0 must be a number > 0; use "
                             "--memory_lr_scale=1.0 (the default)."),
    ({"memory_stride": 0}, "memory_stride=0 must be an integer >= 1; use --memory_stride=8 "
                           "(the default)."),
])
def test_each_bad_combination_is_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        Config(model="ELASTIC", dataset="no-such-dataset", config_dict=overrides,
               read_cmd_line=False)
    assert err.value.problems == [message]


def test_each_problem_is_reported_at_once_in_order():
    """(The command line prints the list one line each, test_cli_and_tune.)"""
    with pytest.raises(ConfigError) as err:
        Config(model="ELASTIC", dataset="no-such-dataset", read_cmd_line=False,
               config_dict={"n_experts": 0, "memory_size": 1000})
    assert len(err.value.problems) == 2
    assert err.value.problems[0].startswith("n_experts=0 must be")
    assert err.value.problems[1].startswith("memory_size=1000 is not a perfect square")


def test_memory_keys_are_free_without_imr():
    make_model(use_imr=False, memory_size=1000, memory_topk=500, hidden_size=15, n_heads=1)
