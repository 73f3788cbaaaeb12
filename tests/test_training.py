"""Crash-safe, resumable and deterministic training; numerical faults in the loss and gradients."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recbole_efficient import checkpoint as ckpt
from recbole_efficient import load_data_and_model, run_recbole_efficient
from recbole_efficient.config import Config
from recbole_efficient.model import MODELS
from recbole_efficient.trainer import EfficientTrainerMixin

from helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
# Long enough to kill a run in the middle, short enough for a test (tiny epochs take ~0.1 s).
EPOCHS = 40


def _settings(root, **overrides):
    """Keys shared by the in-process and command-line runs of this module."""
    cfg = {
        "data_path": str(root), "epochs": EPOCHS, "stopping_step": 1000, "show_progress": False,
        "MAX_ITEM_LIST_LENGTH": 8, "hidden_size": 16, "n_layers": 1, "train_batch_size": 32,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "seed": 11,
    }
    cfg.update(overrides)
    return cfg


def _cli_args(cfg):
    return [f"--{k}={v}" for k, v in cfg.items()]


def _run_dirs(checkpoint_dir):
    return sorted(p for p in Path(checkpoint_dir).glob("LRURec-*") if p.is_dir())


def _latest_epoch(run_dir):
    try:
        return torch.load(run_dir / ckpt.LATEST, weights_only=True)["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def _same_weights(a, b):
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted LRURec run every interrupted run must reproduce."""
    from helpers import write_tiny_dataset

    root = tmp_path_factory.mktemp("reference")
    write_tiny_dataset(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = run_recbole_efficient("LRURec", TINY, read_cmd_line=False, config_dict=_settings(
            root, checkpoint_dir=str(root / "saved")))
    finally:
        os.chdir(cwd)
    return root, result


# -- checkpoint files ----------------------------------------------------------------------
def test_run_folders_never_collide(tmp_path, monkeypatch):
    """Two runs of one model started in the same second get distinct folders."""
    monkeypatch.setattr(ckpt, "get_local_time", lambda: "Nov-29-2026_10-00-00")
    tokens = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(ckpt.secrets, "token_hex", lambda n: next(tokens))
    first = ckpt.make_run_dir(tmp_path, "LRURec")
    second = ckpt.make_run_dir(tmp_path, "LRURec")
    assert first.name == "LRURec-Nov-29-2026_10-00-00-aaaaaa"
    assert second.name == "LRURec-Nov-29-2026_10-00-00-bbbbbb"


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact and no temporary file."""
    path = tmp_path / "best.pth"
    ckpt.save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]


def test_run_folder_holds_best_and_latest_state(reference):
    _, result = reference
    run_dir = Path(result["saved_model_file"]).parent
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pth", "latest.pth"]
    latest = torch.load(run_dir / "latest.pth", weights_only=True)
    assert latest["epoch"] == EPOCHS - 1
    assert set(latest["rng"]) == {"python", "numpy", "torch", "cuda", "generator"}
    assert latest["optimizer"]["state"] and len(latest["train_loss"]) == EPOCHS
    best = torch.load(run_dir / "best.pth", weights_only=True)
    assert best["epoch"] == latest["best_epoch"]
    assert best["best_valid_score"] == latest["best_valid_score"] == result["best_valid_score"]


def test_result_tells_the_validation_history_and_why_training_stopped(reference):
    _, result = reference
    history = result["valid_history"]
    assert [epoch for epoch, _ in history] == list(range(EPOCHS))
    best_score = max(score for _, score in history)
    assert result["best_valid_score"] == pytest.approx(best_score)
    # RecBole keeps the last of equal scores
    assert result["best_epoch"] == max(e for e, s in history if s == best_score)
    assert result["stop_reason"] == "epochs"


# -- resume -----------------------------------------------------------------------------------
def test_killed_run_resumes_with_the_uninterrupted_metrics(reference, tmp_path):
    """SIGKILL after epoch k, then --resume=<run folder>: same losses, weights and metrics."""
    root, expected = reference
    cfg = _settings(root, checkpoint_dir=str(tmp_path / "saved"))
    cmd = [sys.executable, str(ROOT / "run_recbole_efficient.py"), "--model=LRURec",
           f"--dataset={TINY}", *_cli_args(cfg)]
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            dirs = _run_dirs(tmp_path / "saved")
            if dirs and _latest_epoch(dirs[0]) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    run_dir, = _run_dirs(tmp_path / "saved")
    assert 2 <= _latest_epoch(run_dir) < EPOCHS - 1

    out = subprocess.run([sys.executable, str(ROOT / "run_recbole_efficient.py"),
                          f"--resume={run_dir}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _run_dirs(tmp_path / "saved") == [run_dir]  # continued in the same folder
    resumed = torch.load(run_dir / "latest.pth", weights_only=True)
    assert list(resumed["train_loss"].values()) == expected["train_losses"]
    assert resumed["valid_history"] == expected["valid_history"]
    assert _same_weights(run_dir / "best.pth", expected["saved_model_file"])
    test_line = "test_result: " + "  ".join(f"{k}={float(v):.4f}"
                                            for k, v in expected["test_result"].items())
    assert test_line in out.stdout


def test_ctrl_c_saves_and_says_how_to_resume(reference, tmp_path, monkeypatch, capsys):
    """A real SIGINT as epoch 3 starts stops the CLI, once epoch 2 is saved, with exit status
    130 and the resume command; resuming ends exactly like the uninterrupted run."""
    root, expected = reference
    monkeypatch.chdir(tmp_path)
    original = EfficientTrainerMixin._train_epoch

    def interrupt_in_epoch_3(self, train_data, epoch_idx, **kwargs):
        if epoch_idx == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, train_data, epoch_idx, **kwargs)

    monkeypatch.setattr(EfficientTrainerMixin, "_train_epoch", interrupt_in_epoch_3)
    cfg = _settings(root, checkpoint_dir=str(tmp_path / "saved"))
    argv = ["--model=LRURec", f"--dataset={TINY}", *_cli_args(cfg)]
    monkeypatch.setattr(sys, "argv", ["run_recbole_efficient.py", *argv])
    from run_recbole_efficient import main
    assert main(argv) == 130
    run_dir, = _run_dirs(tmp_path / "saved")
    err = capsys.readouterr().err
    assert "interrupted after epoch 2" in err and f"--resume={run_dir}" in err
    assert _latest_epoch(run_dir) == 2

    monkeypatch.setattr(EfficientTrainerMixin, "_train_epoch", original)
    monkeypatch.setattr(sys, "argv", ["run_recbole_efficient.py", f"--resume={run_dir}"])
    assert main([f"--resume={run_dir}"]) == 0
    assert _same_weights(run_dir / "latest.pth",
                         Path(expected["saved_model_file"]).parent / "latest.pth")


def test_resume_with_more_epochs_equals_the_longer_run(reference, tmp_path, monkeypatch):
    root, expected = reference
    monkeypatch.chdir(tmp_path)
    short = run_recbole_efficient("LRURec", TINY, read_cmd_line=False, config_dict=_settings(
        root, epochs=5, checkpoint_dir=str(tmp_path / "saved")))
    run_dir = Path(short["saved_model_file"]).parent
    again = run_recbole_efficient(resume=run_dir, read_cmd_line=False)  # finished: nothing to do
    assert again["train_losses"] == short["train_losses"] and _latest_epoch(run_dir) == 4
    longer = run_recbole_efficient(resume=run_dir, read_cmd_line=False,
                                   config_dict={"epochs": EPOCHS})
    assert longer["train_losses"] == expected["train_losses"]
    assert longer["test_result"] == expected["test_result"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_resumes_exactly(tiny, name):
    """Each model's optimiser state (LazyAdam chains included) and RNG use survive a resume."""
    _, cfg = tiny
    full = run_recbole_efficient(name, TINY, read_cmd_line=False, config_dict=cfg(epochs=3))
    part = run_recbole_efficient(name, TINY, read_cmd_line=False, config_dict=cfg(epochs=1))
    resumed = run_recbole_efficient(resume=Path(part["saved_model_file"]).parent,
                                    read_cmd_line=False, config_dict={"epochs": 3})
    assert resumed["train_losses"] == full["train_losses"]
    assert resumed["test_result"] == full["test_result"]
    assert _same_weights(Path(resumed["saved_model_file"]).parent / "latest.pth",
                         Path(full["saved_model_file"]).parent / "latest.pth")


def test_bad_resume_input(tmp_path, reference):
    _, expected = reference
    with pytest.raises(FileNotFoundError, match="no such checkpoint or run folder"):
        run_recbole_efficient(resume=tmp_path / "nowhere", read_cmd_line=False)
    with pytest.raises(FileNotFoundError, match="holds no latest.pth"):
        run_recbole_efficient(resume=tmp_path, read_cmd_line=False)
    with pytest.raises(ValueError, match="trained with model=LRURec"):
        run_recbole_efficient("SoftmaxSASRec", resume=expected["saved_model_file"],
                              read_cmd_line=False)


# -- determinism ----------------------------------------------------------------------------
def _modes_and_losses(name, cfg):
    config = Config(model=name, dataset=TINY, config_dict=cfg, read_cmd_line=False)
    for mode in MODELS[name].train_modes(config):
        for loss in ("CE", "BPR"):
            # RecBole's augmented BPR draws its negatives with its own sampler.
            neg = {"distribution": "uniform", "sample_num": 1} \
                if (mode, loss) == ("augmented", "BPR") else None
            yield mode, loss, neg


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_losses_and_metrics(tiny, name):
    _, cfg = tiny
    for mode, loss, neg in _modes_and_losses(name, cfg(epochs=2)):
        runs = [run_recbole_efficient(name, TINY, read_cmd_line=False, config_dict=cfg(
            epochs=2, train_mode=mode, loss_type=loss, train_neg_sample_args=neg,
            reproducibility=True)) for _ in range(2)]
        assert runs[0]["train_losses"] == runs[1]["train_losses"], (mode, loss)
        assert runs[0]["best_valid_result"] == runs[1]["best_valid_result"], (mode, loss)
        assert runs[0]["test_result"] == runs[1]["test_result"], (mode, loss)
        assert _same_weights(runs[0]["saved_model_file"], runs[1]["saved_model_file"])


def test_stop_reason_early_stopping_and_budget(tiny, monkeypatch):
    from recbole.trainer import Trainer

    _, cfg = tiny
    scores = iter([0.5, 0.4, 0.6, 0.3, 0.2, 0.1, 0.0] + [0.0] * 20)

    def falling_scores(self, valid_data, show_progress=False):
        score = next(scores)
        return score, {"ndcg@10": score}

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_valid_epoch", falling_scores)
        result = run_recbole_efficient("LRURec", TINY, read_cmd_line=False,
                                       config_dict=cfg(epochs=20, stopping_step=2))
    assert result["stop_reason"] == "early_stopping"
    assert [s for _, s in result["valid_history"]] == [0.5, 0.4, 0.6, 0.3, 0.2, 0.1]
    assert result["best_epoch"] == 2 and len(result["train_epoch_seconds"]) == 6

    result = run_recbole_efficient("LRURec", TINY, read_cmd_line=False,
                                   config_dict=cfg(epochs=20, train_time_budget=1e-6))
    assert result["stop_reason"] == "budget" and len(result["train_epoch_seconds"]) == 1


# -- numerical faults --------------------------------------------------------------------------
def _poison_loss(monkeypatch, model_class, epoch, batch, value=float("nan")):
    """Multiply the loss of one training batch (0-based epoch, 1-based batch) by ``value``."""
    at = {"epoch": None, "batch": 0}
    train_epoch, calculate_loss = EfficientTrainerMixin._train_epoch, model_class.calculate_loss

    def counting_train_epoch(self, train_data, epoch_idx, **kwargs):
        at.update(epoch=epoch_idx, batch=0)
        return train_epoch(self, train_data, epoch_idx, **kwargs)

    def poisoned_loss(self, interaction):
        at["batch"] += 1
        loss = calculate_loss(self, interaction)
        return loss * value if (at["epoch"], at["batch"]) == (epoch, batch) else loss

    monkeypatch.setattr(EfficientTrainerMixin, "_train_epoch", counting_train_epoch)
    monkeypatch.setattr(model_class, "calculate_loss", poisoned_loss)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_and_tests_the_best_checkpoint(tiny, monkeypatch, value):
    from recbole_efficient.model import SoftmaxSASRec

    _, cfg = tiny
    _poison_loss(monkeypatch, SoftmaxSASRec, epoch=2, batch=2, value=value)
    result = run_recbole_efficient("SoftmaxSASRec", TINY, read_cmd_line=False,
                                   config_dict=cfg(epochs=5, train_batch_size=8))
    fault = result["fault"]
    assert f"Training loss is {value}" in fault and "epoch 2, batch 2 of" in fault
    assert "learning_rate" in fault and "clip_grad_norm" in fault
    assert result["stop_reason"] == "fault"
    assert len(result["train_losses"]) == 2 and result["test_result"] is not None
    _, model, _, _, _, _ = load_data_and_model(result["saved_model_file"])  # still loadable
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_loss_before_any_checkpoint(tiny, monkeypatch):
    from recbole_efficient.model import SoftmaxSASRec

    _, cfg = tiny
    _poison_loss(monkeypatch, SoftmaxSASRec, epoch=0, batch=1)
    result = run_recbole_efficient("SoftmaxSASRec", TINY, read_cmd_line=False,
                                   config_dict=cfg(epochs=3))
    assert "epoch 0, batch 1 of" in result["fault"] and "No checkpoint was saved" in result["fault"]
    assert result["test_result"] is None

