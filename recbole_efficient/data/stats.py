"""What a user needs to know of an interaction log before training on it."""

from dataclasses import dataclass

import numpy as np

__all__ = ["InterStats", "inter_stats", "read_inter_stats"]

#: History lengths whose coverage the summary reports (``MAX_ITEM_LIST_LENGTH`` candidates).
COVERAGE_LENGTHS = (50, 200)
_PERCENTILES = (25, 50, 75, 90, 99)


@dataclass(frozen=True)
class InterStats:
    """Counts of a log and its per-user history lengths."""

    interactions: int
    users: int
    items: int
    lengths: np.ndarray  # interactions per user

    def covered(self, max_len):
        """Share of users whose whole history fits in ``max_len`` items: a leave-one-out
        test row of a history of n items has n - 1 inputs."""
        return float(np.mean(self.lengths - 1 <= max_len)) if self.users else 0.0

    def lines(self):
        pct = np.percentile(self.lengths, _PERCENTILES).round().astype(int) if self.users else []
        per_user = ", ".join(f"p{p} {v}" for p, v in zip(_PERCENTILES, pct))
        lines = [
            f"users: {self.users:,}   items: {self.items:,}   interactions: {self.interactions:,}",
            f"interactions per user: min {self.lengths.min() if self.users else 0}, {per_user}, "
            f"max {self.lengths.max() if self.users else 0}",
            "users whose whole history fits MAX_ITEM_LIST_LENGTH: "
            + ", ".join(f"{n}: {self.covered(n):.1%}" for n in COVERAGE_LENGTHS),
        ]
        short = int(np.sum(self.lengths < 3))
        if short:
            lines.append(f"users with fewer than 3 interactions (never tested under RecBole's "
                         f"leave-one-out split): {short:,}")
        return lines


def inter_stats(users, items):
    """:class:`InterStats` of parallel user and item id arrays (any hashable ids)."""
    import pandas as pd

    lengths = pd.Series(users).value_counts(sort=False).to_numpy()
    return InterStats(len(users), len(lengths), int(pd.Series(items).nunique()), lengths)


def read_inter_stats(path, user_field="user_id", item_field="item_id", separator="\t"):
    """:class:`InterStats` of an atomic ``.inter`` file (header ``name:type`` columns)."""
    from pyarrow import csv

    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split(separator)
    names = [column.partition(":")[0] for column in header]
    table = csv.read_csv(
        path, read_options=csv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=csv.ParseOptions(delimiter=separator, quote_char=False),
        convert_options=csv.ConvertOptions(include_columns=[user_field, item_field]))
    return inter_stats(table[user_field].to_numpy(), table[item_field].to_numpy())
