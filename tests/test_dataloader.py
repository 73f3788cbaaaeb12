"""No compute on padding: trimmed batches, length buckets, and that neither changes results."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.interaction import Interaction

from recbole_efficient import MODELS, Config, create_dataset, get_model
from recbole_efficient.data import data_preparation
from recbole_efficient.data import dataloader as ours

from helpers import TINY

WIDTH = 50  # longer than most tiny histories: rows of many lengths, lots of padding


def loaders(cfg, model="SoftmaxSASRec", prepare=data_preparation, **overrides):
    overrides = {"MAX_ITEM_LIST_LENGTH": WIDTH, "train_batch_size": 4, **overrides}
    config = Config(model=model, dataset=TINY, read_cmd_line=False, config_dict=cfg(**overrides))
    return config, prepare(config, create_dataset(config))


def rows(batches, config):
    """Every row of the batches as (user, length, real items), a multiset."""
    out = Counter()
    for inter in batches:
        for u, n, seq in zip(inter["user_id"].tolist(), inter["item_length"].tolist(),
                             inter["item_id_list"].tolist()):
            out[(u, n, tuple(seq[:n]))] += 1
    return out


def assert_trimmed(inter, fields):
    width = int(inter["item_length"].max())
    present = [field for field in fields if field in inter]
    assert "item_id_list" in present
    for field in present:
        assert inter[field].size(1) == width, field


def test_every_batch_is_cut_to_its_longest_row(tiny):
    _, cfg = tiny
    config, (train, valid, test) = loaders(cfg)
    _, (rb_train, rb_valid, rb_test) = loaders(cfg, prepare=recbole_data_preparation)
    assert type(train) is ours.TrainDataLoader and type(valid) is ours.FullSortEvalDataLoader
    fields = ours.per_position_fields(train._dataset)
    assert {"item_id_list", "item_id_target_list", "timestamp_list"} <= set(fields)
    for inter in train:
        assert_trimmed(inter, fields)
    for mine, theirs in [(valid, rb_valid), (test, rb_test)]:
        for (a, *rest_a), (b, *rest_b) in zip(mine, theirs):
            assert_trimmed(a, ["item_id_list"])
            width = a["item_id_list"].size(1)
            assert width < WIDTH
            assert torch.equal(a["item_id_list"], b["item_id_list"][:, :width])
            assert not b["item_id_list"][:, width:].any()  # only padding was cut
            assert all(torch.equal(x, y) for x, y in zip(rest_a[1:], rest_b[1:]))


def test_length_buckets_visit_every_row_once_per_epoch(tiny):
    _, cfg = tiny
    config, (train, _, _) = loaders(cfg, bucket_by_length=True)
    _, (rb_train, _, _) = loaders(cfg, prepare=recbole_data_preparation)
    assert train.bucketed
    expected = rows([train._dataset.inter_feat], config)
    lengths = train._dataset.inter_feat["item_length"]
    budget = config["train_batch_size"] * lengths.double().mean().item()
    epochs = []
    for _ in range(2):
        batches = list(train)
        assert len(batches) == len(train)
        assert abs(len(train) - len(rb_train)) <= 1  # about as many as RecBole's loader
        assert rows(batches, config) == expected  # each row exactly once
        spans = sorted((int(b["item_length"].min()), int(b["item_length"].max())) for b in batches)
        # rows of similar length share a batch: batches are runs of the sorted lengths
        assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))
        # each holds about train_batch_size * mean length positions: none of them weighs more
        tokens = [int(b["item_length"].sum()) for b in batches]
        assert max(tokens) <= budget + WIDTH
        assert sum(t < budget - WIDTH for t in tokens) <= 1  # only the last run may be short
        epochs.append([b["item_length"].tolist() for b in batches])
    assert epochs[0] != epochs[1]  # batches in a new random order every epoch


def test_bucketing_off_keeps_recbole_order(tiny):
    _, cfg = tiny
    _, (train, _, _) = loaders(cfg, bucket_by_length=False)
    _, (rb_train, _, _) = loaders(cfg, bucket_by_length=False, prepare=recbole_data_preparation)
    assert not train.bucketed
    for a, b in zip(train, rb_train):
        width = a["item_id_list"].size(1)
        assert torch.equal(a["item_id_list"], b["item_id_list"][:, :width])
    # RecBole's augmented training batches stay RecBole's, untrimmed (same dropout draws)
    _, (aug, _, _) = loaders(cfg, train_mode="augmented")
    _, (rb_aug, _, _) = loaders(cfg, train_mode="augmented", prepare=recbole_data_preparation)
    assert not aug.bucketed
    for a, b in zip(aug, rb_aug):
        assert all(torch.equal(a[k], b[k]) for k in b.interaction)


def test_recbole_models_keep_recbole_loaders(tiny):
    _, cfg = tiny
    _, built = loaders(cfg, model="SASRec", train_mode="augmented", train_neg_sample_args=None)
    assert [type(loader).__module__.split(".")[0] for loader in built] == ["recbole"] * 3


def repadded(inter, fields):
    """The batch as RecBole gives it: list fields padded back to WIDTH."""
    data = dict(inter.interaction)
    for field in fields:
        if field in data:
            value = data[field]
            data[field] = F.pad(value, [0, 0] * (value.dim() - 2) + [0, WIDTH - value.size(1)])
    return Interaction(data)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_trimmed_and_untrimmed_batches_give_identical_losses_and_scores(tiny, name):
    """Every model, every training mode with a deterministic loss (a mode drawing random
    masks per call draws them over the batch's width: equal in distribution only)."""
    _, cfg = tiny
    probe = Config(model=name, dataset=TINY, read_cmd_line=False, config_dict=cfg())
    modes = [m for m in get_model(name).train_modes(probe) if m in ("all_positions", "augmented")]
    for train_mode in modes:
        config, (train, valid, _) = loaders(cfg, model=name, train_mode=train_mode, n_layers=2,
                                            eval_args={"split": {"LS": "valid_and_test"},
                                                       "order": "TO", "mode": "uni100"})
        torch.manual_seed(0)
        model = get_model(name)(config, train._dataset).eval()  # eval: no dropout
        fields = ours.per_position_fields(train._dataset)
        for inter in list(train)[:4]:
            trimmed = model.calculate_loss(inter)
            full = model.calculate_loss(repadded(inter, fields))
            torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=1e-6)
        for inter, *_ in list(valid)[:2]:
            assert inter["item_id_list"].size(1) < WIDTH
            torch.testing.assert_close(model.predict(inter),
                                       model.predict(repadded(inter, fields)),
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model.full_sort_predict(inter),
                                       model.full_sort_predict(repadded(inter, fields)),
                                       atol=1e-5, rtol=1e-5)



def test_augmented_softmax_sasrec_still_trains_exactly_like_recbole_sasrec(tiny):
    """Trimmed evaluation and the lean scoring path change no metric, and augmented training
    batches are left alone (a trimmed batch would draw fewer dropout numbers)."""
    from recbole_efficient import run_recbole_efficient

    _, cfg = tiny
    results = [run_recbole_efficient(name, TINY, read_cmd_line=False, saved=False,
                                     config_dict=cfg(epochs=2, train_mode="augmented",
                                                     MAX_ITEM_LIST_LENGTH=WIDTH, n_layers=2,
                                                     train_neg_sample_args=None))
               for name in ("SoftmaxSASRec", "SASRec")]
    assert results[0]["best_valid_result"] == results[1]["best_valid_result"]
    assert results[0]["test_result"] == results[1]["test_result"]
