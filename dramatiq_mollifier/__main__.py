"""``python -m dramatiq_mollifier``: the same as the ``dramatiq-mollifier`` command."""

import sys

from .cli import main

sys.exit(main())
