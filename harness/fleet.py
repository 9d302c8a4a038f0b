"""The client fleet: one worker process, one event loop, thousands of Pusher viewers.

``python -m harness.fleet SPEC.json`` runs every viewer of one worker in a single ``epoll``
loop over raw non-blocking sockets: no task or coroutine per client, one
:class:`harness.ws_wire.FrameReader` and one sans-IO :class:`harness.pusher_client.Viewer` per
client, each distinct update decoded once for all of them
(:class:`harness.pusher_client.UpdateCache`), a timer sweep once a second (four times a second
during the final read) that ticks only the viewers whose next deadline has come, and a heap of
scheduled (re)connects. At the election's full size a worker receives ~4,000 updates a second;
the loop's cost per delivery is measured against a bare ``epoll`` + ``recv`` loop by
``python -m bench.fleet_recv`` (docs/benchmarks.md).

Each viewer connects through its lane's entry (``entries[id % len(entries)]``) from one of
several 127.0.0.x source addresses (``IP_BIND_ADDRESS_NO_PORT``: ports are chosen per
destination, so every address serves ~28,000 connections per entry), with a fixed 64 KiB
receive buffer (a stalled client's backlog then lands in the server's outbound queue, which
the slow-consumer policy watches). At most ``handshake_limit`` connects are in flight; the
initial ramp is paced at ``connect_rate_per_s``; reconnects wait for the viewer's backoff.

The worker connects to the harness's Unix socket (``control_path``) and speaks JSON lines:

commands (harness -> worker): ``{"cmd": "add_clients", "clients": [...]}`` (more measured
clients), ``{"cmd": "storm", "count": 5000, "duration_s": 10, "channel": "c"}`` (bare
connections opened all at once), ``{"cmd": "stall", "share": 0.2, "duration_s": 10, "seed": 1}``
(slow consumers stop reading), ``{"cmd": "drain"}`` (final read: every client records
``drain`` and closes).

events (worker -> harness): ``{"type": "status", ...}`` every half second and
``{"type": "drained"}`` once the record is written. If the harness goes away the worker drains
and exits.
"""

from __future__ import annotations

import errno
import heapq
import json
import logging
import os
import random
import resource
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from .history import HistoryWriter
from .pusher_client import Backoff, PresenceJoin, UpdateCache, Viewer
from .recording import Recorder
from .ws_wire import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    HandshakeError,
    WireError,
    close_payload,
    handshake_request,
    masked_frame,
    parse_close,
    parse_handshake_response,
)

log = logging.getLogger("turnout.fleet")

__all__ = ["ClientSpec", "FleetSpec", "Worker", "main"]

CLIENT_RCVBUF: Final = 64 * 1024
RECV_BYTES: Final = 65536
CONNECT_TIMEOUT_S: Final = 10.0
SWEEP_S: Final = 1.0
SWEEP_DRAINING_S: Final = 0.25
STATUS_S: Final = 0.5
FINAL_READ_ATTEMPTS: Final = 20
FINAL_READ_RETRY_S: Final = 0.5
DRAIN_BOUND_S: Final = 120.0
STORM_CONNECT_S: Final = 60.0
STORM_HANDSHAKES: Final = 1000
IP_BIND_ADDRESS_NO_PORT: Final = 24
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EPOLLERR = select.EPOLLERR | select.EPOLLHUP


@dataclass(frozen=True, slots=True)
class ClientSpec:
    id: int
    channels: tuple[str, ...]
    #: a presence channel the viewer also joins as user ``u<id>`` ("" = none); with
    #: ``fresh_user`` as a new user on each connection (``u<id>.<n>``)
    presence: str = ""
    fresh_user: bool = False

    @classmethod
    def from_dict(cls, c: dict[str, Any]) -> ClientSpec:
        return cls(c["id"], tuple(c["channels"]), c.get("presence", ""),
                   bool(c.get("fresh_user", False)))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "channels": list(self.channels)}
        if self.presence:
            out.update(presence=self.presence, fresh_user=self.fresh_user)
        return out


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
    #: ids of the viewers whose every delivery is recorded as an op (the seeded sample)
    full_history: tuple[int, ...] = ()
    handshake_limit: int = 256
    #: the app key presence joins are signed for; the secret comes in the worker's
    #: environment (TURNOUT_APP_SECRET), never in this file
    app_key: str = ""

    @classmethod
    def from_json(cls, raw: str | bytes) -> FleetSpec:
        data = json.loads(raw)
        data["entries"] = tuple(data["entries"])
        data["source_addresses"] = tuple(data.get("source_addresses") or ("127.0.0.1",))
        data["clients"] = tuple(ClientSpec.from_dict(c) for c in data.get("clients", ()))
        data["full_history"] = tuple(data.get("full_history", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps({
            **{k: getattr(self, k) for k in self.__dataclass_fields__
               if k not in ("clients", "full_history")},
            "clients": [c.to_dict() for c in self.clients],
            "full_history": list(self.full_history),
        })


# Connection states.
CONNECTING, HANDSHAKE, OPEN = 0, 1, 2


class Conn:
    """One socket of the loop: a viewer's connection, or a bare storm connection."""

    __slots__ = ("accept", "closing", "deadline", "fd", "hbuf", "out", "reader", "reading",
                 "request", "sock", "state", "storm", "viewer")

    def __init__(self, sock: socket.socket, viewer: Viewer | None, request: bytes,
                 accept: bytes, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.viewer = viewer
        self.storm: _Storm | None = None
        self.state = CONNECTING
        self.request = request
        self.accept = accept
        self.hbuf = b""
        self.reader = FrameReader()
        self.out = b""
        self.deadline = deadline
        self.reading = True
        self.closing = False


class _Storm:
    def __init__(self, count: int, duration_s: float, channel: str, started: float) -> None:
        self.count = count
        self.duration_s = duration_s
        self.channel = channel
        self.started = started
        self.pending = count  # not yet opened nor given up
        self.conns: set[Conn] = set()
        self.release_at = -1.0
        self.subscribe = masked_frame(OP_TEXT, orjson.dumps(
            {"event": "pusher:subscribe", "data": {"channel": channel}}))


class _Target:
    __slots__ = ("host", "path", "port")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path + ("?" + parts.query if parts.query else "")


class Worker:
    """The event loop of one fleet worker process."""

    def __init__(self, spec: FleetSpec, history: HistoryWriter,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.history = history
        self.clock = clock
        self.recorder = Recorder(history, spec.worker)
        self.stats = self.recorder.stats
        self.rng = random.Random(spec.seed * 1_000_003 + spec.worker)
        self.targets = [_Target(u) for u in spec.entries]
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.viewers: list[Viewer] = []
        self.by_viewer: dict[int, Conn] = {}  # viewer id -> its live connection
        self.timers: list[tuple[float, int, int, Any]] = []  # (due, seq, kind, arg)
        self._seq = 0
        self.waiting: deque[Any] = deque()  # connects due, waiting for a handshake slot
        self.inflight = 0
        self.next_paced = 0.0
        self.full = set(spec.full_history)
        self.draining = False
        self.drain_started = 0.0
        self.final_attempts: dict[int, int] = {}
        self.gave_up: set[int] = set()
        self.storms: list[_Storm] = []
        self.storm_open = 0
        self.storm_opened = 0
        self.storm_failed = 0
        self.storm_connect_s: float | None = None
        self.storm_errors: dict[str, int] = {}
        self.storm_inflight = 0
        self.storm_meta: dict[int, tuple[int, float]] = {}
        #: updates decoded once per worker: whole frames of the loop's hot path, and messages
        #: that came through the frame reader (several frames in one read, split frames)
        self.frame_updates = UpdateCache()
        self.message_updates = UpdateCache()
        self.control: socket.socket | None = None
        self._control_buf = b""
        self._control_out = b""
        #: set by SIGTERM: stop at the next sweep and still write the record
        self.stop_requested = False

    # ------------------------------------------------------------------ viewers
    def add_clients(self, specs: list[ClientSpec], paced: bool) -> None:
        now = self.clock()
        rate = max(self.spec.connect_rate_per_s, 1e-3)
        for cs in specs:
            presence = None
            if cs.presence:
                presence = PresenceJoin(cs.presence, f"u{cs.id}", self.spec.app_key,
                                        os.environ.get("TURNOUT_APP_SECRET", ""),
                                        fresh=cs.fresh_user)
            viewer = Viewer(cs.id, cs.channels, self.recorder, resume=self.spec.resume,
                            backoff=Backoff(self.spec.backoff_min_s, self.spec.backoff_max_s),
                            full=cs.id in self.full, silence_ping_s=self.spec.silence_ping_s,
                            pong_timeout_s=self.spec.pong_timeout_s, presence=presence)
            self.viewers.append(viewer)
            self.stats.clients += 1
            if paced:
                slot = max(now, self.next_paced)
                self.next_paced = slot + 1.0 / rate
                self._at(slot, 0, viewer)
            else:
                self._at(now, 0, viewer)

    def _at(self, due: float, kind: int, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self.timers, (due, self._seq, kind, arg))

    def _connect(self, viewer: Viewer, now: float) -> None:
        target = self.targets[viewer.id % len(self.targets)]
        source = self.spec.source_addresses[viewer.id % len(self.spec.source_addresses)]
        try:
            sock = _open_socket(source, target)
        except OSError as exc:
            self.inflight -= 1
            viewer.lost(now, None, f"{type(exc).__name__}: {exc}"[:200])
            self._schedule_reconnect(viewer, now)
            return
        request, accept = handshake_request(target.host, target.port, target.path)
        conn = Conn(sock, viewer, request, accept, now + CONNECT_TIMEOUT_S)
        self.conns[conn.fd] = conn
        self.by_viewer[viewer.id] = conn
        self.ep.register(conn.fd, _EPOLLOUT | _EPOLLIN)

    def _schedule_reconnect(self, viewer: Viewer, now: float) -> None:
        if viewer.finished or viewer.id in self.gave_up:
            return
        if self.draining:
            attempts = self.final_attempts.get(viewer.id, 0) + 1
            self.final_attempts[viewer.id] = attempts
            if attempts > FINAL_READ_ATTEMPTS:
                self.gave_up.add(viewer.id)
                self.recorder.op(viewer.process, "info", "disconnect",
                                 {"code": None, "reason": "final read failed"}, now)
                return
            self._at(now + FINAL_READ_RETRY_S, 0, viewer)
            return
        self._at(now + viewer.backoff.next_delay(self.rng), 0, viewer)

    # ------------------------------------------------------------------ socket events
    def _on_event(self, conn: Conn, ev: int, now: float) -> None:
        try:
            if conn.state == OPEN:
                if ev & _EPOLLOUT and conn.out:
                    self._flush(conn)
                if not conn.reading:
                    if ev & _EPOLLERR:  # reset while stalled: nothing more can be read
                        self._teardown(conn, now, None, "connection reset while stalled")
                    return
                if ev & (_EPOLLIN | _EPOLLERR):
                    data = conn.sock.recv(RECV_BYTES)
                    if not data:
                        self._teardown(conn, now, None, "EOF")
                        return
                    self._received(conn, data, now)
                    return
            elif conn.state == CONNECTING:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                conn.state = HANDSHAKE
                conn.sock.send(conn.request)
                self.ep.modify(conn.fd, _EPOLLIN)
            else:  # HANDSHAKE
                data = conn.sock.recv(RECV_BYTES)
                if not data:
                    raise HandshakeError("closed during handshake")
                conn.hbuf += data
                used = parse_handshake_response(conn.hbuf, conn.accept)
                if used:
                    rest = conn.hbuf[used:]
                    conn.hbuf = b""
                    self._opened(conn, now)
                    if rest:
                        self._frames(conn, rest, now)
        except BlockingIOError:
            pass
        except (OSError, HandshakeError) as exc:
            self._teardown(conn, now, None, f"{type(exc).__name__}: {exc}"[:200])
        except WireError as exc:
            self._send_close(conn, exc.code, exc.reason)
            self._teardown(conn, now, None, f"protocol error: {exc.reason}")

    def _received(self, conn: Conn, data: bytes, now: float) -> None:
        """Bytes read from an open connection, through the frame reader."""
        try:
            self._frames(conn, data, now)
        except WireError as exc:
            self._send_close(conn, exc.code, exc.reason)
            self._teardown(conn, now, None, f"protocol error: {exc.reason}")

    def _opened(self, conn: Conn, now: float) -> None:
        conn.state = OPEN
        if conn.storm is not None:
            self.storm_inflight -= 1
            storm = conn.storm
            self.storm_opened += 1
            self.storm_open += 1
            storm.pending -= 1
            self._storm_check(storm, now)
            self._send(conn, storm.subscribe)
            return
        self.inflight -= 1
        viewer = conn.viewer
        assert viewer is not None
        viewer.opened(now)
        self._drain_outbox(conn, viewer, now)

    def _frames(self, conn: Conn, data: bytes, now: float) -> None:
        viewer = conn.viewer
        for opcode, payload in conn.reader.feed(data):
            if opcode == OP_TEXT:
                if viewer is None:
                    continue  # storm connections read and discard
                update = self.message_updates.lookup(payload, payload)
                request = viewer.on_text(payload, now) if update is None \
                    else viewer.on_update(update, now)
                if viewer.outbox:
                    self._drain_outbox(conn, viewer, now)
                if request is not None:
                    self._send_close(conn, *request)
                    self._teardown(conn, now, *request)
                    return
            elif opcode == OP_PING:
                self._send(conn, masked_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code, reason = parse_close(payload)
                self._send_close(conn, code or 1000, "")
                self._teardown(conn, now, code, reason)
                return

    def _answer(self, conn: Conn, viewer: Viewer, request: tuple[int, str] | None,
                now: float) -> None:
        """Send what a viewer wants sent; close the connection if it asked to."""
        if viewer.outbox:
            self._drain_outbox(conn, viewer, now)
        if request is not None:
            self._send_close(conn, *request)
            self._teardown(conn, now, *request)

    def _drain_outbox(self, conn: Conn, viewer: Viewer, now: float) -> None:
        outbox = viewer.outbox
        viewer.outbox = []
        for text in outbox:
            self._send(conn, masked_frame(OP_TEXT, text))

    def _send(self, conn: Conn, frame: bytes) -> None:
        if conn.closing:
            return
        if conn.out:
            conn.out += frame
            return
        try:
            sent = conn.sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the read side will see the error
        if sent < len(frame):
            conn.out = frame[sent:]
            self._interest(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            conn.out = b""
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._interest(conn)

    def _interest(self, conn: Conn) -> None:
        mask = (_EPOLLIN if conn.reading else 0) | (_EPOLLOUT if conn.out else 0)
        try:
            self.ep.modify(conn.fd, mask)
        except (OSError, ValueError):
            pass

    def _send_close(self, conn: Conn, code: int, reason: str) -> None:
        if conn.state == OPEN and not conn.closing:
            self._send(conn, masked_frame(OP_CLOSE, close_payload(code, reason)))
            conn.closing = True

    def _teardown(self, conn: Conn, now: float, code: int | None, reason: str) -> None:
        """Close the socket and tell its owner; schedules the viewer's reconnect."""
        if self.conns.pop(conn.fd, None) is None:
            return
        try:
            self.ep.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()
        if conn.storm is not None:
            self._storm_closed(conn, now, reason)
            return
        viewer = conn.viewer
        assert viewer is not None
        if self.by_viewer.get(viewer.id) is conn:
            del self.by_viewer[viewer.id]
        if conn.state != OPEN:
            self.inflight -= 1
        viewer.lost(now, code, reason)
        if not viewer.finished:
            self._schedule_reconnect(viewer, now)

    # ------------------------------------------------------------------ timers
    def _sweep(self, now: float) -> None:
        """Connect deadlines, and ``tick`` for the viewers whose ``due`` has come (a viewer is
        ticked about once per silence interval, not once per sweep)."""
        for conn in list(self.conns.values()):
            if conn.state != OPEN:
                if now > conn.deadline:
                    self._teardown(conn, now, None, "TooSlowError: connect timed out")
                continue
            viewer = conn.viewer
            if viewer is None or now < viewer.due:
                continue
            stalled = viewer.stalled_until > now
            if stalled == conn.reading:
                conn.reading = not stalled
                self._interest(conn)
            request = viewer.tick(now)
            if viewer.outbox:
                self._drain_outbox(conn, viewer, now)
            if request is not None:
                self._send_close(conn, *request)
                self._teardown(conn, now, *request)

    # ------------------------------------------------------------------ control
    def stall(self, share: float, duration_s: float, seed: int) -> int:
        rng = random.Random(seed * 7919 + self.spec.worker)
        until = self.clock() + duration_s
        chosen = [v for v in self.viewers if rng.random() < share]
        for viewer in chosen:
            viewer.stall(until)
            conn = self.by_viewer.get(viewer.id)
            if conn is not None and conn.state == OPEN and conn.reading:
                conn.reading = False
                self._interest(conn)
        self.stats.stalled = len(chosen)
        return len(chosen)

    def drain(self) -> None:
        if self.draining:
            return
        now = self.clock()
        self.draining = True
        self.drain_started = now
        for viewer in self.viewers:
            if viewer.finished:
                continue
            viewer.begin_final_read(now)
            if viewer.id not in self.by_viewer:
                self._at(now, 0, viewer)  # disconnected: the final read reconnects at once

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {"type": "status", "worker": self.spec.worker, "clients": s.clients,
                "connected": s.connected, "subscribed": s.subscribed,
                "delivered": s.delivered, "reconnects": s.reconnects, "drained": s.drained,
                "stalled": s.stalled, "storm_open": self.storm_open,
                "storm_opened": self.storm_opened, "storm_failed": self.storm_failed,
                "live_duplicates": s.live_duplicates, "live_reorders": s.live_reorders,
                "storm_connect_s": self.storm_connect_s,
                "storm_errors": dict(self.storm_errors),
                "latency_ms": s.latency_snapshot(), "time": time.monotonic()}

    def _emit(self, obj: dict[str, Any]) -> None:
        line = orjson.dumps(obj) + b"\n"
        if self.control is None:
            sys.stdout.write(line.decode())
            sys.stdout.flush()
            return
        self._control_out += line
        try:
            sent = self.control.send(self._control_out)
            self._control_out = self._control_out[sent:]
        except BlockingIOError:
            pass
        except OSError:
            self._control_out = b""

    def _on_control(self) -> None:
        assert self.control is not None
        try:
            data = self.control.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.ep.unregister(self.control.fileno())
            self.control.close()
            self.control = None
            self.drain()  # the harness went away: finish up
            return
        self._control_buf += data
        while b"\n" in self._control_buf:
            line, self._control_buf = self._control_buf.split(b"\n", 1)
            if line.strip():
                self.command(json.loads(line))

    def command(self, command: dict[str, Any]) -> None:
        cmd = command.get("cmd")
        if cmd == "add_clients":
            self.add_clients([ClientSpec.from_dict(c) for c in command["clients"]], paced=False)
        elif cmd == "storm":
            self.storm(int(command["count"]), float(command["duration_s"]),
                       str(command["channel"]))
        elif cmd == "stall":
            self.stall(float(command["share"]), float(command["duration_s"]),
                       int(command.get("seed", 0)))
        elif cmd == "drain":
            self.drain()

    # ------------------------------------------------------------------ storms
    def storm(self, count: int, duration_s: float, channel: str) -> None:
        """Open ``count`` bare connections at once (each subscribes to ``channel`` and reads and
        discards). Each retries until it is in (within STORM_CONNECT_S); once every one is in
        or has given up they are all held ``duration_s`` and closed. Not measured: the storm's
        point is what it does to the measured clients."""
        now = self.clock()
        storm = _Storm(count, duration_s, channel, now)
        self.storms.append(storm)
        for index in range(count):
            self._at(now, 2, (storm, index, 0.2))
        if count == 0:
            self._storm_check(storm, now)

    def _storm_connect(self, storm: _Storm, index: int, backoff: float, now: float) -> None:
        target = self.targets[index % len(self.targets)]
        source = self.spec.source_addresses[index % len(self.spec.source_addresses)]
        try:
            sock = _open_socket(source, target)
        except OSError as exc:
            self._storm_error(storm, index, backoff, type(exc).__name__, now)
            return
        request, accept = handshake_request(target.host, target.port, target.path)
        conn = Conn(sock, None, request, accept, now + CONNECT_TIMEOUT_S)
        conn.storm = storm
        storm.conns.add(conn)
        self.storm_inflight += 1
        self.storm_meta[conn.fd] = (index, backoff)  # how to retry this one
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, _EPOLLOUT | _EPOLLIN)

    def _storm_error(self, storm: _Storm, index: int, backoff: float, reason: str,
                     now: float) -> None:
        self.storm_errors[reason] = self.storm_errors.get(reason, 0) + 1
        if now - storm.started > STORM_CONNECT_S:
            self.storm_failed += 1
            storm.pending -= 1
            self._storm_check(storm, now)
            return
        self._at(now + self.rng.uniform(0, backoff), 2, (storm, index, min(backoff * 2, 2.0)))

    def _storm_closed(self, conn: Conn, now: float, reason: str) -> None:
        storm = conn.storm
        assert storm is not None
        storm.conns.discard(conn)
        index, backoff = self.storm_meta.pop(conn.fd, (0, 0.2))
        if conn.state == OPEN:
            self.storm_open -= 1
            return
        self.storm_inflight -= 1
        if storm.release_at >= 0:
            return
        self._storm_error(storm, index, backoff, reason.split(":", 1)[0], now)

    def _storm_check(self, storm: _Storm, now: float) -> None:
        if storm.pending == 0 and storm.release_at < 0:
            self.storm_connect_s = round(now - storm.started, 2)
            storm.release_at = now + storm.duration_s
            self._at(storm.release_at, 1, storm)

    def _storm_release(self, storm: _Storm, now: float) -> None:
        for conn in list(storm.conns):
            self._teardown(conn, now, 1000, "storm over")
        self.storms.remove(storm)

    # ------------------------------------------------------------------ the loop
    def finished(self) -> bool:
        if self.stop_requested:
            return True
        if not self.draining:
            return False
        if self.clock() - self.drain_started > DRAIN_BOUND_S:
            return True
        return all(v.finished or v.id in self.gave_up for v in self.viewers)

    def run(self) -> None:
        """Until every viewer finished its final read (or the drain bound passed)."""
        if self.spec.control_path:
            self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.control.connect(self.spec.control_path)
            self.control.setblocking(False)
            self.ep.register(self.control.fileno(), _EPOLLIN)
        self.add_clients(list(self.spec.clients), paced=True)
        next_sweep = next_status = self.clock()
        poll = self.ep.poll
        conns = self.conns
        clock = self.clock
        known_frame = self.frame_updates.entries.get
        control_fd = self.control.fileno() if self.control is not None else -1
        while True:
            now = clock()
            timeout = min(next_sweep, next_status) - now
            if self.timers:
                timeout = min(timeout, self.timers[0][0] - now)
            for fd, ev in poll(max(timeout, 0.0)):
                conn = conns.get(fd)
                if conn is None:
                    if fd == control_fd:
                        self._on_control()
                        control_fd = self.control.fileno() if self.control is not None else -1
                    continue
                viewer = conn.viewer
                if ev != _EPOLLIN or conn.state != OPEN or not conn.reading or viewer is None:
                    self._on_event(conn, ev, clock())
                    continue
                # The hot path: one readable viewer socket. Most reads are exactly one whole
                # unmasked text frame, and most of those are a frame this worker has already
                # decoded for another viewer (a broadcast sends every viewer of a channel the
                # same bytes): then only this viewer's bookkeeping is left. A new whole frame
                # has its header read here and is decoded once; anything else goes through
                # the frame reader.
                try:
                    data = conn.sock.recv(RECV_BYTES)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._teardown(conn, clock(), None, f"{type(exc).__name__}: {exc}"[:200])
                    continue
                now = clock()
                update = known_frame(data)
                if update is not None and not conn.reader.buffer:
                    request = viewer.on_update(update, now)
                    if request is not None or viewer.outbox:
                        self._answer(conn, viewer, request, now)
                    continue
                if not data:
                    self._teardown(conn, now, None, "EOF")
                    continue
                size = len(data)
                if data[0] == 0x81 and not conn.reader.buffer and size > 2:
                    length = data[1]
                    head = 2
                    if length == 126 and size > 4:
                        length = (data[2] << 8) | data[3]
                        head = 4
                    if length < 126 or head == 4:
                        if head + length == size:
                            payload = data[head:]
                            update = self.frame_updates.lookup(data, payload)
                            request = viewer.on_text(payload, now) if update is None \
                                else viewer.on_update(update, now)
                            if request is not None or viewer.outbox:
                                self._answer(conn, viewer, request, now)
                            continue
                self._received(conn, data, now)
            now = clock()
            if self.timers or self.waiting:
                self._run_due(now)
            if now >= next_sweep:
                next_sweep = now + (SWEEP_DRAINING_S if self.draining else SWEEP_S)
                self._sweep(now)
                if self.finished():
                    break
            if now >= next_status:
                next_status = now + STATUS_S
                self._emit(self.status())
                self.history.flush()
        now = clock()
        for conn in list(conns.values()):
            if conn.viewer is not None and not conn.viewer.finished:
                self._teardown(conn, now, None, "worker stopped")
            else:
                self._teardown(conn, now, 1000, "worker stopped")
        self.recorder.finish(self.viewers, now)
        self._emit({**self.status(), "type": "drained"})

    def _run_due(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _due, _seq, kind, arg = heapq.heappop(timers)
            if kind == 0:
                self.waiting.append(arg)
            elif kind == 1:
                self._storm_release(arg, now)
            elif kind == 2:
                storm, index, backoff = arg
                if self.storm_inflight >= STORM_HANDSHAKES:
                    self._at(now + 0.05, 2, arg)
                else:
                    self._storm_connect(storm, index, backoff, now)
        limit = self.spec.handshake_limit
        while self.waiting and self.inflight < limit:
            viewer = self.waiting.popleft()
            if viewer.finished or viewer.id in self.by_viewer or viewer.id in self.gave_up:
                continue
            self.inflight += 1
            self._connect(viewer, now)


def _open_socket(source: str, target: _Target) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        err = sock.connect_ex((target.host, target.port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock


def run_worker(spec: FleetSpec) -> None:
    with HistoryWriter(spec.history_path, max_buffered=4000) as history:
        worker = Worker(spec, history)

        def stop(_signum: int, _frame: object) -> None:
            # Stopped by the harness (a run cut short): end at the next sweep, writing what
            # was recorded; viewers without a final read stay unfinished, never lost.
            worker.stop_requested = True

        signal.signal(signal.SIGTERM, stop)
        worker.run()


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
    run_worker(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
