"""Command line entry point, RecBole's ``run_recbole.py`` flags plus our models.

    python run_recbole_efficient.py --model=LRURec --dataset=ml-1m --data_path=../shared/datasets
"""

import argparse
import sys

from torch.multiprocessing import ProcessExitedException

import recbole_efficient
from recbole_efficient.quick_start import USER_ERRORS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", type=str, default="SoftmaxSASRec", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
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
    args = parse_args(argv)
    config_files = args.config_files.strip().split(" ") if args.config_files else None
    try:
        result = recbole_efficient.run(
            args.model, args.dataset, config_file_list=config_files, nproc=args.nproc,
            world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ProcessExitedException as err:  # a worker already printed why
        return err.exit_code
    if result is not None:
        for name in ("best_valid_result", "test_result"):
            metrics = result[name] or {}
            print(f"{name}: " + "  ".join(f"{k}={float(v):.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
