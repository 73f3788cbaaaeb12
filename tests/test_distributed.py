"""Multi-process training on CPU (gloo) through RecBole's DDP path."""

import socket

import pytest
import torch.multiprocessing as mp

import recbole_efficient
from recbole_efficient.data.fetch import DatasetError
from recbole_efficient.quick_start import run_recbole_efficient
from recbole_efficient.validation import ConfigError

from helpers import TINY

# Our model in both training modes and a RecBole baseline. Without dropout or shuffling, and
# with an even number of training rows, each rank's batch is exactly one half of the
# single-process batch, so two processes must reproduce one process up to float sums.
CASES = [
    ("LRURec", {"train_mode": "all_positions", "lru_dropout_prob": 0.0}),
    ("SoftmaxSASRec", {"train_mode": "augmented", "attn_dropout_prob": 0.0}),
    ("SASRec", {"attn_dropout_prob": 0.0}),
    # its memory bank: row-sparse gradients made dense by RecBole's zero-sum gradient sync
    ("ELASTIC", {"attn_dropout_prob": 0.0, "memory_size": 256}),
]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _config(cfg, extra):
    return cfg(epochs=2, shuffle=False, hidden_dropout_prob=0.0, **extra)


def _worker(rank, cases, ports, queue):
    for (model, cfg), port in zip(cases, ports):
        cfg = dict(cfg, local_rank=rank, world_size=2, nproc=2, offset=0, ip="localhost",
                   port=port)
        result = run_recbole_efficient(model, TINY, config_dict=cfg, read_cmd_line=False)
        queue.put((rank, model, result["best_valid_result"], result["test_result"],
                   result["saved_model_file"]))


def test_two_cpu_processes_match_one(tiny):
    root, cfg = tiny
    # One more interaction for a long history: an even number of augmented training rows.
    with open(root / TINY / f"{TINY}.inter", "a") as f:
        f.write("u10\ti1\t3\t1000\n")
    cases = [(model, _config(cfg, extra)) for model, extra in CASES]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(cases, [_free_port() for _ in cases], queue), nprocs=2, join=True)
    reported = [queue.get() for _ in range(2 * len(cases))]
    # Only rank 0 writes: one log file and one checkpoint per model, tensorboard folders named
    # after rank 0's log files (another rank's would be named model-<time>).
    assert len(list((root / "log").rglob("*.log"))) == len(cases)
    assert len(list((root / "saved").iterdir())) == len(cases)
    logs = {p.stem for p in (root / "log").rglob("*.log")}
    assert {p.name for p in (root / "log_tensorboard").iterdir()} <= logs
    for model, config_dict in cases:
        single = run_recbole_efficient(  # tested at its best epoch, like the workers
            model, TINY, config_dict=dict(config_dict, checkpoint_dir=str(root / "single")),
            read_cmd_line=False)
        ranks = [r for r in reported if r[1] == model]
        assert {r[0] for r in ranks} == {0, 1}
        for _, _, valid, test, _ in ranks:  # metrics are reduced: every rank reports the same
            for name, value in single["test_result"].items():
                assert test[name] == pytest.approx(value, abs=2e-3), (model, name)
            for name, value in single["best_valid_result"].items():
                assert valid[name] == pytest.approx(value, abs=2e-3), (model, name)


def test_bad_multi_process_settings_stop_before_any_worker(tiny, monkeypatch):
    root, cfg = tiny
    with pytest.raises(ConfigError, match=r"nproc=0 must be an integer >= 1"):
        recbole_efficient.run("LRURec", TINY, config_dict=cfg(), nproc=0)
    with pytest.raises(ConfigError, match=r"port='http' must be a TCP port"):
        recbole_efficient.run("LRURec", TINY, config_dict=cfg(), nproc=2, port="http")
    with pytest.raises(ConfigError, match=r"group_offset=2 \+ nproc=2 exceeds world_size=3"):
        recbole_efficient.run("LRURec", TINY, config_dict=cfg(), nproc=2, world_size=3,
                              group_offset=2)
    with pytest.raises(DatasetError, match="not on disk"):
        recbole_efficient.run("LRURec", "absent", config_dict=cfg(), nproc=2)
    # A GPU machine with fewer GPUs listed than processes (RecBole: bare AssertionError).
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"nproc=2 starts one process per GPU, but "
                                          r"gpu_id='0' names 1; .* --gpu_id=0,1"):
        recbole_efficient.run("LRURec", TINY, config_dict=cfg(), nproc=2)
