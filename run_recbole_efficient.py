"""Command line entry point, RecBole's ``run_recbole.py`` flags plus our models.

    python run_recbole_efficient.py --model=LRURec --dataset=ml-1m --data_path=../shared/datasets
    python run_recbole_efficient.py --resume=saved/LRURec-<time>-<token>   # continue a run
    python run_recbole_efficient.py tune --model=LRURec --space=space.yaml   # Ray Tune sweep
"""

import argparse
import sys

from torch.multiprocessing import ProcessExitedException

import recbole_efficient
from recbole_efficient.quick_start import USER_ERRORS
from recbole_efficient.trainer import TrainingInterrupted


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", type=str, default=None,
                        help="model name (default SoftmaxSASRec; with --resume: the checkpoint's)")
    parser.add_argument("--dataset", "-d", type=str, default=None,
                        help="dataset name (default ml-100k; with --resume: the checkpoint's)")
    parser.add_argument("--resume", type=str, default=None,
                        help="continue an interrupted run from its run folder or a checkpoint")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated yaml files")
    parser.add_argument("--nproc", type=int, default=1, help="processes per node")
    parser.add_argument("--ip", type=str, default="localhost", help="master ip")
    parser.add_argument("--port", type=str, default="5678", help="master port")
    parser.add_argument("--world_size", type=int, default=-1, help="total processes")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset")
    # Everything else (--key=value) is read by RecBole's Config from sys.argv.
    args, _ = parser.parse_known_args(argv)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tune"]:
        from recbole_efficient.tune import main as tune_main

        return tune_main(argv[1:])
    args = parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
