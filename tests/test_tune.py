"""Ray Tune sweeps on tiny data and a local Ray with 2 CPUs and 2 declared GPUs."""

import math
import os
import signal

import pytest
import torch
from ray import tune

from recbole_efficient import Config, run_recbole_efficient
from recbole_efficient.model import MODELS
from recbole_efficient.tune import (Dim, check_space, default_space_file, evaluate_on_test,
                                    load_space, main, start_ray, to_ray, tune_model)

from helpers import TINY, write_tiny_dataset

#: Settings fixed for every trial: tiny model, few epochs.
FIXED = {"MAX_ITEM_LIST_LENGTH": 8, "hidden_size": 16, "n_layers": 1, "n_heads": 1,
         "inner_size": 32, "train_batch_size": 32, "epochs": 4, "show_progress": False,
         "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module. Its 2 GPUs are declared only (no CUDA here): Ray still
    assigns them, which is what trials must follow."""
    import ray

    # Earlier tests' RecBole Configs set CUDA_VISIBLE_DEVICES=0 in this process; Ray would
    # then see one GPU only.
    visible = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    start_ray(num_cpus=2, num_gpus=2)
    yield ray
    ray.shutdown()
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible


@pytest.fixture
def sweep(local_ray, data_root, tmp_path, monkeypatch):
    """``sweep(model, space_text, **options)`` on the tiny data, stored under tmp_path."""
    monkeypatch.chdir(tmp_path)

    def run(model, space_text, suffix=".yaml", fixed=None, **options):
        space = tmp_path / f"space{suffix}"
        space.write_text(space_text)
        options.setdefault("max_concurrent", 2)
        return tune_model(model, TINY, str(space), storage_path=str(tmp_path / "ray"),
                          config_dict={**FIXED, "data_path": str(data_root), **(fixed or {})},
                          verbose=0, **options)

    return run


def _reports(result):
    return result.metrics_dataframe


# -- sweeps --------------------------------------------------------------------------------------
def test_tiny_asha_sweep(sweep):
    """2 configurations x 2 seeds, ASHA with grace period 1: outputs written, one report per
    epoch, at least one trial stopped before its last epoch, configurations ranked by their
    seed mean. One trial at a time, so that the order in which trials reach a rung, on which
    ASHA's decisions depend, is fixed."""
    result = sweep("LRURec", "learning_rate: {choice: [1.0e-2, 1.0e-9]}\n", repeats=2,
                   max_concurrent=1)
    assert result.complete and len(result.table) == 4
    assert set(result.table["seed"]) == {2020, 2021}
    folder = result.experiment_dir
    for name in ("trials.csv", "configs.csv", "best_config.yaml", "best.yaml", "sweep.json"):
        assert (folder / name).is_file(), name
    assert os.path.isfile(result.best_checkpoint)
    assert result.table["stopped_early"].sum() >= 1
    assert (result.table.loc[~result.table["stopped_early"], "epochs"] == FIXED["epochs"]).all()
    for trial in result.results:
        reports = _reports(trial)
        assert list(reports["epochs_done"]) == list(range(1, len(reports) + 1))
        assert not [c for c in reports.columns if c.startswith("test")]  # never reported

    metric = result.metric
    configs = result.configs
    assert len(configs) == 2 and (configs["seeds"] == 2).all()
    assert configs[f"mean_{metric}"].is_monotonic_decreasing
    best_lr = configs.iloc[0]["learning_rate"]
    seeds = result.table[result.table["learning_rate"] == best_lr][f"best_{metric}"]
    assert math.isclose(configs.iloc[0][f"mean_{metric}"], seeds.mean())
    assert result.best_params == {"learning_rate": best_lr}
    assert len(result.test_results) == 2  # each seed of the best configuration, once
    best_config = Config("LRURec", TINY, config_file_list=[result.best_config_file],
                         read_cmd_line=False)
    assert best_config["learning_rate"] == best_lr


def test_failing_trial_does_not_stop_the_sweep(sweep):
    """n_heads=3 does not divide hidden_size=16: that trial raises, the other carries on and is
    the best. (Retries are tested with a killed trial below.) The best config, trained from the
    command line's code path, gives the best trial's validation exactly: one training path."""
    result = sweep("SoftmaxSASRec", "n_heads grid [1,3]\n", suffix=".test", max_failures=0,
                   fixed={"epochs": 2})
    table = result.table
    assert list(table["status"]) == ["ok", "error"] and list(table["n_heads"]) == [1, 3]
    assert "not divisible" in table.iloc[1]["error"]
    assert result.best_params == {"n_heads": 1, "seed": 2020}
    assert result.best_checkpoint == table.iloc[0]["checkpoint"]
    again = run_recbole_efficient("SoftmaxSASRec", TINY, read_cmd_line=False,
                                  config_file_list=[result.best_config_file])
    assert again["best_valid_score"] == table.iloc[0][f"best_{result.metric}"]
    assert {k: float(v) for k, v in again["best_valid_result"].items()} == result.best_valid


class _KillAtEpoch2(tune.Callback):
    """Driver callback: SIGKILL the process of the first trial that reports epoch 2."""

    def __init__(self):
        self.reports, self.killed = [], None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.reports.append((trial.trial_id, result["epochs_done"], result["pid"]))
        if self.killed is None and result["epochs_done"] == 2:
            self.killed = trial.trial_id
            os.kill(result["pid"], signal.SIGKILL)


def test_killed_trial_resumes_from_its_checkpoint(sweep):
    """Two identical trials, at the same time, one GPU each; one is SIGKILLed at its epoch-2
    report. Ray retries it from its last checkpoint (epoch 1 or 2, depending on whether Ray had
    registered the one of epoch 2): the epochs continue instead of starting over, and it ends
    exactly like its twin. Every trial runs on the GPU Ray assigned it."""
    kill = _KillAtEpoch2()
    result = sweep("LRURec", "learning_rate: {choice: [0.001]}\n", search="random",
                   num_samples=2, scheduler="fifo", callbacks=[kill], fixed={"epochs": 3},
                   gpus_per_trial=1)
    assert kill.killed is not None and (result.table["status"] == "ok").all()
    killed = [(epochs, pid) for trial, epochs, pid in kill.reports if trial == kill.killed]
    epochs = [e for e, _ in killed]
    assert epochs[:2] == [1, 2] and epochs[2] in (2, 3)
    assert epochs == epochs[:2] + list(range(epochs[2], 4))
    assert killed[1][1] != killed[2][1]  # a new process took over
    twins = [trial.metrics for trial in result.results]
    assert twins[0][f"best_{result.metric}"] == twins[1][f"best_{result.metric}"]
    weights = [torch.load(p, weights_only=True)["state_dict"] for p in result.table["checkpoint"]]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    gpus = set()
    for trial in result.results:
        reports = _reports(trial)
        assert (reports["gpu_ids"] == reports["cuda_visible_devices"]).all()
        gpus |= set(reports["gpu_ids"])
    assert gpus == {"0", "1"}  # two trials at a time, each on its own GPU, as Ray assigned


class _InterruptOnce(tune.Callback):
    """SIGINT to the driver when the first trial completes; once, as Ray restores callbacks."""

    def __init__(self, marker):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep, tmp_path):
    space = "learning_rate: {choice: [0.001, 0.002]}\n"
    options = dict(scheduler="fifo", max_concurrent=1, fixed={"epochs": 2})
    first = sweep("LRURec", space, callbacks=[_InterruptOnce(str(tmp_path / "fired"))], **options)
    assert not first.complete
    done_before = {row.trial for row in first.table.itertuples() if row.epochs == 2}
    assert done_before

    second = sweep("LRURec", space, **options)  # the same command
    assert second.complete and (second.table["status"] == "ok").all() and len(second.table) == 2
    for trial in second.results:
        assert list(_reports(trial)["epochs_done"]) == [1, 2]  # nothing ran twice


def _history_dataset(root, n_users=30, n_items=60, seed=3):
    """Each user's validation item repeats an item of their history, the test item is new."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "hist"
    folder.mkdir()
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, n_users + 1):
        items = list(rng.choice(np.arange(1, n_items + 1), size=8, replace=False))
        items.insert(-1, items[-2])  # validation target: a repeat of the item before it
        lines += [f"u{u}\ti{i}\t{t}" for t, i in enumerate(items)]
    (folder / "hist.inter").write_text("\n".join(lines) + "\n")
    return root


def test_selection_uses_validation_only(local_ray, tmp_path, monkeypatch):
    """exclude_history only changes evaluation: both trials learn the same weights. Masking the
    history zeroes validation (its targets are repeats) and helps test (new items): the
    best-validation trial is not the best-test trial, and the sweep picks it anyway."""
    monkeypatch.chdir(tmp_path)
    root = _history_dataset(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("exclude_history: {choice: [false, true]}\n")
    result = tune_model("LRURec", "hist", str(space), storage_path=str(tmp_path / "ray"),
                        scheduler="fifo", verbose=0,
                        config_dict={**FIXED, "epochs": 1, "data_path": str(root)})
    by_choice = {row["exclude_history"]: row for row in result.table.to_dict("records")}
    assert result.best_params["exclude_history"] is False
    assert by_choice[False][f"best_{result.metric}"] > 0
    assert by_choice[True][f"best_{result.metric}"] == 0
    other_test = evaluate_on_test(by_choice[True]["checkpoint"])
    assert other_test["ndcg@10"] > result.test_result["ndcg@10"]  # better on test, not chosen


# -- spaces and bad input -----------------------------------------------------------------------
def test_both_space_formats_parse_to_the_same_space(tmp_path):
    hyper = tmp_path / "hyper.test"
    hyper.write_text("learning_rate loguniform -8,0\nhidden_size choice [16,32]\n"
                     "hidden_dropout_prob uniform 0.1,0.5   # comment\nn_layers quniform 1,4,1\n")
    yml = tmp_path / "space.yaml"
    yml.write_text(f"learning_rate: {{loguniform: [{math.exp(-8)!r}, 1.0]}}\n"
                   "hidden_size: {choice: [16, 32]}\nhidden_dropout_prob: {uniform: [0.1, 0.5]}\n"
                   "n_layers: {quniform: [1, 4, 1]}\n")
    space = load_space(hyper)
    assert space == load_space(yml)
    assert space["learning_rate"] == Dim("loguniform", (math.exp(-8), 1.0))
    config = Config("LRURec", "ml-100k", read_cmd_line=False)
    check_space(space, config)
    ray_space = to_ray(space, config)
    assert all(isinstance(ray_space["n_layers"].sample(), int) for _ in range(5))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_has_a_valid_default_space(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    check_space(load_space(default_space_file(name)), Config(name, "ml-100k", read_cmd_line=False))


BAD_INPUT = [
    ("space.test", "learning_rate normal 0,1", [],
     ["'learning_rate normal 0,1'", "unknown distribution 'normal'"]),
    ("space.test", "learning_rate loguniform", [],
     ["'learning_rate loguniform'", "expected 'name kind values'"]),
    ("space.test", "hiden_size choice [16,32]", [],
     ["'hiden_size choice [16,32]'", "no setting 'hiden_size' (did you mean hidden_size?)"]),
    ("space.test", "learning_rate uniform 0.1,0.01", [], ["bounds reversed"]),
    ("space.test", "hidden_dropout_prob uniform 0.5,1.5", [],
     ["'hidden_dropout_prob uniform 0.5,1.5'", "hidden_dropout_prob=1.4999", "[0, 1)"]),
    ("space.test", "MAX_ITEM_LIST_LENGTH choice [8,16]", [], ["cannot vary within a sweep"]),
    ("space.yaml", "learning_rate: [loguniform, 1.0e-4, 1.0e-2]", [],
     ["'learning_rate: [loguniform, 1.0e-4, 1.0e-2]'", "expected 'learning_rate: {kind: values}'"]),
    ("space.test", "learning_rate uniform 0.001,0.01", ["--num_samples=0"],
     ["num_samples=0: a sweep needs at least 1 sample"]),
    ("space.test", "learning_rate uniform 0.001,0.01", ["--gpus_per_trial=0.5"],
     ["gpus_per_trial=0.5 but this machine has 0 GPU(s)"]),
    ("space.test", "learning_rate uniform 0.001,0.01", ["--metric=auc"], ["metric='auc'"]),
]


@pytest.mark.parametrize("file,text,args,expected", BAD_INPUT)
def test_bad_input_fails_before_ray_starts(tmp_path, monkeypatch, capsys, file, text, args,
                                           expected):
    import ray

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / file).write_text(text + "\n")
    assert main(["--model=LRURec", f"--space={file}", *args]) == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err, err


def test_optuna_is_optional(tmp_path, monkeypatch, capsys):
    import importlib.util

    if importlib.util.find_spec("optuna") is not None:
        pytest.skip("optuna is installed")
    monkeypatch.chdir(tmp_path)
    assert main(["--model=LRURec", "--search=optuna"]) == 2
    assert "pip install optuna" in capsys.readouterr().err
