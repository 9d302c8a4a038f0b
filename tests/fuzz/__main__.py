"""A longer live fuzz run than CI's: its own redis-server, one node and the harness's HAProxy.

    .venv/bin/python -m tests.fuzz --seed 7 --minutes 30 [--workers 8] [--rss-limit-mb 200]

Prints the report and the node's log path; exits 0 when the node survived everything with its
bystanders served and RSS under the limit, 1 otherwise. Run it under the shared lock on a
shared machine (flock /work/team/heavy.lock ...): it keeps two cores busy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import trio

from harness.redis_server import start_redis
from tests.support.haproxy import start_haproxy
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, start_node

from .live import Bystander, Target, fuzz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rss-limit-mb", type=float, default=200.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="turnout-fuzz-"))
    redis = start_redis(tmp / "redis")
    node = start_node(tmp, redis.url, "fuzz-node", "--key-prefix", f"fuzz{args.seed}")
    lb = start_haproxy(tmp, {"fuzz-node": ("127.0.0.1", node.port)})
    try:
        report = trio.run(lambda: fuzz(
            seed=args.seed, node_url=node.url, node_pid=node.proc.pid,
            targets=[Target("direct", node.port), Target("haproxy", lb.port)],
            bystanders=[
                Bystander("direct", node.ws_url, "bystander-direct"),
                Bystander("haproxy", f"ws://127.0.0.1:{lb.port}/app/{APP_KEY}?protocol=7",
                          "bystander-haproxy"),
            ],
            app=(APP_ID, APP_KEY, APP_SECRET), duration_s=args.minutes * 60,
            workers=args.workers, rss_limit_mb=args.rss_limit_mb))
    finally:
        lb.stop()
        node.kill()
        redis.stop()
    print(report.summary())
    print(f"node log: {node.log_path}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
