"""The zero-drop contract end to end: sequenced, resumable delivery across reconnects, node
deaths and Redis link faults, on real redis-server, turnout-server and toxiproxy-server
processes.

Every scenario checks delivery the same way (``delivery_problems``): each event the HTTP API
acknowledged at a position must reach the client exactly once, in offset order, with the
payload that was published at that position. The negative control runs the node-kill scenario
with history switched off and requires the same check to report the loss, so a green run means
something.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest
import redis
import trio
from trio_websocket import ConnectionClosed

from server import protocol
from server.auth import sign_request
from server.broker import PUBLISH_LUA
from tests.support.client import PusherTestClient, publish, pusher_client
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, REPO, free_port, spawn

EVENT = "update"
TOXIPROXY = os.environ.get("TOXIPROXY_SERVER") or shutil.which("toxiproxy-server") or str(
    REPO / ".tools" / "bin" / "toxiproxy-server")


# ---------------------------------------------------------------------------- helpers


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
                     interval: float = 0.02) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = trio.current_time() + timeout
    while not predicate():
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await trio.sleep(interval)


async def http_get(url: str) -> httpx.Response:
    return await trio.to_thread.run_sync(lambda: httpx.get(url, timeout=5))


async def http_post(url: str, body: dict[str, Any]) -> httpx.Response:
    return await trio.to_thread.run_sync(lambda: httpx.post(url, json=body, timeout=5))


async def publish_one(base_url: str, channel: str, event_id: int) -> tuple[int, str]:
    response = await trio.to_thread.run_sync(publish, base_url, channel, EVENT, {"id": event_id})
    assert response.status_code == 200, response.text
    position = response.json()["positions"][channel]
    return position["offset"], position["epoch"]


async def subscribe(client: PusherTestClient, channel: str,
                    position: tuple[int, str] | None = None) -> dict[str, Any]:
    """Subscribe and return pusher_internal:subscription_succeeded (generous deadline)."""
    data: dict[str, Any] = {"channel": channel}
    if position is not None:
        data["offset"], data["epoch"] = position
    await client.send("pusher:subscribe", data)
    ok = await client.next(timeout=20)
    assert ok["event"] == "pusher_internal:subscription_succeeded", ok
    assert ok["channel"] == channel
    return ok


def event_id(message: dict[str, Any]) -> int:
    return json.loads(message["data"])["id"]


async def next_event(client: PusherTestClient, timeout: float = 10.0) -> dict[str, Any]:
    message = await client.next(timeout=timeout)
    assert message["event"] == EVENT, message
    return message


@dataclass
class Publisher:
    """Publishes {"id": i} events to one channel from threads, recording what was acknowledged.

    ``rate`` is events per second per thread (None: as fast as the node answers). Ids
    0..limit-1 are shared out over ``threads`` threads. Each thread stops when its ids are
    used up, when ``stop`` is set, or at its first failed publish (recorded in ``errors``: its
    outcome is unknown, so the run cannot be checked and the test must fail).
    """

    base_url: str
    channel: str
    limit: int
    rate: float | None = None
    threads: int = 1
    acked: list[tuple[int, int, str]] = field(default_factory=list)  # (id, offset, epoch)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    top: int = 0  # highest acknowledged offset
    workers_done: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def count(self) -> int:
        return len(self.acked)

    def run(self, worker: int = 0) -> None:
        try:
            self._run(worker)
        finally:
            with self._lock:
                self.workers_done += 1

    def _run(self, worker: int) -> None:
        path = f"/apps/{APP_ID}/events"
        interval = 1.0 / self.rate if self.rate else 0.0
        due = time.monotonic()
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            for i in range(worker, self.limit, self.threads):
                if self.stop.is_set() or self.errors:
                    return
                if interval:
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    # Steady rate; a slow machine falls behind instead of bursting to catch up.
                    due = max(due + interval, time.monotonic())
                raw = json.dumps({"name": EVENT, "channel": self.channel,
                                  "data": json.dumps({"id": i})}).encode()
                params = sign_request(APP_KEY, APP_SECRET, "POST", path, raw)
                try:
                    response = http.post(path, params=params, content=raw,
                                         headers={"content-type": "application/json"})
                except httpx.HTTPError as exc:
                    self.errors.append(f"publish {i}: {exc!r}")
                    return
                if response.status_code != 200:
                    self.errors.append(f"publish {i}: {response.status_code} {response.text}")
                    return
                position = response.json()["positions"][self.channel]
                with self._lock:
                    self.acked.append((i, position["offset"], position["epoch"]))
                    self.top = max(self.top, position["offset"])

    def finished(self) -> bool:
        return self.workers_done == self.threads


@asynccontextmanager
async def publishing(publisher: Publisher) -> AsyncIterator[Publisher]:
    threads = [threading.Thread(target=publisher.run, args=(k,), name=f"publisher-{k}",
                                daemon=True) for k in range(publisher.threads)]
    for thread in threads:
        thread.start()
    try:
        yield publisher
    finally:
        publisher.stop.set()
        with trio.CancelScope(shield=True):
            for thread in threads:
                await trio.to_thread.run_sync(thread.join, 20)


async def wait_published(publisher: Publisher, offset: int, timeout: float = 30) -> None:
    """Wait until an event at ``offset`` or later has been acknowledged."""
    await wait_until(lambda: publisher.top >= offset or bool(publisher.errors), timeout,
                     f"a publish acknowledged at offset {offset} (top {publisher.top})")
    assert not publisher.errors, publisher.errors


async def finish(publisher: Publisher, timeout: float = 30) -> None:
    """Wait for the publisher threads to end (ids used up or stopped); require no failures."""
    await wait_until(publisher.finished, timeout, "the publisher to finish")
    assert not publisher.errors, publisher.errors


@dataclass
class Received:
    offset: int
    epoch: str
    id: int


@dataclass
class Subscriber:
    """One logical subscriber that may live on several websocket connections in turn."""

    channel: str
    received: list[Received] = field(default_factory=list)
    confirmations: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    position: tuple[int, str] | None = None
    closed: ConnectionClosed | None = None
    running: bool = False
    _scope: trio.CancelScope | None = None

    @property
    def last(self) -> int:
        return self.received[-1].offset if self.received else 0

    async def run(self, url: str, *, resume: bool = False,
                  task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Connect, (re)subscribe, report subscription_succeeded, then read until the
        connection closes or ``disconnect()`` is called."""
        self.closed = None
        self.running = True
        try:
            with trio.CancelScope() as self._scope:
                async with pusher_client(url) as client:
                    ok = await subscribe(client, self.channel, self.position if resume else None)
                    self.confirmations.append(ok)
                    if self.position is None or not resume or not ok.get("recovered"):
                        # Fresh or unrecovered: live delivery starts after ok's offset.
                        self.position = (ok["offset"], ok["epoch"])
                    task_status.started(ok)
                    await self._read(client)
        finally:
            self.running = False

    async def _read(self, client: PusherTestClient) -> None:
        try:
            while True:
                message = await client.next(timeout=120)
                if message["event"] != EVENT:
                    self.errors.append(message)
                    continue
                item = Received(message["offset"], message["epoch"], event_id(message))
                self.received.append(item)
                self.position = (item.offset, item.epoch)
        except ConnectionClosed as exc:
            self.closed = exc

    def disconnect(self) -> None:
        """Close the current connection, as a client whose network drops would."""
        if self._scope is not None:
            self._scope.cancel()


def delivery_problems(acked: list[tuple[int, int, str]], received: list[Received],
                      first_offset: int = 1) -> list[str]:
    """Everything wrong with ``received`` against the acknowledged publishes, [] if nothing.

    Each acknowledged (id, offset, epoch) from ``first_offset`` on must be received exactly
    once, in offset order, carrying that id and epoch; nothing unacknowledged may appear.
    """
    problems: list[str] = []
    expected = {offset: (eid, epoch) for eid, offset, epoch in acked if offset >= first_offset}
    offsets = [r.offset for r in received]
    seen: set[int] = set()
    duplicates: set[int] = set()
    for o in offsets:
        (duplicates if o in seen else seen).add(o)
    if duplicates:
        problems.append(f"duplicated offsets: {_ranges(sorted(duplicates))}")
    out_of_order = [(a, b) for a, b in itertools.pairwise(offsets) if b <= a]
    if out_of_order:
        problems.append(f"out of order: {out_of_order[:20]}")
    missing = sorted(set(expected) - seen)
    if missing:
        problems.append(f"missing {len(missing)} offsets: {_ranges(missing)}")
    unexpected = sorted(seen - set(expected))
    if unexpected:
        problems.append(f"unacknowledged offsets received: {_ranges(unexpected)}")
    wrong = [(r.offset, r.id, expected[r.offset][0]) for r in received
             if r.offset in expected and (r.id, r.epoch) != expected[r.offset]]
    if wrong:
        problems.append(f"wrong payload/epoch at (offset, got id, want id): {wrong[:20]}")
    return problems


def _ranges(values: list[int]) -> str:
    spans: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        spans.append(f"{start}" if start == prev else f"{start}..{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(spans)


@pytest.fixture
def toxiproxy(tmp_path) -> Any:
    if not os.path.exists(TOXIPROXY):
        pytest.skip(f"toxiproxy-server not found at {TOXIPROXY} (run the setup script)")
    port = free_port()
    proc = spawn([TOXIPROXY, "-host", "127.0.0.1", "-port", str(port)],
                 tmp_path / "toxiproxy.log")
    api = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(f"{api}/version", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((tmp_path / "toxiproxy.log").read_text(errors="replace"))
        time.sleep(0.05)
    yield api
    proc.kill()
    proc.wait(5)


def create_proxy(api: str, name: str, upstream_port: int) -> str:
    """Create a Toxiproxy proxy to 127.0.0.1:upstream_port; returns its listen address."""
    response = httpx.post(f"{api}/proxies", json={
        "name": name, "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{upstream_port}",
        "enabled": True}, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()["listen"]


async def cut(api: str, proxy: str) -> None:
    response = await http_post(f"{api}/proxies/{proxy}", {"enabled": False})
    assert response.status_code == 200, response.text


async def uncut(api: str, proxy: str) -> None:
    response = await http_post(f"{api}/proxies/{proxy}", {"enabled": True})
    assert response.status_code == 200, response.text


async def blackhole(api: str, proxy: str) -> None:
    for stream in ("downstream", "upstream"):
        response = await http_post(f"{api}/proxies/{proxy}/toxics", {
            "name": f"blackhole-{stream}", "type": "timeout", "stream": stream,
            "attributes": {"timeout": 0}})
        assert response.status_code == 200, response.text


async def unblackhole(api: str, proxy: str) -> None:
    for stream in ("downstream", "upstream"):
        response = await trio.to_thread.run_sync(lambda s=stream: httpx.delete(
            f"{api}/proxies/{proxy}/toxics/blackhole-{s}", timeout=5))
        assert response.status_code == 204, response.text


# ---------------------------------------------------------------------------- 1. same node


async def test_resume_on_same_node_replays_exactly_the_missed_events(start_nodes):
    node = start_nodes("node-1")
    channel = "results-resume"
    with trio.fail_after(40):
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel)
            assert ok["offset"] == 0
            assert ok["epoch"] is None
            assert "recovered" not in ok
            for i in range(3):
                await publish_one(node.url, channel, i)
            seen = [await next_event(client) for _ in range(3)]
            assert [m["offset"] for m in seen] == [1, 2, 3]
            assert [event_id(m) for m in seen] == [0, 1, 2]
            epoch = seen[-1]["epoch"]
            assert isinstance(epoch, str)
            assert epoch

        for i in range(3, 7):
            assert await publish_one(node.url, channel, i) == (i + 1, epoch)

        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel, (3, epoch))
            assert ok["recovered"] is True
            assert ok["offset"] == 7
            assert ok["epoch"] == epoch
            replayed = [await next_event(client) for _ in range(4)]
            assert [(m["offset"], event_id(m), m["epoch"]) for m in replayed] == [
                (4, 3, epoch), (5, 4, epoch), (6, 5, epoch), (7, 6, epoch)]
            await publish_one(node.url, channel, 7)
            await publish_one(node.url, channel, 8)
            # Live follows the replay directly: 8 then 9, nothing repeated in between.
            live = [await next_event(client) for _ in range(2)]
            assert [(m["offset"], event_id(m)) for m in live] == [(8, 7), (9, 8)]

        # Resuming at the channel's top replays nothing and is still a recovery.
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel, (9, epoch))
            assert (ok["recovered"], ok["offset"]) == (True, 9)
            await publish_one(node.url, channel, 9)
            assert (await next_event(client))["offset"] == 10


async def test_resume_from_before_the_first_event_uses_the_empty_epoch(start_nodes):
    """A subscription made before a channel's first event has no epoch to resume with (null
    in subscription_succeeded); resuming with epoch "" asks for the channel's first epoch
    from the given offset."""
    node = start_nodes("node-1")
    channel = "results-first"
    with trio.fail_after(30):
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel)
            assert (ok["offset"], ok["epoch"]) == (0, None)
        # Nothing published yet: nothing to replay, still a recovery.
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel, (0, ""))
            assert (ok["recovered"], ok["offset"], ok["epoch"]) == (True, 0, None)
        for i in range(3):
            _, epoch = await publish_one(node.url, channel, i)
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel, (0, ""))
            assert (ok["recovered"], ok["offset"], ok["epoch"]) == (True, 3, epoch)
            replayed = [await next_event(client) for _ in range(3)]
            assert [(m["offset"], event_id(m), m["epoch"]) for m in replayed] == [
                (1, 0, epoch), (2, 1, epoch), (3, 2, epoch)]


# ---------------------------------------------------------------------------- 2. the seam


SEAM_CYCLES = 3


@pytest.mark.parametrize("variant", ["cold", "warm", "warm-slow-redis"])
async def test_resume_seam_is_contiguous_while_publishing_continues(
        toxiproxy, start_nodes, redis_proc, variant):
    """Disconnect and resubscribe with a position, again and again, while two threads publish
    flat out: the replay read from the stream and the live events delivered meanwhile must
    meet with no hole and no duplicate.

    cold: the resuming client is the channel's only subscriber, so the node subscribes and
    reads the top before replaying. warm: another client keeps the channel live on the node,
    so live events keep arriving while the replay is read (held in the joiner buffer).
    warm-slow-redis: as warm, but the node reaches Redis through 30 ms of Toxiproxy latency
    each way, so every replay read spans many live events; publishing goes through a second,
    direct node.
    """
    if variant == "warm-slow-redis":
        listen = await trio.to_thread.run_sync(create_proxy, toxiproxy, "redis-slow",
                                               redis_proc.port)
        for stream in ("downstream", "upstream"):
            response = await http_post(f"{toxiproxy}/proxies/redis-slow/toxics", {
                "type": "latency", "stream": stream, "attributes": {"latency": 30}})
            assert response.status_code == 200, response.text
        node = start_nodes("node-a", "--history-size", "20000", redis_url=f"redis://{listen}/0")
        publish_url = start_nodes("node-b", "--history-size", "20000").url
    else:
        node = start_nodes("node-1", "--history-size", "20000")
        publish_url = node.url
    channel = "results-seam"
    sub = Subscriber(channel)
    anchor = Subscriber(channel)
    publisher = Publisher(publish_url, channel, limit=100_000, threads=2)
    confirmations = []
    with trio.fail_after(55):
        async with trio.open_nursery() as nursery:
            if variant != "cold":
                await nursery.start(anchor.run, node.ws_url)
            await nursery.start(sub.run, node.ws_url)
            async with publishing(publisher):
                resumed_at = 0
                for _ in range(SEAM_CYCLES):
                    # Some live delivery on this connection, then drop it mid-stream.
                    await wait_until(lambda at=resumed_at: sub.last >= at + 100, 20,
                                     "live events after (re)subscribing")
                    sub.disconnect()
                    await wait_until(lambda: not sub.running, 10, "the disconnect")
                    gone_at = sub.last
                    # A long gap to replay, and resume while publishing goes on at full speed.
                    await wait_published(publisher, gone_at + 300)
                    ok = await nursery.start(partial(sub.run, node.ws_url, resume=True))
                    confirmations.append(ok)
                    assert ok["recovered"] is True, ok
                    # (A warm node's position may trail the acknowledgements a little.)
                    assert ok["offset"] > gone_at + 100, ok
                    resumed_at = ok["offset"]
                await wait_until(lambda: sub.last >= resumed_at + 100, 20, "the last live events")
                publisher.stop.set()
            assert not publisher.errors, publisher.errors
            top = publisher.top
            await wait_until(
                lambda: sub.last >= top and (variant == "cold" or anchor.last >= top),
                30, f"delivery up to offset {top}")
            nursery.cancel_scope.cancel()
    assert publisher.count == top  # every publish acknowledged, dense offsets from 1
    assert delivery_problems(publisher.acked, sub.received) == []
    assert [r.offset for r in sub.received] == list(range(1, top + 1))
    assert sub.errors == []
    assert sub.closed is None
    if variant != "cold":
        assert delivery_problems(publisher.acked, anchor.received) == []
        assert anchor.closed is None


# ---------------------------------------------------------------------------- 3. refusals


async def test_wrong_epoch_is_not_recovered(start_nodes):
    node = start_nodes("node-1")
    channel = "results-epoch"
    with trio.fail_after(30):
        for i in range(3):
            _, epoch = await publish_one(node.url, channel, i)
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel, (1, "not-" + epoch))
            assert ok["recovered"] is False
            # Live delivery starts at the top; the client is told, and gets nothing replayed.
            assert (ok["offset"], ok["epoch"]) == (3, epoch)
            await publish_one(node.url, channel, 3)
            message = await next_event(client)
            assert (message["offset"], event_id(message)) == (4, 3)


async def test_position_older_than_retention_is_not_recovered(start_nodes):
    node = start_nodes("node-1", "--history-size", "5")
    channel = "results-trimmed"
    with trio.fail_after(30):
        for i in range(20):
            _, epoch = await publish_one(node.url, channel, i)
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel, (2, epoch))
            assert (ok["recovered"], ok["offset"], ok["epoch"]) == (False, 20, epoch)
        # Boundary: 16..20 are the five retained entries; from 15 the replay is complete ...
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel, (15, epoch))
            assert (ok["recovered"], ok["offset"]) == (True, 20)
            replayed = [await next_event(client) for _ in range(5)]
            assert [(m["offset"], event_id(m)) for m in replayed] == [
                (16, 15), (17, 16), (18, 17), (19, 18), (20, 19)]
        # ... from 14 it would need offset 15, which is trimmed.
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel, (14, epoch))
            assert (ok["recovered"], ok["offset"]) == (False, 20)
            await publish_one(node.url, channel, 20)
            assert (await next_event(client))["offset"] == 21


async def test_history_off_cannot_recover_a_gap(start_nodes):
    node = start_nodes("node-1", "--history-size", "0")
    channel = "results-nohistory"
    with trio.fail_after(30):
        async with pusher_client(node.ws_url) as client:
            await subscribe(client, channel)
            for i in range(2):
                await publish_one(node.url, channel, i)
            seen = [await next_event(client) for _ in range(2)]
            epoch = seen[-1]["epoch"]
        # No gap: resuming at the top needs no history, so it is a recovery.
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel, (2, epoch))
            assert (ok["recovered"], ok["offset"]) == (True, 2)
        for i in range(2, 5):
            await publish_one(node.url, channel, i)
        async with pusher_client(node.ws_url) as client:
            ok = await subscribe(client, channel, (2, epoch))
            assert (ok["recovered"], ok["offset"], ok["epoch"]) == (False, 5, epoch)
            await publish_one(node.url, channel, 5)
            assert (await next_event(client))["offset"] == 6


# ---------------------------------------------------------------------------- 4/6. node kill


@dataclass
class KillRun:
    publisher: Publisher
    subscriber: Subscriber
    resumed: dict[str, Any]
    killed_at: int


async def run_kill_scenario(start_nodes: Callable[..., Any], *extra: str,
                            total: int = 300, rate: float = 100.0) -> KillRun:
    """A client on node A, events published through node B at a steady rate; A is SIGKILLed
    mid-stream and the client resumes on B from its last position once B has moved on."""
    node_a = start_nodes("node-a", *extra)
    node_b = start_nodes("node-b", *extra)
    channel = "results-kill"
    sub = Subscriber(channel)
    publisher = Publisher(node_b.url, channel, limit=total, rate=rate)
    with trio.fail_after(55):
        async with trio.open_nursery() as nursery:
            await nursery.start(sub.run, node_a.ws_url)
            async with publishing(publisher):
                await wait_until(lambda: len(sub.received) >= total // 3, 30,
                                 "events on node A before the kill")
                await trio.to_thread.run_sync(node_a.kill)  # SIGKILL
                await wait_until(lambda: sub.closed is not None, 10,
                                 "the client to see node A's connection die")
                killed_at = sub.last
                # Reconnect only once B has published well past the client's position, so
                # there is always a real gap to recover (or, without history, to lose).
                await wait_published(publisher, killed_at + 20)
                resumed = await nursery.start(partial(sub.run, node_b.ws_url, resume=True))
                await finish(publisher)
            top = publisher.top
            await wait_until(lambda: sub.last >= top, 20, f"delivery up to offset {top}")
            nursery.cancel_scope.cancel()
    return KillRun(publisher, sub, resumed, killed_at)


async def test_client_resumes_on_another_node_after_sigkill_without_loss(start_nodes):
    run = await run_kill_scenario(start_nodes)
    publisher, sub = run.publisher, run.subscriber
    assert publisher.count == 300
    assert [offset for _, offset, _ in publisher.acked] == list(range(1, 301))
    assert run.resumed["recovered"] is True, run.resumed
    assert run.resumed["offset"] >= run.killed_at + 20
    assert delivery_problems(publisher.acked, sub.received) == []
    assert [r.offset for r in sub.received] == list(range(1, 301))
    assert [r.id for r in sub.received] == list(range(300))
    assert sub.errors == []


async def test_negative_control_kill_without_history_reports_the_gap(start_nodes):
    """Same scenario, history off on both nodes: the gap cannot be replayed. The client must be
    told (recovered: false) and the delivery check must report the missing events."""
    run = await run_kill_scenario(start_nodes, "--history-size", "0")
    publisher, sub = run.publisher, run.subscriber
    assert publisher.count == 300
    assert run.resumed["recovered"] is False, run.resumed
    problems = delivery_problems(publisher.acked, sub.received)
    assert problems, "the delivery check must report the lost events"
    assert problems[0].startswith("missing"), problems
    lost = set(range(1, 301)) - {r.offset for r in sub.received}
    # Exactly the events published while the client was away, and nothing else.
    assert lost == set(range(run.killed_at + 1, run.resumed["offset"] + 1))
    assert len(lost) >= 20


# ---------------------------------------------------------------------------- 5. link faults


async def refused_subscription(url: str, channel: str) -> int:
    """Subscribe on a fresh connection; return the close code the node answers with."""
    async with pusher_client(url) as client:
        await client.send("pusher:subscribe", {"channel": channel})
        try:
            message = await client.next(timeout=15)
        except ConnectionClosed as closed:
            return closed.reason.code
        raise AssertionError(f"expected the node to close the connection, got {message}")


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
async def test_node_catches_up_after_redis_link_fault(toxiproxy, start_nodes, redis_proc, fault):
    """Node A reaches Redis only through Toxiproxy; events are published through node B. A's
    link is cut (connections closed, reconnects refused) or blackholed (connections stay open,
    nothing passes) for a while mid-stream. The client stays on A the whole time and must still
    get every event exactly once, in order; A's /health says 503 (with a reason) meanwhile."""
    listen = await trio.to_thread.run_sync(create_proxy, toxiproxy, "redis-a", redis_proc.port)
    node_a = start_nodes("node-a", redis_url=f"redis://{listen}/0")
    node_b = start_nodes("node-b")
    channel = "results-link"
    sub = Subscriber(channel)
    publisher = Publisher(node_b.url, channel, limit=5000, rate=100.0)
    health_during: list[tuple[int, Any]] = []
    with trio.fail_after(55):
        async with trio.open_nursery() as nursery:
            await nursery.start(sub.run, node_a.ws_url)
            async with publishing(publisher):
                await wait_until(lambda: len(sub.received) >= 50, 20, "events before the fault")
                started = trio.current_time()
                at_fault = publisher.top
                await (cut if fault == "cut" else blackhole)(toxiproxy, "redis-a")
                # Hold the fault until A reports itself unhealthy, B has published plenty
                # that A cannot hear, and at least ~2 s have passed.
                deadline = trio.current_time() + 20
                while True:
                    response = await http_get(f"{node_a.url}/health")
                    if response.status_code != 200:
                        health_during.append((response.status_code, response.json()))
                        break
                    assert trio.current_time() < deadline, "node A never reported the link down"
                    await trio.sleep(0.05)
                # A new subscription A cannot confirm with Redis is refused: close 4100.
                refused = await refused_subscription(node_a.ws_url, "results-other")
                await wait_published(publisher, at_fault + 100)
                await trio.sleep_until(started + 2.0)
                stalled_at = sub.last
                await (uncut if fault == "cut" else unblackhole)(toxiproxy, "redis-a")
                deadline = trio.current_time() + 20
                while (response := await http_get(f"{node_a.url}/health")).status_code != 200:
                    assert trio.current_time() < deadline, "node A never became healthy again"
                    await trio.sleep(0.05)
                health_after = response.json()
                healed_at = publisher.top
                await wait_published(publisher, healed_at + 100)
                publisher.stop.set()
            assert not publisher.errors, publisher.errors
            top = publisher.top
            await wait_until(lambda: sub.last >= top, 20, f"delivery up to offset {top}")
            nursery.cancel_scope.cancel()
    assert refused == protocol.OVER_CAPACITY
    assert health_during[0][0] == 503
    assert health_during[0][1]["status"] == "unavailable"
    assert "redis" in health_during[0][1]["reason"]
    assert health_after["status"] == "ok"
    if fault == "blackhole":
        # Nothing closed the connections: only the pub/sub PING watchdog can have noticed.
        assert "no PONG" in node_a.log()
    # The fault really interrupted delivery: A's client was behind when it was healed.
    assert stalled_at < healed_at
    assert sub.closed is None
    assert len(sub.confirmations) == 1
    assert delivery_problems(publisher.acked, sub.received) == []
    assert [r.offset for r in sub.received] == list(range(1, top + 1))
    assert sub.errors == []


# ---------------------------------------------------------------------------- 7. anti-entropy


async def test_position_checker_catches_up_messages_lost_without_a_link_error(
        start_nodes, redis_proc, key_prefix):
    """Append to the stream and offset exactly as a publish does, but PUBLISH to a channel no
    node listens on: pub/sub silently loses the messages and no later event reveals the gap.
    Only the node's position checker (stream top vs delivered) can notice and catch up."""
    node = start_nodes("node-1", "--position-check-interval", "0.2")
    channel = "results-lost"
    meta = f"{key_prefix}:{APP_ID}:{channel}:m"
    stream = f"{key_prefix}:{APP_ID}:{channel}:s"
    r = redis.Redis(port=redis_proc.port)
    try:
        with trio.fail_after(40):
            async with pusher_client(node.ws_url) as client:
                await subscribe(client, channel)
                _, epoch = await publish_one(node.url, channel, 0)
                assert (await next_event(client))["offset"] == 1
                assert r.exists(meta), "key layout changed"
                assert r.exists(stream), "key layout changed"
                for i in range(1, 4):
                    prefix = protocol.event_prefix(EVENT, channel, json.dumps({"id": i}))
                    offset, lua_epoch = await trio.to_thread.run_sync(
                        lambda p=prefix: r.eval(PUBLISH_LUA, 3, meta, stream, "nobody-listens",
                                                "unused-epoch", 1000, 300, "", p))
                    assert (offset, lua_epoch.decode()) == (i + 1, epoch)
                caught_up = [await next_event(client, timeout=15) for _ in range(3)]
                assert [(m["offset"], event_id(m), m["epoch"]) for m in caught_up] == [
                    (2, 1, epoch), (3, 2, epoch), (4, 3, epoch)]
                await publish_one(node.url, channel, 4)
                message = await next_event(client)
                assert (message["offset"], event_id(message)) == (5, 4)
                health = await http_get(f"{node.url}/health")
                assert health.status_code == 200
    finally:
        r.close()
