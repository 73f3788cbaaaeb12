"""Your own interaction log (CSV/TSV, Parquet, JSON lines) to RecBole atomic files.

:func:`convert_log` reads the user, item and time columns (and a rating, if named), checks
them, writes ``data_path/<name>/<name>.inter`` the way a downloaded dataset is written (a
temporary folder renamed when complete) and returns the log's :class:`InterStats`. Times may
be numbers (seconds, or any increasing number) or dates/datetimes, which become Unix seconds.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from recbole_efficient.data.fetch import publish, staged
from recbole_efficient.data.stats import inter_stats

__all__ = ["ConvertError", "FORMATS", "convert_log", "read_log"]

#: File suffixes read per format.
FORMATS = {"csv": (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz"),
           "parquet": (".parquet", ".pq"),
           "jsonl": (".jsonl", ".ndjson", ".json", ".jsonl.gz")}


class ConvertError(ValueError):
    """Input that cannot become atomic files (one line: what is wrong and how to fix it)."""


def _format_of(path, fmt):
    if fmt:
        if fmt not in FORMATS:
            raise ConvertError(f"--format={fmt} is not one of {', '.join(FORMATS)}.")
        return fmt
    name = path.name.lower()
    for fmt, suffixes in FORMATS.items():
        if name.endswith(suffixes):
            return fmt
    raise ConvertError(f"{path}: cannot tell the format from its name; add --format=csv, "
                       "--format=parquet or --format=jsonl.")


def read_log(path, fmt=None, sep=None, columns=None):
    """The log as a DataFrame of strings/numbers, only ``columns`` (all when ``None``)."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path} does not exist (or is not a file).")
    if path.stat().st_size == 0:
        raise ConvertError(f"{path} is empty.")
    fmt = _format_of(path, fmt)
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            if sep is None:
                sep = "\t" if ".tsv" in path.name.lower() else None  # None: sniffed
            frame = pd.read_csv(path, sep=sep, engine="python" if sep is None else "c",
                                dtype=str, keep_default_na=False, na_values=[""])
    except ConvertError:
        raise
    except Exception as err:  # noqa: BLE001 - any parser's error is the same user problem
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvertError(f"{path} cannot be read as {fmt}: {first}") from None
    if frame.empty:
        raise ConvertError(f"{path} has no rows" + (f" (columns: {', '.join(map(str, frame.columns))})"
                                                    if len(frame.columns) else "") + ".")
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ConvertError(
                f"{path} has no column {', '.join(map(repr, missing))}; its columns are "
                f"{', '.join(map(repr, map(str, frame.columns)))}. Name the right ones with "
                "--user=, --item=, --time= (and --rating=).")
        frame = frame[list(columns)]
    return frame


def _ids(values, column, path):
    missing = values.isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise ConvertError(f"{path}: column {column!r} is empty at row {row + 1} (and "
                           f"{int(missing.sum()) - 1} more); every interaction needs a user and "
                           "an item. Drop those rows first.")
    text = values.astype(str).str.strip()
    bad = text.str.contains(r"[\t\n\r]", regex=True).to_numpy() | (text == "").to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise ConvertError(f"{path}: column {column!r} at row {row + 1} is {values.iloc[row]!r}; "
                           "ids must be non-empty and hold no tab or line break.")
    return text


def _seconds(values, column, path):
    """Times as float seconds: numbers as they are, dates and datetimes as Unix seconds."""
    if values.isna().any():
        row = int(np.argmax(values.isna().to_numpy()))
        raise ConvertError(f"{path}: column {column!r} is empty at row {row + 1}; every "
                           "interaction needs a time that orders the user's history.")
    numbers = pd.to_numeric(values, errors="coerce")
    if not numbers.isna().any():
        return numbers.astype(float)
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values
    else:
        try:
            stamps = pd.to_datetime(values.astype(str), utc=True, errors="coerce",
                                    format="mixed")
        except (ValueError, TypeError):
            stamps = pd.Series(pd.NaT, index=values.index)
    bad = stamps.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise ConvertError(f"{path}: column {column!r} at row {row + 1} is "
                           f"{values.iloc[row]!r}, neither a number nor a date/time; times "
                           "must be numbers (e.g. Unix seconds) or dates such as 2024-05-01 or "
                           "2024-05-01T12:30:00.")
    if stamps.dt.tz is None:
        stamps = stamps.dt.tz_localize("UTC")
    return (stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def _ratings(values, column, path):
    numbers = pd.to_numeric(values, errors="coerce")
    bad = (numbers.isna() & values.notna()).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise ConvertError(f"{path}: column {column!r} at row {row + 1} is "
                           f"{values.iloc[row]!r}, not a number.")
    return numbers


def convert_log(path, user, item, time, rating=None, name=None, data_path="dataset", fmt=None,
                sep=None, force=False):
    """Write ``data_path/<name>/<name>.inter`` from the log at ``path``; returns
    ``(folder, InterStats)``. ``name`` defaults to the file name without its suffixes."""
    path = Path(path)
    name = name or path.name.split(".")[0]
    if not name or any(c in name for c in "/\\\t\n") or name.startswith("."):
        raise ConvertError(f"--name={name!r}: a dataset name is a plain folder name "
                           "(letters, digits, - and _), e.g. --name=mydata.")
    target = Path(data_path).resolve() / name
    if (target / f"{name}.inter").exists() and not force:
        raise ConvertError(f"{target / f'{name}.inter'} already exists; pass --force to "
                           "replace it, or choose another --name.")
    columns = [user, item, time] + ([rating] if rating else [])
    if len(set(columns)) < len(columns):
        raise ConvertError(f"--user, --item, --time{', --rating' if rating else ''} must name "
                           f"different columns, got {columns}.")
    frame = read_log(path, fmt, sep, columns)
    out = pd.DataFrame({"user_id:token": _ids(frame[user], user, path),
                        "item_id:token": _ids(frame[item], item, path)})
    if rating:
        out["rating:float"] = _ratings(frame[rating], rating, path)
    out["timestamp:float"] = _seconds(frame[time], time, path)

    with staged(target.parent, name) as partial:
        out.to_csv(partial / f"{name}.inter", sep="\t", index=False, float_format="%.15g")
        publish(partial, target, f"{name}.inter")
    return target, inter_stats(out["user_id:token"].to_numpy(), out["item_id:token"].to_numpy())
