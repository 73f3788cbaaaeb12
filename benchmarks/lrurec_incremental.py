"""LRURec incremental inference vs re-encoding the whole history, in one run.

    python benchmarks/lrurec_incremental.py --lengths 200 1000 2000 --threads 1

For each history length L: the latency of scoring all items after one new item arrives,
(a) by re-encoding the whole history of L items (``full_sort_predict``, the parallel scan) and
(b) by one ``step`` from the state of the first L-1 items (``build_state``). Medians over
``--repeats`` timed calls after ``--warmup`` untimed ones; random weights (timing only) with the
paper's defaults (hidden 64, 2 layers) and ML-1M's item count. Also checks that both give
the same scores.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import build_model, synchronize  # noqa: E402


def median_ms(fns, warmup, repeats, sync):
    """Median milliseconds of each function; calls are interleaved so that load changes on
    the machine affect all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            bucket.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main(args):
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = lambda: synchronize(device)  # noqa: E731
    model, _, _ = build_model("LRURec", max(args.lengths), args.n_items, device=device,
                              overrides={"hidden_size": args.hidden_size, "n_layers": args.n_layers})
    model.eval()
    gen = torch.Generator().manual_seed(0)

    rows = []
    with torch.inference_mode():
        for length in args.lengths:
            seq = torch.randint(1, args.n_items, (args.batch, length), generator=gen).to(device)
            lens = torch.full((args.batch,), length, device=device)
            inter = {model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lens}
            state = model.build_state(seq[:, :-1], lens - 1)
            new_item = seq[:, -1]

            full_ms, step_ms, build_ms = median_ms(
                [lambda: model.full_sort_predict(inter), lambda: model.step(new_item, state),
                 lambda: model.build_state(seq, lens)], args.warmup, args.repeats, sync)
            diff = (model.step(new_item, state)[0] - model.full_sort_predict(inter)).abs().max().item()
            rows.append((length, full_ms, step_ms, full_ms / step_ms, build_ms, diff))

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"LRURec, hidden {args.hidden_size}, {args.n_layers} layers, {args.n_items} items, "
          f"batch {args.batch}, device {device} (torch {torch.__version__}, threads {threads}), "
          f"median of {args.repeats} after {args.warmup} warm-up\n")
    print("| history length | full re-encode (ms) | incremental step (ms) | speed-up "
          "| build_state (ms) | max abs score diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    for length, full_ms, step_ms, ratio, build_ms, diff in rows:
        print(f"| {length} | {full_ms:.2f} | {step_ms:.3f} | {ratio:.0f}x | {build_ms:.2f} "
              f"| {diff:.1e} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000, 2000, 4000])
    parser.add_argument("--batch", type=int, default=1, help="users scored together")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--n_layers", type=int, default=2)
    parser.add_argument("--n_items", type=int, default=3417, help="ML-1M has 3,416 items + pad")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (0: torch default); 1 = one request per core, and "
                             "stable on a busy machine where idle OpenMP threads stall tiny ops")
    main(parser.parse_args())
