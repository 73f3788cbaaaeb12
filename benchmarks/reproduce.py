"""Reproduction: every model on ml-1m under LRURec's and RecBole's protocols, next to the papers.

    python -m benchmarks.reproduce --time_budget 1200 --models LRURec SoftmaxSASRec
    python -m benchmarks.reproduce --device cuda          # the whole default list

A preset of :mod:`benchmarks.accuracy`: each (protocol, model) run trains through the CLI's own
code path (``run_recbole_efficient``) in a working folder of its own under
``<out>/runs/<protocol>/<model>/`` (RecBole's log/ and saved/ live there), so that:

* a finished run is not repeated (its ``result.json`` is reused while the settings are the
  same; with other settings, e.g. a larger budget, it continues from its latest checkpoint;
  ``--fresh`` moves the old run aside and starts over),
* an interrupted run resumes from its latest checkpoint, model by model,
* ``--time_budget`` caps each run's wall-clock fit time (training and validation); a run stopped
  by it is marked "budget-limited, not converged",
* ``--jobs N`` trains up to N runs at once, each in a process of its own (log in
  ``<out>/logs/``): on one GPU the runs are launch-bound, so concurrent processes finish a list
  sooner than one after another (``benchmarks/reproduce_gpu.sh`` measures it); each keeps its
  whole budget.

Protocols (both: ml-1m with users and items of >= 5 interactions, which gives LRURec's
statistics, 6,040 users and 3,416 items; leave-one-out by time; L = 200; full ranking over all
items; patience 10; Recall/NDCG/MRR@{10, 20}):

* ``lrurec``: the items of the input history are excluded from the ranking, model selection
  on validation Recall@10, ratings of the same second in ascending item id as LRURec's code
  orders them (Yue et al., WSDM 2024, Table 3);
* ``recbole``: history not excluded, model selection on validation NDCG@10 (RecBole's own
  default is MRR@10; NDCG@10 is what RecBole-protocol papers report).

Outputs in ``--out``: reproduce.md / reproduce.csv / reproduce.json (the table, the papers'
numbers in adjacent columns) and reproduce_curves.png (validation metric against epoch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import accuracy, cli, models, report

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "reproduce"
BASELINES = ("SASRec", "GRU4Rec")
METRIC_KEYS = ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "recall@20", "mrr@20")

# Settings shared by both protocols.
COMMON = {
    "MAX_ITEM_LIST_LENGTH": 200,
    "user_inter_num_interval": "[5,inf)",
    "item_inter_num_interval": "[5,inf)",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "metrics": ["Recall", "NDCG", "MRR"],
    "topk": [10, 20],
    "stopping_step": 10,
}
PROTOCOLS = {
    "lrurec": {"title": "LRURec's protocol: history excluded, selection on valid Recall@10",
               "config": {"exclude_history": True, "valid_metric": "Recall@10",
                          "same_time_order": "item_id"}},
    "recbole": {"title": "RecBole's protocol: history not excluded, selection on valid NDCG@10",
                "config": {"exclude_history": False, "valid_metric": "NDCG@10"}},
}
# LRURec paper, Table 3, ML-1M (full ranking, history excluded; baselines trained with CE and
# AdamW in the authors' framework). Our models whose architecture is the paper's row are
# compared with it: SoftmaxSASRec is SASRec's architecture.
PAPER = {
    "LRURec": {"ndcg@10": .19298, "ndcg@20": .21990, "recall@10": .32636, "recall@20": .43313},
    "SASRec": {"ndcg@10": .19021, "ndcg@20": .21860, "recall@10": .31810, "recall@20": .43050},
    "GRU4Rec": {"ndcg@10": .16929, "ndcg@20": .19411, "recall@10": .29624, "recall@20": .39470},
}
PAPER_ROW = {"LRURec": "LRURec", "SoftmaxSASRec": "SASRec", "SASRec": "SASRec",
             "GRU4Rec": "GRU4Rec"}
# RecBole-protocol reference points for SASRec-like models on ML-1M (papers.md §2.4).
RECBOLE_REFERENCE = "SASRec-like models under RecBole's protocol: NDCG@10 ≈ .18–.20, HR@10 ≈ .31–.33"
PAPER_KEYS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20")
TABLE_FIELDS = ["protocol", "model", "train_mode", "device", "budget_s", "status", "epochs",
                "steps", "best_epoch", "train_s", "wall_s", "s_per_epoch",
                "ndcg@10", "paper_ndcg@10", "recall@10", "paper_recall@10",
                "ndcg@20", "paper_ndcg@20", "recall@20", "paper_recall@20", "mrr@10", "mrr@20"]


def build_parser():
    p = cli.parser("reproduce", __doc__, overrides_for="run")
    p.add_argument("--models", nargs="+", default=None,
                   help="default: every recbole_efficient model, then " + ", ".join(BASELINES))
    p.add_argument("--protocols", nargs="+", choices=list(PROTOCOLS), default=list(PROTOCOLS))
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--data_path", default=str(accuracy.SHARED_DATA),
                   help="folder holding <dataset>/<dataset>.inter")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--time_budget", type=float, default=None,
                   help="wall-clock fit seconds per run (default: none on CPU; on cuda the "
                        "per-run share of --gpu_minutes)")
    p.add_argument("--gpu_minutes", type=float, default=10.0,
                   help="cuda: the whole list's target wall time, split evenly into run budgets")
    p.add_argument("--epochs", type=int, default=500, help="most epochs per run (LRURec's code: 500)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--fresh", action="store_true", help="ignore finished and interrupted runs")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each in a process of its own")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--run", nargs=2, metavar=("PROTOCOL", "MODEL"), help=argparse.SUPPRESS)
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = cli.parse_with_overrides(parser, argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible here (torch.cuda."
                         "is_available() is False); run on CPU with --device cpu")
    args.models = args.models or models.default_models(BASELINES)
    args.data_path = str(Path(args.data_path).resolve())
    args.out = str(Path(args.out).resolve())
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.device == "cuda" and args.time_budget is None:
        runs = len(args.models) * len(args.protocols)
        waves = -(-runs // args.jobs)  # runs after one another per process slot
        # Data loading and the final test take ~20 s per run on one GPU.
        args.time_budget = max(30.0, args.gpu_minutes * 60 / waves - 20)
    return args


def run_args(args, protocol):
    """The :mod:`benchmarks.accuracy` arguments of one protocol."""
    overrides = {**COMMON, **PROTOCOLS[protocol]["config"],
                 "gpu_id": "0" if args.device == "cuda" else "", **args.overrides}
    exclude = overrides.pop("exclude_history")
    return argparse.Namespace(
        dataset=args.dataset, data_path=args.data_path, train_mode=None, eval_mode="full",
        exclude_history=exclude, epochs=args.epochs, time_budget=args.time_budget,
        seed=args.seed, overrides=overrides, out=args.out)


def run_dir(args, protocol, model):
    return Path(args.out) / "runs" / protocol / model


def status_of(result, args):
    reason = result.get("stop_reason")
    if reason == "early_stopping":
        return "converged (early-stopped)"
    if reason == "budget":
        return "budget-limited, not converged"
    if reason == "fault":
        return "stopped by a non-finite loss"
    return f"epoch-limited ({args.epochs}), not converged"


def row_of(protocol, model, config_dict, result, wall, args):
    secs = list(result.get("train_epoch_seconds") or [])
    test = {k.lower(): float(v) for k, v in (result.get("test_result") or {}).items()}
    history = result.get("valid_history") or []
    row = {
        "protocol": protocol, "model": model, "train_mode": config_dict.get("train_mode"),
        "device": args.device, "budget_s": args.time_budget, "status": status_of(result, args),
        "epochs": len(secs), "steps": len(secs) * result.get("train_steps_per_epoch", 0) or None,
        "best_epoch": result.get("best_epoch"), "train_s": round(sum(secs), 1),
        "wall_s": round(wall, 1),
        "s_per_epoch": round(statistics.median(secs), 2) if secs else None,
        "valid_history": history,
    }
    for key in METRIC_KEYS:
        row[key] = round(test[key], 4) if key in test else None
    paper = (PAPER.get(PAPER_ROW.get(model))
             if protocol == "lrurec" and args.dataset == "ml-1m" else None)
    for key in PAPER_KEYS:
        row["paper_" + key] = paper[key] if paper else None
    return row


def run_settings(args, protocol):
    """What a finished run's result depends on, besides the code: reused only if unchanged."""
    run = run_args(args, protocol)
    return {"epochs": run.epochs, "time_budget": run.time_budget, "seed": run.seed,
            "device": args.device, "overrides": run.overrides}


def run_one(args, protocol, model, log=print):
    """Train (or resume, or reuse) one run; returns its table row."""
    folder = run_dir(args, protocol, model)
    done = folder / "result.json"
    settings = json.loads(json.dumps(run_settings(args, protocol)))  # as stored
    if args.fresh and folder.exists():
        aside = folder.with_name(f"{folder.name}.old-{datetime.now():%Y%m%d-%H%M%S}")
        folder.rename(aside)
        log(f"== {protocol} / {model}: --fresh, the previous run moved to {aside}")
    if done.is_file():
        row = json.loads(done.read_text())
        if row.get("settings") == settings:
            log(f"== {protocol} / {model}: finished earlier, reused ({done})")
            return row
        log(f"== {protocol} / {model}: finished earlier with other settings; continuing it")
    folder.mkdir(parents=True, exist_ok=True)
    resume = latest_checkpoint(folder)
    log(f"== {protocol} / {model}" + (f": resuming from {resume}" if resume else ""))
    started = time.perf_counter()
    kwargs = {"resume": str(resume)} if resume else {}
    config_dict, result, error = accuracy.train_and_test(model, run_args(args, protocol), folder,
                                                         log, **kwargs)
    wall = time.perf_counter() - started
    if error:
        return {"protocol": protocol, "model": model, "device": args.device, "status": "error",
                "wall_s": round(wall, 1), "error": error}
    row = {**row_of(protocol, model, config_dict, result, wall, args), "settings": settings}
    done.write_text(json.dumps(row, indent=1) + "\n")
    return row


def run_in_processes(args, argv):
    """Every (protocol, model) run as ``python -m benchmarks.reproduce ... --run PROTOCOL
    MODEL``, ``args.jobs`` at a time; the rows, in the order of the runs."""
    runs = [(protocol, model) for protocol in args.protocols for model in args.models]
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]  # where `-m benchmarks.reproduce` resolves
    pending, running, codes = list(runs), [], {}
    while pending or running:
        while pending and len(running) < args.jobs:
            protocol, model = pending.pop(0)
            log = open(logs / f"{protocol}_{model}.log", "w")
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.reproduce", *argv,
                                     "--run", protocol, model], cwd=repo, stdout=log,
                                    stderr=subprocess.STDOUT)
            print(f"== {protocol} / {model}: started (pid {proc.pid}, log {log.name})",
                  flush=True)
            running.append((protocol, model, proc, log))
        time.sleep(0.5)
        for item in [r for r in running if r[2].poll() is not None]:
            protocol, model, proc, log = item
            log.close()
            codes[protocol, model] = proc.returncode
            running.remove(item)
            print(f"== {protocol} / {model}: exit {proc.returncode}", flush=True)
    rows = []
    for protocol, model in runs:
        done = run_dir(args, protocol, model) / "result.json"
        rows.append(json.loads(done.read_text()) if codes[protocol, model] == 0 and
                    done.is_file() else
                    {"protocol": protocol, "model": model, "device": args.device,
                     "status": "error", "error": f"exit {codes[protocol, model]}, see "
                                                 f"{logs / f'{protocol}_{model}.log'}"})
    return rows


def latest_checkpoint(folder):
    """The run folder (``saved/<Model>-<time>-<id>/``) of the newest interrupted run in
    ``folder``, if any: the one whose ``latest.pth`` was written last."""
    runs = sorted(folder.glob("saved/*/latest.pth"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


# -- reports ------------------------------------------------------------------------------------
def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if value < 1 else f"{value:g}"
    return str(value)


def markdown_report(meta, rows):
    lines = [
        f"# Reproduction on {meta['dataset']}",
        "",
        f"- command: `{meta['command']}`",
        f"- date (UTC): {meta['date_utc']}; device: {meta['device']}; seed {meta['seed']}",
        f"- data: {meta['dataset_check']}",
        "- budget per run: " + (f"{meta['time_budget']:g} s of fit time" if meta["time_budget"]
                                else "no time limit") + ", at most "
        f"{meta['epochs']} epochs, early stopping with patience "
        f"{meta['overrides'].get('stopping_step', COMMON['stopping_step'])} validations, "
        f"validation every {meta['overrides'].get('eval_step', 1)} epoch(s)",
        "- paper columns: LRURec (Yue et al., WSDM 2024) Table 3, ML-1M, under its own protocol "
        "(SoftmaxSASRec is SASRec's architecture, so it sits next to the paper's SASRec)",
        f"- {RECBOLE_REFERENCE}",
    ]
    for protocol in meta["protocols"]:
        mine = [r for r in rows if r["protocol"] == protocol]
        if not mine:
            continue
        lines += ["", f"## {PROTOCOLS[protocol]['title']}", "",
                  report.markdown_table(TABLE_FIELDS[1:],
                                        [[_fmt(r.get(k)) for k in TABLE_FIELDS[1:]] for r in mine])]
        errors = [r for r in mine if r.get("status") == "error"]
        lines += [f"- {r['model']}: {r.get('error', '')}" for r in errors]
    return "\n".join(lines) + "\n"


def plot_curves(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p for r in rows)]
    if not protocols:
        return
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.2), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        for r in rows:
            if r["protocol"] == protocol and r.get("valid_history"):
                epochs, scores = zip(*[(h[0], h[1]) for h in r["valid_history"]])
                ax.plot(epochs, scores, marker=".", label=r["model"])
        ax.set_title(PROTOCOLS[protocol]["title"], fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(PROTOCOLS[protocol]["config"]["valid_metric"] + " (validation)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(meta, rows, out):
    """reproduce.json, .csv, .md and reproduce_curves.png in ``out``; returns the markdown."""
    text = markdown_report(meta, rows)
    report.write_results(out, "reproduce", {"meta": meta, "rows": rows}, text, rows,
                         TABLE_FIELDS + ["error"])
    plot_curves(rows, Path(out) / "reproduce_curves.png")
    return text


def dataset_check(args):
    """Users, items and interactions after the protocol's filtering (LRURec: 6,040 / 3,416)."""
    import recbole_efficient
    from recbole_efficient.data import create_dataset

    cfg = {**COMMON, "data_path": args.data_path, **args.overrides}
    config = recbole_efficient.Config(model="LRURec", dataset=args.dataset, config_dict=cfg,
                                      read_cmd_line=False)
    ds = create_dataset(config)
    return (f"{args.dataset}: {ds.user_num - 1:,} users, {ds.item_num - 1:,} items, "
            f"{ds.inter_num:,} interactions after >= 5 filtering (LRURec Table 2: 6,040 / 3,416 / 1M)")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:  # one run of a --jobs list, in a process of its own
        row = run_one(args, *args.run)
        raise SystemExit(1 if row.get("status") == "error" else 0)

    from recbole_efficient.data.fetch import DatasetError

    try:
        checked = dataset_check(args)  # fetches the dataset by name if it is missing
    except (FileNotFoundError, DatasetError) as err:  # before any run starts; no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

    meta = {
        "command": cli.command_line("reproduce", argv),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "dataset": args.dataset, "device": args.device, "seed": args.seed, "epochs": args.epochs,
        "time_budget": args.time_budget, "protocols": args.protocols, "models": args.models,
        "overrides": args.overrides, "environment": report.environment(args.device),
        "dataset_check": checked,
    }
    print(meta["dataset_check"], flush=True)
    if args.jobs > 1:
        rows = run_in_processes(args, argv)
    else:
        rows = []
        for protocol in args.protocols:
            for model in args.models:
                rows.append(run_one(args, protocol, model))
                write_reports(meta, rows, args.out)  # a partial table survives an interruption
    text = write_reports(meta, rows, args.out)
    print(text)
    return rows


if __name__ == "__main__":
    main()
