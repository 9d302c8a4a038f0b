"""The live fuzzer: generated and mutated requests and frames thrown at a real node, directly
and through HAProxy, while bystanders must keep receiving every event.

``fuzz(targets, node, ...)`` runs ``workers`` concurrent loops, each picking what to send next
from the seeded generator (tests/fuzz/generate.py): a one-shot HTTP request, a keep-alive
connection with several requests, a websocket session (handshake, then bursts of frames and
Pusher messages, reading what comes back), raw bytes, or a request that stops half-way. Every
loop is bounded by ``duration_s`` and ``max_actions``, every socket by short timeouts, and only
loopback addresses are targets. Meanwhile a checker publishes an event every ``check_every_s``
to each bystander's channel (signed, straight to the node) and samples the node's RSS.

The verdict (``FuzzReport.problems``): the node process never exited, its RSS stayed under
``rss_limit_mb``, every bystander received every event published to it, in order and with
contiguous offsets, and the node counted no internal error (a refusal is fine; an unexpected
exception caught by the crash guard is a bug the fuzzer found).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import psutil
import trio
from trio_websocket import ConnectionClosed

from tests.support.client import PusherTestClient, publish, pusher_client

from .generate import Generator

__all__ = ["Bystander", "FuzzReport", "Target", "fuzz"]


@dataclass(frozen=True)
class Target:
    name: str  # "direct", "haproxy"
    port: int


@dataclass(frozen=True)
class Bystander:
    name: str
    ws_url: str
    channel: str


@dataclass
class FuzzReport:
    seed: int
    actions: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    close_codes: Counter[int] = field(default_factory=Counter)
    frames_sent: int = 0
    bytes_sent: int = 0
    events_published: int = 0
    events_received: dict[str, int] = field(default_factory=dict)
    rss_mb_start: float = 0.0
    rss_mb_max: float = 0.0
    internal_errors: float = 0.0
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        actions = sum(self.actions.values())
        return (
            f"seed {self.seed}: {actions} actions in {self.elapsed_s:.0f} s "
            f"({dict(self.actions)}), {self.frames_sent} frames, {self.bytes_sent} bytes; "
            f"HTTP answers {dict(sorted(self.statuses.items()))}; "
            f"close codes {dict(sorted(self.close_codes.items()))}; "
            f"events {self.events_published} published, received {self.events_received}; "
            f"RSS {self.rss_mb_start:.0f} -> max {self.rss_mb_max:.0f} MB; "
            f"internal errors {self.internal_errors:g}; "
            f"problems: {self.problems or 'none'}"
        )


IO_TIMEOUT = 2.0


async def _read_some(stream: trio.SocketStream, timeout: float, limit: int = 1 << 20) -> bytes:
    """Read until EOF, ``limit`` bytes or ``timeout``; errors end the read quietly."""
    data = b""
    with trio.move_on_after(timeout):
        while len(data) < limit:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not chunk:
                break
            data += chunk
    return data


def _note_http(report: FuzzReport, target: Target, answer: bytes) -> None:
    for status in re.findall(rb"HTTP/1\.[01] (\d{3})", answer[:4096]):
        report.statuses[f"{target.name}:{status.decode()}"] += 1


def _note_close(report: FuzzReport, data: bytes) -> None:
    """Record the code of the last server close frame in ``data`` (a best-effort scan)."""
    index = data.rfind(b"\x88")
    if index >= 0 and len(data) >= index + 4 and 2 <= data[index + 1] <= 125:
        report.close_codes[int.from_bytes(data[index + 2:index + 4], "big")] += 1


async def _send(stream: trio.SocketStream, data: bytes, report: FuzzReport) -> bool:
    try:
        with trio.fail_after(IO_TIMEOUT):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        return False
    report.bytes_sent += len(data)
    return True


async def _one_request(gen: Generator, target: Target, report: FuzzReport) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", target.port)
    async with stream:
        if await _send(stream, gen.http_request(target.port), report):
            with contextlib.suppress(OSError):
                await stream.send_eof()
            _note_http(report, target, await _read_some(stream, IO_TIMEOUT))


async def _keep_alive(gen: Generator, target: Target, report: FuzzReport) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", target.port)
    async with stream:
        burst = b"".join(gen.http_request(target.port) for _ in range(gen.rng.randint(2, 6)))
        if await _send(stream, burst, report):
            _note_http(report, target, await _read_some(stream, IO_TIMEOUT / 2))


async def _half_request(gen: Generator, target: Target, report: FuzzReport) -> None:
    data = gen.http_request(target.port)
    stream = await trio.open_tcp_stream("127.0.0.1", target.port)
    async with stream:
        await _send(stream, data[: gen.rng.randrange(len(data) + 1)], report)
        await trio.sleep(gen.rng.random() * 0.5)  # then hang up mid-request


async def _raw_bytes(gen: Generator, target: Target, report: FuzzReport) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", target.port)
    async with stream:
        if await _send(stream, gen.mutate(bytes(gen.rng.randrange(256) for _ in range(
                gen.rng.randint(1, 2000)))), report):
            _note_http(report, target, await _read_some(stream, IO_TIMEOUT / 2))


async def _websocket(gen: Generator, target: Target, report: FuzzReport) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", target.port)
    async with stream:
        if not await _send(stream, gen.handshake(target.port), report):
            return
        head = b""
        with trio.move_on_after(IO_TIMEOUT):
            while b"connection_established" not in head and b"\r\n\r\n" not in head[-4:]:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not chunk:
                    break
                head += chunk
                if b"connection_established" in head or not head.startswith(b"HTTP/1.1 101"):
                    break
        _note_http(report, target, head)
        match = re.search(rb'socket_id\\?":\\?"([0-9.]+)', head)
        socket_id = match.group(1).decode() if match else "1.1"
        received = b""
        for _ in range(gen.rng.randint(1, 4)):
            burst = gen.frames(socket_id)
            report.frames_sent += len(burst)
            for data in burst:
                if not await _send(stream, data, report):
                    break
            received += await _read_some(stream, 0.15 + gen.rng.random() * 0.2)
        _note_close(report, received)


ACTIONS = {
    "request": (_one_request, 30),
    "keep_alive": (_keep_alive, 10),
    "half_request": (_half_request, 5),
    "raw_bytes": (_raw_bytes, 5),
    "websocket": (_websocket, 50),
}


async def _worker(index: int, seed: int, app: tuple[str, str, str], targets: list[Target],
                  avoid: frozenset[str], deadline: float, budget: list[int],
                  report: FuzzReport) -> None:
    gen = Generator(random.Random(f"{seed}-{index}"), app, avoid)
    names = list(ACTIONS)
    weights = [ACTIONS[n][1] for n in names]
    while trio.current_time() < deadline and budget[0] > 0:
        budget[0] -= 1
        name = gen.rng.choices(names, weights)[0]
        target = targets[gen.rng.randrange(len(targets))]
        report.actions[name] += 1
        try:
            with trio.fail_after(10):
                await ACTIONS[name][0](gen, target, report)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            # The node (or HAProxy) refused or reset the connection: an answer, not a failure.
            report.statuses[f"{target.name}:{type(exc).__name__}"] += 1


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


async def _watch(bystander: Bystander, node_url: str, published: list[int],
                 received: dict[str, list[tuple[int, int]]], ready: trio.Event,
                 stop: trio.Event, problems: list[str]) -> None:
    """Hold one bystander connection; record (our sequence number, offset) of each event."""
    got = received.setdefault(bystander.name, [])
    try:
        async with pusher_client(bystander.ws_url) as client:
            ok = await client.subscribe(bystander.channel)
            if ok.get("event") != "pusher_internal:subscription_succeeded":
                problems.append(f"bystander {bystander.name} could not subscribe: {ok}")
                return
            ready.set()
            await _collect(client, bystander, published, got, stop)
    except (ConnectionClosed, OSError, trio.TooSlowError) as exc:
        problems.append(f"bystander {bystander.name} lost its connection: {exc!r}")
        ready.set()


async def _collect(client: PusherTestClient, bystander: Bystander, published: list[int],
                   got: list[tuple[int, int]], stop: trio.Event) -> None:
    while not (stop.is_set() and len(got) >= len(published)):
        try:
            message = await client.next(timeout=15)
        except trio.TooSlowError:
            if stop.is_set():
                return
            raise
        if message.get("event") == "fuzz-check":
            got.append((json.loads(message["data"])["n"], message["offset"]))


async def fuzz(*, seed: int, node_url: str, node_pid: int, targets: list[Target],
               bystanders: list[Bystander], app: tuple[str, str, str], duration_s: float,
               max_actions: int = 1_000_000, workers: int = 8, rss_limit_mb: float = 200.0,
               check_every_s: float = 0.5) -> FuzzReport:
    report = FuzzReport(seed=seed)
    for target in targets:
        assert target.port > 0
    process = psutil.Process(node_pid)
    report.rss_mb_start = report.rss_mb_max = process.memory_info().rss / 2**20
    avoid = frozenset(b.channel for b in bystanders)
    published: dict[str, list[int]] = {b.name: [] for b in bystanders}
    received: dict[str, list[tuple[int, int]]] = {}
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        for bystander in bystanders:
            ready = trio.Event()
            nursery.start_soon(_watch, bystander, node_url, published[bystander.name],
                               received, ready, stop, report.problems)
            with trio.fail_after(15):
                await ready.wait()
        deadline = trio.current_time() + duration_s
        budget = [max_actions]
        async with trio.open_nursery() as load:
            for index in range(workers):
                load.start_soon(_worker, index, seed, app, targets, avoid, deadline, budget,
                                report)
            sequence = 0
            while trio.current_time() < deadline and budget[0] > 0:
                if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                    report.problems.append("the node process exited")
                    load.cancel_scope.cancel()
                    break
                report.rss_mb_max = max(report.rss_mb_max, process.memory_info().rss / 2**20)
                sequence += 1
                for bystander in bystanders:
                    try:
                        response = await trio.to_thread.run_sync(
                            publish, node_url, bystander.channel, "fuzz-check", {"n": sequence})
                    except httpx.HTTPError as exc:
                        report.problems.append(f"publish failed: {exc!r}")
                        continue
                    if response.status_code == 200:
                        published[bystander.name].append(sequence)
                        report.events_published += 1
                    else:
                        report.problems.append(f"publish refused: {response.status_code} "
                                               f"{response.text[:200]}")
                await trio.sleep(check_every_s)
        stop.set()
        with trio.move_on_after(15):
            while any(len(received.get(b.name, [])) < len(published[b.name])
                      for b in bystanders) and not report.problems:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    report.elapsed_s = time.monotonic() - started
    if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
        report.rss_mb_max = max(report.rss_mb_max, process.memory_info().rss / 2**20)
        report.internal_errors = await trio.to_thread.run_sync(
            _metric, node_url, "turnout_internal_errors_total")
        if report.internal_errors != 0:
            report.problems.append(f"{report.internal_errors:g} internal errors (bugs found: "
                                   "see the node log for their tracebacks)")
    elif "the node process exited" not in report.problems:
        report.problems.append("the node process exited")
    if report.rss_mb_max > rss_limit_mb:
        report.problems.append(f"RSS reached {report.rss_mb_max:.0f} MB > {rss_limit_mb:g} MB")
    for bystander in bystanders:
        got = received.get(bystander.name, [])
        report.events_received[bystander.name] = len(got)
        _judge_bystander(bystander.name, published[bystander.name], got, report.problems)
    return report


def _judge_bystander(name: str, published: list[int], got: list[tuple[int, int]],
                     problems: list[str]) -> None:
    numbers = [n for n, _ in got]
    if numbers != published:
        missing = sorted(set(published) - set(numbers))
        problems.append(f"bystander {name} did not receive every event in order: "
                        f"{len(numbers)} of {len(published)}, missing {missing[:10]}")
    offsets = [offset for _, offset in got]
    if any(b != a + 1 for a, b in itertools.pairwise(offsets)):
        problems.append(f"bystander {name} saw a gap in offsets: {offsets[:20]}...")


