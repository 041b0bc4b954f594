"""``python -m wan_core``: the command line (see :mod:`wan_core.cli`)."""

import sys

from .cli import main

sys.exit(main())
