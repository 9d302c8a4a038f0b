"""Redis round trip: turnout's own trio client next to coredis under trio and redis-py.

``python -m bench.redis_client [--round-trips N] [--rounds R] [--json FILE]``

Why it exists: the server issue asked to choose a Redis client for trio and say why. redis-py
(the user's choice) has no trio support; coredis runs under trio through anyio. turnout ships a
small RESP client (server/redis_link.py) because the broker must see every link drop itself
(coredis reconnects behind the caller's back); this benchmark records what that choice costs or
saves per round trip. Every client talks to the same redis-server, started here on a free
loopback port, in the same run; rounds interleave the clients so load on a shared machine hits
them alike. Reported: median µs per sequential PING round trip and per HMGET, and each client's
ratio to redis-py's blocking client (the floor: no event loop at all).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from harness.procs import HarnessSetupError
from harness.redis_server import start_redis
from server.redis_link import RedisClient

CLIENTS = ("redis-py (blocking)", "turnout RedisClient (trio)", "coredis (trio via anyio)")


def _time_sync(n: int, call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e6


async def _time_async(n: int, call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - start) / n * 1e6


def _measure_redis_py(port: int, n: int) -> dict[str, float]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        client.ping()
        return {"ping": _time_sync(n, client.ping),
                "hmget": _time_sync(n, lambda: client.hmget("bench:m", "offset", "epoch"))}
    finally:
        client.close()


async def _measure_turnout(port: int, n: int) -> dict[str, float]:
    client = RedisClient("127.0.0.1", port)
    try:
        await client.execute("PING")
        return {"ping": await _time_async(n, lambda: client.execute("PING")),
                "hmget": await _time_async(
                    n, lambda: client.execute("HMGET", "bench:m", "offset", "epoch"))}
    finally:
        await client.aclose()


async def _measure_coredis(port: int, n: int) -> dict[str, float]:
    import coredis

    client = coredis.Redis(host="127.0.0.1", port=port)
    async with client:
        await client.ping()
        return {"ping": await _time_async(n, client.ping),
                "hmget": await _time_async(
                    n, lambda: client.hmget("bench:m", ["offset", "epoch"]))}


def run(round_trips: int, rounds: int) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {c: {"ping": [], "hmget": []} for c in CLIENTS}
    with tempfile.TemporaryDirectory(prefix="turnout-bench-redis-") as tmp:
        try:
            redis = start_redis(Path(tmp))
        except HarnessSetupError as exc:
            sys.exit(f"bench.redis_client: {exc}")
        port = redis.port
        try:
            subprocess.run(["redis-cli", "-p", str(port), "HSET", "bench:m", "offset", "42",
                            "epoch", "0123abcd"], check=False, capture_output=True)
            for _ in range(rounds):
                results = {
                    CLIENTS[0]: _measure_redis_py(port, round_trips),
                    CLIENTS[1]: trio.run(_measure_turnout, port, round_trips),
                    CLIENTS[2]: trio.run(_measure_coredis, port, round_trips),
                }
                for client, by_op in results.items():
                    for op, value in by_op.items():
                        samples[client][op].append(value)
        finally:
            redis.stop()
    floor = {op: statistics.median(samples[CLIENTS[0]][op]) for op in ("ping", "hmget")}
    out: dict[str, Any] = {"round_trips": round_trips, "rounds": rounds, "clients": {}}
    for client in CLIENTS:
        entry: dict[str, Any] = {}
        for op in ("ping", "hmget"):
            median = statistics.median(samples[client][op])
            entry[op] = {"median_us": round(median, 1),
                         "min_us": round(min(samples[client][op]), 1),
                         "max_us": round(max(samples[client][op]), 1),
                         "x_floor": round(median / floor[op], 2)}
        out["clients"][client] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=2000,
                        help="sequential round trips per client per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.round_trips < 1 or args.rounds < 1:
        parser.error("--round-trips and --rounds must be at least 1")
    result = run(args.round_trips, args.rounds)
    print(f"Redis round trip, {args.rounds} rounds x {args.round_trips} sequential calls "
          "(median µs, min-max, x redis-py blocking):")
    for client, entry in result["clients"].items():
        cells = "  ".join(
            f"{op} {v['median_us']:>7.1f} ({v['min_us']:.0f}-{v['max_us']:.0f}) x{v['x_floor']:.2f}"
            for op, v in entry.items())
        print(f"  {client:<28} {cells}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
