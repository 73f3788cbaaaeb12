"""Command line entry point, RecBole's ``run_recbole.py`` flags plus our models and
sub-commands; the same command as ``recbole-efficient`` and ``python -m recbole_efficient``.

    python run_recbole_efficient.py --model=ELASTIC --dataset=ml-1m      # fetched if missing
    python run_recbole_efficient.py --resume=saved/ELASTIC-<time>-<token>   # continue a run
    python run_recbole_efficient.py tune --model=LRURec                     # Ray Tune sweep
    python run_recbole_efficient.py --help                                  # all sub-commands
"""

import sys

from recbole_efficient.cli import main

if __name__ == "__main__":
    sys.exit(main())
