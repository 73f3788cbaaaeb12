"""Measuring a call: synchronised time, peak memory attributable to it, and least-squares
growth exponents of such figures.

Knows nothing of models: it times and measures any callable, so every script reports time
and memory the same way.

Peak memory on CPU
------------------
torch has no allocator statistics on CPU, so two measurements are offered:

``profiler`` (default): the call runs once under ``torch.profiler`` with ``profile_memory``;
every allocation and free that goes through torch's CPU allocator is an event with its byte
count. The peak of their running sum is the memory the call itself allocated on top of what
already existed (parameters, optimiser state, input batch): the CPU analogue of CUDA's
``max_memory_allocated() - memory_allocated()``. It is exact and deterministic for tensor
memory, but does not see memory that libraries allocate behind torch's back (oneDNN / MKL
scratch buffers, OpenMP thread stacks) nor the allocator's own slack.

``rss``: the point is measured in a fresh subprocess (:mod:`benchmarks.rss_point`), with glibc
told to serve every block above 64 KiB by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so freed
tensors go back to the OS at once. After one warm-up call the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``) and the figure is ``VmHWM - VmRSS`` around the measured call. It
sees everything the process touches, but at page granularity, includes library scratch, pays
~5-10 s of interpreter and import start-up per point, and is Linux-only.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


# -- time ---------------------------------------------------------------------------------
def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn, device="cpu", clock="wall"):
    """Seconds of ``fn()``: wall clock (synchronised on CUDA), or with ``clock="cpu"`` the
    CPU time of this process (user + system), which on a shared machine does not count the
    time other processes hold the cores (CPU only)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


def median(values):
    return statistics.median(values) if values else None


def median_ms(fns, warmup, repeats, device="cpu", block_ms=5.0):
    """Median milliseconds per call of each function of ``fns``.

    Each timed sample is a block of consecutive calls of one function lasting about
    ``block_ms`` (one call if a call takes longer), after one untimed call of the same
    function, divided by the number of calls: the steady-state latency of a stream of such
    calls. Blocks of the different functions are interleaved so that load changes on the
    machine affect all of them alike. Timing single sub-millisecond calls between other work
    measures the machine instead: a LinRec step takes ~0.4 ms back to back but ~2 ms right
    after a 15 ms ``time.sleep`` (caches and the core's state lost), ~1 ms right after a
    2000-item re-encode. ``block_ms=0``: each sample is one call, no untimed call before it.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    calls = []
    for fn in fns:  # calls per block, from one timed call after the warm-up
        single_ms = timed(fn, device) * 1e3
        calls.append(max(1, round(block_ms / single_ms)) if block_ms > 0 else 1)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, n, bucket in zip(fns, calls, times):
            if block_ms > 0:
                fn()
            synchronize(device)
            start = time.perf_counter()
            for _ in range(n):
                fn()
                synchronize(device)  # latency, not throughput: calls on CUDA must not overlap
            bucket.append((time.perf_counter() - start) * 1e3 / n)
    return [statistics.median(t) for t in times]


# -- memory -------------------------------------------------------------------------------
def is_oom(err):
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(err).lower()


def cuda_peak_bytes(fn, device):
    """Peak CUDA memory allocated during ``fn()`` above what was allocated before it."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def profiler_peak_bytes(fn):
    """Peak of torch's CPU allocations during ``fn()`` minus frees, from profiler events.

    Frees of blocks allocated before the profile started are not reported by the profiler
    (so they cannot lower the figure); the result is what ``fn`` needed on top of the memory
    that existed before it.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    events.sort()
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def _proc_status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_peak_call_bytes(fn):
    """``VmHWM - VmRSS`` around ``fn()`` after resetting the peak mark (Linux only)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS high-water mark to the current RSS
    base = _proc_status_kib("VmRSS")
    fn()
    return (_proc_status_kib("VmHWM") - base) * 1024


# glibc returns every freed block above 64 KiB to the OS at once, so RSS follows tensors.
RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072",
           "MALLOC_ARENA_MAX": "2"}
RSS_RESULT = "RSS_RESULT "


def rss_in_subprocess(module, spec, timeout=600):
    """Run ``python -m <module> <spec as JSON>`` from the repository root under
    :data:`RSS_ENV` and return the JSON of its ``RSS_RESULT`` line."""
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(spec)], capture_output=True,
                          text=True, env=dict(os.environ, **RSS_ENV), cwd=ROOT, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RSS_RESULT):
            return json.loads(line[len(RSS_RESULT):])
    raise RuntimeError(f"RSS worker failed (rc={proc.returncode}): {proc.stderr[-2000:]}")


# -- growth -------------------------------------------------------------------------------
def fit_exponent(xs, ys):
    """Least-squares slope of log(y) against log(x): 1 = linear growth, 2 = quadratic.

    Points with a missing or non-positive y are ignored; None when fewer than 2 remain.
    """
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys)
           if x and x > 0 and y is not None and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
