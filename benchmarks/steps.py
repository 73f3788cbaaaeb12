"""What a benchmark runs on a built model: synthetic batches, one training step as RecBole's
trainer runs it, one ``full_sort_predict`` call.

Apart from :mod:`benchmarks.models` so that the measured calls do not depend on how a model
was configured, and from :mod:`benchmarks.measure`, which times any callable.
"""

from __future__ import annotations

import torch
from recbole.data.interaction import Interaction

from recbole_efficient.data.dataset import target_list_field
from recbole_efficient.kernels.cross_entropy import linear_cross_entropy


def make_batch(config, batch_size, seq_len, n_items, train_mode="augmented", train=True,
               device="cpu", seed=0):
    """Random full-length sequences (no padding) as an ``Interaction``.

    Training batches carry per-position targets (``all_positions``) or one target per row
    (``augmented``, plus a negative item when ``loss_type`` is BPR; ``cloze`` models mask the
    sequence itself and ignore it); inference batches carry only the sequence and its length.
    """
    gen = torch.Generator().manual_seed(seed)
    item = config["ITEM_ID_FIELD"]
    seq = torch.randint(1, n_items, (batch_size, seq_len), generator=gen)
    data = {item + config["LIST_SUFFIX"]: seq,
            config["ITEM_LIST_LENGTH_FIELD"]: torch.full((batch_size,), seq_len, dtype=torch.long)}
    if train:
        if train_mode == "all_positions":
            data[target_list_field(config)] = torch.randint(1, n_items, (batch_size, seq_len),
                                                            generator=gen)
        else:
            data[item] = torch.randint(1, n_items, (batch_size,), generator=gen)
            if config["loss_type"] == "BPR":
                data[config["NEG_PREFIX"] + item] = torch.randint(1, n_items, (batch_size,),
                                                                  generator=gen)
    return Interaction(data).to(device)


def recbole_all_positions_loss(model, batch, target_field):
    """Next-item cross-entropy at every real position for a RecBole sequential model whose
    ``forward`` ends by gathering the last position (SASRec, GRU4Rec, ...) and which scores
    items by ``item_embedding``: the gather is made the identity for this call, and the loss
    is our models' ``all_positions`` loss, so that only the encoders differ. Benchmark only."""
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    model.gather_indexes = lambda output, index: output  # shadows the method for this call
    try:
        hidden = model(seq, lengths)
    finally:
        del model.gather_indexes
    mask = torch.arange(seq.size(1), device=seq.device)[None] < lengths[:, None]
    return linear_cross_entropy(hidden[mask], model.item_embedding.weight, None,
                                batch[target_field][mask])


def _device_type(model):
    return next(model.parameters()).device.type


def train_step(model, optimizer, batch, clip_grad_norm=None, loss_fn=None, amp_dtype=None,
               scaler=None):
    """One training step as RecBole's trainer runs it: forward, backward, optional gradient
    clipping (the ``clip_grad_norm`` config dict), optimiser step. ``loss_fn(model, batch)``
    replaces ``model.calculate_loss``. ``amp_dtype``: the forward under autocast
    (``enable_amp``); ``scaler``: a ``torch.amp.GradScaler`` (``enable_scaler``), gradients
    unscaled before clipping."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(_device_type(model), dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = loss_fn(model, batch) if loss_fn else model.calculate_loss(batch)
    if isinstance(loss, tuple):  # some RecBole models return several losses
        loss = sum(loss)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), **clip_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)  # gradients do not outlive the step


@torch.no_grad()
def inference_step(model, batch, amp_dtype=None):
    """``model.full_sort_predict(batch)`` in eval mode, under autocast if ``amp_dtype``."""
    model.eval()
    with torch.autocast(_device_type(model), dtype=amp_dtype, enabled=amp_dtype is not None):
        return model.full_sort_predict(batch)
