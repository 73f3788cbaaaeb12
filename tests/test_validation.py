"""Start-up validation of declared config keys: one line per problem, before any data."""

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
