"""``python -m snnbridge``: the command line (see :mod:`snnbridge.cli`)."""

import sys

from .cli import main

sys.exit(main())
