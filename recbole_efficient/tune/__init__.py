"""Ray Tune sweeps: per-epoch reports for ASHA, trial checkpoints, resume, honest selection.

    recbole-efficient tune --model=LRURec --dataset=ml-100k --space=space.yaml \\
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

Modules: ``space`` (reading and checking search spaces), ``trial`` (one trial, in a Ray
worker), ``sweep`` (the Tuner, resuming, selection and the test evaluation), ``cli``.
"""

from recbole_efficient.tune.cli import main
from recbole_efficient.tune.space import (KINDS, Dim, SweepError, check_space, default_space_file,
                                          load_space, to_ray)
from recbole_efficient.tune.sweep import (SCHEDULERS, SEARCHES, SweepResult, evaluate_on_test,
                                          start_ray, tune_model)

__all__ = ["KINDS", "SCHEDULERS", "SEARCHES", "Dim", "SweepError", "SweepResult", "check_space",
           "default_space_file", "evaluate_on_test", "load_space", "main", "start_ray", "to_ray",
           "tune_model"]
