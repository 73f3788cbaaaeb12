"""The ``recbole-efficient`` command (also ``python -m recbole_efficient`` and
``python run_recbole_efficient.py``): training by default, and sub-commands.

Heavy imports (torch, RecBole, Ray) happen inside the sub-command that needs them, so
``--help`` and ``download``/``convert`` answer quickly.
"""

import argparse
import sys

PROG = "recbole-efficient"

#: name -> (one-line description, runner)
SUBCOMMANDS = {}


def _subcommand(name, summary):
    def register(func):
        SUBCOMMANDS[name] = (summary, func)
        return func
    return register


def _overview():
    lines = [f"usage: {PROG} [SUB-COMMAND] [--key=value ...]", "",
             "Efficient long-sequence sequential recommenders as a RecBole plugin.", "",
             "sub-commands:"]
    lines += [f"  {name:<10}{summary}" for name, (summary, _) in SUBCOMMANDS.items()]
    lines += ["", f"Without a sub-command, {PROG} trains (`{PROG} --model=ELASTIC "
              "--dataset=ml-1m`).",
              f"`{PROG} SUB-COMMAND --help` describes each one."]
    return "\n".join(lines)


def main(argv=None):
    """Run the command line; returns the exit status (2: bad input, 130: interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(_overview())
        return 0
    if argv and argv[0] in SUBCOMMANDS:
        if sys.argv[1:2] == argv[:1]:  # RecBole's Config reads sys.argv: drop the sub-command
            del sys.argv[1]
        return SUBCOMMANDS[argv[0]][1](argv[1:])
    if argv and not argv[0].startswith("-"):
        print(f"error: unknown sub-command {argv[0]!r}; choose one of "
              f"{', '.join(SUBCOMMANDS)} (`{PROG} --help`).", file=sys.stderr)
        return 2
    return SUBCOMMANDS["train"][1](argv)


# -- train ---------------------------------------------------------------------------------------
def _train_parser():
    parser = argparse.ArgumentParser(
        prog=f"{PROG} [train]",
        description="Train, validate and test a model, like RecBole's run_recbole.py. Any "
                    "other --key=value sets that configuration key (RecBole's and ours), e.g. "
                    "--epochs=20 --data_path=dataset/ --allow_download=False.")
    parser.add_argument("--model", "-m", type=str, default=None,
                        help="model name (default SoftmaxSASRec; with --resume: the checkpoint's)")
    parser.add_argument("--dataset", "-d", type=str, default=None,
                        help="dataset name; ml-1m, ml-10m, ml-20m, ml-25m and ml-32m are fetched "
                             "when missing (default ml-100k; with --resume: the checkpoint's)")
    parser.add_argument("--resume", type=str, default=None,
                        help="continue an interrupted run from its run folder or a checkpoint")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated yaml files")
    parser.add_argument("--nproc", type=int, default=1, help="processes per node")
    parser.add_argument("--ip", type=str, default="localhost", help="master ip")
    parser.add_argument("--port", type=str, default="5678", help="master port")
    parser.add_argument("--world_size", type=int, default=-1, help="total processes")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset")
    return parser


def parse_train_args(argv=None):
    # Everything else (--key=value) is read by RecBole's Config from sys.argv.
    args, _ = _train_parser().parse_known_args(argv)
    return args


@_subcommand("train", "train, validate and test a model (the default)")
def train(argv):
    args = parse_train_args(argv)
    import recbole_efficient
    from torch.multiprocessing import ProcessExitedException

    from recbole_efficient.quick_start import USER_ERRORS
    from recbole_efficient.trainer import TrainingInterrupted

    if not args.resume:
        args.model, args.dataset = args.model or "SoftmaxSASRec", args.dataset or "ml-100k"
    config_files = args.config_files.strip().split(" ") if args.config_files else None
    try:
        result = recbole_efficient.run(
            args.model, args.dataset, config_file_list=config_files, nproc=args.nproc,
            world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset,
            resume=args.resume)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ProcessExitedException as err:  # a worker already printed why
        return err.exit_code
    except TrainingInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    if result is not None:
        for name in ("best_valid_result", "test_result"):
            metrics = result[name] or {}
            print(f"{name}: " + "  ".join(f"{k}={float(v):.4f}" for k, v in metrics.items()))
        if result.get("fault"):
            print(f"error: {result['fault']}", file=sys.stderr)
            return 1
    return 0


# -- tune ----------------------------------------------------------------------------------------
@_subcommand("tune", "Ray Tune sweep of a model's hyperparameters (local or on a Ray cluster)")
def tune(argv):
    from recbole_efficient.tune import main as tune_main

    return tune_main(argv)


# -- serve ---------------------------------------------------------------------------------------
@_subcommand("serve", "serve a trained checkpoint over HTTP: events in, recommendations out")
def serve(argv):
    from recbole_efficient.serve.cli import main as serve_main

    return serve_main(argv)


# -- download ------------------------------------------------------------------------------------
def _settings(files, given):
    """``data_path`` and ``dataset_mirrors`` as a run would see them: yaml files, then flags."""
    import yaml

    merged = {"data_path": "dataset/", "dataset_mirrors": None}
    for file in (files or "").split():
        with open(file, encoding="utf-8") as f:
            merged.update({k: v for k, v in (yaml.safe_load(f) or {}).items() if k in merged})
    merged.update({k: v for k, v in given.items() if v is not None})
    return merged


@_subcommand("download", "fetch datasets by name into data_path, without training")
def download(argv):
    from recbole_efficient.data.catalog import DATASETS

    parser = argparse.ArgumentParser(
        prog=f"{PROG} download",
        description="Fetch the publisher's archive (SHA-256 checked; mirrors tried in order) "
                    "and write RecBole atomic files to <data_path>/<name>/. Known names: "
                    + ", ".join(DATASETS) + " (ml-100k ships with RecBole).")
    parser.add_argument("names", nargs="+", metavar="NAME", help="dataset name(s)")
    parser.add_argument("--data_path", default=None, help="parent folder (default dataset/)")
    parser.add_argument("--dataset_mirrors", default=None,
                        help="URL prefixes or folders tried first, e.g. "
                             "--dataset_mirrors=[https://mirror.example.org/movielens]")
    parser.add_argument("--config_files", default=None,
                        help="space-separated yaml files to read data_path/dataset_mirrors from")
    args = parser.parse_args(argv)
    from recbole_efficient.data.catalog import mirror_list
    from recbole_efficient.data.fetch import DatasetError, install_dataset, known_names
    from recbole_efficient.data.stats import read_inter_stats

    try:
        settings = _settings(args.config_files,
                             {"data_path": args.data_path, "dataset_mirrors": args.dataset_mirrors})
        mirrors = mirror_list(settings["dataset_mirrors"])
        for name in args.names:
            if name == "ml-100k":
                print("ml-100k ships with RecBole: nothing to fetch.")
                continue
            if name not in DATASETS:
                raise DatasetError(f"unknown dataset {name!r}: the names we fetch are "
                                   f"{', '.join(known_names())}; to use your own data, run "
                                   f"`{PROG} convert FILE --user=COL --item=COL --time=COL`.")
            folder = install_dataset(name, settings["data_path"], mirrors=mirrors)
            print(f"{name}: {folder}")
            for line in read_inter_stats(folder / f"{name}.inter").lines():
                print(f"  {line}")
    except (ValueError, OSError) as err:  # DatasetError and a bad dataset_mirrors value
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# -- convert -------------------------------------------------------------------------------------
@_subcommand("convert", "turn your interaction log (CSV, Parquet, JSON lines) into atomic files")
def convert(argv):
    parser = argparse.ArgumentParser(
        prog=f"{PROG} convert",
        description="Write <data_path>/<name>/<name>.inter (user_id:token item_id:token "
                    "[rating:float] timestamp:float) from a CSV/TSV, Parquet or JSON-lines log "
                    "and print what you need to pick settings.")
    parser.add_argument("file", help="the interaction log")
    parser.add_argument("--user", required=True, help="user id column")
    parser.add_argument("--item", required=True, help="item id column")
    parser.add_argument("--time", required=True,
                        help="time column: numbers (e.g. Unix seconds) or dates/datetimes")
    parser.add_argument("--rating", default=None, help="optional rating column")
    parser.add_argument("--name", default=None, help="dataset name (default: the file's name)")
    parser.add_argument("--data_path", default="dataset/", help="parent folder (default dataset/)")
    parser.add_argument("--format", default=None, choices=("csv", "parquet", "jsonl"),
                        help="default: from the file name")
    parser.add_argument("--sep", default=None, help="CSV separator (default: sniffed)")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)
    from recbole_efficient.data.convert import ConvertError, convert_log

    if args.sep == "\\t":  # typed as backslash-t
        args.sep = "\t"
    try:
        folder, stats = convert_log(args.file, args.user, args.item, args.time, args.rating,
                                    args.name, args.data_path, args.format, args.sep, args.force)
    except (ConvertError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = folder.name
    print(f"wrote {folder / (name + '.inter')}")
    for line in stats.lines():
        print(f"  {line}")
    print(f"train on it: {PROG} --model=ELASTIC --dataset={name} --data_path={folder.parent}")
    return 0
