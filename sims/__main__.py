"""``python -m sims``: the same as the ``useful-sim`` command (:func:`sims.cli.main`)."""

import sys

from .cli import main

sys.exit(main())
