"""Writing results: the environment a run measured in, JSON / CSV files, markdown tables and
log-log PNG plots, and the number formats the tables share.

Only formats figures it is given, so every script's tables and files look alike whatever it
measured.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch


def git_commit():
    """The repository's current commit (short hash), None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                             cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device="cpu"):
    """Versions, platform, CPU count and threads, the GPU's name on CUDA, and the git commit
    of the code that ran (None outside a git checkout)."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "commit": git_commit(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import recbole

        env["recbole"] = recbole.__version__
    except Exception:  # noqa: BLE001 - the version is informative only
        pass
    return env


def write_json(obj, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def write_csv(rows, path, fields=None):
    """``rows`` (dicts) as CSV; ``fields`` default to every key in order of appearance, lists
    and dicts are written as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fields is None:
        fields = []
        for row in rows:
            fields += [k for k in row if k not in fields]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in fields})


def _csv_value(value):
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "" if value is None else value


def write_results(out, name, data, markdown, rows=None, fields=None):
    """``<name>.json`` (``data``), ``<name>.md`` (``markdown``) and, given ``rows``,
    ``<name>.csv`` (columns ``fields``) in folder ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(data, out / f"{name}.json")
    files = [out / f"{name}.json"]
    if rows is not None:
        write_csv(rows, out / f"{name}.csv", fields)
        files.append(out / f"{name}.csv")
    (out / f"{name}.md").write_text(markdown)
    return files + [out / f"{name}.md"]


def save_run(out, name, command, title, body, rows, device="cpu", fields=None, **extra):
    """One benchmark run's ``rows`` with where they came from: ``<name>.{json,csv,md}`` in
    ``out``, the JSON's ``meta`` holding ``command``, the UTC date, :func:`environment` (the
    commit included) and ``extra``; the markdown is ``title``, the command and ``body``.
    Returns the meta."""
    meta = {"command": command, "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "environment": environment(device), **extra}
    write_results(out, name, {"meta": meta, "rows": rows},
                  f"# {title}\n\n`{command}` ({meta['date_utc']} UTC)\n\n{body}", rows=rows,
                  fields=fields)
    return meta


def markdown_row(cells):
    """One GitHub markdown table row; cells are converted with ``str`` (None is empty) and '|'
    is escaped."""
    def cell(v):
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    return "| " + " | ".join(cell(v) for v in cells) + " |"


def markdown_table(headers, rows, align=None):
    """GitHub markdown table of ``headers`` and ``rows`` (see :func:`markdown_row`).

    ``align``: one of ``"l"``, ``"r"`` or None (default) per column.
    """
    rule = {None: "---", "l": ":---", "r": "---:"}
    align = align or [None] * len(headers)
    lines = [markdown_row(headers), "|" + "|".join(rule[a] for a in align) + "|"]
    return "\n".join(lines + [markdown_row(row) for row in rows])


def fmt_seconds_ms(seconds):
    """Seconds as milliseconds with about three significant digits."""
    return None if seconds is None else _three_digits(seconds * 1000)


def fmt_mib(nbytes):
    """Bytes as MiB with about three significant digits."""
    return None if nbytes is None else _three_digits(nbytes / 2**20)


def _three_digits(x):
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def plot_loglog(panels, path, suptitle=None, ncols=None):
    """One PNG with a log-log panel per entry of ``panels`` (``ncols`` per row).

    ``panels``: list of ``{"title", "xlabel", "ylabel", "series": {label: (xs, ys)}}``;
    points with missing or non-positive y are left out of a line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        drawn = False
        for label, (xs, ys) in panel["series"].items():
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None and y > 0]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            drawn = True
        ax.set_xscale("log")
        ax.set_yscale("log")
        xs = sorted({x for xs_, _ in panel["series"].values() for x in xs_})
        if xs:  # the measured lengths as plain numbers, not powers of ten
            ax.set_xticks(xs)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(panel.get("title", ""), fontsize=10)
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
