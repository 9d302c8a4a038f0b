"""Operations, end to end on real processes and a real Redis: /health, /metrics, drain on
SIGTERM/SIGINT, slow-consumer eviction, the chaos endpoint and the RSS watchdog.

Blocking HTTP and raw-socket work runs in threads so the trio websocket clients keep reading;
every wait polls against a deadline so the tests hold up on a loaded two-core machine.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed

from harness.redis_server import start_redis
from server.auth import sign_request
from tests.support.client import PusherTestClient, in_thread, publish, pusher_client
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, NodeProc, free_port
from tests.support.raw import drain_raw, raw_subscriber

TOKEN = "s3cret-chaos-token"

# Every metric the node promises, by sample name (counters carry the _total suffix).
REQUIRED_METRICS = {
    "turnout_connections",
    "turnout_subscriptions",
    "turnout_channels",
    "turnout_messages_in_total",
    "turnout_messages_out_total",
    "turnout_slow_consumer_disconnects_total",
    "turnout_redis_link_up",
    "turnout_rss_bytes",
    "turnout_event_loop_lag_seconds",
    "turnout_presence_members",
    "turnout_presence_leaves_pending",
    "turnout_client_events_total",
    "turnout_rejoins_total",
    "turnout_dead_nodes_reaped_total",
    "turnout_webhook_events_sent_total",
    "turnout_webhook_sender",
}


# ---------------------------------------------------------------------------------- helpers
# One shared client: building an httpx.Client (its TLS context) costs ~0.1 s, far more than a
# request to a local node.
HTTP = httpx.Client(timeout=10)


def _get(url: str) -> httpx.Response:
    return HTTP.get(url)


def _signed_post(node: NodeProc, path: str, body: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(body).encode()
    params = sign_request(APP_KEY, APP_SECRET, "POST", path, raw)
    return HTTP.post(f"{node.url}{path}", params=params, content=raw,
                     headers={"content-type": "application/json"})


def _publish(node: NodeProc, channel: str, event: str, data: Any) -> httpx.Response:
    return _signed_post(node, f"/apps/{APP_ID}/events",
                        {"name": event, "channels": [channel], "data": json.dumps(data)})


def _scrape(node: NodeProc) -> dict[str, float]:
    response = _get(f"{node.url}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("turnout_"):
                assert sample.labels == {"node": node.node_id}, sample
                samples[sample.name] = sample.value
    return samples


async def scrape(node: NodeProc) -> dict[str, float]:
    result: dict[str, float] = await in_thread(_scrape, node)
    return result


async def eventually(check: Callable[[], Any], timeout: float, what: str,
                     interval: float = 0.1) -> Any:
    """Poll ``check`` (sync, run in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await in_thread(check)
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        await trio.sleep(interval)


def _wait_log(node: NodeProc, pattern: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = node.log()
        if re.search(pattern, text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in the log of {node.node_id}:\n{text}")
        time.sleep(0.05)


def _wait_exit(node: NodeProc, timeout: float) -> int:
    try:
        return node.proc.wait(timeout)
    except Exception as exc:
        raise AssertionError(f"{node.node_id} still running after {timeout} s:\n"
                             f"{node.log()}") from exc


def _chaos(node: NodeProc, method: str, route: str, *, token: str | None = TOKEN,
           via: str = "header", **params: Any) -> httpx.Response:
    headers = {}
    if token is not None and via == "header":
        headers["x-chaos-token"] = token
    elif token is not None:
        params["token"] = token
    return HTTP.request(method, f"{node.chaos_url}/chaos/{route}", params=params,
                        headers=headers)


def start_chaos_node(start_nodes: Callable[..., NodeProc], name: str, *extra: str) -> NodeProc:
    """A node with its chaos listener on a free loopback port; the token in the environment."""
    port = free_port()
    node = start_nodes(name, "--chaos", "--chaos-port", str(port), *extra,
                       env={"TURNOUT_CHAOS_TOKEN": TOKEN})
    node.chaos_port = port
    return node


def _pipelined_chaos(node: NodeProc, *requests: tuple[str, str]) -> list[bytes]:
    """Send several chaos requests back to back in one write on one connection (the last
    asks to close it) and return the status lines of the answers."""
    raw = b""
    for i, (method, route) in enumerate(requests):
        close = "Connection: close\r\n" if i == len(requests) - 1 else ""
        raw += (f"{method} /chaos/{route} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"X-Chaos-Token: {TOKEN}\r\nContent-Length: 0\r\n{close}\r\n").encode()
    with socket.create_connection(("127.0.0.1", node.chaos_port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return re.findall(rb"HTTP/1\.1 \d+", answer)


# ------------------------------------------------------------------------ 1. health/metrics
async def test_health_and_metrics_when_ready(start_nodes):
    node = start_nodes("node-ops")
    response = await in_thread(_get, f"{node.url}/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "ok"
    assert body["node"] == "node-ops"

    async with pusher_client(node.ws_url) as a, pusher_client(node.ws_url) as b, \
            pusher_client(node.ws_url) as c:
        for client, channel in ((a, "ops-a"), (b, "ops-a"), (c, "ops-b")):
            ok = await client.subscribe(channel)
            assert ok["event"] == "pusher_internal:subscription_succeeded", ok

        before = await scrape(node)
        missing = REQUIRED_METRICS - before.keys()
        assert not missing, f"metrics missing: {sorted(missing)}"
        assert before["turnout_connections"] == 3
        assert before["turnout_subscriptions"] == 3
        assert before["turnout_channels"] == 2
        assert before["turnout_messages_in_total"] >= 3  # three subscribes at least
        assert before["turnout_redis_link_up"] == 1
        assert before["turnout_slow_consumer_disconnects_total"] == 0
        assert 10 * 2**20 < before["turnout_rss_bytes"] < 2 * 2**30
        assert 0 <= before["turnout_event_loop_lag_seconds"] < 5
        health = (await in_thread(_get, f"{node.url}/health")).json()
        assert health["connections"] == 3

        response = await in_thread(_publish, node, "ops-a", "tick", {"n": 1})
        assert response.status_code == 200, response.text
        for client in (a, b):
            event = await client.next()
            assert event["event"] == "tick", event

        after = await scrape(node)
        assert after["turnout_messages_out_total"] >= before["turnout_messages_out_total"] + 2
        assert after["turnout_connections"] == 3

    # The gauge follows the clients as they leave.
    await eventually(lambda: _scrape(node)["turnout_connections"] == 0, 10,
                     "connections gauge back to 0")


# ------------------------------------------------------------------------ 2. redis down
async def test_health_503_while_redis_unreachable_then_recovers(start_nodes, tmp_path: Path):
    port = free_port()  # nothing listens here (yet)
    node = start_nodes("node-noredis", redis_url=f"redis://127.0.0.1:{port}/0", wait=False)

    def answered() -> httpx.Response | None:
        if node.proc.poll() is not None:
            raise AssertionError(f"node exited with {node.proc.returncode}:\n{node.log()}")
        return _get(f"{node.url}/health")

    response = await eventually(answered, 15, "the node to answer /health without redis")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["reason"] == "redis link down", body
    assert body["status"] == "unavailable", body
    # It stays unhealthy (no flapping) and reports the link down.
    for _ in range(3):
        await trio.sleep(0.2)
        assert (await in_thread(_get, f"{node.url}/health")).status_code == 503
    assert (await scrape(node))["turnout_redis_link_up"] == 0

    redis = await in_thread(start_redis, tmp_path / "late-redis", port)
    try:
        await eventually(lambda: _get(f"{node.url}/health").status_code == 200, 10,
                         "/health 200 once redis is up")
        assert (await scrape(node))["turnout_redis_link_up"] == 1
        # And the node really works now.
        async with pusher_client(node.ws_url) as client:
            ok = await client.subscribe("late")
            assert ok["event"] == "pusher_internal:subscription_succeeded", ok
            response = await in_thread(_publish, node, "late", "hello", {"n": 1})
            assert response.status_code == 200, response.text
            assert (await client.next())["event"] == "hello"
    finally:
        node.kill()
        redis.stop()


# ------------------------------------------------------------------------ 3. drain
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_drain_on_signal(start_nodes, signum: signal.Signals):
    grace = 2.0
    n_clients = 20
    node = start_nodes("node-drain", "--drain-grace", str(grace))
    closes: list[tuple[float, int | None]] = []

    async def client(i: int, task_status: trio.TaskStatus[None]) -> None:
        async with pusher_client(node.ws_url) as c:
            ok = await c.subscribe(f"drain-{i % 4}")
            assert ok["event"] == "pusher_internal:subscription_succeeded", ok
            task_status.started()
            try:
                while True:
                    await c.next(timeout=60)
            except ConnectionClosed as exc:
                closes.append((time.monotonic(), exc.reason.code))

    # A keep-alive HTTP connection opened before the signal: the listener closes right after
    # the signal, but this connection keeps being served and must see the 503.
    http = await in_thread(httpx.Client, timeout=5)
    try:
        assert (await in_thread(http.get, f"{node.url}/health")).status_code == 200

        def signal_and_watch() -> tuple[float, httpx.Response]:
            sent = time.monotonic()
            node.proc.send_signal(signum)
            while time.monotonic() - sent < 5:
                response = http.get(f"{node.url}/health")
                if response.status_code != 200:
                    return sent, response
            raise AssertionError("/health still 200 five seconds after the signal")

        with trio.fail_after(grace + 25):
            async with trio.open_nursery() as nursery:
                for i in range(n_clients):
                    await nursery.start(client, i)
                assert (await scrape(node))["turnout_connections"] == n_clients

                sent, response = await in_thread(signal_and_watch)
                assert response.status_code == 503, response.text
                body = response.json()
                assert body["status"] == "draining", body
                assert signal.Signals(signum).name in body["reason"], body
                assert response.headers.get("connection") == "close"

                # New connections are refused once the listener is gone.
                def refused() -> bool:
                    try:
                        socket.create_connection(("127.0.0.1", node.port), timeout=1).close()
                    except ConnectionRefusedError:
                        return True
                    return False

                await eventually(refused, 3, "new connections to be refused", interval=0.02)
                # ... and the nursery waits for every client's close.
    finally:
        await in_thread(http.close)

    assert len(closes) == n_clients
    codes = [code for _, code in closes]
    assert codes == [4200] * n_clients, codes
    times = sorted(t for t, _ in closes)
    spread = times[-1] - times[0]
    assert spread >= 0.5 * grace, f"closes not spread over the grace period: {spread:.2f} s"
    assert times[-1] - sent < grace + 5

    code = await in_thread(_wait_exit, node, grace + 8)
    assert code == 0, node.log()
    assert time.monotonic() - sent < grace + 8
    log = node.log()
    assert f"draining (signal {signal.Signals(signum).name})" in log, log
    assert "drained; exiting with 0" in log, log


# ------------------------------------------------------------------------ 4. slow consumer
async def test_slow_consumer_is_closed_others_get_everything(start_nodes):
    node = start_nodes("node-slow", "--outbound-queue-bytes", "65536")
    channel = "firehose"
    slow = await in_thread(raw_subscriber, node.port, channel)
    pad = "x" * 9000
    published = 0
    received: list[dict[str, Any]] = []

    async def publish_batch(fast: Any, size: int = 5) -> None:
        # Wait for the reading client after each small batch: its own backlog never nears the
        # queue limit, so only the client that never reads can overflow.
        nonlocal published
        batch = [{"name": "big", "channel": channel,
                  "data": json.dumps({"n": published + i, "pad": pad})} for i in range(size)]
        response = await in_thread(_signed_post, node, f"/apps/{APP_ID}/batch_events",
                                   {"batch": batch})
        assert response.status_code == 200, response.text
        published += size
        while len(received) < published:
            event = await fast.next(timeout=10)
            if event["event"] == "big":
                received.append(event)

    try:
        async with pusher_client(node.ws_url) as fast:
            ok = await fast.subscribe(channel)
            assert ok["event"] == "pusher_internal:subscription_succeeded", ok
            assert (await scrape(node))["turnout_subscriptions"] == 2

            deadline = time.monotonic() + 20
            while (await scrape(node))["turnout_slow_consumer_disconnects_total"] < 1:
                assert time.monotonic() < deadline, (
                    f"no slow-consumer close after {published} events:\n{node.log()}")
                await publish_batch(fast)
            overflow_at = published
            # Read the never-reading socket now: it should hold intact frames, then (as it is
            # finally read) the 4100 close, then EOF.
            async with trio.open_nursery() as nursery:
                raw_result: list[tuple[list[tuple[int, bytes]], bool]] = []

                async def read_raw() -> None:
                    raw_result.append(await in_thread(drain_raw, slow, 10))

                nursery.start_soon(read_raw)
                # Publishing goes on for the reading client.
                for _ in range(4):
                    await publish_batch(fast)
            frames, clean = raw_result[0]

            metrics = await scrape(node)
            assert metrics["turnout_slow_consumer_disconnects_total"] == 1
            await eventually(lambda: _scrape(node)["turnout_connections"] == 1, 10,
                             "the slow consumer to be gone")
            log = await in_thread(_wait_log, node, r"slow consumer .*closing 4100")
            assert log.count("slow consumer") == 1, log
    finally:
        slow.close()

    # The reading client got every event, in order, with contiguous offsets.
    assert published > overflow_at
    assert [json.loads(e["data"])["n"] for e in received] == list(range(published))
    assert [e["offset"] for e in received] == list(range(1, published + 1))

    # Whatever reached the slow client is a clean prefix of the stream: whole event frames
    # in order, and if its close frame made it through, it says 4100.
    texts = [json.loads(p) for op, p in frames if op == 0x1]
    ns = [json.loads(m["data"])["n"] for m in texts if m.get("event") == "big"]
    assert ns == list(range(len(ns))), ns
    closes = [p for op, p in frames if op == 0x8]
    if closes:
        assert struct.unpack("!H", closes[0][:2])[0] == 4100, closes
        assert frames[-1][0] == 0x8, frames[-1]
        assert clean

    assert node.proc.poll() is None, node.log()
    assert (await in_thread(_get, f"{node.url}/health")).status_code == 200


# ------------------------------------------------------------------------ 5. chaos endpoint
async def test_chaos_endpoint_off_by_default_and_never_on_the_public_port(start_nodes):
    off = start_nodes("node-nochaos")
    on = start_chaos_node(start_nodes, "node-chaos-port")
    for node in (off, on):
        for method, route in (("POST", "leak"), ("POST", "stop"), ("GET", "status")):
            response = await in_thread(HTTP.request, method, f"{node.url}/chaos/{route}",
                                       params={"mb_per_s": 50}, headers={"x-chaos-token": TOKEN})
            assert response.status_code == 404, response.text
            assert "no route" in response.json()["error"]
    assert "chaos endpoint on http://127.0.0.1:" in on.log(), on.log()
    assert "chaos endpoint" not in off.log(), off.log()
    # The chaos listener serves /chaos/* and nothing else.
    for path in ("/health", "/metrics", f"/apps/{APP_ID}/events"):
        response = await in_thread(_get, f"{on.chaos_url}{path}")
        assert response.status_code == 404, (path, response.text)
    assert (await in_thread(_chaos, on, "GET", "status")).status_code == 200
    # It is bound to loopback only (the node's public host is loopback here too, so check the
    # socket itself): nothing listens on the chaos port of another local address.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", on.chaos_port), timeout=2).close()


async def test_chaos_without_token_refuses_to_start(start_nodes):
    node = start_nodes("node-notoken", "--chaos", "--chaos-port", str(free_port()), wait=False)
    code = await in_thread(_wait_exit, node, 15)
    assert code == 2, node.log()
    assert re.search(r"chaos[_-]token", node.log()), node.log()


async def test_chaos_token_leak_and_stop(start_nodes):
    node = start_chaos_node(start_nodes, "node-chaos")
    for kwargs in ({"token": None}, {"token": "wrong"}, {"token": "wrong", "via": "query"},
                   {"token": ""}):
        for method, route in (("GET", "status"), ("POST", "leak"), ("POST", "stop")):
            response = await in_thread(_chaos, node, method, route, mb_per_s=50, **kwargs)
            assert response.status_code == 401, (kwargs, route, response.text)
            assert "token" in response.json()["error"]
    assert "bad token refused" in node.log()

    status = (await in_thread(_chaos, node, "GET", "status", via="query")).json()
    assert status["leaking_mb_per_s"] == 0, status
    assert status["leaked_mb"] == 0, status
    base = status["rss_mb"]
    bad = await in_thread(_chaos, node, "POST", "leak", mb_per_s="lots")
    assert bad.status_code == 400, bad.text

    response = await in_thread(_chaos, node, "POST", "leak", mb_per_s=50)
    assert response.status_code == 200, response.text
    assert response.json()["leaking_mb_per_s"] == 50
    await trio.sleep(1.0)
    status = (await in_thread(_chaos, node, "GET", "status")).json()
    leaked, grown = status["leaked_mb"], status["rss_mb"] - base
    # ~50 MB after ~1 s; generous either way for a loaded machine.
    assert 15 <= leaked <= 160, status
    assert 0.7 * leaked <= grown <= leaked + 60, (base, status)

    stopped = await in_thread(_chaos, node, "POST", "stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["leaking_mb_per_s"] == 0
    assert stopped.json()["leaked_mb"] == 0
    peak = status["rss_mb"]

    def released() -> bool:
        now = _chaos(node, "GET", "status").json()
        return bool(now["leaked_mb"] == 0 and now["rss_mb"] <= peak - 0.6 * leaked)

    await eventually(released, 5, "RSS to drop after /chaos/stop")
    # Stopped means stopped: nothing more leaks.
    await trio.sleep(0.5)
    assert (await in_thread(_chaos, node, "GET", "status")).json()["leaked_mb"] == 0

    # A stop pipelined right behind its leak (served before the leak task ever ran) stops it
    # too: no chunk gets allocated after the stop and left behind.
    answers = await in_thread(_pipelined_chaos, node, ("POST", "leak?mb_per_s=500"),
                              ("POST", "stop"))
    assert answers == [b"HTTP/1.1 200", b"HTTP/1.1 200"], answers
    await trio.sleep(0.5)
    status = (await in_thread(_chaos, node, "GET", "status")).json()
    assert status["leaking_mb_per_s"] == 0, status
    assert status["leaked_mb"] == 0, status
    assert node.proc.poll() is None


# ------------------------------------------------------------------------ 6. RSS watchdog
async def test_max_rss_watchdog_drains_and_exits_3(start_nodes):
    # Measure what an idle node of this kind weighs, then give the real one 60 MB of room.
    probe = start_chaos_node(start_nodes, "node-probe")
    baseline = (await in_thread(_chaos, probe, "GET", "status")).json()["rss_mb"]
    probe.kill()
    limit = round(baseline + 60)
    node = start_chaos_node(start_nodes, "node-watchdog", "--max-rss", str(limit),
                            "--drain-grace", "1")
    status = (await in_thread(_chaos, node, "GET", "status")).json()
    assert status["max_rss_mb"] == limit, status
    assert status["rss_mb"] < limit, status

    async with pusher_client(node.ws_url) as client:
        ok = await client.subscribe("watched")
        assert ok["event"] == "pusher_internal:subscription_succeeded", ok
        response = await in_thread(_chaos, node, "POST", "leak", mb_per_s=100)
        assert response.status_code == 200, response.text
        started = time.monotonic()
        code = None
        try:
            while True:
                await client.next(timeout=15)
        except ConnectionClosed as exc:
            code = exc.reason.code
        assert code == 4200

    code = await in_thread(_wait_exit, node, 15)
    assert code == 3, node.log()
    assert time.monotonic() - started < 15
    log = node.log()
    assert re.search(rf"RSS \d+ MB passed --max-rss {limit} MB", log), log
    assert "draining (max_rss exceeded" in log, log
    assert "drained; exiting with 3" in log, log


# ------------------------------------------------------------------------ 7. Unix socket
async def test_unix_socket_serves_websockets_and_http_and_goes_on_drain(start_nodes,
                                                                         tmp_path: Path):
    """--unix-socket: the same service as the TCP port for a load balancer on this host;
    a drain removes the file so the balancer's connects fail at once."""
    from trio_websocket import wrap_client_stream

    path = str(tmp_path / "node.sock")
    node = start_nodes("node-unix", "--unix-socket", path, "--drain-grace", "1")
    def get_health() -> httpx.Response:
        with httpx.Client(transport=httpx.HTTPTransport(uds=path)) as http:
            return http.get("http://turnout/health")

    health = await in_thread(get_health)
    assert health.status_code == 200, health.text

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            stream = await trio.open_unix_socket(path)
            ws = await wrap_client_stream(nursery, stream, "turnout",
                                          f"/app/{APP_KEY}?protocol=7")
            client = PusherTestClient(ws)
            hello = await client.next()
            assert hello["event"] == "pusher:connection_established", hello
            ok = await client.subscribe("over-unix")
            assert ok["event"] == "pusher_internal:subscription_succeeded", ok
            # Published over TCP, delivered over the Unix socket (same hub).
            response = await in_thread(publish, node.url, "over-unix", "results", {"n": 1})
            assert response.status_code == 200, response.text
            event = await client.next()
            assert event["event"] == "results", event
            assert json.loads(event["data"]) == {"n": 1}, event
            assert (await scrape(node))["turnout_connections"] == 1

            node.proc.send_signal(signal.SIGTERM)
            _, code = await client.closed()
            assert code == 4200
            await ws.aclose()
            nursery.cancel_scope.cancel()
    assert await in_thread(_wait_exit, node, 10) == 0, node.log()
    assert not Path(path).exists(), "the drained node left its socket file"
    assert "also listening on unix:" in node.log()


# ------------------------------------------------------------------------ 8. shared port
async def test_nodes_sharing_a_port_split_connections_and_a_drained_node_leaves(start_nodes):
    """--shared-port: every node binds the same port with SO_REUSEPORT and the kernel spreads
    new connections over them (the harness's kernel balancer); a draining node leaves the
    group at once, so every later connection reaches the others."""
    from contextlib import AsyncExitStack

    shared = free_port()
    first = start_nodes("node-a", "--shared-port", str(shared), "--drain-grace", "4")
    second = start_nodes("node-b", "--shared-port", str(shared))
    url = f"ws://127.0.0.1:{shared}/app/{APP_KEY}?protocol=7"

    async def counts() -> tuple[float, float]:
        return ((await scrape(first))["turnout_connections"],
                (await scrape(second))["turnout_connections"])

    with trio.fail_after(30):
        async with AsyncExitStack() as held:
            for _ in range(30):
                await held.enter_async_context(pusher_client(url))
            on_first, on_second = await counts()
            assert on_first + on_second == 30
            assert on_first > 0, (on_first, on_second)
            assert on_second > 0, (on_first, on_second)

            first.proc.send_signal(signal.SIGTERM)
            await eventually(lambda: "draining (" in first.log(), 5, "node-a draining")
            # While node-a drains (its clients get 4200 over 4 s; its /health says 503),
            # every new connection lands on node-b.
            def health_codes() -> list[int]:
                codes = []
                for _ in range(20):  # a new connection each time, balanced on its own
                    with httpx.Client(trust_env=False, timeout=5) as http:
                        codes.append(http.get(f"http://127.0.0.1:{shared}/health").status_code)
                return codes

            assert await in_thread(health_codes) == [200] * 20
            assert first.proc.poll() is None, "node-a was meant to be still draining"
            assert await in_thread(_wait_exit, first, 10) == 0, first.log()
    assert f"also listening on shared port 127.0.0.1:{shared}" in second.log()


async def test_a_full_node_leaves_the_shared_port_and_rejoins_with_room(start_nodes):
    """The kernel spreads new connections over the shared port's group evenly, whatever each
    node holds; a node at its high-water mark (90 % of --max-connections) leaves the group so
    new clients reach the nodes with room instead of being told "over capacity", and rejoins
    once it is back under 80 %."""
    from contextlib import AsyncExitStack

    shared = free_port()
    small = start_nodes("node-small", "--shared-port", str(shared), "--max-connections", "20")
    large = start_nodes("node-large", "--shared-port", str(shared))
    url = f"ws://127.0.0.1:{shared}/app/{APP_KEY}?protocol=7"

    with trio.fail_after(60):
        async with AsyncExitStack() as held:
            for _ in range(60):  # each one balanced by the kernel on its own
                await held.enter_async_context(pusher_client(url))
            on_small, on_large = await scrape(small), await scrape(large)
            assert on_small["turnout_connections"] + on_large["turnout_connections"] == 60
            # It filled to its mark (18 sockets, the scraper's HTTP one among them), then left.
            assert 16 <= on_small["turnout_connections"] <= 20, on_small["turnout_connections"]
            assert on_small["turnout_connections_rejected_total"] == 0
            assert on_small["turnout_shared_port_member"] == 0
            assert on_small["turnout_shared_port_leaves_total"] == 1
            assert on_large["turnout_shared_port_member"] == 1
        # Every client gone: back under the low-water mark, so it rejoins.
        await eventually(lambda: _scrape(small)["turnout_shared_port_member"] == 1, 10,
                         "node-small back in the shared port's group")
        _wait_log(small, "rejoined the shared port's group")
        async with AsyncExitStack() as held:
            for _ in range(20):
                await held.enter_async_context(pusher_client(url))
            assert (await scrape(small))["turnout_connections"] > 0, "no new client reached it"
    assert "left the shared port's group at" in small.log()


async def test_a_full_node_alone_in_the_shared_port_stays_in_it(start_nodes):
    """Alone in the group, leaving would turn "over capacity" into refused connections while
    the node still has room: it stays, and fills to its cap."""
    from contextlib import AsyncExitStack

    shared = free_port()
    node = start_nodes("node-alone", "--shared-port", str(shared), "--max-connections", "12")
    url = f"ws://127.0.0.1:{shared}/app/{APP_KEY}?protocol=7"
    with trio.fail_after(30):
        async with AsyncExitStack() as held:
            for _ in range(11):
                await held.enter_async_context(pusher_client(url))
            samples = await scrape(node)
            assert samples["turnout_connections"] == 11
            assert samples["turnout_shared_port_member"] == 1
            assert samples["turnout_shared_port_leaves_total"] == 0
    _wait_log(node, "alone in the shared port's group: staying in it")
