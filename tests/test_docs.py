"""The README and the documentation as a reader meets them: every Python and shell snippet runs
as written (on small data; a snippet that needs ml-1m, a GPU or a cluster says so and is
skipped), the site builds without a warning, and the README's links lead to files that exist."""

import os
import re
import subprocess
import sys
import unittest
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.myst import CodeBlockParser, PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md",
         *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)]

# `uv run [--project DIR] CMD ...` runs CMD in the environment the tests run in: what is
# checked is the command, not uv.
SHELL_PRELUDE = r"""
uv() {
    [ "$1" = run ] || { echo "only 'uv run' can be tried here: $*" >&2; return 2; }
    shift
    while [ "${1#--}" != "$1" ]; do
        case "$1" in --project) shift 2 ;; *) shift ;; esac
    done
    "$@"
}
"""


def workdir(document, factory):
    """One empty folder per page, where ``run_recbole_efficient.py`` and the ``benchmarks``
    package are reached as from the repository root (the package through ``PYTHONPATH``, so
    what a benchmark writes to ``benchmarks/results/`` stays in the folder, not the checkout)."""
    if "__workdir__" not in document.namespace:
        folder = factory.mktemp(Path(document.path).stem)
        (folder / "run_recbole_efficient.py").symlink_to(ROOT / "run_recbole_efficient.py")
        document.namespace["__workdir__"] = folder
    return document.namespace["__workdir__"]


def run_shell(example):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", SHELL_PRELUDE + example.parsed],
                          cwd=example.namespace["__workdir__"], env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode:
        return (f"exit status {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
                f"\n--- stderr\n{proc.stderr[-3000:]}")
    return None


def checkout_status():
    """``git status`` of the checkout (``None`` outside a git checkout)."""
    try:
        proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 else None


STATUS_BEFORE = checkout_status()
SYBIL = Sybil(parsers=[PythonCodeBlockParser(), CodeBlockParser("bash", run_shell), SkipParser()])
EXAMPLES = [(page, example) for page in PAGES for example in SYBIL.parse(page)]


@pytest.mark.parametrize(
    "page, example", EXAMPLES,
    ids=[f"{page.relative_to(ROOT)}:{example.line}" for page, example in EXAMPLES])
def test_snippet_runs_as_written(page, example, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(workdir(example.document, tmp_path_factory))
    try:
        example.evaluate()
    except unittest.SkipTest as skip:  # the page's own reason, reported at this test
        pytest.skip(str(skip))


def test_snippets_leave_the_checkout_unchanged():
    if STATUS_BEFORE is None:
        pytest.skip("not a git checkout")
    assert checkout_status() == STATUS_BEFORE


def test_documentation_builds_without_warnings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E",
                           "-b", "html", str(DOCS), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]


_LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", [ROOT / "README.md"], ids=["README.md"])
def test_relative_links_lead_to_files(page):
    missing = [target for target in _LINK.findall(page.read_text(encoding="utf-8"))
               if not (page.parent / target).exists()]
    assert not missing, f"links to files that do not exist: {missing}"
