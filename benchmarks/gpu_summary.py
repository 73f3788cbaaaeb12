"""The GPU targets, read off the efficiency runs of ``benchmarks/gpu_check.sh``.

    python -m benchmarks.gpu_summary [RESULTS_DIR]   # default: benchmarks/results/gpu

For every ``efficiency.json`` under RESULTS_DIR (one folder per setting: ``train_fp32``,
``train_bf16``, ``inference``, the ablations), a table per setting: each model's median ms per
step at every L, its ratio to its own floor (the same model without its sequence mixer) and to
SoftmaxSASRec. The verdict reads the targets off the settings in :data:`REQUIRED`:

* training: faster than SoftmaxSASRec at every L >= 1000, and within 1.4x its floor at every L;
* inference: within 1.6x its floor at every L >= 1000;

a required setting without results, or a point a target applies to that did not run, is a
miss. Writes RESULTS_DIR/summary.md and prints it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks import report

DEFAULT_DIR = Path(__file__).resolve().parent / "results" / "gpu"
REFERENCE = "SoftmaxSASRec"
#: (kind, shortest L the bound applies from, floor-ratio bound, must beat the reference)
TARGETS = {"train": (0, 1.4, True), "inference": (1000, 1.6, False)}
REFERENCE_FROM = 1000  # the reference must be beaten from this length on
#: The settings of benchmarks/gpu_check.sh the verdict is read from.
REQUIRED = ("train_fp32", "train_bf16", "inference")


def _floor_label(label):
    return label + ("," if "@" in label else "@") + "floor"


def _times(points):
    """``{(label, L): median seconds}`` of the points that ran."""
    return {(p["model"], p["seq_len"]): p["time_s_median"] for p in points
            if p.get("status") == "ok" and p.get("time_s_median")}


def setting_summary(name, data):
    """``(markdown, failures)`` of one efficiency run: a table and the targets it misses."""
    points = data["points"]
    kind = points[0]["kind"] if points else "train"
    start, bound, beat_reference = TARGETS[kind]
    times = _times(points)
    lengths = sorted({p["seq_len"] for p in points})
    labels = [m for m in dict.fromkeys(p["model"] for p in points) if not m.endswith("floor")]
    # ours: the models measured with a floor, other than the reference
    efficient = [m for m in labels if m.split("@")[0] != REFERENCE
                 and any((_floor_label(m), n) in times for n in lengths)]
    rows, failures = [], []
    for label in labels:
        cells = [label]
        for length in lengths:
            t, floor = times.get((label, length)), times.get((_floor_label(label), length))
            ref = times.get((REFERENCE, length))
            if t is None:
                cells.append("–")
                if label in efficient and length >= start:
                    failures.append(f"{name}: {label} at L={length} did not run")
                continue
            text = f"{t * 1e3:.1f}"
            if floor is None and label in efficient and length >= start:
                failures.append(f"{name}: {label}'s floor at L={length} did not run")
            if floor:
                ratio = t / floor
                text += f" ({ratio:.2f}×)"
                if label in efficient and length >= start and ratio > bound:
                    failures.append(f"{name}: {label} at L={length} is {ratio:.2f}× its floor "
                                    f"(target ≤ {bound})")
            if ref and label in efficient:
                text += f", {t / ref:.2f}× ref"
                if beat_reference and length >= REFERENCE_FROM and t >= ref:
                    failures.append(f"{name}: {label} at L={length} is not faster than "
                                    f"{REFERENCE} ({t * 1e3:.1f} vs {ref * 1e3:.1f} ms)")
            elif label in efficient and beat_reference and length >= REFERENCE_FROM:
                failures.append(f"{name}: {label} at L={length} has no {REFERENCE} to compare")
            cells.append(text)
        rows.append(cells)
    meta = data.get("meta", {})
    head = (f"### {name} ({kind}; {meta.get('environment', {}).get('gpu', 'no GPU named')}, "
            f"torch {meta.get('environment', {}).get('torch', '?')}, amp "
            f"{meta.get('args', {}).get('amp', 'off')})\n\n"
            "ms per step (× the model's floor, × SoftmaxSASRec)\n\n")
    table = report.markdown_table(["model"] + [f"L={n}" for n in lengths], rows)
    return head + table + "\n", failures


def summarise(results_dir, required=REQUIRED):
    """``(markdown, misses)``: every efficiency run under ``results_dir``, and the targets the
    ``required`` settings miss."""
    runs = sorted(Path(results_dir).glob("*/efficiency.json"))
    if not runs:
        raise FileNotFoundError(f"no */efficiency.json under {results_dir}: run "
                                "benchmarks/gpu_check.sh first")
    parts, failures = ["# GPU targets\n"], []
    failures += [f"{name}: no results ({name}/efficiency.json is missing: the step failed or "
                 "ran out of time)" for name in required
                 if not (Path(results_dir) / name / "efficiency.json").is_file()]
    for path in runs:
        text, missed = setting_summary(path.parent.name, json.loads(path.read_text()))
        parts.append(text)
        if path.parent.name in required:
            failures += missed
    parts.append("## Verdict\n")
    parts.append("All targets met.\n" if not failures else
                 "\n".join(f"- {f}" for f in failures) + "\n")
    return "\n".join(parts), failures


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    results_dir = Path(argv[0]) if argv else DEFAULT_DIR
    try:
        text, _ = summarise(results_dir)
    except FileNotFoundError as err:
        print(f"gpu_summary: {err}", file=sys.stderr)
        return 2
    (results_dir / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
