"""Ray Tune sweeps: per-epoch reports for ASHA, trial checkpoints, resume, honest selection.

    python run_recbole_efficient.py tune --model=LRURec --dataset=ml-100k --space=space.yaml \\
        --num_samples=8 --max_concurrent=2 --epochs=10

Each trial trains through the command line's own trainer (:func:`prepare_run`) and reports
after every validation, with the validation metrics and its run folder (``best.pth`` +
``latest.pth``) as the Ray checkpoint; a trial restarted after a failure resumes from it.
Trials are compared on validation only; the best trial's best checkpoint is then evaluated
once on the test set. Running the same command again resumes an interrupted sweep.

Search spaces come from a yaml file (``name: {kind: values}``), RecBole's hyper-parameter file
(``name kind values``, any other extension), or the model's default
``properties/tune/<Model>.yaml``. Kinds: ``choice [values]``, ``grid [values]``,
``uniform [low, high]``, ``quniform [low, high, q]``, ``loguniform [low, high]`` and
``randint [low, high)``. In RecBole's format, ``loguniform`` bounds are natural-log
exponents (``learning_rate loguniform -8,0`` draws exp(U(-8, 0))); in yaml they are plain.
"""

import argparse
import ast
import copy
import difflib
import json
import math
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from recbole.evaluator.register import metric_information
from recbole.utils.argument_list import dataset_arguments

from recbole_efficient.config import Config
from recbole_efficient.properties import parse_values, properties_dir, yaml_loader

KINDS = ("choice", "grid", "uniform", "quniform", "loguniform", "randint")
_N_ARGS = {"uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3}
SCHEDULERS = ("asha", "fifo")
SEARCHES = ("auto", "random", "grid", "optuna")
#: Keys that change the dataset, which a sweep builds once, or the trial's placement.
_FIXED_PER_SWEEP = frozenset(dataset_arguments) | {"model", "dataset", "data_path", "train_mode", "eval_args", "repeatable", "gpu_id",
     "checkpoint_dir", "valid_metric", "valid_metric_bigger", "eval_step"}


class SweepError(ValueError):
    """Bad sweep input, found before Ray starts; one line per problem."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid sweep:" + "".join(f"\n  - {p}" for p in self.problems))

    def __reduce__(self):
        return type(self), (self.problems,)


@dataclass(frozen=True)
class Dim:
    """One dimension of a search space: a kind of :data:`KINDS` and its arguments."""

    kind: str
    args: tuple
    where: str = field(default="", compare=False)  # "file:line: text", quoted in errors


# -- search spaces -----------------------------------------------------------------------------
def default_space_file(model):
    """``properties/tune/<Model>.yaml``, the default space of one of our models."""
    return properties_dir() / "tune" / f"{model}.yaml"


def load_space(path):
    """Parse a yaml (``.yaml``/``.yml``) or RecBole hyper-parameter file into ``{name: Dim}``."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"search space file {path} does not exist.")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        return _parse_yaml(path, text)
    return _parse_hyper(path, text)


def _make_dim(kind, values, where, log_exponents=False):
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(KINDS)}.")
    if kind in ("choice", "grid"):
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{where}: {kind} needs a non-empty list of values, e.g. [0.1, 0.2].")
        return Dim(kind, tuple(values), where)
    n = _N_ARGS[kind]
    shape = "[low, high, q]" if n == 3 else "[low, high]"
    if (not isinstance(values, (list, tuple)) or len(values) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise ValueError(f"{where}: {kind} needs {n} numbers {shape}, got {values!r}.")
    low, high = values[0], values[1]
    if log_exponents and kind == "loguniform":
        low, high = math.exp(low), math.exp(high)
    if not low < high:
        raise ValueError(f"{where}: bounds reversed or empty: low {low:g} must be below high {high:g}.")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}: loguniform needs bounds above 0, got low {low:g} "
                         "(RecBole hyper files give natural-log exponents instead).")
    if kind == "quniform" and not values[2] > 0:
        raise ValueError(f"{where}: quniform's step q must be above 0, got {values[2]!r}.")
    if kind == "randint" and not all(float(v).is_integer() for v in values):
        raise ValueError(f"{where}: randint needs integer bounds, got {values!r}.")
    return Dim(kind, (low, high, *values[2:]), where)


def _parse_yaml(path, text):
    try:
        data = yaml.load(text, Loader=yaml_loader())
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML ({err}).") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected one line per parameter, 'name: {{kind: values}}', "
                         "e.g. 'learning_rate: {loguniform: [1.0e-4, 1.0e-2]}'.")
    lines = text.splitlines()
    space, problems = {}, []
    for name, spec in data.items():
        lineno = next((i for i, line in enumerate(lines, 1)
                       if line.strip().startswith(f"{name}:")), 0)
        where = f"{path}:{lineno}: {lines[lineno - 1].strip()!r}" if lineno else f"{path}: {name}"
        if not (isinstance(spec, dict) and len(spec) == 1):
            problems.append(f"{where}: expected '{name}: {{kind: values}}' with kind one of "
                            f"{', '.join(KINDS)}.")
            continue
        (kind, values), = spec.items()
        try:
            space[str(name)] = _make_dim(kind, values, where)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise SweepError(problems)
    return space


def _parse_hyper(path, text):
    space, problems = {}, []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{lineno}: {raw.strip()!r}"
        parts = line.split(maxsplit=2)
        if len(parts) != 3:
            problems.append(f"{where}: expected 'name kind values', e.g. "
                            "'learning_rate loguniform -8,0' or 'hidden_size choice [64,128]'.")
            continue
        name, kind, spec = parts
        if name in space:
            problems.append(f"{where}: {name} is given twice.")
            continue
        try:
            values = ast.literal_eval(spec if kind in ("choice", "grid") else f"[{spec}]")
            space[name] = _make_dim(kind, values, where, log_exponents=True)
        except (ValueError, SyntaxError) as err:
            problems.append(str(err) if isinstance(err, ValueError) and str(err).startswith(str(path))
                            else f"{where}: cannot read the values {spec!r}.")
    if problems:
        raise SweepError(problems)
    if not space:
        raise SweepError(f"{path}: the search space is empty.")
    return space


def _declared_keys(model_class):
    from recbole_efficient.config import FRAMEWORK_SPEC
    from recbole_efficient.validation import Key, collect_spec

    keys, _ = collect_spec(model_class)
    for item in FRAMEWORK_SPEC:
        if isinstance(item, Key):
            keys.setdefault(item.name, item)
    return keys


def _is_int_key(name, config, declared):
    if name in declared:
        return declared[name].kind == "int"
    default = config.final_config_dict.get(name)
    return isinstance(default, int) and not isinstance(default, bool)


def _extremes(dim, integer):
    """The values a dimension can produce that are worth checking against a key's range."""
    low, high = dim.args[0], dim.args[1] if len(dim.args) > 1 else None
    if dim.kind in ("choice", "grid"):
        return list(dim.args)
    if dim.kind == "randint":
        return [int(low), int(high) - 1]
    if dim.kind == "quniform":
        q = dim.args[2]
        top = math.floor(high / q) * q
        return [int(low), int(top)] if integer else [low, top]
    return [low, math.nextafter(high, low)]  # uniform, loguniform: high is never drawn


def check_space(space, config):
    """Every key known to the model and not fixed per sweep, every value in its range."""
    declared = _declared_keys(config.model_class)
    known = set(config.final_config_dict) | set(declared)
    problems = []
    for name, dim in space.items():
        if name in _FIXED_PER_SWEEP:
            problems.append(f"{dim.where}: {name} cannot vary within a sweep (the dataset is built "
                            f"once and trials are placed by Ray); fix it with --{name}=... instead.")
            continue
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{dim.where}: {config['model']} has no setting {name!r}{hint}.")
            continue
        key = declared.get(name)
        if key is None:
            continue
        for value in _extremes(dim, key.kind == "int"):
            why = key.problem(value)
            if why:
                problems.append(f"{dim.where}: {name}={value!r} {why}.")
                break
    if problems:
        raise SweepError(problems)


def to_ray(space, config, grid=False):
    """Ray Tune param space of ``space``; ``grid`` turns every choice into a grid search."""
    from ray import tune

    declared = _declared_keys(config.model_class)
    out = {}
    for name, dim in space.items():
        a = dim.args
        if dim.kind == "grid" or (dim.kind == "choice" and grid):
            out[name] = tune.grid_search(list(a))
        elif dim.kind == "choice":
            out[name] = tune.choice(list(a))
        elif dim.kind == "uniform":
            out[name] = tune.uniform(*a)
        elif dim.kind == "loguniform":
            out[name] = tune.loguniform(*a)
        elif dim.kind == "randint":
            out[name] = tune.randint(int(a[0]), int(a[1]))
        elif _is_int_key(name, config, declared) and all(float(v).is_integer() for v in a):
            out[name] = tune.qrandint(*(int(v) for v in a))  # RecBole files quniform int keys
        else:
            out[name] = tune.quniform(*a)
    return out


# -- trials ------------------------------------------------------------------------------------
def _trial(params, model, dataset_name, dataset, fixed, config_files):
    """One Ray Tune trial: the command line's training path plus a report after each epoch."""
    import logging

    import ray
    from ray import tune
    from recbole.utils import init_logger, init_seed

    import recbole_efficient  # noqa: F401  (NumPy 2 fixes inside the Ray worker)
    from recbole_efficient.checkpoint import BEST, LATEST, make_run_dir
    from recbole_efficient.quick_start import prepare_run

    settings = dict(fixed, show_progress=False)
    settings.update({k: v for k, v in params.items() if k != "__trial_index__"})
    if "__trial_index__" in params:  # seed repeats under a searcher (Ray's Repeater)
        settings["seed"] = fixed["seed"] + params["__trial_index__"]
    # RecBole's Config would point CUDA_VISIBLE_DEVICES at gpu_id ('0' by default): use Ray's.
    settings["gpu_id"] = ",".join(str(i) for i in ray.get_gpu_ids())
    config = Config(model, dataset_name, config_file_list=config_files, config_dict=settings,
                    read_cmd_line=False)
    logging.getLogger().handlers.clear()  # a reused worker must not log into the last trial
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    _, (train_data, valid_data, _), trainer = prepare_run(config, dataset)

    restored = tune.get_checkpoint()
    if restored is not None:
        run_dir = make_run_dir(config["checkpoint_dir"], config["model"])
        with restored.as_directory() as folder:
            for name in (BEST, LATEST):
                if (Path(folder) / name).is_file():
                    shutil.copy2(Path(folder) / name, run_dir / name)
        trainer.resume_checkpoint(run_dir)

    def report(trainer, epoch, valid_result, final):
        if valid_result is None and not final:
            return
        valid_result = valid_result or trainer.last_validation[1] or {}
        # This epoch's validation (what ASHA compares) and the best epoch's (what selects).
        metrics = {k: float(v) for k, v in valid_result.items()}
        metrics.update({f"best_{k}": float(v) for k, v in (trainer.best_valid_result or {}).items()})
        metrics.update(epoch=epoch, epochs_done=epoch + 1, best_epoch=trainer.best_epoch,
                       trial_finished=final,
                       seed=config["seed"], gpu_ids=config["gpu_id"],
                       cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(trainer.run_dir)))

    trainer.epoch_end_hooks.append(report)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    if trainer.fault:
        raise RuntimeError(trainer.fault)


# -- the sweep ---------------------------------------------------------------------------------
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


def _metric_names(config):
    """The keys of RecBole's validation result for this config (``ndcg@10``, ``auc``, ...)."""
    names = []
    for m in (m.lower() for m in config["metrics"]):
        need = metric_information.get(m, ())
        at_k = "rec.topk" in need or "rec.items" in need
        names += [f"{m}@{k}" for k in config["topk"] or []] if at_k else [m]
    return names


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
    if metric not in _metric_names(config):
        problems.append(f"metric={metric!r} is not computed at validation; use one of "
                        f"{', '.join(_metric_names(config))} (or change metrics/topk).")
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
    from recbole_efficient.data import create_dataset

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
        tune.with_parameters(_trial, model=config["model"], dataset_name=config["dataset"],
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
            "_valid": {k: m[f"best_{k}"] for k in _metric_names(config) if f"best_{k}" in m},
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
    from recbole_efficient.checkpoint import load_checkpoint
    from recbole_efficient.quick_start import config_from_checkpoint, prepare_run

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


# -- command line ------------------------------------------------------------------------------
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
