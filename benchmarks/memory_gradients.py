"""ELASTIC's interest memory: row-sparse gradients + LazyAdam (our trainer) against dense
gradients + one torch Adam over every parameter (RecBole's own trainer).

    python -m benchmarks.memory_gradients --lengths 200 --memory_sizes 65536 1048576 --repeats 7

One training step (forward, backward, optimiser step) at the training setting (hidden 64, 2
layers, ML-1M's 3,417 items, ``--tokens_per_batch`` tokens of ``all_positions`` training per
batch), for each memory size M and length L: median CPU milliseconds per step of each path,
their ratio, and each path's optimiser state. Steps of the two paths are interleaved, so load
on the machine affects both alike. Also checks that one step from the same weights and batch
moves the weights the same way (dense Adam's zero-gradient rows keep their moments: equal after
one step only).
-> benchmarks/results/memory_gradients/memory_gradients.{md,json}
"""

from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks import cli, measure, models, report, steps

OUT = Path(__file__).resolve().parent / "results" / "memory_gradients"


def parse_args(argv=None):
    p = cli.parser("memory_gradients", __doc__)
    p.add_argument("--lengths", type=int, nargs="+", default=[200])
    p.add_argument("--memory_sizes", type=int, nargs="+", default=[65536])
    p.add_argument("--tokens_per_batch", type=int, default=4096)
    p.add_argument("--n_items", type=int, default=3417)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    return p.parse_args(argv)


def _paths(memory_size, length, n_items, seed=0):
    """``{path: (model, optimiser)}`` from the same initial weights."""
    paths = {}
    for path in ("sparse", "dense"):
        model, config, _ = models.build_model(
            "ELASTIC", length, n_items, {"memory_size": memory_size, "hidden_size": 64,
                                         "n_layers": 2}, train_mode="all_positions", seed=seed)
        if path == "sparse":
            optimizer = models.optimizer_for(model, config)  # switches the bank to sparse rows
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
        paths[path] = (model, optimizer, config)
    return paths


def _state_mib(optimizer):
    optimizers = getattr(optimizer, "optimizers", [optimizer])
    return sum(t.numel() * t.element_size() for o in optimizers for s in o.state.values()
               for t in s.values() if torch.is_tensor(t)) / 2 ** 20


def _same_first_step(paths, batch):
    moved = {}
    for path, (model, optimizer, _) in paths.items():
        before = model.imr.values.detach().clone()
        torch.manual_seed(1)  # the same dropout masks on both paths
        steps.train_step(model, optimizer, batch)
        moved[path] = model.imr.values.detach() - before
    return float((moved["sparse"] - moved["dense"]).abs().max())


def compare_paths(args):
    """A row per memory size and length: both paths' step times, optimiser state and first-step
    difference."""
    rows = []
    for memory_size in args.memory_sizes:
        for length in args.lengths:
            paths = _paths(memory_size, length, args.n_items)
            config = paths["sparse"][2]
            batch = steps.make_batch(config, max(1, args.tokens_per_batch // length), length,
                                     args.n_items, train_mode="all_positions")
            first_step_gap = _same_first_step(paths, batch)
            times = {path: [] for path in paths}
            for _ in range(args.repeats):
                for path, (model, optimizer, _) in paths.items():
                    times[path].append(measure.timed(
                        lambda: steps.train_step(model, optimizer, batch), clock="cpu"))
            ms = {path: 1000 * measure.median(t) for path, t in times.items()}
            rows.append({"memory_size": memory_size, "L": length,
                         "batch": max(1, args.tokens_per_batch // length),
                         "sparse_ms": ms["sparse"], "dense_ms": ms["dense"],
                         "dense_over_sparse": ms["dense"] / ms["sparse"],
                         "sparse_state_mib": _state_mib(paths["sparse"][1]),
                         "dense_state_mib": _state_mib(paths["dense"][1]),
                         "first_step_max_abs_diff": first_step_gap})
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = compare_paths(args)
    meta = {"command": cli.command_line("memory_gradients", argv),
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "environment": report.environment("cpu"), "args": vars(args)}
    table = report.markdown_table(
        ["M", "L", "batch", "sparse + LazyAdam (ms)", "dense + Adam (ms)", "dense / sparse",
         "optimiser state sparse / dense (MiB)", "first step, max weight difference"],
        [[r["memory_size"], r["L"], r["batch"], f"{r['sparse_ms']:.0f}", f"{r['dense_ms']:.0f}",
          f"{r['dense_over_sparse']:.2f}",
          f"{r['sparse_state_mib']:.0f} / {r['dense_state_mib']:.0f}",
          f"{r['first_step_max_abs_diff']:.1e}"] for r in rows])
    report.write_results(args.out, "memory_gradients", {"meta": meta, "rows": rows},
                         f"`{meta['command']}` ({meta['date_utc']} UTC)\n\n{table}\n")
    print(table)
    return rows


if __name__ == "__main__":
    main()
