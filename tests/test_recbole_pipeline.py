"""Every model of ours inside a plain RecBole pipeline: RecBole's own Config, create_dataset,
data_preparation and Trainer (its default optimiser: one torch Adam over every parameter)."""

import math
import sys

import pytest
import torch

import recbole_efficient
from recbole_efficient.model import MODELS

from helpers import TINY


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_trains_and_evaluates_in_recboles_own_trainer(tiny, monkeypatch, name):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer

    monkeypatch.setattr(sys, "argv", ["run_recbole.py"])  # RecBole's Config reads sys.argv
    _, config_dict = tiny
    config = Config(model=MODELS[name], dataset=TINY,
                    config_file_list=recbole_efficient.model_config_files(name),
                    config_dict=config_dict(epochs=1))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = MODELS[name](config, train.dataset).to(config["device"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(config, model)
    # RecBole's optimiser for the model's learner (LRURec's yaml: AdamW), not ours
    assert type(trainer.optimizer).__module__.startswith("torch.optim")
    trainer.fit(train, valid, saved=False, show_progress=False)
    result = trainer.evaluate(test, load_best_model=False)
    assert all(math.isfinite(float(v)) for v in result.values())
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "item_embedding.weight" in moved
    if name == "ELASTIC":  # the interest memory learns through RecBole's dense Adam
        assert model.imr is not None and "imr.values" in moved
