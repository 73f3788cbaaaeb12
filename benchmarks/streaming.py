"""Streaming inference vs re-encoding the whole history, for every model with the API.

    python -m benchmarks.streaming --models LRURec LinRec --lengths 200 1000 2000 --threads 1

For each model with streaming inference (``model.supports_streaming()``; by default every
registered model that has it) and each history length L: the latency of scoring all items after
one new item arrives, (a) by re-encoding the whole history of L items (``full_sort_predict``)
and (b) by one ``step`` from the state of the first L-1 items (``build_state``), plus the cost
of ``build_state`` itself. Medians over ``--repeats`` timed samples after ``--warmup`` untimed
calls; each sample is a ~``--block_ms`` block of consecutive calls of one kind (steady-state
latency, see :func:`benchmarks.measure.median_ms`), blocks of every call of every model
interleaved; random weights (timing only) with hidden 64 and 2 layers (the LRURec paper's
sizes; other keys from each model's yaml) and ML-1M's item count, ``MAX_ITEM_LIST_LENGTH`` =
the largest L (models with learned positions stream up to it). Also checks that both paths
give the same scores.
"""

import torch

from benchmarks import cli, measure, models, report


def streaming_models(args, device):
    """``{name: model}`` in eval mode for every requested model that can stream."""
    built = {}
    for name in args.models or models.default_models(baselines=()):
        over = models.size_overrides(name, args.hidden_size, args.n_layers, dict(args.extra))
        model, _, _ = models.build_model(name, max(args.lengths), args.n_items, over,
                                         device=device)
        if model.supports_streaming():
            built[name] = model.eval()
        elif args.models:
            raise SystemExit(f"{cli.prog('streaming')}: {name} has no streaming inference with "
                             "this config")
    return built


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    built = streaming_models(args, device)
    gen = torch.Generator().manual_seed(0)

    rows = []
    with torch.inference_mode():
        for length in args.lengths:
            seq = torch.randint(1, args.n_items, (args.batch, length), generator=gen).to(device)
            lens = torch.full((args.batch,), length, device=device)
            calls = []
            for model in built.values():
                inter = {model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lens}
                state = model.build_state(seq[:, :-1], lens - 1)
                calls += [lambda m=model, i=inter: m.full_sort_predict(i),
                          lambda m=model, s=state: m.step(seq[:, -1], s)[0],
                          lambda m=model: m.build_state(seq, lens)]
            ms = measure.median_ms(calls, args.warmup, args.repeats, device, args.block_ms)
            for k, name in enumerate(built):
                full, step = calls[3 * k](), calls[3 * k + 1]()
                full_ms, step_ms, build_ms = ms[3 * k:3 * k + 3]
                diff = (step - full).abs().max().item()
                rows.append({"model": name, "length": length, "full_ms": full_ms,
                             "step_ms": step_ms, "speedup": full_ms / step_ms,
                             "build_ms": build_ms, "max_abs_diff": diff})

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    header = (f"hidden {args.hidden_size}, {args.n_layers} layers, {args.n_items} items, batch "
          f"{args.batch}, device {device} (torch {torch.__version__}, threads {threads}), median "
          f"of {args.repeats} samples ({args.block_ms:g} ms blocks of consecutive calls) after "
          f"{args.warmup} warm-up, models interleaved\n")
    table = report.markdown_table(
        ["model", "history length", "full re-encode (ms)", "streaming step (ms)", "speed-up",
         "build_state (ms)", "max abs score diff"],
        [[r["model"], r["length"], f"{r['full_ms']:.2f}", f"{r['step_ms']:.3f}",
          f"{r['speedup']:.0f}x", f"{r['build_ms']:.2f}", f"{r['max_abs_diff']:.1e}"]
         for r in sorted(rows, key=lambda r: (list(built).index(r["model"]), r["length"]))],
        align=["l"] + ["r"] * 6)
    print(header + table)
    if args.out:
        report.save_run(args.out, "streaming", cli.command_line("streaming", argv),
                        "Streaming inference", f"{header}\n{table}\n", rows, device,
                        args=vars(args))
    return rows


def build_parser():
    parser = cli.parser("streaming", __doc__)
    parser.add_argument("--models", nargs="+", default=None,
                        help="default: every registered model with streaming inference")
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000, 2000, 4000])
    parser.add_argument("--batch", type=int, default=1, help="users scored together")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--n_layers", type=int, default=2)
    cli.add_set_option(parser, "any other key, for the models whose yaml has it")
    parser.add_argument("--n_items", type=int, default=3417, help="ML-1M has 3,416 items + pad")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--block_ms", type=float, default=5.0,
                        help="each sample: consecutive calls of one kind for about this long, "
                             "per call (0: one call per sample, between the other kinds' calls)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/streaming",
                        help="folder for streaming.{json,csv,md} ('': print only)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (0: torch default); 1 = one request per core, and "
                             "stable on a busy machine where idle OpenMP threads stall tiny ops")
    return parser


if __name__ == "__main__":
    main()
