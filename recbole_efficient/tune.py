"""Ray Tune wrapper for recbole_efficient models (and RecBole's), RecBole style.

    python -m recbole_efficient.tune --model=LRURec --params_file=hyper.test --num_samples=8

``--params_file`` uses RecBole's ``run_hyper.py`` format, one parameter per line::

    learning_rate loguniform -8,0      # exp(uniform(-8, 0))
    hidden_dropout_prob choice [0.2,0.4]
    weight_decay uniform 0,0.01
    n_layers quniform 1,4,1

Every trial runs :func:`recbole_efficient.objective_function` in a Ray worker; the worker
imports ``recbole_efficient`` first, which applies the NumPy 2 fixes there too.
"""

import argparse
import math
import os
import sys
from pathlib import Path


def parse_params_file(path):
    """RecBole hyper-parameter file -> Ray Tune search space."""
    from ray import tune

    space = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            name, kind, spec = line.split(maxsplit=2)
        except ValueError:
            raise ValueError(f"{path}: expected 'name kind values', got {raw!r}") from None
        if kind == "choice":
            import ast
            space[name] = tune.choice(ast.literal_eval(spec))
        elif kind in ("uniform", "loguniform", "quniform"):
            bounds = [float(v) for v in spec.split(",")]
            if kind == "uniform":
                space[name] = tune.uniform(*bounds[:2])
            elif kind == "loguniform":  # RecBole/hyperopt: bounds are natural-log exponents
                space[name] = tune.loguniform(math.exp(bounds[0]), math.exp(bounds[1]))
            else:
                space[name] = tune.quniform(bounds[0], bounds[1], bounds[2] if len(bounds) > 2 else 1)
        else:
            raise ValueError(f"{path}: unknown kind {kind!r} for {name} "
                             "(use choice, uniform, loguniform or quniform)")
    return space


def _absolute_paths(config_dict):
    # Ray runs each trial in its own working directory.
    out = dict(config_dict)
    for key in ("data_path", "checkpoint_dir"):
        if out.get(key):
            out[key] = os.path.abspath(out[key])
    return out


def _trial(params, base, config_file_list):
    import recbole_efficient  # noqa: F401  (NumPy 2 fixes inside the Ray worker)
    from ray import tune

    from recbole_efficient.quick_start import objective_function

    result = objective_function(config_dict={**base, **params}, config_file_list=config_file_list,
                                saved=True)
    metrics = {"best_valid_score": float(result["best_valid_score"])}
    metrics.update({f"valid_{k}": float(v) for k, v in (result["best_valid_result"] or {}).items()})
    metrics.update({f"test_{k}": float(v) for k, v in (result["test_result"] or {}).items()})
    tune.report(metrics)


def tune_model(model, dataset, param_space, num_samples=1, config_dict=None,
               config_file_list=None, storage_path=None, name=None, cpus_per_trial=1,
               gpus_per_trial=0, mode="max"):
    """Run a Ray Tune search; returns Ray's ``ResultGrid`` (best by ``best_valid_score``)."""
    import ray
    from ray import tune

    base = _absolute_paths(dict(config_dict or {}, model=model, dataset=dataset))
    files = [os.path.abspath(f) for f in (config_file_list or [])]
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base, config_file_list=files),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    storage = os.path.abspath(storage_path or os.path.join("ray_results"))
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric="best_valid_score", mode=mode, num_samples=num_samples),
        run_config=tune.RunConfig(storage_path=storage, name=name or f"{model}-{dataset}",
                                  verbose=1))
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
    return tuner.fit()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Ray Tune search for a recbole_efficient model")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--params_file", required=True)
    parser.add_argument("--config_files", default=None)
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--cpus_per_trial", type=float, default=1)
    parser.add_argument("--gpus_per_trial", type=float, default=0)
    parser.add_argument("--output_file", default=None, help="write the trials table (CSV) here")
    args, extra = parser.parse_known_args(argv)
    from recbole.config import Config as RecBoleConfig

    # --key=value overrides, typed the way RecBole types command-line values.
    overrides = RecBoleConfig._convert_config_dict(None, dict(
        a[2:].split("=", 1) for a in extra if a.startswith("--") and "=" in a))
    results = tune_model(args.model, args.dataset, parse_params_file(args.params_file),
                         num_samples=args.num_samples, config_dict=overrides,
                         config_file_list=args.config_files.split() if args.config_files else None,
                         cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial)
    best = results.get_best_result()
    print(f"best params: {best.config}")
    print(f"best result: { {k: v for k, v in best.metrics.items() if k.startswith(('valid_', 'test_'))} }")
    if args.output_file:
        results.get_dataframe().to_csv(args.output_file, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
