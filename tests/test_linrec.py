"""LinRec (SASRec backbone) and LinRecBERT (BERT4Rec backbone): the streaming state and its
weight cache, the appended [mask], Cloze rows and loss, start-up errors, defaults (what every
model guarantees is in test_model_contract)."""

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.model.layers import FeedForward

from recbole_efficient import Config, create_dataset, get_model
from recbole_efficient.data.dataset import cloze_mask
from recbole_efficient.validation import ConfigError

from helpers import N_ITEMS, TINY, full_sort_scores, make_model, right_padded


# -- streaming -------------------------------------------------------------------------------
def test_state_is_a_key_value_matrix_per_head_and_layer():
    state = make_model("LinRec").init_state(3)
    assert [tuple(s.shape) for s in state.layers] == [(3, 2, 8, 8)] * 2
    assert all(torch.count_nonzero(s) == 0 for s in state.layers)


def test_step_uses_the_current_weights_however_they_change():
    """The parameters a step gathers once stay those of the model: after in-place updates,
    writes through ``.data``, ``load_state_dict`` (also with ``assign=True``) and a replaced
    parameter or submodule, all made after the state was created."""
    model, other = make_model("LinRec"), make_model("LinRec", seed=1)
    seq, lens = right_padded([1, 1], 1, seed=4)
    empty = model.init_state(2)  # gathers the weights
    model.step(seq[:, 0], empty)

    def assert_step_is_full_forward():
        scores, _ = model.step(seq[:, 0], empty)
        torch.testing.assert_close(scores, full_sort_scores(model, seq, lens), atol=2e-5,
                                   rtol=1e-5)

    model.load_state_dict(other.state_dict())
    assert_step_is_full_forward()
    with torch.no_grad():
        model.encoder.attention[1].key.bias.add_(0.5)
    assert_step_is_full_forward()
    model.encoder.feed_forward[0].dense_1.weight.data.mul_(1.5)
    assert_step_is_full_forward()
    model.load_state_dict(make_model("LinRec", seed=2).state_dict(), assign=True)
    assert_step_is_full_forward()
    model.encoder.attention[0].value.weight = torch.nn.Parameter(torch.randn(16, 16))
    assert_step_is_full_forward()
    before = model.step(seq[:, 0], empty)[0]
    torch.manual_seed(3)
    model.encoder.feed_forward[0] = FeedForward(16, 32, 0.0, "gelu", 1e-12).eval()
    assert_step_is_full_forward()
    assert not torch.allclose(model.step(seq[:, 0], empty)[0], before)  # the new one counts
    assert not any("cache" in key for key in model.state_dict())
    model.train()  # training frees the gathered weights
    assert "_stream_cache" not in model.__dict__


# -- LinRecBERT ------------------------------------------------------------------------------
def test_bert_predicts_at_an_appended_mask():
    model = make_model("LinRecBERT", MAX_ITEM_LIST_LENGTH=4)
    seq, lengths = torch.tensor([[3, 4, 0, 0], [5, 6, 7, 8]]), torch.tensor([2, 4])
    appended, new_len = model.append_mask(seq, lengths)
    m = model.mask_token
    assert appended.tolist() == [[3, 4, m, 0], [6, 7, 8, m]] and new_len.tolist() == [3, 4]
    # a full history drops its oldest item; a shorter batch grows by one column
    assert model.append_mask(seq[:1, :2], lengths[:1])[0].tolist() == [[3, 4, m]]
    expected = model.logits(model.encode(appended, new_len)[torch.arange(2), new_len - 1])
    torch.testing.assert_close(full_sort_scores(model, seq, lengths), expected, atol=1e-5,
                               rtol=1e-5)
    assert full_sort_scores(model, seq, lengths).shape == (2, N_ITEMS)


# -- Cloze rows ------------------------------------------------------------------------------
def test_cloze_mask_never_hits_padding_and_masks_every_row():
    lengths = torch.tensor([1, 2, 5, 30, 30, 0])
    for seed in range(20):
        mask = cloze_mask(lengths, 30, 0.2, torch.Generator().manual_seed(seed))
        real = torch.arange(30)[None] < lengths[:, None]
        assert not (mask & ~real).any()
        assert mask[:5].any(1).all() and not mask[5].any()
    draws = cloze_mask(torch.full((2000,), 30), 30, 0.2, torch.Generator().manual_seed(0))
    assert 0.18 < draws.float().mean() < 0.22


def test_fine_tuning_rows_mask_only_their_last_item():
    """``ft_ratio``: that share of the rows masks its last real item and nothing else; the
    other rows are Cloze rows as before; 0 changes nothing."""
    lengths = torch.randint(1, 31, (4000,), generator=torch.Generator().manual_seed(1))
    mask = cloze_mask(lengths, 30, 0.2, torch.Generator().manual_seed(2), ft_ratio=0.5)
    last = torch.arange(30)[None] == (lengths[:, None] - 1)
    only_last = (mask == last).all(1)
    long_rows = lengths >= 10  # a Cloze row of 10+ items rarely masks its last item only
    assert 0.47 < only_last[long_rows].float().mean() < 0.56
    assert not (mask & ~(torch.arange(30)[None] < lengths[:, None])).any()
    assert mask.any(1).all()
    plain = cloze_mask(lengths, 30, 0.2, torch.Generator().manual_seed(2))
    assert torch.equal(cloze_mask(lengths, 30, 0.2, torch.Generator().manual_seed(2),
                                  ft_ratio=0.0), plain)


def _dataset(cfg, model, mode):
    config = Config(model=model, dataset=TINY, read_cmd_line=False,
                    config_dict=cfg(train_mode=mode, eval_args={
                        "split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"}))
    return config, create_dataset(config)


def _build(cfg, model, mode):
    config, dataset = _dataset(cfg, model, mode)
    return config, dataset, dataset.build()


def test_cloze_rows_are_windows_covering_every_training_item_once(tiny):
    _, cfg = tiny
    config, dataset, (train, valid, test) = _build(cfg, "LinRecBERT", "cloze")
    L = config["MAX_ITEM_LIST_LENGTH"]
    inter = dataset.inter_feat
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].numpy(),
                        inter["user_id"].numpy()))
    hist = {}
    for u, i in zip(inter["user_id"].numpy()[order], inter["item_id"].numpy()[order]):
        hist.setdefault(int(u), []).append(int(i))
    held_out = {}
    for ds in (valid, test):
        for u in ds.inter_feat["user_id"].tolist():
            held_out[u] = held_out.get(u, 0) + 1
    rows = train.inter_feat
    got = {}
    for r in range(len(rows)):
        n = int(rows["item_length"][r])
        items = rows["item_id_list"][r].tolist()
        assert 1 <= n <= L and all(v == 0 for v in items[n:])
        got.setdefault(int(rows["user_id"][r]), []).append(items[:n])
        assert int(rows["item_id"][r]) == items[n - 1]
    for u, seq in hist.items():
        train_items = seq[:len(seq) - held_out.get(u, 0)]
        windows = got.get(u, [])
        assert [i for w in reversed(windows) for i in w] == train_items, u  # no loss, no overlap
        assert all(len(w) == L for w in windows[:-1])                      # end-aligned


def test_cloze_eval_rows_identical_to_other_modes(tiny):
    _, cfg = tiny
    _, _, cloze = _build(cfg, "LinRecBERT", "cloze")
    for model, mode in (("SoftmaxSASRec", "all_positions"), ("SoftmaxSASRec", "augmented")):
        _, _, other = _build(cfg, model, mode)
        for a, b in zip(cloze[1:], other[1:]):
            assert set(a.inter_feat.columns) == set(b.inter_feat.columns)
            for field in a.inter_feat.columns:
                assert torch.equal(a.inter_feat[field], b.inter_feat[field]), field


def test_cloze_loss_on_training_batches(tiny):
    _, cfg = tiny
    config, dataset = _dataset(cfg, "LinRecBERT", "cloze")
    train, _, _ = data_preparation(config, dataset)
    torch.manual_seed(0)
    model = get_model("LinRecBERT")(config, train._dataset).train()
    for batch in train:
        loss = model.calculate_loss(batch)
        assert torch.isfinite(loss)
        loss.backward()
    assert model.item_embedding.weight.grad[model.mask_token].abs().sum() > 0


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,over,words", [
    ("LinRec", {"k_norm_axis": "sequence"}, "k_norm_axis=sequence normalises each key"),
    ("LinRec", {"k_norm_axis": "rows"}, "k_norm_axis='rows' must be one of features, sequence"),
    ("LinRec", {"chunk_size": 0}, "chunk_size=0 must be an integer >= 1"),
    ("LinRec", {"n_heads": 3}, "hidden_size=128 is not divisible by n_heads=3"),
    ("LinRec", {"causal": False}, "train_mode=all_positions needs a causal encoder"),
    ("LinRecBERT", {"mask_ratio": 1.0}, "mask_ratio=1.0 must be a number in (0, 1)"),
    ("LinRecBERT", {"mask_ratio": 0}, "mask_ratio=0 must be a number in (0, 1)"),
    ("LinRecBERT", {"train_mode": "all_positions"}, "Use --train_mode=cloze"),
    ("SoftmaxSASRec", {"train_mode": "cloze"}, "SoftmaxSASRec does not train in train_mode=cloze"),
])
def test_bad_config_is_refused_at_start_up(name, over, words):
    with pytest.raises(ConfigError) as err:
        Config(model=name, dataset="no-such-dataset", config_dict=over, read_cmd_line=False)
    assert len(err.value.problems) == 1 and words in err.value.problems[0]


def test_each_problem_is_reported_at_once_in_order():
    """A key's problem and a rule's problem together (the command line prints the list one
    line each, test_cli_and_tune)."""
    with pytest.raises(ConfigError) as err:
        Config(model="LinRec", dataset="no-such-dataset", read_cmd_line=False,
               config_dict={"n_heads": 3, "k_norm_axis": "sequence"})
    assert len(err.value.problems) == 2
    assert "n_heads=3" in err.value.problems[0] and "--causal=False" in err.value.problems[1]


def test_defaults_are_the_authors_ml1m_config():
    for name in ("LinRec", "LinRecBERT"):
        config = Config(model=name, dataset="no-such-dataset", read_cmd_line=False)
        assert (config["hidden_size"], config["inner_size"], config["n_layers"],
                config["n_heads"]) == (128, 256, 2, 8)
        assert (config["hidden_dropout_prob"], config["layer_norm_eps"], config["learner"],
                config["learning_rate"], config["MAX_ITEM_LIST_LENGTH"]) == \
            (0.2, 1e-12, "adam", 0.001, 200)
    assert Config(model="LinRec", dataset="ml-100k", read_cmd_line=False)[
        "MAX_ITEM_LIST_LENGTH"] == 50  # the dataset yaml wins


def test_cloze_loss_applies_the_head_at_masked_positions_only_exactly():
    """The lean Cloze loss (output head at the masked positions only) is the loss of the
    full hidden states (head at every position) at those positions."""
    model = make_model("LinRecBERT")
    seq, lengths = right_padded([8, 5, 1, 3], 8, seed=2)
    inter = {model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths}
    torch.manual_seed(3)
    lean = model.calculate_loss(inter)
    torch.manual_seed(3)
    masked = cloze_mask(lengths, 8, model.mask_ratio)
    hidden = model.encode(seq.masked_fill(masked, model.mask_token), lengths)
    torch.testing.assert_close(lean, model._positions_loss(hidden[masked], seq[masked]))
