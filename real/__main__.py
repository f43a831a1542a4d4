"""``python -m real`` is ``useful-train``."""

import sys

from .cli import main

sys.exit(main())
