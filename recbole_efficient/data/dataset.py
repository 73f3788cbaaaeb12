"""Sequential dataset with RecBole's ``augmented`` protocol and our window-based ones.

``augmented`` is RecBole's: one row per prefix (every prefix materialised densely), split
leave-one-out. ``all_positions`` builds only what it needs: one training row per window of
at most ``MAX_ITEM_LIST_LENGTH`` inputs whose targets are the next items at every position,
plus exactly the validation and test rows RecBole's protocol would produce. ``cloze`` (masked-
item training, BERT4Rec) has one training row per window of at most ``MAX_ITEM_LIST_LENGTH``
items and the same evaluation rows; the masks are drawn per batch (:func:`cloze_mask`).
"""

from logging import getLogger

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import Dataset as RecBoleDataset
from recbole.data.dataset import SequentialDataset as RecBoleSequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType, ModelType, set_color

from recbole_efficient.data.atomic import AtomicFilesMixin
from recbole_efficient.data.fetch import ensure_dataset

TARGET_SUFFIX = "_target"
#: Training modes whose rows are user windows (no prefix augmentation).
WINDOW_MODES = ("all_positions", "cloze")
_LEAVE_ONE_NUM = {"valid_and_test": 2, "valid_only": 1, "test_only": 1}


def target_list_field(config):
    """Name of the per-position target field of ``all_positions`` training rows."""
    return config["ITEM_ID_FIELD"] + TARGET_SUFFIX + config["LIST_SUFFIX"]


def cloze_mask(item_seq_len, width, mask_ratio, generator=None, ft_ratio=0.0):
    """Positions to mask in Cloze training rows: bool ``[B, width]``.

    Each real position (``< item_seq_len``) is masked with probability ``mask_ratio``; a row
    where none was drawn gets its last real item masked (the prediction task of evaluation).
    With probability ``ft_ratio`` a row is a fine-tuning row instead (BERT4Rec's ``ft_ratio``,
    drawn per row here, per batch in RecBole): only its last real item is masked. Padding is
    never masked; every non-empty row has at least one masked position.
    """
    positions = torch.arange(width, device=item_seq_len.device)
    real = positions[None, :] < item_seq_len[:, None]
    draw = torch.rand(real.shape, generator=generator, device=item_seq_len.device)
    mask = (draw < mask_ratio) & real
    last = positions[None, :] == (item_seq_len[:, None] - 1)
    if ft_ratio:
        tune = torch.rand(item_seq_len.shape, generator=generator,
                          device=item_seq_len.device) < ft_ratio
        mask = torch.where(tune[:, None], False, mask)
    return mask | (last & ~mask.any(1, keepdim=True))


def _window_spans(counts, width):
    """End-aligned windows of at most ``width`` over ``0..counts[u]-1`` for every user ``u``:
    ``(user, start, end)`` arrays, one entry per window, ``end`` exclusive."""
    n_win = np.where(counts > 0, -(-counts // width), 0)
    user = np.repeat(np.arange(len(counts)), n_win)
    k = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)
    end = counts[user] - k * width
    return user, np.maximum(0, end - width), end


class SequentialDataset(AtomicFilesMixin, RecBoleSequentialDataset):
    """RecBole's SequentialDataset plus the ``all_positions`` training mode."""

    @property
    def train_mode(self):
        return self.config["train_mode"] or "augmented"

    def _download(self):
        # RecBole's downloader (url.yaml links, an interactive prompt) is never used.
        ensure_dataset(self.config)

    def _change_feat_format(self):
        if self.train_mode in WINDOW_MODES:
            RecBoleDataset._change_feat_format(self)  # no prefix augmentation
        else:
            super()._change_feat_format()

    def build(self):
        histories = self.inter_feat[self.uid_field].value_counts()  # before any split
        if self.config["same_time_order"] == "item_id":
            self._order_same_time_by_item_id()
        splits = self._build_splits()
        self._check_splits(splits, histories)
        return splits

    def _order_same_time_by_item_id(self):
        """Interactions of a user at the same time in ascending item id (``same_time_order:
        item_id``): the later sorts by user and time are stable, so ties keep this order
        instead of the file's. LRURec's code sorts each history by (timestamp, item id)."""
        if self.time_field is None:
            raise ValueError("same_time_order=item_id needs a time field (TIME_FIELD, loaded by "
                             "load_col); drop the key or load the timestamps.")
        feat = self.inter_feat
        tokens = np.asarray(self.field2id_token[self.iid_field])[feat[self.iid_field].to_numpy()]
        numeric = pd.to_numeric(pd.Series(tokens), errors="coerce")
        # numeric ids compare as numbers (MovieLens: 10 after 9), any other ids as text
        key = numeric.to_numpy() if not numeric.isna().any() else np.unique(
            tokens, return_inverse=True)[1]
        order = np.lexsort((key, feat[self.time_field].to_numpy(),
                            feat[self.uid_field].to_numpy()))
        self.inter_feat = feat.iloc[order].reset_index(drop=True)

    def _check_splits(self, splits, histories):
        """Users need 2 interactions to train, 3 to be tested, 4 to be validated (leave-one-out)."""
        split = self.config["eval_args"]["split"]
        names = ["training", "validation", "test"]
        expected = names if isinstance(split, dict) and split.get("LS") == "valid_and_test" \
            else names[:1]
        empty = [name for name, ds in zip(names, splits) if name in expected and len(ds) == 0]
        if empty:
            raise ValueError(
                f"Dataset '{self.dataset_name}' gives no {' and no '.join(empty)} rows: with "
                "leave-one-out splitting a user needs at least 2 interactions to be trained on, "
                f"3 to be tested and 4 to be validated, and the longest of its {len(histories)} "
                f"users' histories has {int(histories.max()) if len(histories) else 0} (after "
                "filtering). Use a dataset with longer histories, or relax "
                "user_inter_num_interval / val_interval.")

    def _build_splits(self):
        if self.train_mode not in WINDOW_MODES or self.benchmark_filename_list is not None:
            return super().build()
        if self.config["eval_args"]["order"] != "TO":
            raise ValueError("The ordering args for sequential recommendation has to be 'TO'")
        split = self.config["eval_args"]["split"]
        mode = split.get("LS") if isinstance(split, dict) else None
        if mode not in _LEAVE_ONE_NUM:
            raise ValueError(
                f"train_mode={self.train_mode} needs eval_args.split LS in {list(_LEAVE_ONE_NUM)}, got {split}."
            )
        self._change_feat_format()
        return self._build_all_positions(mode)

    # -- all_positions ------------------------------------------------------------------
    def _build_all_positions(self, leave_mode):
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        self._drop_unused_col()
        uid = self.inter_feat[self.uid_field].numpy()
        n = len(uid)
        starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]]) if n else np.zeros(0, int)
        ends = np.r_[starts[1:], n].astype(np.int64)
        starts = starts.astype(np.int64)
        # RecBole's augmented rows per user and how many of them leave_one_out keeps out.
        rows = ends - starts - 1
        keep_out = np.clip(np.minimum(_LEAVE_ONE_NUM[leave_mode], rows - 1), 0, None)
        has_rows = rows > 0

        # Eval rows, in the order RecBole's stable time sort + grouping would give them.
        time = self.inter_feat[self.time_field].numpy()
        second = np.where(has_rows, np.minimum(starts + 1, n - 1), 0)
        order = np.lexsort((uid[starts], time[second]))
        order = order[has_rows[order]]
        last = ends[order] - 1
        first_out = keep_out[order]
        if leave_mode == "valid_and_test":
            valid_t = last[first_out == 2] - 1
            test_t = last[first_out >= 1]
        elif leave_mode == "valid_only":
            valid_t, test_t = last[first_out >= 1], last[:0]
        else:
            valid_t, test_t = last[:0], last[first_out >= 1]
        user_start = np.repeat(starts, ends - starts)
        valid_ds = self.copy(self._prefix_rows(valid_t, user_start))
        test_ds = self.copy(self._prefix_rows(test_t, user_start))

        if self.train_mode == "cloze":
            train_ds = self.copy(self._cloze_rows(starts, ends - keep_out))
        else:
            train_ds = self.copy(self._window_rows(starts, ends - keep_out))
            tf = target_list_field(self.config)
            train_ds.set_field_property(tf, FeatureType.TOKEN_SEQ, FeatureSource.INTERACTION,
                                        self.max_item_list_len)
        getLogger().info(
            set_color(self.train_mode, "pink")
            + f": {len(train_ds)} training windows, {len(valid_ds)} valid / {len(test_ds)} test rows"
        )
        return [train_ds, valid_ds, test_ds]

    def _prefix_rows(self, target_index, user_start):
        """Exactly RecBole's augmented rows for these targets (same fields, same values)."""
        target_index = np.asarray(target_index, dtype=np.int64)
        seq_start = np.maximum(user_start[target_index], target_index - self.max_item_list_len)
        lengths = target_index - seq_start
        new_data = self.inter_feat[torch.from_numpy(target_index)]
        new_dict = {self.item_list_length_field: torch.from_numpy(lengths)}
        for field in self.inter_feat:
            if field == self.uid_field:
                continue
            list_field = getattr(self, f"{field}_list_field")
            new_dict[list_field] = self._gather(self.inter_feat[field], seq_start, lengths,
                                                self.field2seqlen[list_field])
        new_data.update(Interaction(new_dict))
        return new_data

    def _gather(self, value, seq_start, lengths, list_len):
        """Dense [rows, list_len, ...] copy of ``value[seq_start : seq_start+length]`` per row."""
        width = list_len if isinstance(list_len, int) else list_len[0]
        offs = np.arange(width)
        valid = offs[None, :] < lengths[:, None]
        idx = np.where(valid, seq_start[:, None] + offs[None, :], 0)
        out = value[torch.from_numpy(idx)]
        mask = torch.from_numpy(valid)
        while mask.dim() < out.dim():
            mask = mask.unsqueeze(-1)
        return out.masked_fill(~mask, 0)

    def _window_rows(self, starts, train_ends):
        """One row per window; inputs x[s:e], targets x[s+1:e+1]; windows end-aligned."""
        L = self.max_item_list_len
        n_targets = train_ends - starts - 1  # targets are positions 1..n_targets of the user
        # e: relative position of the window's last target; s: of its first input
        user, s, e = _window_spans(n_targets, L)
        base = starts[user]
        lengths = e - s
        items = self.inter_feat[self.iid_field]
        iid_list = self._gather(items, base + s, lengths, L)
        target_list = self._gather(items, base + s + 1, lengths, L)
        last_target = base + e
        rows = Interaction({
            self.uid_field: self.inter_feat[self.uid_field][torch.from_numpy(last_target)],
            self.iid_field: items[torch.from_numpy(last_target)],
            self.item_id_list_field: iid_list,
            target_list_field(self.config): target_list,
            self.item_list_length_field: torch.from_numpy(lengths.astype(np.int64)),
        })
        return rows

    def _cloze_rows(self, starts, train_ends):
        """One row per window of the training items x[s:e]; windows end-aligned."""
        user, s, e = _window_spans(train_ends - starts, self.max_item_list_len)
        base = starts[user]
        lengths = e - s
        items = self.inter_feat[self.iid_field]
        last = torch.from_numpy(base + e - 1)
        return Interaction({
            self.uid_field: self.inter_feat[self.uid_field][last],
            self.iid_field: items[last],
            self.item_id_list_field: self._gather(items, base + s, lengths,
                                                  self.max_item_list_len),
            self.item_list_length_field: torch.from_numpy(lengths.astype(np.int64)),
        })


def create_dataset(config):
    """Our SequentialDataset for sequential models, else RecBole's ``create_dataset``."""
    from recbole.data import create_dataset as recbole_create_dataset
    import recbole.data.dataset as rb_datasets

    ensure_dataset(config)
    model_specific = hasattr(rb_datasets, config["model"] + "Dataset")
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL and not model_specific:
        dataset = SequentialDataset(config)
        if config["save_dataset"]:
            dataset.save()
        return dataset
    if config["train_mode"] in WINDOW_MODES:
        raise ValueError(f"train_mode={config['train_mode']} is not available for {config['model']}.")
    return recbole_create_dataset(config)
