"""Server adapters (harness.servers): what each starts, what each supports, and the topology
running each behind the same HAProxy and Toxiproxy.

The Sockudo adapter is exercised twice: against a small stand-in process (CI has no Sockudo:
building it takes minutes) that checks the environment the adapter gives it and answers Sockudo's
health endpoint, and against the real binary (skipped, saying why, where it is not installed;
scripts/setup-peers.sh installs it).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio

from harness import checker
from harness.events import EventLog
from harness.experiment import SECTIONS
from harness.faults import FAULTS, FaultContext, FaultError
from harness.history import HistoryWriter, iter_history
from harness.nemesis import Nemesis
from harness.procs import HarnessSetupError
from harness.render import render_markdown
from harness.servers import (
    CHAOS_ENDPOINT,
    SERVERS,
    NodeLaunch,
    SockudoServer,
    TurnoutServer,
    find_sockudo,
    server_adapter,
)
from harness.topology import NodeState, TopologySpec, run_topology
from tests.support.client import pusher_client, signed_post
from tests.support.procs import APP_ID, APP_KEY

LAUNCH = NodeLaunch(name="node-2", port=4321, redis_url="redis://127.0.0.1:7000/0",
                    cwd=Path("/tmp"), chaos_token="tok")


# --- what each adapter starts -------------------------------------------------------------------


def test_turnout_adapter_starts_the_node_as_before() -> None:
    adapter = TurnoutServer()
    spec = TopologySpec(nodes=2, drain_grace_s=3, node_command=("turnout-server",))
    process = adapter.process_spec(spec, LAUNCH)
    argv = list(process.argv)
    assert argv[0] == "turnout-server"
    assert argv[argv.index("--redis-url") + 1] == LAUNCH.redis_url
    assert argv[argv.index("--port") + 1] == "4321"
    assert argv[argv.index("--node-id") + 1] == "node-2"
    assert "--chaos" in argv
    assert "tok" not in argv
    assert spec.app_secret not in argv
    assert process.env["TURNOUT_CHAOS_TOKEN"] == "tok"
    assert process.env["TURNOUT_APP_SECRET"] == spec.app_secret
    assert process.stop_grace == 8
    assert adapter.health_path == "/health"
    assert adapter.health_url(4321) == "http://127.0.0.1:4321/health"
    assert adapter.metrics_url(4321) == "http://127.0.0.1:4321/metrics"


def test_sockudo_adapter_environment() -> None:
    adapter = SockudoServer(binary="/opt/sockudo")
    spec = TopologySpec(nodes=2, clients=5000, drain_grace_s=2.5, activity_timeout_s=120,
                        app_id="7", app_key="k", app_secret="s", server="sockudo")
    process = adapter.process_spec(spec, LAUNCH)
    env = process.env
    assert list(process.argv) == ["/opt/sockudo"]
    assert (env["HOST"], env["PORT"]) == ("127.0.0.1", "4321")
    assert (env["SOCKUDO_DEFAULT_APP_ID"], env["SOCKUDO_DEFAULT_APP_KEY"],
            env["SOCKUDO_DEFAULT_APP_SECRET"]) == ("7", "k", "s")
    # Clustered over Redis: both drivers, and every Redis user through the node's proxy.
    assert (env["ADAPTER_DRIVER"], env["CACHE_DRIVER"]) == ("redis", "redis")
    assert env["REDIS_URL"] == LAUNCH.redis_url
    # Its defaults (100 connections per app, per-address websocket rate limit) would silently
    # keep most of the fleet out.
    assert int(env["SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS"] or 0) >= spec.clients
    assert env["RATE_LIMITER_ENABLED"] == "false"
    assert env["SHUTDOWN_GRACE_PERIOD"] == "3"  # whole seconds, rounded up
    assert env["ACTIVITY_TIMEOUT"] == "120"
    assert env["METRICS_ENABLED"] == "false"  # its fixed metrics port would collide
    assert env["DEBUG"] is None  # the harness's own DEBUG must not reach it
    assert adapter.health_path == "/up"
    assert adapter.metrics_url(4321) is None
    assert process.stop_grace >= 3 + 5


def test_only_the_leak_needs_a_turnout_only_feature() -> None:
    sockudo, turnout = SockudoServer(binary="x"), TurnoutServer()
    needing = {kind for kind, cls in FAULTS.items() if cls.needs}
    assert needing == {"leak_memory"}
    for kind, cls in FAULTS.items():
        assert turnout.skip_reason(kind, cls.needs) is None
        reason = sockudo.skip_reason(kind, cls.needs)
        if kind == "leak_memory":
            assert reason is not None
            assert CHAOS_ENDPOINT in reason
            assert "sockudo" in reason
        else:
            assert reason is None, kind


def test_server_names_are_checked_everywhere() -> None:
    with pytest.raises(ValueError, match=r"unknown server 'reverb'.*turnout, sockudo"):
        server_adapter("reverb")
    with pytest.raises(ValueError, match="unknown server"):
        TopologySpec(server="reverb")
    key = next(k for k in SECTIONS["cluster"] if k.name == "server")
    assert set(key.choices) == set(SERVERS)
    assert key.default == "turnout"
    assert TopologySpec().adapter.name == "turnout"


def test_missing_sockudo_is_a_setup_error_naming_the_installer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_SOCKUDO_BIN", str(tmp_path / "nope"))
    with pytest.raises(HarnessSetupError, match="TURNOUT_SOCKUDO_BIN"):
        SockudoServer().require(TopologySpec(server="sockudo"))


def test_the_server_flag_overrides_the_experiment_and_says_so() -> None:
    from harness.experiment import load_experiment
    from harness.runner import RunOptions, prepare

    experiment = load_experiment(Path(__file__).parents[2] / "experiments" / "baseline.toml")
    assert experiment.cluster.server == "turnout"
    chosen = prepare(experiment, RunOptions(server="sockudo"))
    assert chosen.cluster.server == "sockudo"
    assert chosen.to_dict()["cluster"]["server"] == "sockudo"  # experiment.json tells the truth
    assert prepare(experiment, RunOptions()).cluster.server == "turnout"


def test_cli_refuses_server_with_target(tmp_path: Path) -> None:
    from harness.cli import main

    baseline = str(Path(__file__).parents[2] / "experiments" / "baseline.toml")
    assert main(["run", baseline, "--server", "sockudo", "--target", "ws://127.0.0.1:1"]) == 2


def test_cli_refuses_sockudo_on_a_kernel_balanced_file(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    from harness.cli import main

    full = str(Path(__file__).parents[2] / "experiments" / "election-night-full.toml")
    assert main(["run", full, "--server", "sockudo"]) == 2
    assert "--server sockudo needs 'haproxy'" in " ".join(capsys.readouterr().err.split())


# --- skipped faults: history, events, report ----------------------------------------------------


async def test_a_fault_the_server_cannot_take_is_skipped_with_its_reason(tmp_path: Path) -> None:
    topology = SimpleNamespace(spec=TopologySpec(server="sockudo"))
    ctx = FaultContext(topology=cast(Any, topology), rng=__import__("random").Random(1))
    history = HistoryWriter(tmp_path / "history.jsonl")
    events = EventLog(tmp_path / "events.jsonl")
    async with trio.open_nursery() as nursery:
        nemesis = Nemesis(ctx, history, events, nursery)
        assert nemesis.start("f1", "leak_memory", "node-1", {"mb_per_s": 10}, 5.0) == "f1"
        with pytest.raises(FaultError, match="chaos_endpoint"):
            nemesis.start("", "leak_memory", "node-1", {}, 5.0, source="interactive")
        await nemesis.wait_idle()
    history.close()
    events.close()
    ops = list(iter_history(tmp_path / "history.jsonl"))
    assert [(op.f, op.type) for op in ops] == [("fault_skipped", "info")]
    assert "sockudo" in ops[0].value["reason"]
    kinds = [json.loads(line)["type"] for line in (tmp_path / "events.jsonl").read_text()
             .splitlines()]
    assert kinds == ["fault_skipped"]

    report = checker.check(ops, checker.Invariants(max_recovery_s=20))
    (fault,) = report.faults
    assert (fault.fault_id, fault.status) == ("f1", "skipped")
    assert "chaos_endpoint" in (fault.error or "")
    injected = next(i for i in report.invariants if i.name == "faults_injected")
    assert injected.ok
    assert "1 skipped" in injected.message
    recovery = next(i for i in report.invariants if i.name == "recovery_s")
    assert recovery.ok, recovery.message  # a fault that never ran has nothing to recover
    text = render_markdown(report, "memory-leak")
    assert "## Faults skipped" in text
    assert "f1 leak_memory on node-1" in text


# --- the adapter against a stand-in Sockudo (runs in CI) ----------------------------------------

# Behaves like Sockudo where the harness depends on it: configured by environment only, refuses
# to start clustered without both Redis drivers, reaches Redis through REDIS_URL, answers /up
# (not /health), and on SIGTERM reports 503 for SHUTDOWN_GRACE_PERIOD before exiting 0.
STAND_IN = textwrap.dedent(
    """
    import http.server, json, os, signal, socket, sys, threading, time
    env = os.environ
    if env.get("ADAPTER_DRIVER") != "redis" or env.get("CACHE_DRIVER") != "redis":
        sys.exit("clustered adapter needs CACHE_DRIVER=redis")
    host, port = env["REDIS_URL"].removeprefix("redis://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as redis:
        redis.sendall(b"PING\\r\\n")
        assert redis.recv(64).startswith(b"+PONG")
    draining = threading.Event()
    seen = {k: env.get(k) for k in ("SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS",
                                    "RATE_LIMITER_ENABLED", "REDIS_URL", "INSTANCE_PROCESS_ID")}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            if self.path == "/up":
                status, body = (503, b"DRAINING") if draining.is_set() else (200, b"OK")
            elif self.path == "/env":
                status, body = 200, json.dumps(seen).encode()
            else:
                status, body = 404, b""
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass

    def drain(*_):
        draining.set()
        def finish():
            time.sleep(float(env["SHUTDOWN_GRACE_PERIOD"]))
            os._exit(0)
        threading.Thread(target=finish, daemon=True).start()

    signal.signal(signal.SIGTERM, drain)
    server = http.server.ThreadingHTTPServer((env["HOST"], int(env["PORT"])), Handler)
    server.serve_forever()
    """
)


async def test_sockudo_adapter_drives_a_stand_in_behind_haproxy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    stand_in = tmp_path / "sockudo"
    stand_in.write_text(f"#!{sys.executable}\n{STAND_IN}")
    stand_in.chmod(0o755)
    monkeypatch.setenv("TURNOUT_SOCKUDO_BIN", str(stand_in))
    spec = TopologySpec(nodes=2, clients=10, server="sockudo", drain_grace_s=1,
                        ready_timeout_s=20)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            topo = await nursery.start(run_topology, spec, tmp_path / "run")
            # HAProxy checks Sockudo's /up, so both nodes are UP after a passing check.
            status = await topo.lanes[0].backend_status()
            assert {n: s[0] for n, s in status.items()} == {"node-1": "UP", "node-2": "UP"}
            assert "GET /up" in topo.lanes[0].config_path.read_text()
            node1, node2 = topo.nodes["node-1"], topo.nodes["node-2"]
            async with httpx.AsyncClient(trust_env=False) as client:
                seen = (await client.get(f"{node1.url}/env")).json()
            assert seen["INSTANCE_PROCESS_ID"] == "node-1"
            assert seen["REDIS_URL"] == f"redis://{topo.proxies['node-1->redis'].listen}/0"
            assert seen["RATE_LIMITER_ENABLED"] == "false"
            assert await node1.health() == 200

            await node1.kill()
            assert node1.state is NodeState.KILLED
            assert await node1.health() is None
            await node1.restart()
            assert node1.state is NodeState.UP
            assert await node1.health() == 200

            node2.pause()
            assert node2.state is NodeState.PAUSED
            assert await node2.health(timeout=0.5) is None  # frozen: no answer
            node2.resume()
            assert await node2.health() == 200

            assert await node2.drain() == 0  # SIGTERM: 503 for the grace, then exit 0
            assert node2.state is NodeState.EXITED
            await node2.restart()
            await topo.wait_lb_ready(timeout=20)
            nursery.cancel_scope.cancel()


# --- the real Sockudo (needs the binary; scripts/setup-peers.sh) --------------------------------


def _sockudo_or_skip() -> str:
    try:
        return find_sockudo()
    except HarnessSetupError as exc:
        if os.environ.get("TURNOUT_REQUIRE_SOCKUDO"):
            raise
        pytest.skip(f"Sockudo is not installed (scripts/setup-peers.sh installs it): {exc}")


async def test_real_sockudo_cluster_broadcasts_across_nodes_and_survives_a_kill(
        tmp_path: Path) -> None:
    _sockudo_or_skip()
    spec = TopologySpec(nodes=2, clients=10, server="sockudo", drain_grace_s=1,
                        app_id=APP_ID, app_key=APP_KEY, ready_timeout_s=30)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            topo = await nursery.start(run_topology, spec, tmp_path / "run")
            base = topo.ws_urls[0] + f"/app/{APP_KEY}?protocol=7"

            async def one_round(label: str) -> None:
                # Two viewers straight on the two nodes, one publish through the load
                # balancer: both receive it only if the nodes share it over Redis.
                urls = [f"ws://127.0.0.1:{n.port}/app/{APP_KEY}?protocol=7"
                        for n in topo.nodes.values()]
                async with pusher_client(urls[0]) as a, pusher_client(urls[1]) as b:
                    for viewer in (a, b):
                        answer = await viewer.subscribe("results-1")
                        assert answer["event"] == "pusher_internal:subscription_succeeded"
                        assert "offset" not in answer  # plain Pusher: no positions
                    response = await trio.to_thread.run_sync(
                        lambda: signed_post(topo.http_api_url, f"/apps/{APP_ID}/events", {
                            "name": "result", "channels": ["results-1"],
                            "data": json.dumps({"id": label})}))
                    assert response.status_code == 200, response.text
                    for viewer in (a, b):
                        got = await viewer.next(timeout=10)
                        assert got["event"] == "result", got
                        assert json.loads(got["data"]) == {"id": label}

            await one_round("before")
            async with pusher_client(base) as via_lb:
                assert via_lb.socket_id
            node = topo.nodes["node-1"]
            await node.kill()
            assert node.state is NodeState.KILLED
            await node.restart()
            await topo.wait_lb_ready(timeout=30)
            await one_round("after")
            nursery.cancel_scope.cancel()


SOCKUDO_RUN = """
description = "leak and kill against Sockudo, small"
[cluster]
nodes = 2
server = "sockudo"
max_rss_mb = 300
[clients]
count = 20
processes = 1
channels_per_client = 2
[workload]
channels = 2
publish_interval_s = 0.5
interval_jitter_s = 0.1
[phases]
steady_s = 3
faults_s = 8
heal_s = 1
settle_s = 3
[[faults]]
at_s = 1
kind = "leak_memory"
target = "node-1"
mb_per_s = 10
duration_s = 4
[[faults]]
at_s = 2
kind = "pause_node"
target = "node-2"
duration_s = 2
[invariants]
min_delivered = 50
"""


@pytest.mark.slow
def test_a_run_against_sockudo_skips_the_leak_and_says_positions_were_unavailable(
        tmp_path: Path) -> None:
    from tests.harness.runs import explain, report, turnout_run

    _sockudo_or_skip()
    path = tmp_path / "sockudo.toml"
    path.write_text(SOCKUDO_RUN)
    run_dir = tmp_path / "run"
    result = turnout_run(str(path), "--out", str(run_dir), timeout=240)
    doc = report(run_dir)
    assert doc["server"].startswith("sockudo "), doc["server"]
    assert doc["recording"]["positions"] == "unavailable"
    faults = {f["fault_id"]: f for f in doc["faults"]}
    assert faults["f1"]["status"] == "skipped"
    assert "chaos_endpoint" in faults["f1"]["error"]
    assert faults["f2"]["status"] == "ok"  # the pause ran, against a Sockudo node
    assert doc["totals"]["delivered"] >= 50
    text = (run_dir / "report.md").read_text()
    assert "Server positions (offset/epoch) were not available" in text
    assert "## Faults skipped" in text
    events = [json.loads(line)["type"] for line in
              (run_dir / "events.jsonl").read_text().splitlines()]
    assert "fault_skipped" in events
    assert "skipped f1" in result.stderr, explain(result, run_dir)
