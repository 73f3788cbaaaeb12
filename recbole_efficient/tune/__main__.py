"""``python -m recbole_efficient.tune``: the ``recbole-efficient tune`` command."""

import sys

from recbole_efficient.tune import main

sys.exit(main())
