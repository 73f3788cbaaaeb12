"""One command, three ways to start it, from any folder; the wheel ships what it needs."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import TINY, write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("train", "tune", "serve", "download", "convert")


def starts():
    """The command as ``python -m``, as the script in the checkout, as the console script."""
    forms = {"module": [sys.executable, "-m", "recbole_efficient"],
             "script": [sys.executable, str(ROOT / "run_recbole_efficient.py")]}
    console = Path(sys.executable).with_name("recbole-efficient")
    if console.is_file():
        forms["console script"] = [str(console)]
    return forms


def call(cmd, cwd, timeout=120, **kwargs):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)


def test_console_script_is_installed():
    assert "console script" in starts(), \
        "recbole-efficient is not installed beside this Python: `uv sync` or `pip install -e .`"


@pytest.mark.parametrize("form", ["module", "script", "console script"])
def test_help_lists_every_sub_command(tmp_path, form):
    if form not in starts():
        pytest.skip("the console script is not installed")
    out = call([*starts()[form], "--help"], tmp_path)
    assert out.returncode == 0 and out.stderr == ""
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(SUBCOMMANDS)
    assert out.stdout == call([*starts()["module"], "--help"], tmp_path).stdout
    wrong = call([*starts()[form], "trian"], tmp_path)
    assert wrong.returncode == 2 and "unknown sub-command 'trian'" in wrong.stderr


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_each_sub_command_has_its_own_help(tmp_path, sub):
    out = call([*starts()["module"], sub, "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    prog = "recbole-efficient [train]" if sub == "train" else f"recbole-efficient {sub}"
    assert out.stdout.startswith(f"usage: {prog} ")


def test_sweep_module_is_the_tune_sub_command(tmp_path):
    out = call([sys.executable, "-m", "recbole_efficient.tune", "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == call([*starts()["module"], "tune", "--help"], tmp_path).stdout


def test_wheel_ships_the_yaml_files_and_the_console_script(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "recbole_efficient", "properties"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(
            ROOT / name, source / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}))
    out = call([sys.executable, "-c", "import sys, setuptools.build_meta as b; "
                "print(b.build_wheel(sys.argv[1]))", str(tmp_path / "dist")], source, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = tmp_path / "dist" / out.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    yamls = {p.relative_to(ROOT / "properties").as_posix()
             for p in (ROOT / "properties").rglob("*.yaml")}
    assert {f"recbole_efficient/properties/{y}" for y in yamls} <= names
    assert {"recbole_efficient/cli.py", "recbole_efficient/__main__.py",
            "recbole_efficient/data/fetch.py"} <= names
    assert "recbole-efficient = recbole_efficient.cli:main" in entry_points


def test_sweep_runs_under_uv_from_a_folder_outside_the_project(tmp_path):
    """Ray's `uv run` hook would ship the working folder as the workers' project and refuse a
    folder outside it; sweeps start Ray without it."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    write_tiny_dataset(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {choice: [0.001]}\n")
    env = dict(os.environ)
    env.pop("RAY_ENABLE_UV_RUN_RUNTIME_ENV", None)
    out = call([uv, "run", "--no-sync", "--project", str(ROOT), "recbole-efficient", "tune",
                "--model=LRURec", f"--dataset={TINY}", f"--data_path={tmp_path}",
                f"--space={space}", "--num_samples=1", "--epochs=1", "--MAX_ITEM_LIST_LENGTH=8",
                "--hidden_size=16", "--n_layers=1", "--show_progress=False",
                "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}"],
               tmp_path, timeout=600, env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "best params" in out.stdout and "test result: " in out.stdout
    assert (tmp_path / "ray_results").is_dir()
