"""On a GPU: the three forms of the LRU scan (with the fused cross-entropy's CPU or CUDA row
blocks), in one process, interleaved.

    python -m benchmarks.gpu_paths [--lengths 200 1000 2000 4000 8000] [--repeats 10]

* ``loops``: the CPU's form, ``_chunked_scan`` (C vectorised steps inside chunks, nc steps
  across them: about 2 sqrt(L) small kernel launches each way), with cross-entropy row blocks
  sized for a CPU cache;
* ``matrix``: ``_matrix_scan`` (two matrix products), CUDA's row blocks;
* ``triton``: the Triton kernel (one launch each way, CUDA's default), CUDA's row blocks.

Training steps of the long-sequence training setting (``benchmarks.efficiency --preset
train``: hidden 64, 2 layers, 16,384 tokens per batch, 3,417 items, fp32) of LRURec, its floor
and SoftmaxSASRec's floor, and the scan alone (forward + backward, complex64, 64 channels).
Each figure: the lower of two medians of ``--repeats`` steps, the two forms alternating.
Prints a markdown table.
"""

from __future__ import annotations

import torch

from benchmarks import cli, measure, models, report, steps
from recbole_efficient.kernels import cross_entropy, lru_scan, triton_support

DEFAULTS = (lru_scan._scan, cross_entropy._row_blocks)


def _cpu_rows(logits):
    return max(1, cross_entropy._BLOCK_ELEMENTS // max(1, logits.size(1)))


def _triton_scan(lamb, u, h0=None, reverse=False):
    return triton_support.load("lru_scan_triton").scan(lamb, u, h0, reverse)


FORMS = {"loops": (lru_scan._chunked_scan, _cpu_rows),
         "matrix": (lru_scan._matrix_scan, cross_entropy._row_blocks),
         "triton": (_triton_scan, cross_entropy._row_blocks)}


def use(form):
    lru_scan._scan, cross_entropy._row_blocks = FORMS[form]


def compare(fn, repeats):
    """The lower of two medians of single calls of ``fn`` under each form, forms alternating."""
    best = {}
    for form in list(FORMS) * 2:
        use(form)
        ms = measure.median_ms([fn], 2, repeats, "cuda", block_ms=0)[0]
        best[form] = min(best.get(form, float("inf")), ms)
    return best


def main(argv=None):
    p = cli.parser("gpu_paths", __doc__)
    p.add_argument("--lengths", nargs="+", type=int, default=[200, 1000, 2000, 4000, 8000])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    device = torch.device("cuda")
    models.allow_many_graphs()
    # the header now and each row as it is measured: a run cut short keeps its rows
    print(report.markdown_table(["L", "what"] + [f"{f} (ms)" for f in FORMS]
                                + ["loops / triton", "matrix / triton"], []))
    try:
        for length in args.lengths:
            batch = 16384 // length
            rows = []
            for name, floor in (("LRURec", False), ("LRURec", True), ("SoftmaxSASRec", True)):
                model, config, info = models.build_model(name, length, 3417,
                                                         {"hidden_size": 64, "n_layers": 2},
                                                         "all_positions", device, floor=floor)
                optimizer = models.optimizer_for(model, config)
                data = steps.make_batch(config, batch, length, 3417, info["train_mode"], True,
                                        device)
                step = lambda: steps.train_step(model, optimizer, data,  # noqa: E731
                                                config["clip_grad_norm"])
                rows.append((f"{name}{'@floor' if floor else ''} step", compare(step,
                                                                                args.repeats)))
            u = torch.randn(batch, length, 64, dtype=torch.complex64, device=device,
                            requires_grad=True)
            lamb = torch.polar(torch.full((64,), 0.9, device=device),
                               torch.linspace(0, 3, 64, device=device))
            rows.append((f"lru_scan fwd+bwd [{batch}, {length}, 64]",
                         compare(lambda: lru_scan.lru_scan(lamb, u).abs().sum().backward(),
                                 args.repeats)))
            for what, t in rows:
                print(report.markdown_row([length, what] + [f"{t[f]:.2f}" for f in FORMS]
                                          + [f"{t['loops'] / t['triton']:.2f}",
                                             f"{t['matrix'] / t['triton']:.2f}"]), flush=True)
    finally:
        lru_scan._scan, cross_entropy._row_blocks = DEFAULTS


if __name__ == "__main__":
    main()
