"""The client fleet: Pusher-protocol websocket clients in a worker process, recording history.

A worker process (``python -m harness.fleet SPEC.json``) runs many clients on trio with
trio-websocket (the user's choice; per-message cost matters little at a few messages per
second per client). Each client connects through its lane's entry proxy from one of several
127.0.0.x source addresses, subscribes to its channels, reconnects with exponential backoff and
full jitter, resumes every channel from its last position, and records every step as history
ops. The worker connects to the harness's Unix socket (``control_path``) and speaks JSON lines:

commands (harness -> worker): ``{"cmd": "add_clients", "clients": [...]}`` (more measured
clients), ``{"cmd": "storm", "count": 5000, "duration_s": 10, "channel": "c"}`` (bare
connections opened all at once), ``{"cmd": "stall", "share": 0.2, "duration_s": 10, "seed": 1}``
(slow consumers stop reading), ``{"cmd": "drain"}`` (final read: every client records ``drain``
and closes).

events (worker -> harness): ``{"type": "status", ...}`` every half second and
``{"type": "drained"}``. If the harness goes away the worker drains and exits.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, wrap_client_stream

from .history import HistoryWriter, client_process

log = logging.getLogger("turnout.fleet")

DRAIN_QUIET_S = 1.0
STORM_CONNECT_S = 60.0
CLIENT_RCVBUF = 64 * 1024

__all__ = ["ClientSpec", "FleetSpec", "main"]


@dataclass(frozen=True, slots=True)
class ClientSpec:
    id: int
    channels: tuple[str, ...]


@dataclass(frozen=True)
class FleetSpec:
    worker: int
    history_path: str
    entries: tuple[str, ...]
    control_path: str = ""
    source_addresses: tuple[str, ...] = ("127.0.0.1",)
    clients: tuple[ClientSpec, ...] = ()
    connect_rate_per_s: float = 500.0
    backoff_min_s: float = 0.1
    backoff_max_s: float = 5.0
    resume: bool = True
    silence_ping_s: float = 5.0
    pong_timeout_s: float = 5.0
    seed: int = 0

    @classmethod
    def from_json(cls, raw: str | bytes) -> FleetSpec:
        data = json.loads(raw)
        data["entries"] = tuple(data["entries"])
        data["source_addresses"] = tuple(data.get("source_addresses") or ("127.0.0.1",))
        data["clients"] = tuple(ClientSpec(c["id"], tuple(c["channels"]))
                                for c in data.get("clients", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps({
            **{k: getattr(self, k) for k in self.__dataclass_fields__ if k != "clients"},
            "clients": [{"id": c.id, "channels": list(c.channels)} for c in self.clients],
        })


@dataclass
class FleetStats:
    clients: int = 0
    connected: int = 0
    subscribed: int = 0
    delivered: int = 0
    reconnects: int = 0
    drained: int = 0
    finished: int = 0
    stalled: int = 0
    storm_open: int = 0
    storm_opened: int = 0
    storm_failed: int = 0
    live_duplicates: int = 0
    live_reorders: int = 0
    storm_connect_s: float | None = None
    storm_errors: dict[str, int] = field(default_factory=dict)


@dataclass
class _Client:
    spec: ClientSpec
    positions: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: channel -> the (offset, epoch) a `recovered: true` replay promised to reach; the final
    #: read is not complete while any is outstanding.
    replay_until: dict[str, tuple[int, str]] = field(default_factory=dict)
    stalled_until: float = 0.0
    seen: dict[str, set[Any]] = field(default_factory=dict)
    max_seq: dict[str, int] = field(default_factory=dict)
    draining: bool = False
    connected: bool = False


class _Drain(Exception):
    pass


class LatencyWindow:
    """Delivery latency (receive time - the publisher's wall-clock ``sent_at``) over the last
    status interval, for live display only; the checker computes the real percentiles."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def add(self, ms: float) -> None:
        if len(self.samples) < 20_000:
            self.samples.append(ms)

    def snapshot(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        self.samples = []
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return {"p50": round(pick(0.5), 1), "p99": round(pick(0.99), 1),
                "max": round(ordered[-1], 1), "n": len(ordered)}


async def _connect(host: str, port: int, source: str) -> trio.SocketStream:
    """A TCP connection from ``source`` with a fixed receive buffer of CLIENT_RCVBUF.

    A fixed buffer (set before connecting, so the window is negotiated with it) is what a
    phone on a thin link has, and it keeps a stalled client's backlog where it belongs: in
    the server's outbound queue, which is what the slow-consumer policy watches. Autotuned
    buffers on every hop of the proxy chain would otherwise absorb tens of megabytes.
    """
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, CLIENT_RCVBUF)
        await sock.bind((source, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def _handshake(host: str, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def _masked_text(payload: bytes) -> bytes:
    """One masked client text frame (payloads under 126 bytes only: a subscribe)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + body


class Fleet:
    def __init__(self, spec: FleetSpec, history: HistoryWriter) -> None:
        self.spec = spec
        self.history = history
        self.stats = FleetStats()
        self.clients: list[_Client] = []
        self.rng = random.Random(spec.seed * 1_000_003 + spec.worker)
        self.latency = LatencyWindow()
        self.drain_event = trio.Event()
        self._connect_limiter = trio.CapacityLimiter(256)
        self._next_connect = 0.0

    # ------------------------------------------------------------------ pacing
    async def _paced(self) -> None:
        """Spread initial connects at ``connect_rate_per_s`` (a ramp, not a storm)."""
        now = trio.current_time()
        slot = max(now, self._next_connect)
        self._next_connect = slot + 1.0 / max(self.spec.connect_rate_per_s, 1e-3)
        await trio.sleep_until(slot)

    # ------------------------------------------------------------------ one client
    async def run_client(self, client: _Client, paced: bool) -> None:
        try:
            await self._run_client(client, paced)
        finally:
            self.stats.finished += 1

    async def _run_client(self, client: _Client, paced: bool) -> None:
        process = client_process(client.spec.id)
        backoff = self.spec.backoff_min_s
        entry = self.spec.entries[client.spec.id % len(self.spec.entries)]
        source = self.spec.source_addresses[client.spec.id % len(self.spec.source_addresses)]
        if paced:
            await self._paced()
        while not self.drain_event.is_set():
            code: int | None = None
            reason = ""
            try:
                await self._session(client, process, entry, source)
                return  # drained cleanly
            except ConnectionClosed as exc:
                if exc.reason is not None:
                    code, reason = exc.reason.code, exc.reason.reason or ""
            except (HandshakeError, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                reason = f"{type(exc).__name__}: {exc}"[:200]
            except _Drain:
                return
            if client.connected:
                client.connected = False
                self.stats.connected -= 1
                backoff = self.spec.backoff_min_s
            self.history.record(process, "info", "disconnect", {"code": code, "reason": reason})
            self.stats.reconnects += 1
            if self.drain_event.is_set():
                break
            # Full jitter: spread reconnects of a whole fleet that lost its node at once.
            await trio.sleep(self.rng.uniform(0, backoff))
            backoff = min(backoff * 2, self.spec.backoff_max_s)
        if not client.draining:
            # Drain requested while disconnected: the final read still happens, on a new
            # connection, so the client's history ends with what it could recover.
            await self._final_read(client, process, entry, source)

    async def _final_read(self, client: _Client, process: str, entry: str, source: str) -> None:
        for _ in range(20):
            try:
                await self._session(client, process, entry, source, final=True)
                return
            except _Drain:
                return
            except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError,
                    trio.TooSlowError):
                await trio.sleep(0.5)
        self.history.record(process, "info", "disconnect", {"code": None,
                                                            "reason": "final read failed"})

    async def _open(self, entry: str, source: str, nursery: trio.Nursery) -> WebSocketConnection:
        url = urlsplit(entry)
        host = url.hostname or "127.0.0.1"
        port = url.port or 80
        resource_path = url.path + ("?" + url.query if url.query else "")
        # The deadline starts once a handshake slot is ours: waiting for a slot is the ramp, not
        # a slow server, and counting it made a large fleet time out and retry in a loop.
        async with self._connect_limiter:
            with trio.fail_after(10):
                stream = await _connect(host, port, source)
                try:
                    return await wrap_client_stream(nursery, stream, host, resource_path,
                                                    message_queue_size=1)
                except BaseException:
                    await stream.aclose()
                    raise

    async def _session(self, client: _Client, process: str, entry: str, source: str,
                       final: bool = False) -> None:
        try:
            async with trio.open_nursery() as nursery:
                ws = await self._open(entry, source, nursery)
                try:
                    await self._converse(client, process, ws, final)
                finally:
                    nursery.cancel_scope.cancel()
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await ws.aclose()
        except BaseExceptionGroup as group:
            raise _first_error(group) from None

    async def _converse(self, client: _Client, process: str, ws: WebSocketConnection,
                        final: bool) -> None:
        hello = orjson.loads(await _get(ws, 10) or "{}")
        if hello.get("event") != "pusher:connection_established":
            raise trio.BrokenResourceError(f"unexpected first message {hello.get('event')}")
        info = orjson.loads(hello["data"])
        self.history.record(process, "ok", "connect", {"socket_id": info["socket_id"]})
        client.connected = True
        self.stats.connected += 1
        pending = set(client.spec.channels)
        for channel in client.spec.channels:
            data: dict[str, Any] = {"channel": channel}
            position = client.positions.get(channel)
            if position is not None and self.spec.resume:
                data["offset"], data["epoch"] = position
            self.history.record(process, "invoke", "subscribe", {
                "channel": channel,
                **({"position": {"offset": position[0], "epoch": position[1]}}
                   if position is not None and self.spec.resume else {}),
            })
            await ws.send_message(orjson.dumps({"event": "pusher:subscribe", "data": data})
                                  .decode())
        client.replay_until.clear()
        silence_ping = min(self.spec.silence_ping_s, float(info.get("activity_timeout", 120)))
        ping_sent: float | None = None
        while True:
            draining = final or self.drain_event.is_set()
            stall = client.stalled_until - trio.current_time()
            if stall > 0 and not draining:
                # A slow consumer: stop reading; the kernel buffers fill and the server sees it.
                await trio.sleep(min(stall, 1.0))
                continue
            # The final read is done once every subscription is in, every promised replay has
            # arrived, and the line then stays quiet. A quiet line alone is not enough: on an
            # overloaded machine a replay can pause longer than DRAIN_QUIET_S, and ending the
            # read there would report updates still in flight as lost.
            read_complete = draining and not pending and not client.replay_until
            if read_complete:
                wait = DRAIN_QUIET_S
            elif ping_sent is not None:
                wait = ping_sent + self.spec.pong_timeout_s - trio.current_time()
            else:
                wait = silence_ping
            raw = await _get(ws, max(wait, 0.01), none_on_timeout=True)
            if raw is None:
                if read_complete:
                    self._finish(client, process)
                if ping_sent is not None:
                    raise trio.TooSlowError("no pong from server")
                ping_sent = trio.current_time()
                await ws.send_message('{"event":"pusher:ping","data":{}}')
                continue
            ping_sent = None
            message = orjson.loads(raw)
            event = message.get("event", "")
            channel = message.get("channel")
            if event == "pusher:ping":
                await ws.send_message('{"event":"pusher:pong","data":{}}')
            elif event == "pusher_internal:subscription_succeeded":
                pending.discard(channel)
                self.stats.subscribed += 1
                recovered = message.get("recovered")
                epoch = message.get("epoch")
                offset = message.get("offset")
                self.history.record(process, "ok", "subscribe", {
                    "channel": channel, "recovered": recovered, "offset": offset,
                    "epoch": epoch,
                })
                if recovered is True and isinstance(offset, int):
                    client.replay_until[channel] = (offset, epoch or "")
                    self._check_replay(client, channel)
                if isinstance(offset, int) and (recovered is None or recovered is False or
                                                channel not in client.positions):
                    # Start from the server's position; "" = channel not yet published, so a
                    # resume asks for everything from its first event.
                    client.positions[channel] = (offset, epoch or "")
            elif event in ("pusher:error", "pusher:subscription_error"):
                self.history.record(process, "info", "error", {"message": message})
                if event == "pusher:subscription_error":
                    self.history.record(process, "fail", "subscribe", {
                        "channel": channel, "error": str(message.get("data"))[:200]})
            elif channel is not None and not event.startswith("pusher"):
                self._on_update(client, process, channel, message)

    def _on_update(self, client: _Client, process: str, channel: str,
                   message: dict[str, Any]) -> None:
        try:
            payload = orjson.loads(message.get("data") or "{}")
        except orjson.JSONDecodeError:
            payload = {}
        # Provisional live counters for dashboards; the checker decides from the history.
        pid, seq = payload.get("id"), payload.get("seq")
        seen = client.seen.setdefault(channel, set())
        if pid in seen:
            self.stats.live_duplicates += 1
        elif isinstance(seq, int):
            seen.add(pid)
            if seq < client.max_seq.get(channel, 0):
                self.stats.live_reorders += 1
            else:
                client.max_seq[channel] = seq
        offset = message.get("offset")
        epoch = message.get("epoch")
        value: dict[str, Any] = {"channel": channel, "id": payload.get("id"),
                                 "seq": payload.get("seq")}
        if isinstance(offset, int):
            value["offset"] = offset
            value["epoch"] = epoch
            client.positions[channel] = (offset, epoch or "")
            if channel in client.replay_until:
                self._check_replay(client, channel)
        self.history.record(process, "ok", "deliver", value)
        self.stats.delivered += 1
        sent_at = payload.get("sent_at")
        if isinstance(sent_at, float):
            self.latency.add((time.time() - sent_at) * 1000)

    @staticmethod
    def _check_replay(client: _Client, channel: str) -> None:
        """Forget the channel's replay target once its position has reached it (or moved to
        another epoch: then that replay is over, and the checker judges what came of it)."""
        target = client.replay_until[channel]
        position = client.positions.get(channel)
        if position is not None and (position[1] != target[1] or position[0] >= target[0]):
            del client.replay_until[channel]

    def _finish(self, client: _Client, process: str) -> None:
        client.draining = True
        self.history.record(process, "ok", "drain", {"channels": list(client.spec.channels)})
        self.stats.drained += 1
        if client.connected:
            client.connected = False
            self.stats.connected -= 1
        raise _Drain

    # ------------------------------------------------------------------ control
    def add_clients(self, specs: list[ClientSpec], nursery: trio.Nursery, paced: bool) -> None:
        for spec in specs:
            client = _Client(spec)
            self.clients.append(client)
            self.stats.clients += 1
            nursery.start_soon(self.run_client, client, paced)

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {"type": "status", "worker": self.spec.worker, "clients": s.clients,
                "connected": s.connected, "subscribed": s.subscribed,
                "delivered": s.delivered, "reconnects": s.reconnects, "drained": s.drained,
                "stalled": s.stalled, "storm_open": s.storm_open,
                "storm_opened": s.storm_opened, "storm_failed": s.storm_failed,
                "live_duplicates": s.live_duplicates, "live_reorders": s.live_reorders,
                "storm_connect_s": s.storm_connect_s, "storm_errors": dict(s.storm_errors),
                "latency_ms": self.latency.snapshot(), "time": time.monotonic()}

    async def storm(self, count: int, duration_s: float, channel: str) -> None:
        """Open ``count`` bare connections at once (each subscribes to ``channel`` and reads and
        discards). Each one retries until it is in (within STORM_CONNECT_S); once every one is
        in or has given up, they are all held ``duration_s`` and closed. Not measured: the
        storm's point is what it does to the measured clients."""
        started = trio.current_time()
        connected = trio.Event()
        pending = [count]
        release = trio.Event()
        limiter = trio.CapacityLimiter(1000)  # concurrent handshakes: the fd and SYN budget

        def done_connecting() -> None:
            pending[0] -= 1
            if pending[0] == 0:
                connected.set()

        async with trio.open_nursery() as nursery:
            for index in range(count):
                entry = self.spec.entries[index % len(self.spec.entries)]
                source = self.spec.source_addresses[index % len(self.spec.source_addresses)]
                nursery.start_soon(self._storm_one, entry, source, channel, started, limiter,
                                   done_connecting, release)
            await connected.wait()
            self.stats.storm_connect_s = round(trio.current_time() - started, 2)
            await trio.sleep(duration_s)
            release.set()

    async def _storm_one(self, entry: str, source: str, channel: str, started: float,
                         limiter: trio.CapacityLimiter, done_connecting: Any,
                         release: trio.Event) -> None:
        url = urlsplit(entry)
        stream: trio.SocketStream | None = None
        backoff = 0.2
        try:
            while True:
                try:
                    async with limiter:
                        with trio.fail_after(10):
                            stream = await self._storm_connect(url, source, channel)
                    break
                except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                    reason = type(exc).__name__ if not isinstance(exc, trio.BrokenResourceError) \
                        else str(exc)
                    self.stats.storm_errors[reason] = self.stats.storm_errors.get(reason, 0) + 1
                    if trio.current_time() - started > STORM_CONNECT_S:
                        self.stats.storm_failed += 1
                        done_connecting()
                        return
                    await trio.sleep(self.rng.uniform(0, backoff))
                    backoff = min(backoff * 2, 2.0)
            self.stats.storm_opened += 1
            self.stats.storm_open += 1
            done_connecting()
            try:
                async with trio.open_nursery() as hold:
                    async def until_released() -> None:
                        await release.wait()
                        hold.cancel_scope.cancel()
                    hold.start_soon(until_released)
                    while await stream.receive_some(65536):
                        pass
                    hold.cancel_scope.cancel()
            except (OSError, trio.BrokenResourceError):
                pass
            finally:
                self.stats.storm_open -= 1
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _storm_connect(self, url: Any, source: str, channel: str) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(url.hostname or "127.0.0.1", url.port or 80,
                                            local_address=source)
        try:
            path = url.path + ("?" + url.query if url.query else "")
            await stream.send_all(_handshake(url.hostname or "", path))
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    raise trio.BrokenResourceError("closed during handshake")
                response += chunk
            if b" 101 " not in response.split(b"\r\n", 1)[0]:
                raise trio.BrokenResourceError("handshake refused")
            await stream.send_all(_masked_text(orjson.dumps(
                {"event": "pusher:subscribe", "data": {"channel": channel}})))
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return stream

    def stall(self, share: float, duration_s: float, seed: int) -> None:
        rng = random.Random(seed * 7919 + self.spec.worker)
        until = trio.current_time() + duration_s
        chosen = [c for c in self.clients if rng.random() < share]
        for client in chosen:
            client.stalled_until = until
        self.stats.stalled = len(chosen)


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The one real error of a connection's nursery (trio wraps it in an ExceptionGroup)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group


async def _get(ws: WebSocketConnection, timeout: float, *,
               none_on_timeout: bool = False) -> str | None:
    """The next text message, or None on timeout when ``none_on_timeout``."""
    with trio.move_on_after(timeout):
        message = await ws.get_message()
        return message if isinstance(message, str) else message.decode()
    if none_on_timeout:
        return None
    raise trio.TooSlowError("timed out waiting for a message")


class _Channel:
    """The JSON-lines link to the harness (a Unix socket), or stdout when there is none."""

    def __init__(self, stream: trio.abc.Stream | None) -> None:
        self.stream = stream
        self._lock = trio.Lock()

    async def emit(self, obj: dict[str, Any]) -> None:
        line = (json.dumps(obj) + "\n").encode()
        if self.stream is None:
            sys.stdout.write(line.decode())
            sys.stdout.flush()
            return
        async with self._lock:
            try:
                await self.stream.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def _control(fleet: Fleet, channel: _Channel, nursery: trio.Nursery) -> None:
    stream: Any = channel.stream or trio.lowlevel.FdStream(sys.stdin.fileno())
    buffer = b""
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            fleet.drain_event.set()  # the harness went away: finish up
            return
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not line.strip():
                continue
            command = json.loads(line)
            cmd = command.get("cmd")
            if cmd == "add_clients":
                fleet.add_clients([ClientSpec(c["id"], tuple(c["channels"]))
                                   for c in command["clients"]], nursery, paced=False)
            elif cmd == "storm":
                nursery.start_soon(fleet.storm, int(command["count"]),
                                   float(command["duration_s"]), str(command["channel"]))
            elif cmd == "stall":
                fleet.stall(float(command["share"]), float(command["duration_s"]),
                            int(command.get("seed", 0)))
            elif cmd == "drain":
                fleet.drain_event.set()


async def _status(fleet: Fleet, channel: _Channel) -> None:
    while True:
        await channel.emit(fleet.status())
        await trio.sleep(0.5)


async def run_worker(spec: FleetSpec) -> None:
    stream = await trio.open_unix_socket(spec.control_path) if spec.control_path else None
    channel = _Channel(stream)
    with HistoryWriter(spec.history_path) as history:
        fleet = Fleet(spec, history)
        async with trio.open_nursery() as outer:
            outer.start_soon(history.autoflush)
            outer.start_soon(_status, fleet, channel)
            async with trio.open_nursery() as clients:
                clients.start_soon(_control, fleet, channel, clients)
                fleet.add_clients(list(spec.clients), clients, paced=True)
                await fleet.drain_event.wait()
                # Every client ends by itself after its final read; bound it anyway.
                with trio.move_on_after(120):
                    while fleet.stats.finished < fleet.stats.clients:
                        await trio.sleep(0.1)
                clients.cancel_scope.cancel()
            history.flush()
            await channel.emit({**fleet.status(), "type": "drained"})
            outer.cancel_scope.cancel()
    if stream is not None:
        await stream.aclose()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.fleet SPEC.json", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        spec = FleetSpec.from_json(f.read())
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    trio.run(run_worker, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
