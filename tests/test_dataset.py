"""all_positions dataset construction against RecBole's augmented protocol."""

import numpy as np
import pytest
import torch
from recbole.data import data_preparation

from recbole_efficient import Config, create_dataset
from recbole_efficient.data.dataset import target_list_field

from helpers import TINY


def make(cfg, mode, split="valid_and_test"):
    config = Config(model="SoftmaxSASRec", dataset=TINY, read_cmd_line=False,
                    config_dict=cfg(train_mode=mode, eval_args={"split": {"LS": split}, "order": "TO",
                                                                "mode": "full"}))
    return config, create_dataset(config)


def build(cfg, mode, split="valid_and_test"):
    config, dataset = make(cfg, mode, split)
    return config, dataset, dataset.build()


def user_histories(dataset):
    """Each user's item ids in RecBole's order (stable sort by time)."""
    inter = dataset.inter_feat
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].numpy(), inter["user_id"].numpy()))
    uid = inter["user_id"].numpy()[order]
    iid = inter["item_id"].numpy()[order]
    hist = {}
    for u, i in zip(uid, iid):
        hist.setdefault(int(u), []).append(int(i))
    return hist


@pytest.mark.parametrize("split", ["valid_and_test", "valid_only", "test_only"])
def test_eval_rows_identical_in_both_modes(tiny, split):
    _, cfg = tiny
    _, _, aug = build(cfg, "augmented", split)
    _, _, allp = build(cfg, "all_positions", split)
    for a, b in zip(aug[1:], allp[1:]):
        assert set(a.inter_feat.columns) == set(b.inter_feat.columns)
        assert len(a.inter_feat) == len(b.inter_feat)
        for field in a.inter_feat.columns:
            assert torch.equal(a.inter_feat[field], b.inter_feat[field]), field


def test_eval_dataloaders_identical(tiny):
    _, cfg = tiny
    outs = []
    for mode in ("augmented", "all_positions"):
        config, dataset = make(cfg, mode)
        _, valid, test = data_preparation(config, dataset)
        outs.append([(b[0].interaction, b[3]) for d in (valid, test) for b in d])
    for (ia, pa), (ib, pb) in zip(*outs):
        assert torch.equal(pa, pb)
        assert set(ia) == set(ib) and all(torch.equal(ia[k], ib[k]) for k in ia)


def test_windows_cover_every_training_target_once(tiny):
    _, cfg = tiny
    config, dataset, (train, valid, test) = build(cfg, "all_positions")
    L = config["MAX_ITEM_LIST_LENGTH"]
    hist = user_histories(dataset)
    tf = target_list_field(config)
    seen = {}
    inter = train.inter_feat
    for row in range(len(inter)):
        u = int(inter["user_id"][row])
        n = int(inter["item_length"][row])
        assert 1 <= n <= L
        x = inter["item_id_list"][row].tolist()
        y = inter[tf][row].tolist()
        assert all(v == 0 for v in x[n:]) and all(v == 0 for v in y[n:])
        assert y[:n - 1] == x[1:n]  # the target of every position is the next item
        seq = hist[u]
        # locate the window in the user's history; targets are the following items
        starts = [s for s in range(len(seq)) if seq[s:s + n] == x[:n] and seq[s + 1:s + n + 1] == y[:n]]
        assert starts, "window is not a contiguous slice of the user's history"
        seen.setdefault(u, []).append((starts[0], n))
        assert int(inter["item_id"][row]) == y[n - 1]
    held_out = {}
    for ds in (valid, test):
        for u, tgt_len in zip(ds.inter_feat["user_id"].tolist(), ds.inter_feat["item_length"].tolist()):
            held_out[u] = held_out.get(u, 0) + 1
    for u, seq in hist.items():
        n_out = held_out.get(u, 0)
        expected_targets = list(range(1, len(seq) - n_out))
        got = sorted(t for s, n in seen.get(u, []) for t in range(s + 1, s + n + 1))
        # No lost targets, no duplicates, no leaked valid/test targets.
        assert got == expected_targets, (u, got, expected_targets)


def test_all_positions_builds_no_prefix_rows(tiny):
    _, cfg = tiny
    _, dataset, (train, _, _) = build(cfg, "all_positions")
    _, _, (aug_train, _, _) = build(cfg, "augmented")
    assert len(train) < len(aug_train)
    assert target_list_field(train.config) not in aug_train.inter_feat.columns


def test_all_positions_requires_leave_one_out(tiny):
    _, cfg = tiny
    with pytest.raises(ValueError, match="leave-one-out"):
        Config(model="SoftmaxSASRec", dataset=TINY, read_cmd_line=False,
               config_dict=cfg(eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO"}))


@pytest.mark.parametrize("mode", ["augmented", "all_positions"])
def test_same_time_order_item_id_orders_ties_by_ascending_numeric_item_id(tmp_path,
                                                                          monkeypatch, mode):
    """Ratings of one second in the file's order by default, in ascending item id with
    ``same_time_order: item_id`` (10 after 9: ids compare as numbers); the validation and test
    targets are the last two of that order."""
    from helpers import tiny_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ties").mkdir()
    rows = [(1, 30, 1), (1, 5, 1), (1, 100, 1), (1, 12, 2), (1, 9, 3), (1, 7, 3),
            (2, 8, 1), (2, 3, 2), (2, 40, 2), (2, 10, 2), (2, 2, 2)]
    (tmp_path / "ties" / "ties.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in rows))
    expected = {"file": {"1": [30, 5, 100, 12, 9, 7], "2": [8, 3, 40, 10, 2]},
                "item_id": {"1": [5, 30, 100, 12, 7, 9], "2": [8, 2, 3, 10, 40]}}
    for order, histories in expected.items():
        config = Config(model="SoftmaxSASRec", dataset="ties", read_cmd_line=False,
                        config_dict=tiny_config(tmp_path, train_mode=mode, same_time_order=order,
                                                MAX_ITEM_LIST_LENGTH=10))
        dataset = create_dataset(config)
        _, valid, test = dataset.build()
        for split, offset in ((valid, 2), (test, 1)):
            users = dataset.id2token(dataset.uid_field, split.inter_feat["user_id"].numpy())
            items = dataset.id2token(dataset.iid_field, split.inter_feat["item_id"].numpy())
            seqs = split.inter_feat["item_id_list"].numpy()
            lengths = split.inter_feat["item_length"].numpy()
            for user, item, seq, length in zip(users, items, seqs, lengths):
                history = histories[user]
                assert int(item) == history[-offset], (order, mode, user)
                inputs = dataset.id2token(dataset.iid_field, seq[:length])
                assert [int(i) for i in inputs] == history[:-offset], (order, mode, user)


def test_same_time_order_refuses_an_unknown_value(tiny):
    from recbole_efficient.validation import ConfigError

    _, cfg = tiny
    with pytest.raises(ConfigError, match="same_time_order='random' must be one of file, item_id"):
        Config(model="LRURec", dataset=TINY, read_cmd_line=False,
               config_dict=cfg(same_time_order="random"))
