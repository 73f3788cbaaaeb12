"""``python -m recbole_efficient``: the ``recbole-efficient`` command."""

import sys

from recbole_efficient.cli import main

sys.exit(main())
