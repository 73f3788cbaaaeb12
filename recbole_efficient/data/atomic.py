"""Reading RecBole atomic files: checks before loading, clear errors, current pandas.

:func:`check_headers` reads only the header line of each atomic file the config loads, before
RecBole reads any data. :class:`AtomicFilesMixin` goes in front of a RecBole ``Dataset``: it
names the file, line and value of a non-numeric ``:float`` cell, warns about exact duplicate
interactions, and fixes RecBole 1.2.1 under pandas 3, where copy-on-write turns its in-place
``df[col].fillna(..., inplace=True)`` into a no-op and ``Series.agg(len)`` returns the length
of the Series instead of each row's, which broke ``token_seq`` remapping.
"""

import os
import warnings
from contextlib import contextmanager
from logging import getLogger

import numpy as np
import pandas as pd
from recbole.utils import FeatureType, ModelType

_TYPES = tuple(t.value for t in FeatureType)


def _header(path, config):
    """``{field: type}`` of an atomic file's header and whether a data line follows."""
    with open(path, encoding=config["encoding"]) as f:
        head = f.readline().rstrip("\r\n")
        has_rows = any(line.strip() for line in f)
    if not head.strip():
        raise ValueError(
            f"{path} is empty: an atomic file starts with a header of name:type columns "
            "separated by field_separator (e.g. user_id:token, item_id:token, "
            "timestamp:float), then one row per line.")
    fields = {}
    for column in head.split(config["field_separator"]):
        name, _, ftype = column.partition(":")
        if ftype not in _TYPES:
            raise ValueError(
                f"{path}: header column {column!r} needs a type, written name:type with type "
                f"one of {', '.join(_TYPES)} (e.g. {name.strip() or 'user_id'}:token).")
        fields[name] = ftype
    return fields, has_rows


def check_headers(config):
    """The columns a model needs are present, typed and loaded; the ``.inter`` file has rows.

    Sequential models need the user, item and time columns, the time as ``:float`` (a history
    is ordered by its numeric value; a ``:token`` column would be ordered by first appearance).
    """
    name, path = config["dataset"], config["data_path"]
    load_col = config["load_col"] or {}
    inter = os.path.join(path, f"{name}.inter")
    fields, has_rows = _header(inter, config)
    for suffix in load_col:
        other = os.path.join(path, f"{name}.{suffix}")
        if suffix != "inter" and os.path.isfile(other):
            _header(other, config)
    if not has_rows:
        raise ValueError(f"{inter} has a header but no interactions.")
    sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    required = {"USER_ID_FIELD": config["USER_ID_FIELD"], "ITEM_ID_FIELD": config["ITEM_ID_FIELD"]}
    if sequential:
        required["TIME_FIELD"] = config["TIME_FIELD"]
    loaded = load_col.get("inter")
    problems = []
    for key, field in required.items():
        if field is None:
            continue
        if field not in fields:
            problems.append(
                f"{inter} has no {field!r} column (it has {', '.join(fields)}); name it "
                f"{field} in the header, or set --{key}=<the column's name>.")
        elif isinstance(loaded, (list, tuple)) and field not in loaded:
            problems.append(f"load_col.inter={list(loaded)} leaves out {field!r}, which "
                            f"{config['model']} needs; add it.")
    time = required.get("TIME_FIELD")
    if time in fields and fields[time] != "float":
        problems.append(
            f"{inter}: column {time}:{fields[time]} must be {time}:float: histories are "
            "ordered by its numeric value (e.g. seconds since 1970); convert dates to numbers.")
    if problems:
        raise ValueError(" ".join(problems))


def _first_non_number(path, config):
    """``(line, column, value)`` of the first ``:float`` cell that is not a number, or None."""
    sep = config["field_separator"]
    frame = pd.read_csv(path, delimiter=sep, dtype=str, keep_default_na=False,
                        encoding=config["encoding"], engine="python")
    for column in frame.columns:
        if column.endswith(":float"):
            values = frame[column].str.strip()
            bad = (pd.to_numeric(values, errors="coerce").isna() & (values != "")).to_numpy()
            if bad.any():
                row = int(np.argmax(bad))
                return row + 2, column, frame[column].iloc[row]  # 1-based, after the header
    return None


@contextmanager
def _missing_sequences_read_as_empty():
    """RecBole's ``_load_feat`` reads a file, fills missing sequence cells with
    ``df[field].fillna("", inplace=True)`` (a no-op under pandas 3) and splits every cell; the
    frame it reads has them filled already. ``read_csv`` is RecBole's only seam in there."""
    import recbole.data.dataset.dataset as recbole_dataset

    class _Pandas:
        def __getattr__(self, name):
            return getattr(pd, name)

        @staticmethod
        def read_csv(*args, **kwargs):
            frame = pd.read_csv(*args, **kwargs)
            seq = [c for c in frame.columns if str(c).endswith("_seq")]
            if seq:
                frame[seq] = frame[seq].fillna("")
            return frame

    recbole_dataset.pd = _Pandas()
    try:
        yield
    finally:
        recbole_dataset.pd = pd


@contextmanager
def _quiet_inplace_fills():
    """RecBole's in-place fills warn (pandas 2: FutureWarning, pandas 3:
    ChainedAssignmentError) on cells we have filled already."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*chained assignment using an inplace method")
        yield


class AtomicFilesMixin:
    """In front of a RecBole ``Dataset``: clear errors on bad files, pandas 3 support."""

    def _load_feat(self, filepath, source):
        try:
            with _missing_sequences_read_as_empty(), _quiet_inplace_fills():
                return super()._load_feat(filepath, source)
        except ValueError:
            where = _first_non_number(filepath, self.config)
            if where is None:
                raise
            line, column, value = where
            raise ValueError(
                f"{filepath}, line {line}: {column} is {value!r}, not a number. Every value "
                "of a :float column must be numeric (timestamps: e.g. seconds since 1970); "
                "fix or drop that row.") from None

    def _fill_nan(self):
        # RecBole fills these with ``feat[field].fillna(..., inplace=True)``, a no-op under
        # pandas 3: fill them by assignment first (same values), RecBole does the rest.
        for feat in (getattr(self, name) for name in self.feat_name_list):
            for field in feat:
                if self.field2type[field] == FeatureType.TOKEN:
                    feat[field] = feat[field].fillna(value=0)
                elif self.field2type[field] == FeatureType.FLOAT:
                    feat[field] = feat[field].fillna(value=feat[field].mean())
        with _quiet_inplace_fills():
            super()._fill_nan()

    def _remap(self, remap_list):
        # RecBole's remap with each token_seq row's length taken per row (``map(len)``):
        # pandas 3 evaluates its ``Series.agg(len)`` on the whole Series.
        if not remap_list:
            return
        tokens, split_point = self._concat_remaped_tokens(remap_list)
        new_ids, id_tokens = pd.factorize(tokens)
        id_tokens = np.array(["[PAD]"] + list(id_tokens))
        token_ids = {t: i for i, t in enumerate(id_tokens)}
        for (feat, field, ftype), ids in zip(remap_list, np.split(new_ids + 1, split_point)):
            if field not in self.field2id_token:
                self.field2id_token[field] = id_tokens
                self.field2token_id[field] = token_ids
            if ftype == FeatureType.TOKEN:
                feat[field] = ids
            elif ftype == FeatureType.TOKEN_SEQ:
                feat[field] = np.split(ids, np.cumsum(feat[field].map(len).to_numpy())[:-1])

    def _benchmark_presets(self):  # sequential datasets read from benchmark_filename files
        super()._benchmark_presets()
        # RecBole's ``Series.agg(len)``: under pandas 3 one length for the whole column.
        self.inter_feat[self.item_list_length_field] = \
            self.inter_feat[self.item_id_list_field].map(len)

    def _normalize(self):
        fields = self.config["normalize_field"] or (
            self.float_like_fields if self.config["normalize_all"] else [])
        self._refuse_float_seq(fields, "normalize_all / normalize_field")
        super()._normalize()

    def _discretization(self):
        self._refuse_float_seq(self.config["discretization"] or {}, "discretization")
        super()._discretization()

    def _refuse_float_seq(self, fields, keys):
        """RecBole rescales float_seq fields with ``Series.agg(len)`` too, and no seam reaches
        it: under pandas 3, stop with the fix instead of its length-mismatch error."""
        seq = [f for f in fields if self.field2type.get(f) == FeatureType.FLOAT_SEQ]
        if seq and int(pd.__version__.split(".")[0]) >= 3:
            raise ValueError(
                f"{keys} would rescale the float_seq field(s) {', '.join(seq)}, which RecBole "
                "1.2.1 cannot do under pandas 3. Rescale only :float fields (e.g. "
                "--normalize_all=False --normalize_field=[...]), or use pandas < 3.")

    def _remove_duplication(self):
        if self.config["rm_dup_inter"] is None and self.time_field in self.inter_feat:
            key = [self.uid_field, self.iid_field, self.time_field]
            repeated = int(self.inter_feat.duplicated(subset=key).sum())
            if repeated:
                getLogger().warning(
                    f"{repeated} interactions repeat an earlier one exactly (same user, item and "
                    f"{self.time_field}); they are kept as repeated interactions. To keep one "
                    "per user and item, set rm_dup_inter: first.")
        super()._remove_duplication()
