"""The ``compile`` key: position-wise sublayers through ``torch.compile`` give the eager
outputs and gradients, with a handful of graphs for any number of batch lengths."""

import pytest
import torch
from torch._dynamo.utils import counters

from recbole_efficient import MODELS
from recbole_efficient.validation import ConfigError, validate

from helpers import make_model, right_padded, small_config

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}


def losses_and_grads(model, batches):
    out = []
    for seq, lengths in batches:
        model.zero_grad()
        scores = model.full_sort_predict({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
        model.train()
        hidden = model.encode(seq, lengths)
        model.eval()
        loss = model.logits(hidden).logsumexp(-1).mean()
        loss.backward()
        grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad.clone()
                 for p in model.parameters() if p.grad is not None]
        out.append((scores, loss, grads))
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_position_wise_work_equals_eager(name):
    """Scores (eval) and a loss and its gradients (train mode, dropout 0) at three batch
    widths: the same as eager, and at most 6 graphs in all (3-D training and 2-D scoring
    inputs, their backward), whatever the widths."""
    batches = [right_padded(lengths, width, seed=width)
               for lengths, width in (([24, 9, 1, 17], 24), ([11, 3], 11), ([7, 7, 2], 7))]
    eager = losses_and_grads(make_model(name, **NO_DROPOUT), batches)
    model = make_model(name, **NO_DROPOUT).compile_position_wise()
    assert model.position_wise_compiled and model.position_wise_modules()
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    compiled = losses_and_grads(model, batches)
    assert counters["stats"]["unique_graphs"] - graphs <= 6
    for (scores, loss, grads), (ref_scores, ref_loss, ref_grads) in zip(compiled, eager):
        torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        assert len(grads) == len(ref_grads)
        for g, g_ref in zip(grads, ref_grads):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_auto_compiles_on_cuda_only_and_true_compiles_anywhere():
    model = make_model("LinRec").to("cpu")  # RecBole moves every model to config["device"]
    assert model.compile_setting == "auto" and not model.position_wise_compiled
    model = make_model("LinRec", compile=True).to("cpu")
    assert model.position_wise_compiled
    assert all(getattr(m, "_compiled_call_impl", None) is not None
               for m in model.position_wise_modules())
    assert not make_model("LinRec", compile=False).to("cpu").position_wise_compiled


@pytest.mark.parametrize("value", ["yes", 1, "on"])
def test_a_bad_compile_value_says_what_is_allowed(value):
    config = small_config("LinRec")
    cfg = {key: config[key] for key in ("hidden_size", "n_layers")} | {"compile": value}
    with pytest.raises(ConfigError, match=r"compile=.* must be True, False or auto"):
        validate(cfg, MODELS["LinRec"])
