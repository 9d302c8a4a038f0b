"""``python -m bench [fanout options]``: run every benchmark (today: the fan-out benchmark)."""

import sys

from bench.fanout import main

sys.exit(main())
