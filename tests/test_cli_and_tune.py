"""The command line, run as a user would."""

import subprocess
import sys
from pathlib import Path

from conftest import TINY

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
    out = cli(tmp_path, "--model=SoftmaxSASRec", "--dataset=ml-20m", f"--data_path={tmp_path}")
    assert out.returncode == 2
    assert "data_path" in out.stderr and "ml-20m.inter" in out.stderr
    assert "Traceback" not in out.stderr
