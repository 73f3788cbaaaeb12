"""Shared base: causality, padding, the two losses, and start-up refusals."""

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_efficient import Config, EfficientSequentialRecommender, get_model
from recbole_efficient.data.dataset import target_list_field

from conftest import TINY, StubDataset, right_padded


def make_model(tiny, name="SoftmaxSASRec", **overrides):
    _, cfg = tiny
    config = Config(model=name, dataset=TINY, config_dict=cfg(**overrides), read_cmd_line=False)
    torch.manual_seed(0)
    return config, get_model(name)(config, StubDataset(30)).eval()


def test_causal_output_unchanged_by_future_items(tiny):
    _, model = make_model(tiny)
    seq = torch.randint(1, 30, (2, 8))
    lens = torch.tensor([8, 8])
    out = model.encode(seq, lens)
    changed = seq.clone()
    changed[:, 5:] = torch.randint(1, 30, (2, 3))
    out2 = model.encode(changed, lens)
    assert torch.allclose(out[:, :5], out2[:, :5], atol=1e-6)
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


def test_right_padding_does_not_change_outputs(tiny):
    _, model = make_model(tiny)
    seq = torch.zeros(1, 8, dtype=torch.long)
    seq[0, :3] = torch.tensor([4, 9, 2])
    out_short = model.encode(seq[:, :3], torch.tensor([3]))
    out_padded = model.encode(seq, torch.tensor([3]))
    assert torch.allclose(out_short[0], out_padded[0, :3], atol=1e-6)
    assert torch.isfinite(out_padded).all()


def test_all_positions_loss_equals_mean_of_prefix_losses(tiny):
    """For a causal encoder, one window's loss is the average of the per-prefix losses."""
    config, model = make_model(tiny)
    seq = torch.tensor([[3, 7, 1, 9, 4, 0, 0, 0]])
    tgt = torch.tensor([[7, 1, 9, 4, 5, 0, 0, 0]])
    n = 5
    inter = Interaction({"item_id_list": seq, "item_length": torch.tensor([n]),
                         target_list_field(config): tgt, "item_id": torch.tensor([5])})
    window_loss = model.calculate_loss(inter)
    prefix_losses = []
    for t in range(1, n + 1):
        prefix = torch.zeros_like(seq)
        prefix[0, :t] = seq[0, :t]
        prefix_losses.append(model.calculate_loss(Interaction({
            "item_id_list": prefix, "item_length": torch.tensor([t]), "item_id": tgt[0, t - 1:t]})))
    assert torch.allclose(window_loss, torch.stack(prefix_losses).mean(), atol=1e-5)


def test_bpr_all_positions_runs_and_backprops(tiny):
    config, model = make_model(tiny, loss_type="BPR", train_neg_sample_args={"distribution": "uniform", "sample_num": 1})
    model.train()
    inter = Interaction({"item_id_list": torch.tensor([[3, 7, 1, 0]]), "item_length": torch.tensor([3]),
                         target_list_field(config): torch.tensor([[7, 1, 9, 0]]), "item_id": torch.tensor([9])})
    loss = model.calculate_loss(inter)
    loss.backward()
    assert torch.isfinite(loss)


class NonCausal(EfficientSequentialRecommender):
    causal = False


def test_non_causal_encoder_refused_in_all_positions(tiny):
    _, cfg = tiny
    with pytest.raises(ValueError, match="causal"):
        Config(model=NonCausal, dataset=TINY, read_cmd_line=False,
               config_dict=cfg(train_mode="all_positions", loss_type="CE", train_neg_sample_args=None))
    # The same encoder is fine in RecBole's augmented mode.
    Config(model=NonCausal, dataset=TINY, read_cmd_line=False,
           config_dict=cfg(train_mode="augmented", loss_type="CE", train_neg_sample_args=None))


def test_recbole_model_refused_in_all_positions(tiny):
    _, cfg = tiny
    with pytest.raises(ValueError, match="augmented"):
        Config(model="SASRec", dataset=TINY, read_cmd_line=False,
               config_dict=cfg(train_mode="all_positions", train_neg_sample_args=None))


def test_unknown_train_mode_refused(tiny):
    _, cfg = tiny
    with pytest.raises(ValueError, match="all_positions"):
        Config(model="SoftmaxSASRec", dataset=TINY, read_cmd_line=False, config_dict=cfg(train_mode="dense"))


def test_unknown_model_lists_available():
    with pytest.raises(ValueError) as err:
        get_model("NoSuchRec")
    assert "SoftmaxSASRec" in str(err.value) and "SASRec" in str(err.value)


def test_exclude_history_masks_input_items(tiny):
    from recbole_efficient.trainer import Trainer

    config, model = make_model(tiny, exclude_history=True)
    trainer = Trainer(config, model)
    trainer.tot_item_num = 30
    inter = Interaction({"item_id_list": torch.tensor([[3, 7, 0], [5, 0, 0]]),
                         "item_length": torch.tensor([2, 1])})
    _, scores, _, _ = trainer._full_sort_batch_eval((inter, None, torch.tensor([0, 1]), torch.tensor([9, 4])))
    assert torch.isinf(scores[0, [0, 3, 7]]).all() and torch.isinf(scores[1, [0, 5]]).all()
    assert torch.isfinite(scores[0, [1, 2, 4, 5, 9]]).all() and torch.isfinite(scores[1, [3, 7]]).all()
    config["exclude_history"] = False
    _, scores, _, _ = trainer._full_sort_batch_eval((inter, None, torch.tensor([0, 1]), torch.tensor([9, 4])))
    assert torch.isfinite(scores[0, [3, 7]]).all()


def test_streaming_protocol_refusals(tiny):
    """A model without a fixed-size causal state says so; streaming needs eval mode."""
    _, model = make_model(tiny)
    assert not model.supports_streaming()
    with pytest.raises(NotImplementedError, match="full_sort_predict"):
        model.init_state(2)
    _, lru = make_model(tiny, name="LRURec")
    assert lru.supports_streaming() and lru.stream_limit() is None
    lru.train()
    with pytest.raises(RuntimeError, match="eval"):
        lru.init_state(2)


def test_stream_limit_refuses_positions_past_max_length(tiny):
    _, lru = make_model(tiny, name="LRURec")
    lru.stream_limit = lambda: 3  # as a model with learned positions up to 3 would
    state = lru.init_state(1)
    for item in (4, 5, 6):
        _, state = lru.step(torch.tensor([item]), state)
    with pytest.raises(ValueError, match="MAX_ITEM_LIST_LENGTH=3"):
        lru.step(torch.tensor([7]), state)
    with pytest.raises(ValueError, match="build_state"):
        lru.build_state(torch.tensor([[1, 2, 3, 4]]), torch.tensor([4]))


def test_recbole_model_lookup_keeps_autograd_anomaly_mode_off():
    """RecBole's SINE module switches anomaly detection on process-wide when imported."""
    assert not torch.is_anomaly_enabled()
    get_model("SASRec")
    with pytest.raises(ValueError):
        get_model("NoSuchRec")  # lists RecBole's models: imports every one of them
    assert not torch.is_anomaly_enabled()


OUR_MODELS = sorted(__import__("recbole_efficient").MODELS)


def padded_batch(lengths=(8, 5, 1, 3)):
    return right_padded(lengths, width=8, n_items=30)


@pytest.mark.parametrize("name", ["LRURec", "SoftmaxSASRec", "LinRec", "ELASTIC", "LinRecBERT"])
def test_lean_encode_last_equals_full_gather(tiny, name):
    """The lean scoring path (last layer at the last real position only) is exact."""
    _, model = make_model(tiny, name=name, n_layers=2)
    seq, lengths = padded_batch()
    if name == "LinRecBERT":  # scored at a [mask] appended to the history
        masked_seq, masked_len = model.append_mask(seq, lengths)
        full = model.gather_indexes(model.encode(masked_seq, masked_len), masked_len - 1)
    else:
        full = model.gather_indexes(model.encode(seq, lengths), lengths - 1)
    torch.testing.assert_close(model.encode_last(seq, lengths), full, atol=1e-5, rtol=1e-5)
    inter = {model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths}
    torch.testing.assert_close(model.full_sort_predict(inter), model.logits(full),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", OUR_MODELS)
def test_drop_sequence_mixer_leaves_position_wise_model(tiny, name):
    """The floor: no position sees another one, and nothing but the mixer was removed."""
    config, model = make_model(tiny, name=name, n_layers=2)
    n_params = sum(p.numel() for p in model.parameters())
    assert model.drop_sequence_mixer() is model
    assert sum(p.numel() for p in model.parameters()) < n_params
    seq, lengths = padded_batch(lengths=(8, 8, 8, 8))
    changed = seq.clone()
    changed[:, ::2] = (seq[:, ::2] % 29) + 1  # every other position
    out, out2 = model.encode(seq, lengths), model.encode(changed, lengths)
    torch.testing.assert_close(out[:, 1::2], out2[:, 1::2], atol=0, rtol=0)
    assert not torch.allclose(out[:, ::2], out2[:, ::2])
    if model.causal:  # scored at the last real position
        torch.testing.assert_close(model.encode_last(seq, lengths), out[:, -1])


@pytest.mark.parametrize("name", OUR_MODELS)
def test_mixed_precision_step_is_finite_and_close_to_fp32(tiny, name):
    """CPU autocast (bf16) stands in for CUDA AMP: the loss and every gradient stay finite,
    and the loss is the fp32 loss up to half-precision rounding (next-item loss at every
    position; every model trains through RecBole's trainer with AMP in the test below)."""
    if not get_model(name).causal:
        pytest.skip(f"{name} does not train with a next-item loss at every position")
    config, model = make_model(tiny, name=name, n_layers=2)
    model.train()
    seq, lengths = padded_batch()
    inter = Interaction({"item_id_list": seq, "item_length": lengths,
                         target_list_field(config): (seq % 29) + 1, "item_id": seq[:, 0]})
    torch.manual_seed(1)
    fp32 = model.calculate_loss(inter)
    torch.manual_seed(1)  # same dropout masks
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.calculate_loss(inter)
    mixed.backward()
    assert torch.isfinite(mixed) and abs(mixed.item() - fp32.item()) < 0.05 * fp32.item()
    for pname, p in model.named_parameters():
        grad = p.grad.coalesce().values() if p.grad is not None and p.grad.is_sparse else p.grad
        assert grad is None or torch.isfinite(grad).all(), pname


def test_lru_state_stays_single_precision_under_autocast(tiny):
    _, model = make_model(tiny, name="LRURec", n_layers=2)
    seq, lengths = padded_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.blocks[0].lru.states(model.embed(seq))
        scores = model.full_sort_predict({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
    assert h.dtype == torch.complex64 and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", OUR_MODELS)
def test_trainer_with_enable_amp_and_enable_scaler(tiny, name):
    from recbole_efficient import run_recbole_efficient

    _, cfg = tiny
    result = run_recbole_efficient(name, TINY, read_cmd_line=False, saved=False,
                                   config_dict=cfg(epochs=2, enable_amp=True, enable_scaler=True))
    assert 0 <= result["test_result"]["ndcg@10"] <= 1  # RecBole stops on a NaN loss


def _scaler_step_batch(config):
    seq, lengths = padded_batch()
    return Interaction({"item_id_list": seq, "item_length": lengths,
                        target_list_field(config): (seq % 29) + 1, "item_id": seq[:, 0]})


def test_clipping_under_a_loss_scaler_sees_the_unscaled_gradients(tiny):
    """RecBole's loop (scale, backward, ``GradScaler.step``) with ``ClipThenStep`` updates the
    weights as fp32 backward + clip + step; RecBole's own order clips the scaled gradients."""
    import copy

    from recbole_efficient.optim import ClipThenStep
    from recbole_efficient.optim import build_optimizer

    config, model = make_model(tiny, name="LRURec", n_layers=2)
    batch, clip = _scaler_step_batch(config), {"max_norm": 0.05}
    start = copy.deepcopy(model.state_dict())

    def trained(loop):
        model.load_state_dict(start)
        model.train()
        torch.manual_seed(1)  # same dropout masks
        loop(build_optimizer(model, "sgd", 0.5, 0.0))
        return [p.detach().clone() for p in model.parameters()]

    def fp32(opt):
        model.calculate_loss(batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), **clip)
        opt.step()

    def scaled(opt, clip_first=False):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        scaler.scale(model.calculate_loss(batch)).backward()
        if clip_first:  # RecBole's order
            torch.nn.utils.clip_grad_norm_(model.parameters(), **clip)
        else:
            opt = ClipThenStep(opt, model.parameters(), clip)
        scaler.step(opt)
        scaler.update()

    ref, ours = trained(fp32), trained(scaled)
    recbole = trained(lambda opt: scaled(opt, clip_first=True))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    moved = [(b - s).abs().sum() for b, s in zip(ref, start.values())]
    moved_recbole = [(r - s).abs().sum() for r, s in zip(recbole, start.values())]
    assert sum(moved_recbole) < 1e-3 * sum(moved)  # the bug this guards against


def test_trainer_clips_inside_the_step_only_when_a_scaler_is_on(tiny, monkeypatch):
    from recbole_efficient import get_trainer
    from recbole_efficient.optim import ClipThenStep

    config, model = make_model(tiny, name="LRURec", enable_amp=True, enable_scaler=True)
    trainer = get_trainer(config["MODEL_TYPE"], "LRURec")(config, model)
    assert not trainer.enable_scaler  # RecBole's scaler needs CUDA
    assert trainer.clip_grad_norm == {"max_norm": 5.0}
    assert not isinstance(trainer.optimizer, ClipThenStep)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    trainer = get_trainer(config["MODEL_TYPE"], "LRURec")(config, model)
    assert trainer.clip_grad_norm is None and isinstance(trainer.optimizer, ClipThenStep)
    assert trainer.optimizer.clip_grad_norm == {"max_norm": 5.0}
    assert trainer.optimizer.param_groups is trainer.optimizer.optimizer.param_groups
    assert trainer.optimizer.defaults is trainer.optimizer.optimizer.defaults
    # a trainer that builds more optimisers (RecBole's RecVAE) gets the clipping in each
    more = trainer._build_optimizer(params=list(model.parameters())[:2])
    assert isinstance(more, ClipThenStep) and more.clip_grad_norm == {"max_norm": 5.0}
