"""The command line, run as a user would."""

import subprocess
import sys
from pathlib import Path


from helpers import TINY

ROOT = Path(__file__).resolve().parents[1]


def cli(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "run_recbole_efficient.py"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_cli_end_to_end_on_small_slice(tiny):
    root, _ = tiny
    out = cli(root, "--model=SoftmaxSASRec", f"--dataset={TINY}", f"--data_path={root}",
              "--epochs=1", "--show_progress=False", "--MAX_ITEM_LIST_LENGTH=8", "--hidden_size=16",
              "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "best_valid_result: " in out.stdout and "test_result: " in out.stdout
    assert "ndcg@10=" in out.stdout
    assert list((root / "saved").glob("SoftmaxSASRec-*/best.pth"))


def test_cli_unknown_model_lists_models(tmp_path):
    out = cli(tmp_path, "--model=NoSuchRec")
    assert out.returncode == 2
    assert "Unknown model 'NoSuchRec'" in out.stderr and "SoftmaxSASRec" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_missing_dataset_names_path_and_files(tmp_path):
    out = cli(tmp_path, "--model=SoftmaxSASRec", "--dataset=ml-20m", f"--data_path={tmp_path}",
              "--allow_download=False")
    assert out.returncode == 2
    assert f"{tmp_path}/ml-20m/ml-20m.inter" in out.stderr and "allow_download=False" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_bad_values_one_line_per_error_before_data(tmp_path):
    bad = ["--hidden_size=0", "--n_layers=-1", "--learning_rate=abc", "--loss_type=XYZ",
           "--MAX_ITEM_LIST_LENGTH=0", "--r_min=1.5", "--hidden_dropout_prob=1.5"]
    # The dataset does not exist: the configuration is checked first.
    out = cli(tmp_path, "--model=LRURec", "--dataset=absent", "--epochs=1", "--hiden_size=64", *bad)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert "'hiden_size': did you mean 'hidden_size'?" in lines[0]
    assert lines[1] == "error: invalid configuration:"
    named = sorted(line.split("=")[0] for line in lines[2:])
    assert named == sorted(f"  - {flag[2:].split('=')[0]}" for flag in bad), lines
    assert not (tmp_path / "log").exists()  # nothing started


def test_cli_recbole_baseline_multi_process_missing_dataset(tmp_path):
    # No --train_neg_sample_args needed, and no AssertionError for --nproc=2 on CPU: the
    # missing dataset is what is reported, before any worker starts.
    out = cli(tmp_path, "--model=SASRec", "--dataset=absent", f"--data_path={tmp_path}",
              "--nproc=2")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "absent.inter" in out.stderr and "train_neg_sample_args" not in out.stderr
