"""Accuracy of several models on one dataset, one protocol and an equal training budget.

    python -m benchmarks.accuracy --models SoftmaxSASRec SASRec --dataset ml-1m \\
        --data_path ../shared/datasets --time_budget 600 --eval_mode full --MAX_ITEM_LIST_LENGTH=200

Each model is trained through ``recbole_efficient.run_recbole_efficient`` (the CLI's own code
path) in a temporary working directory of its own (RecBole writes log/, log_tensorboard/ and
saved/ under the working directory), with the same dataset, split, evaluation mode, seed and
budget: ``--epochs`` and/or ``--time_budget`` seconds (the trainer's ``train_time_budget``,
counted over ``fit`` including validation: no new epoch starts once it is spent, then the best
checkpoint is tested). Early stopping (``stopping_step``) still applies unless overridden. Any other
``--key=value`` is passed to every model as a config override.

``--train_mode`` applies to recbole_efficient models; RecBole's models always train in
RecBole's ``augmented`` mode. ``--eval_mode`` is RecBole's ``eval_args.mode`` for validation
and test (full ranking or 100 uniform / popularity-sampled negatives).

Outputs in ``--out``: accuracy.json (meta + rows), accuracy.csv, accuracy.md and each model's
RecBole log under logs/.
"""

from __future__ import annotations

import copy
import os
import shutil
import statistics
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import recbole_efficient
from benchmarks import cli, models, report
from recbole_efficient.model import get_model, is_efficient_model

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "accuracy"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
EVAL_MODES = ("full", "uni100", "pop100")
METRICS = ["Recall", "MRR", "NDCG", "Hit"]
TOPK = 10
RESULT_KEYS = ["ndcg@10", "hit@10", "mrr@10", "recall@10"]
TABLE_FIELDS = ["model", "train_mode", "status", "epochs", "train_seconds", "seconds_per_epoch",
                "ndcg@10", "hit@10", "mrr@10", "recall@10", "valid_ndcg@10", "wall_seconds"]


def build_parser():
    p = cli.parser("accuracy", __doc__, overrides_for="model")
    p.add_argument("--models", nargs="+", default=None,
                   help="model class names (default: every recbole_efficient model, then SASRec)")
    p.add_argument("--dataset", default="ml-100k")  # ships inside RecBole: works offline
    p.add_argument("--data_path", default=str(SHARED_DATA) if SHARED_DATA.is_dir() else None,
                   help="folder holding <dataset>/<dataset>.inter")
    p.add_argument("--train_mode", choices=["augmented", "all_positions"], default=None,
                   help="for recbole_efficient models (default: each model's yaml)")
    p.add_argument("--eval_mode", choices=EVAL_MODES, default="full",
                   help="RecBole eval_args.mode for validation and test")
    p.add_argument("--exclude_history", action="store_true",
                   help="full-sort evaluation masks the items of the input sequence")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per model (default: 10000 with --time_budget, else 50)")
    p.add_argument("--time_budget", type=float, default=None,
                   help="wall-clock training seconds per model (train_time_budget)")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p


def parse_args(argv=None):
    args = cli.parse_with_overrides(build_parser(), argv)
    args.models = args.models or models.default_models()
    if args.epochs is None:
        args.epochs = 10_000 if args.time_budget else 50
    if args.data_path:
        args.data_path = str(Path(args.data_path).resolve())  # runs chdir into temp dirs
    return args


def model_config_dict(name, args):
    """The config_dict that every model gets, plus what depends on the model."""
    cfg = {
        "seed": args.seed, "reproducibility": True, "show_progress": False,
        "epochs": args.epochs, "train_time_budget": args.time_budget,
        "metrics": METRICS, "topk": [TOPK], "valid_metric": f"NDCG@{TOPK}",
        "exclude_history": bool(args.exclude_history),
    }
    if args.data_path:
        cfg["data_path"] = args.data_path
    cfg.update(args.overrides)
    efficient = is_efficient_model(get_model(name))
    if efficient and args.train_mode:
        cfg["train_mode"] = args.train_mode
    elif not efficient:
        cfg["train_mode"] = "augmented"
    loss = cfg.get("loss_type", models.model_yaml_defaults(name).get("loss_type", "CE"))
    if loss == "CE" and "train_neg_sample_args" not in cfg:
        cfg["train_neg_sample_args"] = None
    # eval_args given in a config_dict replaces the whole dict: start from the resolved one.
    base = recbole_efficient.Config(model=name, dataset=args.dataset, config_dict=cfg,
                                    read_cmd_line=False)
    eval_args = copy.deepcopy(base["eval_args"])
    eval_args["mode"] = {"valid": args.eval_mode, "test": args.eval_mode}
    cfg["eval_args"] = eval_args
    cfg["train_mode"] = base["train_mode"]
    return cfg


def row_from_result(name, config_dict, result, wall_seconds):
    """One table row from ``run_recbole_efficient``'s result dict."""
    secs = list(result.get("train_epoch_seconds") or [])
    test = {k.lower(): float(v) for k, v in (result.get("test_result") or {}).items()}
    valid = {k.lower(): float(v) for k, v in (result.get("best_valid_result") or {}).items()}
    row = {
        "model": name, "train_mode": config_dict.get("train_mode"), "status": "ok",
        "epochs": len(secs), "train_seconds": round(sum(secs), 1),
        "seconds_per_epoch": round(statistics.median(secs), 2) if secs else None,
        "wall_seconds": round(wall_seconds, 1),
        "valid_ndcg@10": round(valid[f"ndcg@{TOPK}"], 4) if f"ndcg@{TOPK}" in valid else None,
    }
    for key in RESULT_KEYS:
        row[key] = round(test[key], 4) if key in test else None
    row["test_result"] = test
    return row


def train_and_test(name, args, workdir, log=print, **run_kwargs):
    """``(config_dict, result, error)`` of one model trained and tested in ``workdir``.

    ``run_kwargs`` go to ``run_recbole_efficient``; one failing model does not stop the others:
    its traceback is logged and ``error`` says what failed.
    """
    cwd = os.getcwd()
    config_dict, result, error = {"train_mode": None}, None, None
    try:
        os.chdir(workdir)
        config_dict = model_config_dict(name, args)
        result = recbole_efficient.run_recbole_efficient(
            model=name, dataset=args.dataset, config_dict=config_dict, saved=True,
            read_cmd_line=False, **run_kwargs)
    except Exception as err:  # noqa: BLE001
        log(traceback.format_exc())
        error = f"{type(err).__name__}: {err}"[:500]
    finally:
        os.chdir(cwd)
    return config_dict, result, error


def run_model(name, args, log=print):
    """Train and test one model in its own temporary working directory."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"accuracy_{name}_") as workdir:
        config_dict, result, error = train_and_test(name, args, workdir, log)
        _keep_logs(Path(workdir), Path(args.out) / "logs", name)
    if error:
        return {"model": name, "train_mode": config_dict.get("train_mode"), "status": "error",
                "wall_seconds": round(time.perf_counter() - started, 1), "error": error}
    return row_from_result(name, config_dict, result, time.perf_counter() - started)


def _keep_logs(workdir, dest, name):
    logs = sorted((workdir / "log").rglob("*.log")) if (workdir / "log").is_dir() else []
    if logs:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(logs[-1], dest / f"{name}.log")


def _fmt(key, value):
    if value is None:
        return ""
    if key in RESULT_KEYS or key.startswith("valid_"):
        return f"{float(value):.4f}"
    return str(value)


def markdown_report(meta, rows):
    lines = [
        "# Accuracy under one protocol and an equal budget",
        "",
        f"- command: `{meta.get('command') or ''}`",
        f"- date (UTC): {meta.get('date_utc', '')}",
        f"- dataset: {meta.get('dataset')}; eval mode: {meta.get('eval_mode')}; "
        f"exclude_history: {meta.get('exclude_history')}; seed: {meta.get('seed')}",
        f"- budget per model: {meta.get('epochs')} epochs"
        + (f" or {meta['time_budget']:g} s of wall-clock fit time, training and validation "
           "(train_time_budget: whichever ends first; the epoch running when the budget runs "
           "out is finished)" if meta.get("time_budget") else ""),
        "- metrics on the test split at the best validation NDCG@10 checkpoint; train_seconds is "
        "the sum of training epochs (evaluation excluded); wall_seconds includes data loading "
        "and evaluation",
    ]
    if meta.get("overrides"):
        lines.append("- overrides: " + ", ".join(f"`{k}={v}`" for k, v in meta["overrides"].items()))
    lines += ["", report.markdown_table(TABLE_FIELDS, [[_fmt(k, r.get(k)) for k in TABLE_FIELDS]
                                                       for r in rows])]
    errors = [r for r in rows if r.get("status") != "ok"]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r['model']}: {r.get('error', '')}" for r in errors]
    return "\n".join(lines) + "\n"


def write_tables(meta, rows, out):
    """accuracy.json, accuracy.csv and accuracy.md in ``out``; returns the markdown."""
    text = markdown_report(meta, rows)
    report.write_results(out, "accuracy", {"meta": meta, "rows": rows}, text, rows,
                         TABLE_FIELDS + ["error"])
    return text


def main(argv=None):
    args = parse_args(argv)
    meta = {
        "command": cli.command_line("accuracy", argv),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "dataset": args.dataset, "data_path": args.data_path, "eval_mode": args.eval_mode,
        "exclude_history": bool(args.exclude_history), "epochs": args.epochs,
        "time_budget": args.time_budget, "seed": args.seed, "train_mode": args.train_mode,
        "overrides": args.overrides, "models": args.models, "environment": report.environment(),
    }
    rows = []
    for name in args.models:
        print(f"== {name}", flush=True)
        rows.append(run_model(name, args))
        write_tables(meta, rows, args.out)  # partial results survive an interrupted run
    text = write_tables(meta, rows, args.out)
    print(text)
    return rows


if __name__ == "__main__":
    main()
