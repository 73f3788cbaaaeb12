"""Dataloaders that spend no compute on padding, for recbole_efficient models.

RecBole pads every sequence row to ``MAX_ITEM_LIST_LENGTH``. Our models' outputs at real
positions do not depend on right padding (their absolute positions start at the left), so
evaluation batches and the training batches of modes with a loss at every position
(``all_positions`` and later ones) are cut to their longest row: every per-position list
field (one whose declared length is ``MAX_ITEM_LIST_LENGTH``: inputs, per-position targets,
any other list a training mode adds) loses the columns beyond it. With ``bucket_by_length``
(off by default: it slows early learning) those training rows are drawn from length buckets:
each epoch, rows sorted by length (ties in random order) are cut into batches of about
``train_batch_size`` x (mean row length) positions, visited in random order. Every row is seen once per epoch, rows of similar length
share a batch, an epoch has about as many batches as without buckets, and as the loss is a mean
over a batch's positions, every position keeps the weight it has in a mixed batch (batches
of a fixed number of short rows would give each of their positions more weight).
``augmented`` training batches stay exactly RecBole's: dropout then draws the same random
numbers, and our ``SoftmaxSASRec`` trains exactly like RecBole's ``SASRec``.

:func:`data_preparation` has RecBole's signature and returns these loaders for our models,
RecBole's own loaders for RecBole's models (those without ``accepts_trimmed_batches``).
"""

import torch
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.dataloader import FullSortEvalDataLoader as RecBoleFullSortEvalDataLoader
from recbole.data.dataloader import NegSampleEvalDataLoader as RecBoleNegSampleEvalDataLoader
from recbole.data.dataloader import TrainDataLoader as RecBoleTrainDataLoader
from recbole.utils import ModelType

__all__ = ["TrainDataLoader", "FullSortEvalDataLoader", "NegSampleEvalDataLoader",
           "data_preparation", "length_buckets", "per_position_fields", "trim_padding"]


def per_position_fields(dataset):
    """Fields of ``dataset`` with one entry per sequence position (declared length
    ``MAX_ITEM_LIST_LENGTH``, or ``(MAX_ITEM_LIST_LENGTH, k)`` for sequence features)."""
    width = dataset.max_item_list_len
    if width <= 1:  # nothing to trim, and length 1 would match every scalar field
        return []
    return [field for field, seqlen in dataset.field2seqlen.items()
            if (seqlen[0] if isinstance(seqlen, tuple) else seqlen) == width]


def trim_padding(interaction, length_field, fields):
    """Cut ``fields`` of ``interaction`` (in place) to the longest row's length; returns it."""
    width = max(1, int(interaction[length_field].max())) if len(interaction) else 1
    for field in fields:
        value = interaction.interaction.get(field)
        if value is not None and value.dim() >= 2 and value.size(1) > width:
            interaction.interaction[field] = value[:, :width].contiguous()
    return interaction


def _bucket_sizes(sorted_lengths, batch_size):
    """Rows per batch for rows sorted by length: runs of about ``batch_size * mean length``
    positions (a row joins the batch in which its first position falls)."""
    sorted_lengths = sorted_lengths.double()
    budget = batch_size * sorted_lengths.mean()
    batch_of = ((sorted_lengths.cumsum(0) - sorted_lengths) / budget).long()
    return [n for n in torch.bincount(batch_of).tolist() if n]


def length_buckets(lengths, batch_size, generator):
    """Batches (lists of row indices) covering every row once: rows sorted by length, ties
    in random order, cut into runs of about ``batch_size * lengths.mean()`` positions (about
    as many batches as ``batch_size`` rows each would make), batches in random order."""
    shuffled = torch.randperm(len(lengths), generator=generator)
    order = shuffled[torch.argsort(lengths[shuffled], stable=True)]
    batches = order.split(_bucket_sizes(lengths[order], batch_size))
    return [batches[i].tolist() for i in torch.randperm(len(batches), generator=generator)]


class _TrimPadding:
    """Mixin in front of a RecBole dataloader: every collated batch is trimmed."""

    def _init_trimming(self, dataset, enabled=True):
        self._length_field = dataset.item_list_length_field
        self._trim_fields = per_position_fields(dataset) if enabled else []

    def collate_fn(self, index):
        batch = super().collate_fn(index)
        if isinstance(batch, tuple):  # evaluation: (interaction, ...)
            return (trim_padding(batch[0], self._length_field, self._trim_fields),) + batch[1:]
        return trim_padding(batch, self._length_field, self._trim_fields)


class TrainDataLoader(_TrimPadding, RecBoleTrainDataLoader):
    """RecBole's ``TrainDataLoader``; in per-position training modes its batches are trimmed
    and, when ``bucketed`` (shuffled, ``bucket_by_length``), drawn from length buckets."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        per_position = (config["train_mode"] or "augmented") != "augmented"
        self._init_trimming(dataset, enabled=per_position)
        # Multi-process training keeps RecBole's DistributedSampler (equal shares per rank).
        self.bucketed = bool(per_position and shuffle and config["bucket_by_length"]
                             and config["single_spec"])
        self._lengths = dataset.inter_feat[self._length_field] if self.bucketed else None

    def __len__(self):
        if not self.bucketed:
            return super().__len__()
        return len(_bucket_sizes(self._lengths.sort().values, self.step))

    def __iter__(self):
        if not self.bucketed:
            return super().__iter__()
        batches = length_buckets(self._lengths, self.step, self.generator)
        loader = torch.utils.data.DataLoader(range(self.sample_size), batch_sampler=batches,
                                             collate_fn=self.collate_fn,
                                             num_workers=self.num_workers)
        return iter(loader)


class FullSortEvalDataLoader(_TrimPadding, RecBoleFullSortEvalDataLoader):
    """RecBole's ``FullSortEvalDataLoader`` with trimmed batches."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self._init_trimming(dataset)


class NegSampleEvalDataLoader(_TrimPadding, RecBoleNegSampleEvalDataLoader):
    """RecBole's ``NegSampleEvalDataLoader`` with trimmed batches."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self._init_trimming(dataset)


_OURS = {RecBoleTrainDataLoader: TrainDataLoader,
         RecBoleFullSortEvalDataLoader: FullSortEvalDataLoader,
         RecBoleNegSampleEvalDataLoader: NegSampleEvalDataLoader}


def _trims_padding(config):
    # a capability the model class declares (RecBole's own models may read the fixed width)
    return config["MODEL_TYPE"] == ModelType.SEQUENTIAL \
        and getattr(getattr(config, "model_class", None), "accepts_trimmed_batches", False)


def data_preparation(config, dataset):
    """RecBole's ``data_preparation``; for recbole_efficient models the loaders trim padding
    and the training loader draws from length buckets (see the module docstring)."""
    loaders = recbole_data_preparation(config, dataset)
    if not _trims_padding(config):
        return loaders
    # RecBole builds (or reloads) the split; ours are the same loaders over the same data.
    return tuple(_OURS[type(loader)](loader.config, loader._dataset, loader._sampler,
                                     shuffle=loader.shuffle)
                 if type(loader) in _OURS else loader
                 for loader in loaders)
