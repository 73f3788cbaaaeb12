"""Side by side in one run: RecBole's augmented training vs all_positions, and parity of the
softmax reference with RecBole's SASRec.

    python -m benchmarks.train_modes --epochs 3

1. SoftmaxSASRec, augmented, ``--epochs`` epochs            -> seconds/epoch, test metrics
2. RecBole SASRec, augmented, same epochs and seed           -> parity with (1)
3. SoftmaxSASRec, all_positions, wall-clock budget = time (1) -> seconds/epoch, test metrics
"""

import os
import statistics
import tempfile
from pathlib import Path

import recbole_efficient
from benchmarks import cli, report

TABLE_FIELDS = ["model", "train_mode", "epochs", "train_seconds", "seconds_per_epoch",
                "ndcg@10", "hit@10", "mrr@10"]


def train(model, config_dict, workdir, dataset):
    os.chdir(workdir)
    result = recbole_efficient.run_recbole_efficient(
        model=model, dataset=dataset, config_dict=config_dict, saved=True, read_cmd_line=False)
    secs = result["train_epoch_seconds"]
    return {
        "model": model, "train_mode": config_dict["train_mode"], "epochs": len(secs),
        "train_seconds": round(sum(secs), 1), "seconds_per_epoch": round(statistics.median(secs), 2),
        **{k: round(float(v), 4) for k, v in result["test_result"].items()},
    }


def build_parser():
    parser = cli.parser("train_modes", __doc__)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max_len", type=int, default=50)
    parser.add_argument("--skip_sasrec", action="store_true", help="skip the parity run (2)")
    parser.add_argument("--out", default="benchmarks/results/train_modes",
                        help="folder for train_modes.{json,csv,md}")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()  # the runs chdir into a temporary folder
    common = {"MAX_ITEM_LIST_LENGTH": args.max_len, "show_progress": False, "seed": 2020,
              "metrics": ["Hit", "NDCG", "MRR"], "topk": [10], "valid_metric": "NDCG@10"}
    if args.data_path:
        common["data_path"] = str(Path(args.data_path).resolve())
    aug = dict(common, train_mode="augmented", epochs=args.epochs, train_batch_size=2048,
               train_neg_sample_args=None)
    rows = []
    cwd = os.getcwd()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(train("SoftmaxSASRec", aug, tmp, args.dataset))
            if not args.skip_sasrec:
                rows.append(train("SASRec", aug, tmp, args.dataset))
            budget = rows[0]["train_seconds"]
            allpos = dict(common, train_mode="all_positions", epochs=10_000,
                          train_time_budget=budget, train_batch_size=128)
            rows.append(train("SoftmaxSASRec", allpos, tmp, args.dataset))
    finally:
        os.chdir(cwd)
    ratio = rows[0]["seconds_per_epoch"] / rows[-1]["seconds_per_epoch"]
    text = (report.markdown_table(TABLE_FIELDS, [[r.get(k) for k in TABLE_FIELDS] for r in rows])
            + f"\n\naugmented / all_positions seconds per epoch: {ratio:.1f}x\n")
    print(text)
    report.save_run(out, "train_modes", cli.command_line("train_modes", argv), "Training modes",
                    text, rows, fields=TABLE_FIELDS, args=vars(args))
    return rows


if __name__ == "__main__":
    main()
