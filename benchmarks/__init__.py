"""Benchmark scripts of recbole_efficient and the pieces they share.

Run each script as a module from the repository root, so that ``benchmarks`` is importable::

    cd <repo> && python -m benchmarks.efficiency --help
    cd <repo> && uv run python -m benchmarks.efficiency --help      # in a uv checkout

Shared pieces, one concern each: :mod:`benchmarks.models` (which models, built on a
synthetic dataset), :mod:`benchmarks.steps` (synthetic batches, a training step, an inference
call), :mod:`benchmarks.measure` (timing, peak memory, growth exponents),
:mod:`benchmarks.report` (JSON / CSV / markdown / PNG writers) and :mod:`benchmarks.cli`
(command-line parsing shared by the scripts); :mod:`benchmarks.rss_point` is the fresh process
that measures one point's peak RSS.
"""

# Before any module of the package imports RecBole: recbole_efficient makes RecBole 1.2.1
# usable on NumPy 2.
import recbole_efficient  # noqa: E402,F401
