"""What several test files share: small models, padded batches, the tiny dataset, and the
assertions every streaming or packing model is held to. A plain module (``conftest.py`` keeps
the fixtures): pytest puts this folder on ``sys.path``, so test files ``import helpers``."""

import importlib
import os

import numpy as np
import pytest
import torch

from recbole_efficient import Config, get_model

TINY = "tiny"
# ml-100k (RecBole's copy, LS split, full ranking): test NDCG@10 of item popularity, the bar
# every model's learning test clears
POPULARITY_NDCG10 = 0.0403
#: Item ids of the models :func:`make_model` builds (0 is padding).
N_ITEMS = 50
#: Sizes of the models :func:`make_model` builds; a model ignores the keys it does not read.
SMALL = {"hidden_size": 16, "inner_size": 32, "n_layers": 2, "n_heads": 2,
         "MAX_ITEM_LIST_LENGTH": 24, "chunk_size": 4, "n_experts": 4, "memory_size": 64,
         "memory_topk": 4, "memory_heads": 2}

_configs = {}


def small_config(name, **overrides):
    """The ``Config`` of model ``name`` with :data:`SMALL` sizes and ``overrides`` (on the
    ml-100k yaml; no data is read). Built once per distinct set of keys: reading the yaml
    files costs several times building the model."""
    key = (name, repr(sorted(overrides.items())))
    if key not in _configs:
        _configs[key] = Config(model=name, dataset="ml-100k", read_cmd_line=False,
                               config_dict={**SMALL, **overrides})
    return _configs[key]


def make_model(name, seed=0, *, trained_like=True, **overrides):
    """Model ``name`` (:func:`small_config`) over :data:`N_ITEMS` items, in eval mode.

    ``trained_like``: item embeddings and output bias drawn from N(0, 1), for O(1) logits
    (at init the scores are ~1e-2, where absolute tolerances mean nothing)."""
    config = small_config(name, **overrides)
    torch.manual_seed(seed)
    model = get_model(name)(config, StubDataset(N_ITEMS)).eval()
    if trained_like:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            model.item_embedding.weight[1:].normal_(generator=gen)
            _, bias = model.output_embedding()
            if bias is not None:
                bias.normal_(generator=gen)
    return model


def right_padded(lengths, width, n_items=N_ITEMS, seed=0):
    """Random item ids in [1, n_items), row i right-padded with 0 after ``lengths[i]``."""
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n_items, (len(lengths), width), generator=gen)
    lengths = torch.tensor(lengths)
    seq[torch.arange(width)[None] >= lengths[:, None]] = 0
    return seq, lengths


def full_sort_scores(model, seq, lengths):
    return model.full_sort_predict({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})


def state_tensors(layers):
    """The tensors of a state's ``layers`` (each entry a tensor or a tuple of tensors)."""
    return [t for layer in layers for t in (layer if isinstance(layer, tuple) else (layer,))]


def assert_step_after_build_state_is_full_forward(model, seq, lengths, nxt, atol):
    """``build_state`` on ``seq`` (one column of room left), one ``step`` with ``nxt``: the
    scores equal a full forward over the history extended by ``nxt``. Returns the built state."""
    state = model.build_state(seq[:, :-1], lengths)
    scores, _ = model.step(nxt, state)
    extended = seq.clone()
    extended[torch.arange(len(nxt)), lengths] = nxt
    torch.testing.assert_close(scores, full_sort_scores(model, extended, lengths + 1),
                               atol=atol, rtol=1e-5)
    return state


def assert_built_state_is_stepped_state(model, state, seq, row, length):
    """Row ``row`` of a built ``state`` equals the state reached by stepping through its
    ``length`` items from an empty history (state tensors that slice along the batch)."""
    stepped = model.init_state(1)
    for t in range(length):
        _, stepped = model.step(seq[row:row + 1, t], stepped)
    built, ref = state_tensors(state.layers), state_tensors(stepped.layers)
    assert len(built) == len(ref)
    for b, r in zip(built, ref):
        torch.testing.assert_close(b[row:row + 1], r, atol=1e-5, rtol=1e-5)


def assert_packed_training_is_padded_training(model, floor, n_items=N_ITEMS):
    """``encode_packed`` (``all_positions`` training on the real positions only) gives the same
    loss and gradients (sparse ones densified) as the full padded forward, for ``model`` in
    train mode with dropout off; its ``floor`` (mixer dropped) the same hidden states."""
    seq, lengths = right_padded([10, 3, 7, 1], 10, n_items, seed=6)
    targets = torch.randint(1, n_items, seq.shape, generator=torch.Generator().manual_seed(7))
    mask = torch.arange(10)[None] < lengths[:, None]

    def loss_and_grads(hidden):
        loss = model._positions_loss(hidden, targets[mask])
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss, [g.to_dense() if g is not None and g.is_sparse else g for g in grads]

    packed = loss_and_grads(model.encode_packed(seq, lengths, mask))
    padded = loss_and_grads(model.encode(seq, lengths)[mask])
    torch.testing.assert_close(packed[0], padded[0])
    for a, b in zip(packed[1], padded[1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(floor.encode_packed(seq, lengths, mask),
                               floor.encode(seq, lengths)[mask])


class StubDataset:
    """All a model's constructor needs from a dataset: the number of item ids."""

    def __init__(self, n_items):
        self.n_items = n_items

    def num(self, field):
        return self.n_items


def write_tiny_dataset(root, n_users=30, n_items=60, seed=0):
    """Users of every length from 1 to 40 (incl. the 1-3 edge cases), with timestamp ties."""
    rng = np.random.default_rng(seed)
    folder = root / TINY
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lengths = [1, 2, 3, 4] + list(rng.integers(5, 41, size=n_users - 4))
    for u, n in enumerate(lengths, start=1):
        times = np.sort(rng.integers(0, max(2, n // 2), size=n))  # frequent ties
        items = rng.integers(1, n_items + 1, size=n)
        for t, i in zip(times, items):
            lines.append(f"u{u}\ti{i}\t{rng.integers(1, 6)}\t{t}")
    # Shuffled rows: the dataset must sort by time itself.
    body = lines[1:]
    rng.shuffle(body)
    (folder / f"{TINY}.inter").write_text("\n".join([lines[0], *body]) + "\n")
    return root


def tiny_config(root, **overrides):
    cfg = {
        "data_path": str(root),
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "show_progress": False,
        "epochs": 1,
        "MAX_ITEM_LIST_LENGTH": 8,
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "n_heads": 1,
        "train_batch_size": 32,
        "eval_batch_size": 64,
        "checkpoint_dir": str(root / "saved"),
        "seed": 7,
    }
    cfg.update(overrides)
    return cfg


def interpreted_kernels(name):
    """``recbole_efficient/kernels/<name>.py``, its Triton kernels run by Triton's interpreter on
    CPU tensors (``conftest.py`` sets ``TRITON_INTERPRET=1`` where no GPU is present). Skipped
    with the reason where a GPU is present (``tests/test_cuda.py`` runs the compiled kernels
    there) or where Triton is missing."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not 1 (a GPU is present: tests/test_cuda.py runs the "
                    "compiled kernels)")
    pytest.importorskip("triton", reason="Triton is not installed: no interpreter to run the "
                                         "kernels with")
    return importlib.import_module(f"recbole_efficient.kernels.{name}")
