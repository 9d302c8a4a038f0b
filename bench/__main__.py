"""``python -m bench [fanout options]``: every benchmark, in one command.

The fan-out benchmark (with the given options), then the Redis client round trip at its
defaults. Each one measures its baselines in the same run and reports ratios to them.
"""

import sys

from bench import fanout, redis_client

fanout_rc = fanout.main()
redis_rc = redis_client.main([])
sys.exit(fanout_rc or redis_rc)
