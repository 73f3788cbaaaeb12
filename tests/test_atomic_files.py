"""Bad atomic files give clear errors before training; feature files load alike on pandas 2 and 3."""

import logging

import numpy as np
import pytest
from recbole.data import data_preparation

from recbole_efficient import Config, create_dataset
from recbole_efficient.quick_start import run_recbole_efficient

from helpers import TINY

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def write_inter(root, name, lines):
    (root / name).mkdir(exist_ok=True)
    (root / name / f"{name}.inter").write_text("".join(line + "\n" for line in lines))


def history(user, n, start=0):
    return [f"{user}\ti{k + 1}\t3\t{start + k}" for k in range(n)]


@pytest.mark.parametrize("name,lines,words", [
    ("empty", [], "is empty: an atomic file starts with a header"),
    ("header_only", [HEADER], "has a header but no interactions"),
    ("untyped", ["user_id\titem_id\ttimestamp", "u1\ti1\t1"],
     "header column 'user_id' needs a type"),
    ("no_time", ["user_id:token\titem_id:token", "u1\ti1"], "has no 'timestamp' column"),
    ("no_item", ["user_id:token\ttimestamp:float", "u1\t1"], "has no 'item_id' column"),
    ("token_time", ["user_id:token\titem_id:token\ttimestamp:token", "u1\ti1\t2024-01-01"],
     "column timestamp:token must be timestamp:float"),
    ("text_time", [HEADER, *history("u1", 3), "u1\ti9\t3\tyesterday"],
     "line 5: timestamp:float is 'yesterday', not a number"),
    ("one_each", [HEADER] + [f"u{u}\ti{u}\t3\t1" for u in range(5)],
     "gives no training and no validation and no test rows"),
    ("two_each", [HEADER] + [line for u in range(5) for line in history(f"u{u}", 2)],
     "gives no validation and no test rows"),
])
@pytest.mark.parametrize("model,mode", [("LRURec", "all_positions"), ("SASRec", "augmented")])
def test_bad_inter_file_is_named_with_the_fix(tiny, name, lines, words, model, mode):
    root, cfg = tiny
    write_inter(root, name, lines)
    with pytest.raises(ValueError, match=words):
        run_recbole_efficient(model, name, config_dict=cfg(train_mode=mode), read_cmd_line=False)
    assert not (root / "saved").exists()  # stopped before training


def test_load_col_without_the_time_column(tiny):
    root, cfg = tiny
    with pytest.raises(ValueError, match=r"load_col.inter=\['user_id', 'item_id'\] leaves out "
                                         r"'timestamp', which LRURec needs"):
        run_recbole_efficient("LRURec", TINY, read_cmd_line=False,
                              config_dict=cfg(load_col={"inter": ["user_id", "item_id"]}))


@pytest.mark.parametrize("mode", ["all_positions", "augmented"])
def test_short_histories_and_duplicates_are_kept_as_documented(tiny, caplog, mode):
    """1 interaction: in no split; 2: training only; 3: + test; 4+: + validation. Exact
    duplicate rows are kept (repeated interactions) with a warning."""
    root, cfg = tiny
    lines = [HEADER, *history("a", 1), *history("b", 2), *history("c", 3), *history("d", 6)]
    lines += history("d", 2)  # d's first two rows again, identical
    write_inter(root, "short", lines)
    config = Config(model="LRURec", dataset="short", read_cmd_line=False,
                    config_dict=cfg(train_mode=mode))
    with caplog.at_level(logging.WARNING):
        dataset = create_dataset(config)
    assert any("2 interactions repeat an earlier one exactly" in r.getMessage()
               for r in caplog.records)
    train, valid, test = (d.dataset for d in data_preparation(config, dataset))
    token = dataset.field2id_token["user_id"]
    users = {split: sorted({str(token[u]) for u in d.inter_feat["user_id"].tolist()})
             for split, d in (("train", train), ("valid", valid), ("test", test))}
    assert users == {"train": ["b", "c", "d"], "valid": ["d"], "test": ["c", "d"]}
    if mode == "augmented":  # a row per target: b 1, c 2 - 1 (test), d 7 - 2 (valid, test)
        assert len(train) == 1 + 1 + 5


ITEM_HEADER = "item_id:token\ttitle:token_seq\tgenre:token_seq\tyear:token\tprice:float"
ITEMS = [  # missing values in every kind of field
    "i1\tred car\tAction Comedy\t1995\t2.0",
    "i2\t\tDrama\t\t",
    "i3\tblue car\t\t1995\t4.0",
    "i4\tred\tAction\t2001\t",
]
ITEM_IDS = ("i1", "i2", "i3", "i4")


def test_item_features_with_token_seq_and_missing_values(tiny):
    """RecBole 1.2.1 crashes on this file under pandas 3 (in-place fillna is a no-op, then
    token_seq remapping splits at the wrong places); the expected values are pandas 2's."""
    root, cfg = tiny
    write_inter(root, "shop", [HEADER] + [line for u in range(4) for line in
                                          history(f"u{u}", 5)])
    (root / "shop" / "shop.item").write_text("\n".join([ITEM_HEADER, *ITEMS]) + "\n")
    load_col = {"inter": ["user_id", "item_id", "timestamp"],
                "item": ["item_id", "title", "genre", "year", "price"]}
    config = Config(model="LRURec", dataset="shop", read_cmd_line=False,
                    config_dict=cfg(load_col=load_col))
    dataset = create_dataset(config)
    dataset.build()
    feat = dataset.item_feat

    def tokens(field, item):
        row = dataset.field2token_id["item_id"][item]
        ids = np.atleast_1d(feat[field][row].numpy())
        return [str(dataset.field2id_token[field][i]) for i in ids if i]

    assert [tokens("title", i) for i in ITEM_IDS] == \
        [["red", "car"], [], ["blue", "car"], ["red"]]
    assert [tokens("genre", i) for i in ITEM_IDS] == \
        [["Action", "Comedy"], ["Drama"], [], ["Action"]]
    assert [tokens("year", i) for i in ITEM_IDS] == \
        [["1995"], [], ["1995"], ["2001"]]
    price = {i: float(feat["price"][dataset.field2token_id["item_id"][i]]) for i in ITEM_IDS}
    assert price == {"i1": 2.0, "i2": 3.0, "i3": 4.0, "i4": 3.0}  # missing: the mean
    # A word repeated across rows maps to one id: [PAD], red, car, blue.
    assert len(dataset.field2id_token["title"]) == 4

