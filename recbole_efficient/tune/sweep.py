"""The sweep: checks before Ray starts, the Tuner (new or resumed), and the summary that
selects on validation and evaluates the selected checkpoint once on the test set."""

import copy
import json
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from recbole_efficient.checkpoint import config_from_checkpoint, load_checkpoint
from recbole_efficient.config import Config
from recbole_efficient.data import create_dataset
from recbole_efficient.quick_start import prepare_run
from recbole_efficient.tune.space import (SweepError, check_space, default_space_file, load_space,
                                          to_ray)
from recbole_efficient.tune.trial import run_trial
from recbole_efficient.validation import result_keys

SCHEDULERS = ("asha", "fifo")
SEARCHES = ("auto", "random", "grid", "optuna")


@dataclass
class SweepResult:
    """What :func:`tune_model` found. ``complete`` is False when the sweep was interrupted
    (then only ``table`` and ``experiment_dir`` are filled; run it again to resume)."""

    experiment_dir: Path
    complete: bool
    table: object                  # pandas DataFrame, one row per trial, best first
    configs: object = None         # with repeats: one row per configuration, best mean first
    metric: str = ""
    best_params: dict = None
    best_valid: dict = None        # validation metrics of the best checkpoint
    best_checkpoint: str = None
    test_result: dict = None       # the best trial's test metrics (with repeats: seed mean)
    test_results: list = None      # with repeats: each seed's test metrics
    best_config_file: str = None
    results: object = None         # Ray's ResultGrid


@contextmanager
def _keep_cuda_visible_devices():
    # RecBole's Config sets CUDA_VISIBLE_DEVICES in the driver; Ray must see every GPU.
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def _check_options(space, config, num_samples, repeats, search, scheduler, metric,
                   cpus_per_trial, gpus_per_trial, max_concurrent, max_failures, address):
    problems = []
    discrete = all(d.kind in ("choice", "grid") for d in space.values())
    if search not in SEARCHES:
        problems.append(f"search={search!r}: use one of {', '.join(SEARCHES)}.")
    if scheduler not in SCHEDULERS:
        problems.append(f"scheduler={scheduler!r}: use asha or fifo.")
    if num_samples is not None and num_samples < 1:
        problems.append(f"num_samples={num_samples}: a sweep needs at least 1 sample.")
    if repeats < 1:
        problems.append(f"repeats={repeats}: use 1 (one seed) or more.")
    if repeats > 1 and "seed" in space:
        problems.append("seed is in the search space and --repeats is set: choose one.")
    if search == "grid" and not discrete:
        continuous = [n for n, d in space.items() if d.kind not in ("choice", "grid")]
        problems.append(f"search=grid needs choice/grid values only; {', '.join(continuous)} "
                        "are continuous: use search=random.")
    if (search == "grid" or (search == "auto" and discrete)) and (num_samples or 1) > 1:
        problems.append(f"num_samples={num_samples}: a grid search runs every combination once; "
                        "use --repeats for several seeds.")
    if search == "optuna":
        import importlib.util

        if importlib.util.find_spec("optuna") is None:
            problems.append("search=optuna needs the optional dependency optuna: "
                            "pip install 'recbole-efficient[optuna]' (or pip install optuna).")
        grid_dims = [n for n, d in space.items() if d.kind == "grid"]
        if grid_dims:
            problems.append(f"search=optuna samples every value; {', '.join(grid_dims)} use grid: "
                            "write choice instead.")
    if metric not in result_keys(config):
        problems.append(f"metric={metric!r} is not computed at validation; use one of "
                        f"{', '.join(result_keys(config))} (or change metrics/topk).")
    if not config["eval_step"] or config["eval_step"] < 1:
        problems.append(f"eval_step={config['eval_step']}: sweeps select on validation; "
                        "use --eval_step=1.")
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        problems.append(f"cpus_per_trial={cpus_per_trial}, gpus_per_trial={gpus_per_trial}: "
                        "use cpus > 0 and gpus >= 0 (fractions allowed).")
    if max_concurrent is not None and max_concurrent < 1:
        problems.append(f"max_concurrent={max_concurrent}: use 1 or more.")
    if max_failures < 0:
        problems.append(f"max_failures={max_failures}: use 0 or more (default 1).")
    if gpus_per_trial > 0 and address is None:
        gpus = _available("GPU")
        if gpus < gpus_per_trial:
            problems.append(f"gpus_per_trial={gpus_per_trial} but this machine has {gpus:g} GPU(s): "
                            "use --gpus_per_trial=0, or --address=<cluster> with GPUs.")
    if problems:
        raise SweepError(problems)


def _available(resource):
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get(resource, 0)
    if resource == "GPU":
        import torch

        return torch.cuda.device_count()
    return os.cpu_count() or 1


def tune_model(model, dataset="ml-100k", space=None, *, config_file_list=None,
               config_dict=None, num_samples=None, max_concurrent=None, cpus_per_trial=1,
               gpus_per_trial=0, scheduler="asha", search="auto", metric=None,
               storage_path="ray_results", name=None, address=None, repeats=1, max_failures=1,
               grace_period=1, reduction_factor=2, callbacks=None, verbose=1):
    """Run (or resume) a Ray Tune sweep of ``model`` on ``dataset``; returns a :class:`SweepResult`.

    ``space``: a space file, a ``{name: Dim}`` dict, or ``None`` for the model's default
    space. ``config_file_list``/``config_dict`` fix the other settings (``--key=value``).
    ``num_samples``: random samples (default 10; a grid search runs every combination once).
    ``search``: ``auto`` (grid when every value is a choice, else random), ``random``, ``grid``
    or ``optuna`` (TPE; optional dependency). ``scheduler``: ``asha`` (stops trials early
    after ``grace_period`` epochs, keeping 1/``reduction_factor`` at each rung) or ``fifo``.
    ``metric``: validation metric to select on (default the config's ``valid_metric``).
    ``repeats``: seeds per sampled configuration, ranked by the mean. The sweep lives in
    ``storage_path/name`` (default ``<Model>-<dataset>``); calling again with the same
    arguments resumes it. ``address``: an existing Ray cluster (``auto``, ``host:port`` or
    ``ray://host:10001``). ``callbacks``: extra Ray Tune callbacks (a resumed sweep keeps
    those it started with, as Ray restores them).

    Bad input raises :class:`SweepError` (or the config's ``ConfigError``) before Ray starts.
    """
    config_dict = dict(config_dict or {})
    for key in ("data_path", "checkpoint_dir"):  # Tune runs each trial in its own folder
        if config_dict.get(key):
            config_dict[key] = os.path.abspath(config_dict[key])
    config_files = [os.path.abspath(f) for f in (config_file_list or [])]
    with _keep_cuda_visible_devices():
        config = Config(model, dataset, config_file_list=config_files, config_dict=config_dict,
                        read_cmd_line=False)
    space_file = space
    if space is None:
        space_file = default_space_file(config["model"])
        if not space_file.is_file():
            raise SweepError(f"{config['model']} has no default search space "
                             f"({space_file}); pass one with --space=FILE.")
    if not isinstance(space, dict):
        space = load_space(space_file)
    check_space(space, config)
    metric = (metric or config["valid_metric"]).lower()
    _check_options(space, config, num_samples, repeats, search, scheduler, metric,
                   cpus_per_trial, gpus_per_trial, max_concurrent, max_failures, address)
    discrete = all(d.kind in ("choice", "grid") for d in space.values())
    search = ("grid" if discrete else "random") if search == "auto" else search
    num_samples = num_samples or (1 if search == "grid" else 10)
    mode = "max" if config["valid_metric_bigger"] else "min"

    fixed = dict(config_dict, checkpoint_dir=os.path.abspath(config["checkpoint_dir"]),
                 valid_metric=metric, seed=config["seed"])
    name = name or f"{config['model']}-{config['dataset']}"
    experiment_dir = Path(storage_path).resolve() / name
    fingerprint = json.loads(json.dumps({
        "model": config["model"], "dataset": config["dataset"], "fixed": fixed,
        "config_files": config_files, "space": {k: [d.kind, list(d.args)] for k, d in space.items()},
        "num_samples": num_samples, "repeats": repeats, "search": search, "scheduler": scheduler,
        "metric": metric, "grace_period": grace_period, "reduction_factor": reduction_factor,
    }, default=str))
    restoring = _check_restore(experiment_dir, fingerprint)

    with _keep_cuda_visible_devices():
        data = create_dataset(config)

    # Every report carries a checkpoint and only the latest is kept, so Ray snapshots the
    # experiment at each report; with short epochs it warns about that on every report.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    from ray import tune

    if not ray.is_initialized():
        start_ray(address)
    if address and gpus_per_trial > _available("GPU"):
        raise SweepError(f"gpus_per_trial={gpus_per_trial} but the cluster at {address} has "
                         f"{_available('GPU'):g} GPU(s).")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, model=config["model"], dataset_name=config["dataset"],
                             dataset=data, fixed=fixed, config_files=config_files),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    if restoring:
        print(f"Resuming the sweep in {experiment_dir}")
        tuner = tune.Tuner.restore(str(experiment_dir), trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        experiment_dir.mkdir(parents=True, exist_ok=True)
        (experiment_dir / "sweep.json").write_text(json.dumps(fingerprint, indent=1))
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(space, config, search, repeats),
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=num_samples * _repeat_factor(search, repeats),
                search_alg=_search_alg(search, metric, mode, repeats, config["seed"],
                                       max_concurrent),
                scheduler=_scheduler(scheduler, config["epochs"], grace_period, reduction_factor),
                # BasicVariantGenerator limits concurrency itself (Ray ignores this for it).
                max_concurrent_trials=max_concurrent if search == "optuna" else None,
                reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=str(experiment_dir.parent), verbose=verbose,
                callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    results = tuner.fit()
    return _summarise(results, space, config, metric, mode, repeats, experiment_dir, fixed, data,
                      _n_trials(space, search, num_samples, repeats))


def _check_restore(experiment_dir, fingerprint):
    from ray.tune import Tuner

    if not Tuner.can_restore(str(experiment_dir)):
        return False
    saved_file = experiment_dir / "sweep.json"
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else None
    if saved != fingerprint:
        changed = sorted(k for k in fingerprint if (saved or {}).get(k) != fingerprint[k])
        raise SweepError(f"{experiment_dir} holds another sweep (it differs in: "
                         f"{', '.join(changed)}); give this one another --name, or remove that "
                         "folder to start over.")
    return True


def _n_trials(space, search, num_samples, repeats):
    """How many trials the sweep plans: samples x grid combinations x seeds."""
    grid = math.prod(len(d.args) for d in space.values()
                     if d.kind == "grid" or (search == "grid" and d.kind == "choice"))
    return num_samples * grid * repeats


def _repeat_factor(search, repeats):
    # A searcher repeats each suggestion (Ray's Repeater); random/grid put seeds in the grid.
    return repeats if search == "optuna" else 1


def _param_space(space, config, search, repeats):
    from ray import tune

    params = to_ray(space, config, grid=search == "grid")
    if repeats > 1 and search != "optuna":
        params["seed"] = tune.grid_search([config["seed"] + i for i in range(repeats)])
    return params


def _search_alg(search, metric, mode, repeats, seed, max_concurrent):
    if search == "optuna":
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(metric=metric, mode=mode, seed=seed)
        return Repeater(searcher, repeat=repeats) if repeats > 1 else searcher
    from ray.tune.search import BasicVariantGenerator

    # Constant grid search: the seeds of a repeat share one random sample.
    return BasicVariantGenerator(constant_grid_search=True, random_state=seed,
                                 max_concurrent=max_concurrent or 0)


def _scheduler(kind, epochs, grace_period, reduction_factor):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if kind == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epochs_done", max_t=epochs, grace_period=grace_period,
                         reduction_factor=reduction_factor)


# -- results -----------------------------------------------------------------------------------
def _summarise(results, space, config, metric, mode, repeats, experiment_dir, fixed, data,
               n_trials):
    import pandas as pd

    rows = []
    for result in results:
        m = result.metrics or {}
        ckpt = result.checkpoint
        rows.append({
            "trial": m.get("trial_id") or Path(result.path).name,
            **{k: _cell(result.config.get(k)) for k in space},
            "seed": m.get("seed", result.config.get("seed", fixed["seed"])),
            f"best_{metric}": m.get(f"best_{metric}"),
            "best_epoch": m.get("best_epoch"),
            "epochs": m.get("epochs_done", 0),
            "stopped_early": bool(m) and result.error is None and not m.get("trial_finished"),
            "status": "error" if result.error else ("ok" if m else "not run"),
            "error": str(result.error).strip().splitlines()[-1][:200] if result.error else "",
            "checkpoint": str(Path(ckpt.path) / "best.pth") if ckpt else "",
            "_valid": {k: m[f"best_{k}"] for k in result_keys(config) if f"best_{k}" in m},
        })
    best_col = f"best_{metric}"
    table = pd.DataFrame(rows)
    table["_rank"] = table["status"].map({"ok": 0, "error": 1, "not run": 2})
    table = table.sort_values(by=["_rank", best_col], ascending=[True, mode == "min"],
                              na_position="last", ignore_index=True)
    shown = table.drop(columns=["_valid", "_rank"])
    shown.to_csv(experiment_dir / "trials.csv", index=False)
    # Trials not yet generated are absent from ``results``: count against the planned number.
    done = results.num_terminated + results.num_errors
    summary = SweepResult(experiment_dir=experiment_dir, complete=done >= n_trials, table=shown,
                          metric=metric, results=results)
    if not summary.complete:
        return summary

    ok = table[table["status"] == "ok"]
    if ok.empty:
        return summary
    params = list(space)
    configs = None
    if repeats > 1:
        configs = (ok.groupby(params, sort=False, dropna=False)
                   .agg(**{f"mean_{metric}": (best_col, "mean"), f"std_{metric}": (best_col, "std"),
                           "seeds": (best_col, "size"), "epochs": ("epochs", "mean"),
                           "stopped_early": ("stopped_early", "sum")})
                   .reset_index()
                   .sort_values(f"mean_{metric}", ascending=mode == "min", ignore_index=True))
        configs.to_csv(experiment_dir / "configs.csv", index=False)
        best_trials = ok[(ok[params] == configs.iloc[0][params]).all(axis=1)]
    else:
        best_trials = ok.iloc[:1]
    best = best_trials.iloc[0]  # within the best configuration, its best-validation seed

    # Test metrics of the selected trials only, computed after selection.
    test_results = [evaluate_on_test(row.checkpoint, data, config["gpu_id"])
                    for row in best_trials.itertuples()]
    test_result = {k: float(sum(r[k] for r in test_results) / len(test_results))
                   for k in test_results[0]}
    best_params = {p: _plain(best[p]) for p in params}
    if repeats == 1:
        best_params["seed"] = int(best["seed"])
    best_config_file = experiment_dir / "best_config.yaml"
    inputs = {k: v for k, v in fixed.items() if k not in ("seed",)}
    header = (f"# Best configuration of the sweep in {experiment_dir} (selected on validation "
              f"{metric}).\n# python run_recbole_efficient.py --model={config['model']} "
              f"--dataset={config['dataset']} --config_files={best_config_file}\n")
    best_config_file.write_text(header + yaml.safe_dump(
        {**{k: _plain(v) for k, v in inputs.items()}, **best_params}, sort_keys=False))
    (experiment_dir / "best.yaml").write_text(yaml.safe_dump({
        "trial": str(best["trial"]), "params": best_params,
        "valid": {k: float(v) for k, v in best["_valid"].items()},
        f"best_valid_{metric}": float(best[best_col]),
        "checkpoint": str(best["checkpoint"]),
        "test": test_result, "test_per_seed": test_results if repeats > 1 else None,
    }, sort_keys=False))
    summary.configs = configs
    summary.best_params = best_params
    summary.best_valid = {k: float(v) for k, v in best["_valid"].items()}
    summary.best_checkpoint = str(best["checkpoint"])
    summary.test_result = test_result
    summary.test_results = test_results
    summary.best_config_file = str(best_config_file)
    return summary


def _cell(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def _plain(value):
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value.item() if hasattr(value, "item") else value


def evaluate_on_test(checkpoint_file, dataset=None, gpu_id=None):
    """Test metrics of a checkpoint, on ``dataset`` when given (else rebuilt from its config)."""
    checkpoint = load_checkpoint(checkpoint_file)
    overrides = {"gpu_id": gpu_id} if gpu_id is not None else {}
    with _keep_cuda_visible_devices():
        config = config_from_checkpoint(checkpoint, overrides)
    # A RecBole dataset is built (split) once; each evaluation splits its own copy.
    dataset = copy.deepcopy(dataset) if dataset is not None else None
    _, (_, _, test_data), trainer = prepare_run(config, dataset)
    result = trainer.evaluate(test_data, model_file=checkpoint_file)
    return {k: float(v) for k, v in result.items()}


def start_ray(address=None, **kwargs):
    """``ray.init`` for sweeps: local workers run this interpreter with this ``sys.path``,
    whatever folder the driver was started from.

    Ray's ``uv run`` hook (on by default) would ship the uv project of the working folder to
    the workers instead, and raises when that folder is outside the project; it is turned off
    unless ``RAY_ENABLE_UV_RUN_RUNTIME_ENV`` is set. ``kwargs`` go to ``ray.init``.
    """
    os.environ.setdefault(_UV_HOOK, "0")
    import ray

    try:  # Ray reads the variable once, when it is first imported
        from ray._private import ray_constants
        ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = os.environ[_UV_HOOK].lower() in ("1", "true")
    except (ImportError, AttributeError):
        pass
    env = {} if address else {"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=env,
             **kwargs)


_UV_HOOK = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"
