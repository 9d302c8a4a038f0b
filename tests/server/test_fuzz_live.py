"""The live fuzzer in CI: a real node, the harness's HAProxy in front of it, one bystander on
each path, and thousands of generated and mutated requests and frames for a bounded time.

Seeded (``TURNOUT_FUZZ_SEED``, default below) and bounded (``TURNOUT_FUZZ_SECONDS``, 60 s in
CI). A longer run is ``python -m tests.fuzz --seed N --minutes M`` (docs/security.md). The
second test shows the fuzzer's verdict can fail: a node killed mid-run is reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from tests.fuzz.live import Bystander, Target, fuzz
from tests.support.haproxy import start_haproxy
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET

SEED = int(os.environ.get("TURNOUT_FUZZ_SEED", "20261130"))
SECONDS = float(os.environ.get("TURNOUT_FUZZ_SECONDS", "60"))
# An idle node weighs ~35 MB here; the fuzzer's connections come and go within seconds.
RSS_LIMIT_MB = 150.0


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 180)
async def test_live_fuzz_direct_and_through_haproxy(start_nodes, tmp_path: Path) -> None:
    node = start_nodes("fuzz-node")
    lb = await trio.to_thread.run_sync(
        start_haproxy, tmp_path, {"fuzz-node": ("127.0.0.1", node.port)})
    try:
        report = await fuzz(
            seed=SEED, node_url=node.url, node_pid=node.proc.pid,
            targets=[Target("direct", node.port), Target("haproxy", lb.port)],
            bystanders=[
                Bystander("direct", node.ws_url, "bystander-direct"),
                Bystander("haproxy", f"ws://127.0.0.1:{lb.port}/app/{APP_KEY}?protocol=7",
                          "bystander-haproxy"),
            ],
            app=(APP_ID, APP_KEY, APP_SECRET), duration_s=SECONDS, rss_limit_mb=RSS_LIMIT_MB)
    finally:
        lb.stop()
    print(report.summary())
    assert not report.problems, f"{report.summary()}\nnode log tail:\n{node.log()[-5000:]}"
    # It really was thousands, on both paths, and reached every layer.
    assert sum(report.actions.values()) >= 1000 * SECONDS / 60, report.summary()
    assert report.frames_sent >= 5000 * SECONDS / 60, report.summary()
    for path in ("direct", "haproxy"):
        assert report.statuses[f"{path}:101"] > 0, report.summary()  # websockets opened
        assert report.statuses[f"{path}:200"] > 0, report.summary()  # signed publishes
        assert report.statuses[f"{path}:400"] > 0, report.summary()  # refusals
    assert {1002, 1007, 1009} <= set(report.close_codes), report.summary()
    assert report.events_published >= 10
    assert node.proc.poll() is None


async def test_live_fuzzer_reports_a_dead_node(start_nodes) -> None:
    node = start_nodes("fuzz-victim")

    async def kill_soon() -> None:
        await trio.sleep(1.5)
        node.kill()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_soon)
        report = await fuzz(
            seed=SEED, node_url=node.url, node_pid=node.proc.pid,
            targets=[Target("direct", node.port)],
            bystanders=[Bystander("direct", node.ws_url, "bystander-direct")],
            app=(APP_ID, APP_KEY, APP_SECRET), duration_s=4, workers=2)
    assert "the node process exited" in report.problems, report.summary()
