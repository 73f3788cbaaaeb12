"""Start-up validation of declared config keys: one line per problem, before any data."""

import re

import pytest

from recbole_efficient import Config
from recbole_efficient.validation import ConfigError, Float, Int, Key, Prob, validate


def config(model="LRURec", **overrides):
    return Config(model=model, dataset="no-such-dataset", config_dict=overrides,
                  read_cmd_line=False)


@pytest.mark.parametrize("key,value,words", [
    ("hidden_size", 0, "hidden_size=0 must be an integer >= 1"),
    ("n_layers", -1, "n_layers=-1 must be an integer >= 1"),
    ("learning_rate", "abc", "learning_rate='abc' must be a number > 0"),
    ("loss_type", "XYZ", "loss_type='XYZ' must be one of CE, BPR"),
    ("MAX_ITEM_LIST_LENGTH", 0, "MAX_ITEM_LIST_LENGTH=0 must be an integer >= 1"),
    ("r_min", 1.5, "r_min=1.5 must be a number in (0, 1)"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob=1.5 must be a number in [0, 1)"),
    ("train_mode", "dense", "train_mode='dense' must be one of augmented, all_positions"),
])
def test_each_bad_value_is_named_with_range_and_fix(key, value, words):
    # The dataset does not exist: validation must speak first.
    with pytest.raises(ConfigError) as err:
        config(**{key: value})
    assert words in str(err.value)
    assert f"use --{key}=" in str(err.value)


def test_all_problems_reported_together_and_rules_after_keys():
    with pytest.raises(ConfigError) as err:
        config(hidden_size=0, r_min=0.99, r_max=0.5, lru_dropout_prob=-0.1)
    assert len(err.value.problems) == 3, err.value.problems
    assert any("r_min=0.99 must be below r_max=0.5" in p for p in err.value.problems)
    with pytest.raises(ConfigError) as err:
        config(model="SoftmaxSASRec", hidden_size=30, n_heads=4)
    assert err.value.problems == [
        "hidden_size=30 is not divisible by n_heads=4: each head gets hidden_size / n_heads "
        "features; choose n_heads among the divisors of hidden_size."]


def test_fix_suggests_the_default():
    with pytest.raises(ConfigError, match=r"use --hidden_size=64 \(the default\)"):
        config(hidden_size=0)


def test_recbole_baselines_get_the_common_keys():
    with pytest.raises(ConfigError, match="epochs=0 must be an integer >= 1"):
        config(model="SASRec", epochs=0, train_neg_sample_args=None)


def test_key_kinds():
    assert Int("k", 1).problem(True)            # bools are not integers
    assert Int("k", 1).problem(2.0)              # nor are floats
    assert Float("k", 0, low_open=True).problem(0) and not Float("k", 0).problem(0)
    assert not Prob("p").problem(0) and Prob("p").problem(1.0)
    assert Key("k", "str", choices=("adam",), nocase=True).problem("ADAM") is None
    assert Int("k", none_ok=True).problem(None) is None and Int("k").problem(None)
    validate({}, object)  # nothing declared, nothing set: fine


def test_one_problem_is_one_line():
    with pytest.raises(ConfigError) as err:
        config(hidden_size=0)
    assert "\n" not in str(err.value)


def test_likely_typos_warn_with_the_key_meant(caplog):
    config(hiden_size=64, max_item_list_length=20, my_own_key=1, epochs=2)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'hiden_size': did you mean 'hidden_size'?" in w for w in warnings)
    assert any("'max_item_list_length': did you mean 'MAX_ITEM_LIST_LENGTH'?" in w
               for w in warnings)
    assert not any("my_own_key" in w or "'epochs'" in w for w in warnings)


def test_known_keys_cover_recbole_ours_and_declared():
    from recbole_efficient.config import known_keys

    keys = known_keys()
    assert {"hidden_size", "r_min", "train_mode", "train_time_budget", "epochs",
            "embedding_size", "k_interests", "nproc", "load_col"} <= keys
    assert "ml-1m" not in keys  # RecBole's download table is not a config


def test_sequential_ce_gets_no_negative_sampling_unless_set():
    sasrec = config(model="SASRec")
    assert sasrec["train_neg_sample_args"]["distribution"] == "none"
    with pytest.raises(ConfigError) as err:
        config(model="SASRec", train_neg_sample_args={"distribution": "uniform", "sample_num": 1})
    assert "must be None with loss_type=CE" in str(err.value) and "\n" not in str(err.value)
    # BPR keeps RecBole's sampler, also for our models (whose yaml sets none, for CE).
    for model in ("SASRec", "LRURec"):
        bpr = config(model=model, loss_type="BPR", train_mode="augmented")
        assert bpr["train_neg_sample_args"]["distribution"] == "uniform"
    assert config(model="LRURec", loss_type="BPR")["train_neg_sample_args"]["distribution"] \
        == "none"  # all_positions draws its own negatives
    with pytest.raises(ConfigError, match="loss_type=BPR in train_mode=augmented needs"):
        config(model="SASRec", loss_type="BPR", train_neg_sample_args=None)


@pytest.mark.parametrize("overrides,words", [
    ({"metrics": ["NDCG", "Hitt"]}, "unknown metric 'Hitt'"),
    ({"metrics": ["NDCG", "AUC"]}, "mixes ranking and value metrics"),
    ({"topk": 0}, "topk=0 must be a positive integer or a list of them"),
    ({"valid_metric": "NDCG@5"}, "valid_metric='NDCG@5' is not among the computed metrics"),
    ({"seed": "abc"}, "seed='abc' must be an integer >= 0"),
    ({"clip_grad_norm": 5}, "clip_grad_norm=5 must be a mapping"),
    ({"eval_args": "LS"}, "eval_args='LS' must be a mapping"),
    ({"rm_dup_inter": "all"}, "rm_dup_inter='all' must be one of first, last (or None)"),
    ({"benchmark_filename": "train"}, "benchmark_filename='train' must be a list (or None)"),
    ({"TIME_FIELD": 3}, "TIME_FIELD=3 must be a string (or None)"),
])
def test_recbole_data_and_evaluation_keys(overrides, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        config(model="SASRec", **overrides)


def test_recbole_baselines_declare_their_model_keys():
    with pytest.raises(ConfigError) as err:
        config(model="SASRec", hidden_size=30, n_heads=4, attn_dropout_prob=1.0)
    assert len(err.value.problems) == 2
    with pytest.raises(ConfigError, match="dropout_prob=1.5 must be a number in"):
        config(model="GRU4Rec", dropout_prob=1.5)
    with pytest.raises(ConfigError, match="k_interests=0 must be an integer >= 1"):
        config(model="LightSANs", k_interests=0)
    with pytest.raises(ConfigError, match="mask_ratio=2 must be a number in"):
        config(model="BERT4Rec", mask_ratio=2)
