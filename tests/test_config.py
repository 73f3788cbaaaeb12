"""Configuration precedence: RecBole < our overall < model yaml < dataset yaml < files < dict."""

import pytest

from recbole_efficient import Config


def test_layering_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Config(model="LRURec", dataset="ml-100k", read_cmd_line=False)
    assert config["train_batch_size"] == 128          # model yaml beats RecBole's 2048
    assert config["train_mode"] == "all_positions"    # model yaml beats our overall.yaml
    assert config["exclude_history"] is False         # our overall.yaml
    assert config["MAX_ITEM_LIST_LENGTH"] == 50       # ml-100k dataset yaml beats model's 200
    assert "timestamp" in config["load_col"]["inter"]

    other = Config(model="LRURec", dataset="elsewhere", read_cmd_line=False)
    assert other["MAX_ITEM_LIST_LENGTH"] == 200       # no dataset yaml: model yaml
    assert other["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}

    f = tmp_path / "extra.yaml"
    f.write_text("MAX_ITEM_LIST_LENGTH: 30\ntrain_batch_size: 64\n")
    layered = Config(model="LRURec", dataset="ml-100k", config_file_list=[str(f)],
                     config_dict={"train_batch_size": 16}, read_cmd_line=False)
    assert layered["MAX_ITEM_LIST_LENGTH"] == 30      # config file beats dataset yaml
    assert layered["train_batch_size"] == 16          # config_dict beats config file


def test_command_line_beats_config_dict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["prog", "--train_batch_size=8"])
    config = Config(model="LRURec", dataset="ml-100k", config_dict={"train_batch_size": 16})
    assert config["train_batch_size"] == 8
    assert Config(model="LRURec", dataset="ml-100k", config_dict={"train_batch_size": 16},
                  read_cmd_line=False)["train_batch_size"] == 16


def test_a_key_given_twice_with_different_values_is_a_config_error(tmp_path, monkeypatch):
    from recbole_efficient.validation import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["prog", "--epochs=2", "--train_batch_size=8", "--epochs=3",
                                     "--train_batch_size=8"])
    with pytest.raises(ConfigError, match=r"^invalid configuration: --epochs is given twice"):
        Config(model="LRURec", dataset="ml-100k")


def test_recbole_models_keep_recbole_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Config(model="SASRec", dataset="ml-100k", read_cmd_line=False,
                    config_dict={"train_neg_sample_args": None})
    assert config["train_mode"] == "augmented" and config["hidden_dropout_prob"] == 0.5
