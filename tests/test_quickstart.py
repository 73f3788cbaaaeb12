"""End to end on a tiny slice: our pipeline, RecBole baselines through it, plain RecBole usage,
best-model reload at test time and load_data_and_model."""

import pytest
import torch

import recbole_efficient
from recbole_efficient import load_data_and_model, run_recbole_efficient
from recbole_efficient.data.fetch import DatasetError

from helpers import TINY, StubDataset


def test_softmax_reference_trains_and_reloads(tiny):
    root, cfg = tiny
    result = run_recbole_efficient("SoftmaxSASRec", TINY, config_dict=cfg(epochs=2), read_cmd_line=False)
    assert set(result["test_result"]) >= {"ndcg@10", "hit@10"}
    ckpt = torch.load(result["saved_model_file"], weights_only=True)  # plain data only
    assert ckpt["config"]["model"] == "SoftmaxSASRec"

    config, model, dataset, train, valid, test = load_data_and_model(result["saved_model_file"])
    assert type(model).__name__ == "SoftmaxSASRec" and config["train_mode"] == "all_positions"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ckpt["state_dict"][name]), name
    assert len(test.dataset) > 0


def test_recbole_sasrec_through_our_cli_path(tiny):
    _, cfg = tiny
    result = run_recbole_efficient("SASRec", TINY, config_dict=cfg(), read_cmd_line=False)
    assert result["test_result"]["ndcg@10"] >= 0
    config, model, *_ = load_data_and_model(result["saved_model_file"])
    assert type(model).__name__ == "SASRec" and config["train_mode"] == "augmented"


@pytest.mark.parametrize("model", ["GRU4Rec", "BERT4Rec", "LightSANs"])
def test_recbole_baselines_need_no_extra_flags(tiny, model):
    _, cfg = tiny
    result = run_recbole_efficient(model, TINY, config_dict=cfg(), read_cmd_line=False,
                                   saved=False)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


def test_recbole_format_checkpoint_needs_trust(tiny):
    from recbole.trainer import Trainer as RecBoleTrainer
    from recbole_efficient.checkpoint import UnsafeCheckpointError

    root, cfg = tiny
    result = run_recbole_efficient("SoftmaxSASRec", TINY, config_dict=cfg(), read_cmd_line=False)
    config, model, *_ = load_data_and_model(result["saved_model_file"])
    legacy = RecBoleTrainer(config, model)
    legacy.saved_model_file = str(root / "legacy.pth")
    legacy._save_checkpoint(0, verbose=False)  # RecBole's pickled-Config format
    with pytest.raises(UnsafeCheckpointError):
        load_data_and_model(legacy.saved_model_file)
    config2, model2, *_ = load_data_and_model(legacy.saved_model_file, trust_checkpoint=True)
    assert type(model2).__name__ == "SoftmaxSASRec"


def test_plain_recbole_config_without_our_yaml(tiny):
    """Model defaults come from our yaml even when RecBole's Config never read it."""
    from recbole.config import Config as RecBoleConfig
    from recbole_efficient.model import SoftmaxSASRec

    _, cfg = tiny
    overrides = cfg(loss_type="CE", train_neg_sample_args=None)
    for key in ("hidden_size", "inner_size", "n_layers", "n_heads"):
        overrides.pop(key)
    config = RecBoleConfig(model=SoftmaxSASRec, dataset=TINY, config_dict=overrides)
    model = SoftmaxSASRec(config, StubDataset(10))
    assert model.hidden_size == 64


def test_missing_dataset_fails_fast(tiny):
    root, cfg = tiny
    with pytest.raises(DatasetError) as err:
        run_recbole_efficient("SoftmaxSASRec", "nowhere", config_dict=cfg(), read_cmd_line=False)
    assert "--data_path" in str(err.value) and f"{root}/nowhere/nowhere.inter" in str(err.value)
    assert "not one we can fetch by name" in str(err.value)


def test_time_budget_stops_training(tiny):
    _, cfg = tiny
    result = run_recbole_efficient("SoftmaxSASRec", TINY, read_cmd_line=False,
                                   config_dict=cfg(epochs=500, train_time_budget=1e-9, stopping_step=1000))
    assert len(result["train_epoch_seconds"]) == 1
    assert result["test_result"] is not None


def test_each_run_in_one_process_writes_its_own_log_file(tiny, monkeypatch):
    import logging
    from pathlib import Path

    root, cfg = tiny
    # RecBole adds its handlers only to a root logger without any (pytest's are set aside)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    for model in ("SoftmaxSASRec", "LRURec"):
        run_recbole_efficient(model, TINY, config_dict=cfg(), read_cmd_line=False, saved=False)
    logs = {p.parent.name: p.read_text() for p in Path(root, "log").rglob("*.log")}
    assert set(logs) == {"SoftmaxSASRec", "LRURec"}
    for model, other in [("SoftmaxSASRec", "LRURec"), ("LRURec", "SoftmaxSASRec")]:
        text = logs[model]
        assert text.count("test result") == 1  # the model's summary is printed at start-up
        assert f"INFO  {model}(" in text and f"INFO  {other}(" not in text
