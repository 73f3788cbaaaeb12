"""Shared base: start-up refusals, model lookup, history exclusion, training with AMP and a
loss scaler, and no process-wide side effects of importing the package (what every model
guarantees is in test_model_contract)."""

import json
import subprocess
import sys

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_efficient import MODELS, Config, EfficientSequentialRecommender, get_model
from recbole_efficient.data.dataset import target_list_field

from helpers import TINY, StubDataset, right_padded


def make_model(tiny, name="SoftmaxSASRec", **overrides):
    _, cfg = tiny
    config = Config(model=name, dataset=TINY, config_dict=cfg(**overrides), read_cmd_line=False)
    torch.manual_seed(0)
    return config, get_model(name)(config, StubDataset(30)).eval()


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


def test_recbole_model_lookup_keeps_autograd_anomaly_mode_off():
    """RecBole's SINE module switches anomaly detection on process-wide when imported."""
    assert not torch.is_anomaly_enabled()
    get_model("SASRec")
    with pytest.raises(ValueError):
        get_model("NoSuchRec")  # lists RecBole's models: imports every one of them
    assert not torch.is_anomaly_enabled()


GLOBAL_HOOK_REGISTRIES = [
    "_global_parameter_registration_hooks", "_global_module_registration_hooks",
    "_global_buffer_registration_hooks", "_global_forward_hooks", "_global_forward_pre_hooks",
    "_global_backward_hooks", "_global_backward_pre_hooks"]

_BUILD_AND_STREAM_EVERY_MODEL = """
import json
import torch
from torch.nn.modules import module

plain_before = torch.nn.Linear(2, 2)
import recbole_efficient
import recbole_efficient.model
from recbole_efficient import MODELS, Config

class Items:
    def num(self, field):
        return 20

for name, model_class in MODELS.items():
    config = Config(model=name, dataset="ml-100k", read_cmd_line=False, config_dict={
        "hidden_size": 8, "inner_size": 16, "n_heads": 2, "n_layers": 1, "memory_size": 16})
    model = model_class(config, Items()).eval()
    if model.supports_streaming():  # the streaming weight cache is built
        model.step(torch.tensor([3]), model.init_state(1))
plain_after = torch.nn.Linear(2, 2)
plain_after(torch.ones(1, 2))
print(json.dumps({
    "registries": {name: len(getattr(module, name)) for name in %r if hasattr(module, name)},
    "own": {key: len(value) for plain in (plain_before, plain_after)
            for key, value in vars(plain).items() if key.endswith("hooks") and value}}))
""" % GLOBAL_HOOK_REGISTRIES


def test_importing_and_using_the_package_adds_no_global_module_hook(tmp_path):
    """Torch's process-wide module hooks would run on every module of the user's program."""
    out = subprocess.run([sys.executable, "-c", _BUILD_AND_STREAM_EVERY_MODEL], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(found["registries"]) >= 5, found  # this torch has the registries checked
    assert not any(found["registries"].values()), found
    assert found["own"] == {}


OUR_MODELS = sorted(MODELS)


def padded_batch(lengths=(8, 5, 1, 3)):
    return right_padded(lengths, width=8, n_items=30)


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


def test_cuda_graph_step_on_the_cpu_says_to_use_step():
    from helpers import make_model, right_padded

    model = make_model("LRURec")
    seq, lengths = right_padded([5, 3], 8)
    with pytest.raises(ValueError, match="needs the state on a CUDA device.*call model.step"):
        model.cuda_graph_step(model.build_state(seq, lengths))
    with pytest.raises(NotImplementedError, match="no streaming inference"):
        make_model("SoftmaxSASRec").cuda_graph_step(None)
