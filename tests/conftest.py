"""Fixtures and process settings; shared helpers live in ``helpers.py``."""

import os

import pytest
import torch

from helpers import tiny_config, write_tiny_dataset

# One intra-op thread: on a busy 2-core machine, two OpenMP threads per process spin against
# each other (measured: a scan step 17x slower). Subprocesses and Ray workers inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# Without a GPU, Triton's kernels run in its interpreter on CPU tensors (tests of the CUDA
# kernels, ``helpers.interpreted_kernels``). Triton reads this once, when it is first
# imported, so it is set before any test can import it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """(data root, config builder) of a tiny synthetic dataset in RecBole atomic format,
    written per test; the test runs inside tmp_path (RecBole writes log/ there)."""
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path)
    return tmp_path, lambda **kw: tiny_config(tmp_path, **kw)
