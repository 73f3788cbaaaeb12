"""``recbole-efficient tune``: the sweep's command line."""

import argparse
import sys

from recbole_efficient.property_files import parse_values
from recbole_efficient.tune.sweep import SCHEDULERS, SEARCHES, tune_model


def main(argv=None):
    """``run_recbole_efficient.py tune ...``; exit status 2 on bad input, 130 if interrupted."""
    parser = argparse.ArgumentParser(
        prog="recbole-efficient tune",
        description="Ray Tune sweep of a recbole_efficient (or RecBole) model. Any other "
                    "--key=value fixes that setting for every trial.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--space", default=None,
                        help="search space: .yaml, or RecBole's hyper file (default: the model's)")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="random samples (default 10; grid: every combination once)")
    parser.add_argument("--max_concurrent", type=int, default=None)
    parser.add_argument("--cpus_per_trial", type=float, default=1)
    parser.add_argument("--gpus_per_trial", type=float, default=0, help="fractions allowed")
    parser.add_argument("--scheduler", default="asha", choices=SCHEDULERS)
    parser.add_argument("--search", default="auto", choices=SEARCHES)
    parser.add_argument("--metric", default=None, help="validation metric (default valid_metric)")
    parser.add_argument("--storage_path", default="ray_results")
    parser.add_argument("--name", default=None, help="experiment name (default <Model>-<dataset>)")
    parser.add_argument("--address", default=None, help="existing Ray cluster to attach to")
    parser.add_argument("--repeats", type=int, default=1, help="seeds per configuration")
    parser.add_argument("--max_failures", type=int, default=1, help="retries of a failed trial")
    parser.add_argument("--grace_period", type=int, default=1, help="ASHA: epochs before a stop")
    parser.add_argument("--reduction_factor", type=float, default=2, help="ASHA: 1/keep per rung")
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (settings are --key=value)")
    overrides = parse_values(a[2:].split("=", 1) for a in extra)
    try:
        sweep = tune_model(
            args.model, args.dataset, args.space,
            config_file_list=args.config_files.split() if args.config_files else None,
            config_dict=overrides, num_samples=args.num_samples,
            max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial, scheduler=args.scheduler, search=args.search,
            metric=args.metric, storage_path=args.storage_path, name=args.name,
            address=args.address, repeats=args.repeats, max_failures=args.max_failures,
            grace_period=args.grace_period, reduction_factor=args.reduction_factor)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return _print_summary(sweep)


def _print_summary(sweep):
    import pandas as pd

    with pd.option_context("display.max_columns", None, "display.width", 200,
                           "display.max_colwidth", 60):
        print(sweep.table.drop(columns=["checkpoint"]).to_string(index=False))
        if sweep.configs is not None:
            print(sweep.configs.to_string(index=False))
    print(f"trials: {sweep.experiment_dir / 'trials.csv'}")
    if not sweep.complete:
        print(f"interrupted: the sweep in {sweep.experiment_dir} is not finished; run the same "
              "command again to resume it.", file=sys.stderr)
        return 130
    if sweep.best_params is None:
        print("error: no trial finished without an error.", file=sys.stderr)
        return 1
    n_stopped = int(sweep.table["stopped_early"].sum())
    print(f"stopped early by the scheduler: {n_stopped} of {len(sweep.table)} trials")
    print(f"best params ({sweep.metric} on validation): {sweep.best_params}")
    print("best valid: " + "  ".join(f"{k}={v:.4f}" for k, v in sweep.best_valid.items()))
    print("test result: " + "  ".join(f"{k}={v:.4f}" for k, v in sweep.test_result.items()))
    print(f"best checkpoint: {sweep.best_checkpoint}")
    print(f"best config: {sweep.best_config_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
