"""SoftmaxSASRec's fused attention (``scaled_dot_product_attention``) against RecBole's explicit
form: scores, additive mask, softmax, weighted sum."""

import copy

import torch
from recbole.model.layers import MultiHeadAttention

from recbole_efficient.model.softmax_sasrec import FusedCausalAttention

from helpers import make_model, right_padded


def explicit_copy(model):
    """A copy of ``model`` (same weights) with RecBole's own ``MultiHeadAttention``."""
    explicit = copy.deepcopy(model)
    for layer in explicit.trm_encoder.layer:
        layer.multi_head_attention.__class__ = MultiHeadAttention
    return explicit


def explicit_encode(explicit, seq, lengths):
    """RecBole's SASRec forward: explicit attention under SASRec's additive mask."""
    x, _ = explicit._embed_seq(seq, lengths)
    mask = explicit.get_attention_mask(seq, bidirectional=False)
    return explicit.trm_encoder(x, mask, output_all_encoded_layers=True)[-1]


def test_fused_attention_equals_recbole_explicit_form_values_and_gradients():
    model = make_model("SoftmaxSASRec").double()
    assert all(isinstance(layer.multi_head_attention, FusedCausalAttention)
               for layer in model.trm_encoder.layer)
    seq, lengths = right_padded([24, 9, 1, 17], 24)
    real = torch.arange(24)[None] < lengths[:, None]
    weights = torch.randn(4, 24, 16, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(2))
    explicit = explicit_copy(model)
    results = []
    for module, encode in ((model, model.encode),
                           (explicit, lambda s, n: explicit_encode(explicit, s, n))):
        out = encode(seq, lengths)[real]
        (out * weights[real]).sum().backward()
        results.append((out, [p.grad for p in module.parameters() if p.grad is not None]))
    (fused, grads), (ref, ref_grads) = results
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
    assert len(grads) == len(ref_grads) > 0
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


def test_last_position_scoring_equals_the_explicit_form():
    model = make_model("SoftmaxSASRec").double()
    seq, lengths = right_padded([24, 9, 1, 17], 24, seed=3)
    ref = explicit_encode(explicit_copy(model), seq, lengths)[torch.arange(4), lengths - 1]
    torch.testing.assert_close(model.encode_last(seq, lengths), ref, rtol=1e-10, atol=1e-10)


def test_attention_dropout_is_applied_in_training_only():
    model = make_model("SoftmaxSASRec", attn_dropout_prob=0.5, hidden_dropout_prob=0.0)
    seq, lengths = right_padded([24, 20], 24, seed=4)
    evaluated = model.encode(seq, lengths)
    torch.testing.assert_close(model.encode(seq, lengths), evaluated)
    model.train()
    torch.manual_seed(0)
    first = model.encode(seq, lengths)
    torch.manual_seed(1)
    assert not torch.allclose(first, model.encode(seq, lengths))
    model.trm_encoder.layer[0].multi_head_attention.attn_dropout.p = 0.0
    model.trm_encoder.layer[1].multi_head_attention.attn_dropout.p = 0.0
    torch.testing.assert_close(model.encode(seq, lengths), evaluated)
