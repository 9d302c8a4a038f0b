"""``python -m tui [PATH]``: the same as ``turnout tui [PATH]``."""

import sys

from .app import main

sys.exit(main())
