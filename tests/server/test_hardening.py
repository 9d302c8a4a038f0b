"""Hardening: no request, frame or client can crash a node or grow it without bound.

Each test starts real nodes (and, where the path matters, the harness's real HAProxy config in
front of them) and checks one promise: the requests that used to kill a node get answers, an
unexpected exception ends one connection only, and every limit refuses with its documented
code while everyone else is served. Single-message refusals (frames, close codes, malformed
HTTP) are in test_bad_input.py, which runs them one after another past one bystander.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from harness.redis_server import RedisServer
from server import api
from server.config import AppConfig, Config
from server.node import serve_node
from server.session import PusherSession
from tests.support.client import (
    PusherTestClient,
    closed_with,
    in_thread,
    publish,
    pusher_client,
)
from tests.support.haproxy import start_haproxy
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, NodeProc
from tests.support.raw import drain_raw, http_exchange, raw_subscriber, upgrade_request


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith("turnout_"):
            name, value = line.split("{", 1)[0], line.rsplit(" ", 1)[1]
            out[name] = float(value)
    return out


def status_of(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    assert match, f"no status line in {answer[:200]!r}"
    return int(match.group(1))


async def still_served(node: NodeProc, bystander: PusherTestClient, channel: str,
                       offset: int, what: str) -> None:
    """The bystander receives the next event on ``channel``: its ``offset`` proves no gap."""
    response = await in_thread(publish, node.url, channel, "still-here", {"after": what})
    assert response.status_code == 200, (what, response.text)
    event = await bystander.next(timeout=10)
    assert event["event"] == "still-here", (what, event)
    assert event["offset"] == offset, f"bystander missed an event around {what}"


# ------------------------------------------------------------------------- 1. crash isolation
def _crashers(port: int) -> list[tuple[str, bytes, int]]:
    """The three single requests that each killed a node (issue 9), with today's answer."""
    timestamp = "9" * 400
    return [
        ("path //[", b"GET //[ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 404),
        ("non-ASCII Sec-WebSocket-Key", upgrade_request(port, key="\xe9"), 400),
        ("400-digit auth_timestamp",
         (f"POST /apps/{APP_ID}/events?auth_key={APP_KEY}&auth_signature=0&auth_timestamp="
          f"{timestamp} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
          "Content-Length: 2\r\nConnection: close\r\n\r\n{}").encode(), 401),
    ]


@pytest.mark.parametrize("via", ["direct", "haproxy"])
async def test_the_requests_that_killed_a_node_get_answers(start_nodes, tmp_path: Path,
                                                           via: str) -> None:
    node = start_nodes("node-1")
    port, lb = node.port, None
    if via == "haproxy":
        lb = await in_thread(start_haproxy, tmp_path, {"node-1": ("127.0.0.1", node.port)})
        port = lb.port
    try:
        async with pusher_client(node.ws_url) as bystander:
            ok = await bystander.subscribe("bystander")
            assert ok["event"] == "pusher_internal:subscription_succeeded", ok
            for n, (name, request, expected) in enumerate(_crashers(port), start=1):
                answer = await in_thread(http_exchange, port, request, timeout=5)
                status = status_of(answer)
                if via == "direct":
                    assert status == expected, (name, answer)
                else:
                    # HAProxy may refuse a request itself; what reaches the node is answered.
                    assert 400 <= status < 500, (name, answer)
                assert node.proc.poll() is None, f"node died on {name}:\n{node.log()}"
                await still_served(node, bystander, "bystander", n, name)
        assert (await in_thread(metrics, node.url))["turnout_internal_errors_total"] == 0
    finally:
        if lb is not None:
            lb.stop()


async def test_an_unexpected_exception_ends_one_connection_only(
    redis_proc: RedisServer, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # In process, so a bug can be planted; everything else is real (sockets, Redis).
    caplog.set_level(logging.INFO)
    config = Config(port=0, redis_url=redis_proc.url, key_prefix=key_prefix, node_id="inproc",
                    apps=(AppConfig(APP_ID, APP_KEY, APP_SECRET),), drain_grace=0)
    async with trio.open_nursery() as nursery:
        node = await nursery.start(serve_node, config)
        url = f"http://127.0.0.1:{node.port}"
        ws_url = f"ws://127.0.0.1:{node.port}/app/{APP_KEY}?protocol=7"
        async with pusher_client(ws_url) as bystander:
            ok = await bystander.subscribe("bystander")
            assert ok["event"] == "pusher_internal:subscription_succeeded", ok

            # A bug in an HTTP handler: that request gets 500, nothing else notices.
            def broken_health(node: object) -> api.Response:
                raise RuntimeError("planted bug in /health")

            monkeypatch.setattr(api, "_health", broken_health)
            async with httpx.AsyncClient(timeout=5) as http:
                for _ in range(5):
                    response = await http.get(f"{url}/health")
                    assert response.status_code == 500, response.text
                    assert "internal error" in response.json()["error"]
            monkeypatch.undo()

            # A bug while handling a websocket message: that connection gets close 1011.
            async def broken_subscribe(self: PusherSession, client: object,
                                       data: object) -> None:
                raise KeyError("planted bug in subscribe")

            monkeypatch.setattr(PusherSession, "_on_subscribe", broken_subscribe)
            for _ in range(3):
                with trio.fail_after(5):
                    async with open_websocket_url(ws_url) as victim:
                        await victim.get_message()  # connection_established
                        await victim.send_message(json.dumps(
                            {"event": "pusher:subscribe", "data": {"channel": "v"}}))
                        with pytest.raises(ConnectionClosed) as closed:
                            await victim.get_message()
                        assert closed.value.reason.code == 1011
            monkeypatch.undo()

            response = await in_thread(publish, url, "bystander", "after-bugs", {})
            assert response.status_code == 200, response.text
            event = await bystander.next()
            assert (event["event"], event["offset"]) == ("after-bugs", 1)
            assert node.stats.internal_errors == 8
            async with httpx.AsyncClient(timeout=5) as http:
                text = (await http.get(f"{url}/metrics")).text
            assert re.search(r"^turnout_internal_errors_total\{[^}]*\} 8\.0$", text, re.M)
        nursery.cancel_scope.cancel()
    # Logged once per code site (with its traceback), not once per hit.
    errors = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(errors) == 2, [r.getMessage() for r in errors]
    assert all(r.exc_info for r in errors)


# -------------------------------------------------------------------------------- 2. limits
async def test_subscriptions_per_connection_are_capped(start_nodes) -> None:
    node = start_nodes("node-1")  # the default limit: 100
    async with pusher_client(node.ws_url) as client:
        for i in range(100):
            ok = await client.subscribe(f"ch-{i}")
            assert ok["event"] == "pusher_internal:subscription_succeeded", (i, ok)
        again = await client.subscribe("ch-0")  # already subscribed: not one more
        assert again["event"] == "pusher_internal:subscription_succeeded", again
        refused = await client.subscribe("ch-100")
        assert refused["event"] == "pusher:subscription_error", refused
        assert refused["channel"] == "ch-100"
        assert refused["data"]["status"] == 429
        assert refused["data"]["type"] == "LimitReached"
        assert "100" in refused["data"]["error"]
        await client.send("pusher:ping", {})
        assert (await client.next())["event"] == "pusher:pong"  # still open
        await client.send("pusher:unsubscribe", {"channel": "ch-5"})
        ok = await client.subscribe("ch-100")
        assert ok["event"] == "pusher_internal:subscription_succeeded", ok
    values = await in_thread(metrics, node.url)
    assert values["turnout_subscriptions_refused_total"] == 1
    assert "subscription limit reached" in node.log()


def _idle_sockets(port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


async def test_handshakes_in_progress_count_against_max_connections(start_nodes) -> None:
    node = start_nodes("node-1", "--max-connections", "3")
    idle = await in_thread(_idle_sockets, node.port, 3)  # connected, saying nothing
    try:
        await trio.sleep(0.3)
        messages, code = await closed_with(node.ws_url)
        assert code == 4100
        assert messages[0]["data"]["code"] == 4100
        response = await in_thread(httpx.get, f"{node.url}/health", timeout=5)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert "over capacity" in response.json()["error"]
    finally:
        for sock in idle:
            sock.close()
    with trio.fail_after(5):
        while (await in_thread(httpx.get, f"{node.url}/health", timeout=5)).status_code != 200:
            await trio.sleep(0.05)
    async with pusher_client(node.ws_url) as client:
        ok = await client.subscribe("after")
        assert ok["event"] == "pusher_internal:subscription_succeeded"
    assert node.proc.poll() is None


async def test_max_connections_defaults_below_the_file_limit(start_nodes) -> None:
    # 256 descriptors: 64 reserved for the node itself, 32 overflow slots, 160 client sockets.
    node = start_nodes("node-lowfd", nofile=256)
    assert re.search(r"max_connections 160 \(automatic: open-file limit 256", node.log()), \
        node.log()
    assert (await in_thread(metrics, node.url))["turnout_max_connections"] == 160
    idle = await in_thread(_idle_sockets, node.port, 170)
    try:
        await trio.sleep(0.5)
        # Full: the node still answers, quickly and in each protocol, instead of going deaf.
        began = time.monotonic()
        response = await in_thread(httpx.get, f"{node.url}/health", timeout=5)
        assert response.status_code == 503, response.text
        _, code = await closed_with(node.ws_url)
        assert code == 4100
        assert time.monotonic() - began < 3
    finally:
        for sock in idle:
            sock.close()
    with trio.fail_after(5):
        while (await in_thread(httpx.get, f"{node.url}/health", timeout=5)).status_code != 200:
            await trio.sleep(0.05)
    assert "accept failed" not in node.log(), node.log()  # never ran out of descriptors
    assert node.proc.poll() is None


async def test_per_address_connection_cap(start_nodes) -> None:
    node = start_nodes("node-1", "--max-connections-per-ip", "2")
    idle = await in_thread(_idle_sockets, node.port, 2)
    try:
        await trio.sleep(0.3)
        _, code = await closed_with(node.ws_url)
        assert code == 4100

        def from_other_address() -> bytes:
            with socket.socket() as sock:
                sock.settimeout(5)
                sock.bind(("127.0.0.2", 0))
                sock.connect(("127.0.0.1", node.port))
                sock.sendall(upgrade_request(node.port))
                answer = b""
                while b"connection_established" not in answer:
                    data = sock.recv(4096)
                    if not data:
                        break
                    answer += data
                return answer

        answer = await in_thread(from_other_address)
        assert answer.startswith(b"HTTP/1.1 101"), answer
        assert b"pusher:connection_established" in answer
    finally:
        for sock in idle:
            sock.close()


async def test_log_lines_about_client_input_are_clipped_and_rate_limited(start_nodes) -> None:
    node = start_nodes("node-1", "--log-rate", "5")
    start = len(node.log())
    async with pusher_client(node.ws_url) as flood:
        for _ in range(300):
            await flood.ws.send_message(json.dumps({"event": "x" * 10_000, "data": {}}))
        for _ in range(300):
            reply = await flood.next()
            assert reply["data"]["code"] == 4200
            assert len(json.dumps(reply)) < 400  # the reply does not echo 10 KB back either
        flooded = node.log()[start:]
        lines = flooded.splitlines()
        assert len(lines) <= 40, f"{len(lines)} log lines for 300 bad messages"
        assert max(len(line) for line in lines) < 500
        await trio.sleep(1.0)  # the bucket refills
        await flood.ws.send_message(json.dumps({"event": "y", "data": {}}))
        await flood.next()
    with trio.fail_after(5):
        while "log lines about client input suppressed" not in node.log()[start:]:
            await trio.sleep(0.05)
    assert (await in_thread(metrics, node.url))["turnout_log_lines_suppressed_total"] >= 250


# -------------------------------------------------------------------------- 4. slow consumers
async def test_slow_consumer_gets_its_4100_if_it_drains_in_time_else_a_reset(
    start_nodes,
) -> None:
    grace = 3.0
    node = start_nodes("node-slow", "--outbound-queue-bytes", "65536", "--socket-send-buffer",
                       "16384", "--slow-consumer-grace", str(grace))
    channel = "firehose"
    resumer = await in_thread(raw_subscriber, node.port, channel)
    stalled = await in_thread(raw_subscriber, node.port, channel)
    pad = "x" * 9000
    try:
        with trio.fail_after(30):
            while (await in_thread(metrics, node.url))[
                    "turnout_slow_consumer_disconnects_total"] < 2:
                response = await in_thread(publish, node.url, channel, "big", {"pad": pad})
                assert response.status_code == 200, response.text
        overflowed = time.monotonic()
        # One reader wakes up within the grace: it reads its backlog, then why it was closed.
        frames, clean = await in_thread(drain_raw, resumer, 10)
        closes = [payload for opcode, payload in frames if opcode == 0x8]
        assert closes, f"no close frame among {len(frames)} frames"
        assert int.from_bytes(closes[0][:2], "big") == 4100
        assert clean
        # The other sleeps through the grace: its connection is reset, no close frame.
        await trio.sleep(max(0.0, overflowed + grace + 1.5 - time.monotonic()))
        frames, clean = await in_thread(drain_raw, stalled, 10)
        assert not any(opcode == 0x8 for opcode, _ in frames)
        assert not clean
    finally:
        resumer.close()
        stalled.close()
    values = await in_thread(metrics, node.url)
    assert values["turnout_slow_consumer_close_frames_delivered_total"] == 1
    assert values["turnout_slow_consumer_resets_total"] == 1
    assert "did not drain within 3 s: connection reset" in node.log()
    assert node.proc.poll() is None


async def test_head_request_gets_headers_only(start_nodes) -> None:
    # Found by the fuzzer: a HEAD answer with a body broke h11's framing (caught as a bug).
    node = start_nodes("node-1")
    answer = await in_thread(http_exchange, node.port,
                             b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\n"
                             b"Host: x\r\nConnection: close\r\n\r\n", timeout=5)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 404"), answer
    assert rest.startswith(b"HTTP/1.1 200"), answer  # no body in between, same connection
    assert (await in_thread(metrics, node.url))["turnout_internal_errors_total"] == 0
