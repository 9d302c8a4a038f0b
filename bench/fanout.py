"""Fan-out benchmark: server CPU per delivered message and RSS per idle connection.

Up to five servers are measured one at a time, each alone in its own process, against the same
fleet of raw-socket websocket clients running in separate processes:

``floor``
    A minimal trio server: hand-rolled handshake (server.frames.accept_key), and on a trigger
    one prebuilt ~180-byte text frame written with a non-blocking ``socket.send`` to every
    socket. One syscall per connection: the floor.
``naive``
    trio-websocket ``serve_websocket``; on a trigger ``await ws.send_message(text)`` for each
    connection in a loop.
``asyncio``
    What a Python developer would pick: the ``websockets`` library's asyncio server and its
    ``broadcast(connections, text)`` (no per-connection await; it writes to each transport).
``turnout``
    The real node (``python -m server``) with a real redis-server; clients connect to
    ``/app/turnout-key?protocol=7`` and subscribe to one channel. The trigger runs the node's
    own publish Lua script (server.broker.PUBLISH_LUA) directly on Redis, so the node's CPU
    covers exactly a delivery: reading the pub/sub message, sequencing, framing, the sends.
``sockudo``
    Sockudo (Rust), configured as the harness runs it (harness.servers.SockudoServer: Redis
    adapter and cache on the same redis-server); the same Pusher clients. The trigger is one
    signed ``POST /apps/1/events`` to Sockudo itself (its only way in), so its CPU also covers
    one HTTP request per broadcast: ~0.1 % of a 10,000-connection fan-out. Measured only when
    the binary is installed (scripts/setup-peers.sh); its frames carry no offset/epoch, ~30 B
    shorter than turnout's.

Per server and round: RSS before the clients connect and once they are all connected (and
subscribed) and idle gives RSS per idle connection; then for each of M messages the server's
CPU time is read before the trigger and after every client process reports that all its
connections received the message: CPU per delivery = ΔCPU / connections. CPU time is the sum
of ``/proc/<pid>/task/*/schedstat`` run time (nanoseconds; psutil's user+system ticks are
only 10 ms, recorded too as a cross-check). Ratios to the floor are computed within the run.

Run ``.venv/bin/python -m bench.fanout --help``; results and method are in docs/benchmarks.md.
Internal roles (``--role floor|naive|client``) are the child processes this module spawns.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import json
import os
import platform
import secrets
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from harness.ports import allocate_port as free_port
from harness.spawn import spawn
from harness.ws_wire import (
    OP_TEXT,
    FrameReader,
    HandshakeError,
    WireError,
    handshake_request,
    masked_frame,
    parse_handshake_response,
)

REPO = Path(__file__).resolve().parents[1]
SERVERS = ("floor", "naive", "asyncio", "turnout", "sockudo")
PUSHER_SERVERS = ("turnout", "sockudo")  # clients subscribe; they need redis-server
APP_ID, APP_KEY, APP_SECRET = "1", "turnout-key", "turnout-secret"
CHANNEL = "bench"
EVENT = "bench-evt"
MARKER = EVENT.encode()
FRAME_BYTES = 180
PER_CLIENT_DEFAULT = 5000
PER_CLIENT_MAX = 9000
TARGET_CPU_RATIO = 1.5
TARGET_RSS_KIB = 10.0
CONNECT_INFLIGHT = 256
HANDSHAKE_TIMEOUT = 10.0
CONNECT_ATTEMPTS = 5
IP_BIND_ADDRESS_NO_PORT = 24


class BenchError(Exception):
    """The benchmark could not measure (a process died, clients could not connect, ...)."""


# --------------------------------------------------------------------------- the message
def message_payload(offset: int = 1, epoch: str = "0123abcd") -> bytes:
    """The text every server sends: the shape turnout delivers, padded to a FRAME_BYTES frame."""
    from server import protocol

    base = protocol.with_position(protocol.event_prefix(EVENT, CHANNEL, ""), offset, epoch)
    data = "x" * (FRAME_BYTES - 2 - len(base))
    return protocol.with_position(protocol.event_prefix(EVENT, CHANNEL, data), offset, epoch)


def event_data() -> str:
    """The event ``data`` turnout is published with, so its frames are FRAME_BYTES long too."""
    return str(json.loads(message_payload())["data"])


# --------------------------------------------------------------------------- child processes
class Child:
    """A child process (killed with us) speaking JSON lines / text lines on stdin and stdout."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 pipes: bool = True) -> None:
        self.log_path = log_path
        self.proc = spawn(argv, log_path, pipes=pipes, env=env, cwd=REPO)
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str | dict[str, Any]) -> None:
        text = line if isinstance(line, str) else json.dumps(line)
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def read_line(self, deadline: float) -> str:
        """The next stdout line; BenchError if the child dies or the deadline passes."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out waiting for {self.describe()}")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(f"{self.describe()} exited ({self.proc.wait(5)}): "
                                     f"{self.log_tail()}")
                self._buf += chunk
            elif self.proc.poll() is not None:
                raise BenchError(f"{self.describe()} exited ({self.proc.returncode}): "
                                 f"{self.log_tail()}")
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def read_json(self, deadline: float) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.read_line(deadline)))

    def describe(self) -> str:
        return f"pid {self.pid} ({self.log_path.name})"

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


def upgrade_response(request: bytes) -> bytes:
    """The 101 a benchmark's stand-in server answers a websocket upgrade request with."""
    from server.frames import accept_key

    key = ""
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip().decode("ascii")
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(key).encode()
            + b"\r\n\r\n")


def _role_argv(role: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.fanout", "--role", role, *extra]


# --------------------------------------------------------------------------- measurements
def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in nanoseconds (scheduler run time)."""
    total = 0
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def cpu_ticks_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def rss_bytes(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


# --------------------------------------------------------------------------- servers (children)
async def _control_loop(on_send: Callable[[], Any]) -> None:
    """Read ``send``/``quit`` lines from stdin; ``on_send`` may be sync or async."""
    import trio

    stdin = trio.lowlevel.FdStream(os.dup(0))
    buf = b""
    while True:
        chunk = await stdin.receive_some(4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line == b"quit":
                return
            if line == b"send":
                result = on_send()
                if result is not None:
                    await result


def _announce(port: int) -> None:
    sys.stdout.write(f"port {port}\n")
    sys.stdout.flush()


async def _floor_server() -> None:
    """Hand-rolled handshake; broadcast = one non-blocking send of one prebuilt frame each."""
    import trio

    from server.frames import encode_text

    frame = encode_text(message_payload())
    conns: set[socket.socket] = set()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.setblocking(False)

    async def serve(sock: socket.socket) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                if not data or len(request) > 16384:
                    return
                request += data
            sock.send(upgrade_response(request))
            conns.add(sock)
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    if not sock.recv(4096):
                        return
                except BlockingIOError:
                    continue
        except OSError:
            return
        finally:
            conns.discard(sock)
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def broadcast() -> None:
        for sock in conns:
            try:
                sock.send(frame)
            except OSError:
                pass  # EAGAIN cannot happen for 180 bytes into an idle socket; a gone peer can

    async def accept_loop(nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            for _ in range(256):
                try:
                    sock, _addr = listener.accept()
                except BlockingIOError:
                    break
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(serve, sock)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, nursery)
        _announce(listener.getsockname()[1])
        await _control_loop(broadcast)
        nursery.cancel_scope.cancel()


async def _naive_server() -> None:
    """trio-websocket, and a broadcast that awaits ``send_message`` once per connection."""
    import trio
    from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
    from trio_websocket import serve_websocket as serve_ws

    text = message_payload().decode()
    conns: set[WebSocketConnection] = set()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        conns.add(ws)
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass
        finally:
            conns.discard(ws)

    async def broadcast() -> None:
        for ws in list(conns):
            try:
                await ws.send_message(text)
            except ConnectionClosed:
                pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_ws, handler, "127.0.0.1", 0, None)
        _announce(server.port)
        await _control_loop(broadcast)
        nursery.cancel_scope.cancel()


def _asyncio_server() -> None:
    """websockets' asyncio server; a broadcast is ``websockets.broadcast(conns, text)``."""
    import asyncio

    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    text = message_payload().decode()

    async def main() -> None:
        conns: set[ServerConnection] = set()

        async def handler(ws: ServerConnection) -> None:
            conns.add(ws)
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass
            finally:
                conns.discard(ws)

        # No keepalive pings and no compression: like the other servers, nothing but the
        # broadcast is on the wire while measuring.
        async with serve(handler, "127.0.0.1", 0, ping_interval=None, compression=None,
                         backlog=4096) as server:
            _announce(next(iter(server.sockets)).getsockname()[1])
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                         sys.stdin)
            while line := await reader.readline():
                if line.strip() == b"quit":
                    return
                if line.strip() == b"send":
                    broadcast(conns, text)

    asyncio.run(main())


# --------------------------------------------------------------------------- clients (children)
CONNECTING, HANDSHAKE, WAIT_ESTABLISHED, WAIT_SUBSCRIBED, READY = range(5)


class _Conn:
    __slots__ = ("accept", "attempts", "buf", "count", "reader", "since", "sock", "state")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.buf = b""  # the handshake response, until it is whole
        self.accept = b""
        self.reader = FrameReader()
        self.count = 0
        self.attempts = 0
        self.since = 0.0


class _Fleet:
    """One client process: ``count`` websocket connections from one source address."""

    def __init__(self, cmd: dict[str, Any], ep: select.epoll) -> None:
        self.host: str = cmd["host"]
        self.port: int = cmd["port"]
        self.source: str = cmd["source"]
        self.subscribe: str | None = cmd.get("subscribe")
        self.count: int = cmd["count"]
        self.path: str = cmd["path"]
        sub = json.dumps({"event": "pusher:subscribe", "data": {"channel": self.subscribe}})
        self.subscribe_frame = masked_frame(OP_TEXT, sub.encode()) if self.subscribe else b""
        self.ep = ep
        self.by_fd: dict[int, _Conn] = {}
        self.todo: list[_Conn] = [_Conn() for _ in range(self.count)]
        self.inflight = 0
        self.ready = 0
        self.failed = 0
        self.lost = 0
        self.errors: dict[str, int] = {}
        self.target = 0
        self.reached = 0
        self.reported_ready = False
        self.reported_target = 0

    # -- connecting
    def start_more(self) -> None:
        while self.todo and self.inflight < CONNECT_INFLIGHT:
            conn = self.todo.pop()
            conn.attempts += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.source, 0))
            sock.setblocking(False)
            err = sock.connect_ex((self.host, self.port))
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                self.retry(conn, None, errno.errorcode.get(err, str(err)))
                continue
            conn.sock, conn.state, conn.buf, conn.since = sock, CONNECTING, b"", time.monotonic()
            conn.reader = FrameReader()
            self.by_fd[sock.fileno()] = conn
            self.ep.register(sock.fileno(), select.EPOLLOUT)
            self.inflight += 1

    def retry(self, conn: _Conn, sock: socket.socket | None, why: str) -> None:
        self.errors[why] = self.errors.get(why, 0) + 1
        if sock is not None:
            self.drop(conn)
            self.inflight -= 1
        if conn.attempts < CONNECT_ATTEMPTS:
            self.todo.append(conn)
        else:
            self.failed += 1

    def drop(self, conn: _Conn) -> None:
        sock = conn.sock
        if sock is None:
            return
        fd = sock.fileno()
        self.by_fd.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        conn.sock = None

    def became_ready(self, conn: _Conn) -> None:
        conn.state = READY
        self.inflight -= 1
        self.ready += 1

    def on_event(self, conn: _Conn, events: int) -> None:
        sock = conn.sock
        assert sock is not None
        if conn.state == CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.retry(conn, sock, errno.errorcode.get(err, str(err)))
                return
            request, conn.accept = handshake_request(self.host, self.port, self.path)
            try:
                sock.send(request)
            except OSError as exc:
                self.retry(conn, sock, type(exc).__name__)
                return
            conn.state = HANDSHAKE
            self.ep.modify(sock.fileno(), select.EPOLLIN)
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b""
            why = type(exc).__name__
        else:
            why = "eof"
        if not data:
            self.fail(conn, sock, why)
            return
        if conn.state == HANDSHAKE:
            conn.buf += data
            try:
                used = parse_handshake_response(conn.buf, conn.accept)
            except HandshakeError as exc:
                self.retry(conn, sock, "handshake:" + str(exc)[:40])
                return
            if not used:
                return
            data, conn.buf = conn.buf[used:], b""
            if self.subscribe:
                conn.state = WAIT_ESTABLISHED
            else:
                self.became_ready(conn)
            if not data:
                return
        try:
            frames = conn.reader.feed(data)
        except WireError as exc:
            self.fail(conn, sock, "wire:" + exc.reason[:40])
            return
        for opcode, payload in frames:
            if conn.state == READY:
                if opcode == 0x1 and MARKER in payload:
                    conn.count += 1
                    if conn.count == self.target:
                        self.reached += 1
            elif conn.state == WAIT_ESTABLISHED and b"connection_established" in payload:
                sock.send(self.subscribe_frame)
                conn.state = WAIT_SUBSCRIBED
            elif conn.state == WAIT_SUBSCRIBED and b"subscription_succeeded" in payload:
                self.became_ready(conn)
            elif b"pusher:error" in payload or opcode == 0x8:
                self.retry(conn, sock, "refused:" + payload[:60].decode(errors="replace"))
                return

    def fail(self, conn: _Conn, sock: socket.socket, why: str) -> None:
        """The connection ended (or broke the protocol): lost once ready, else retried."""
        if conn.state == READY:
            self.lost += 1
            self.ready -= 1
            self.errors["lost:" + why] = self.errors.get("lost:" + why, 0) + 1
            if conn.count >= self.target > 0:
                self.reached -= 1
            self.drop(conn)
        else:
            self.retry(conn, sock, "handshake:" + why)

    def check_stuck(self) -> None:
        now = time.monotonic()
        for conn in list(self.by_fd.values()):
            if conn.state != READY and now - conn.since > HANDSHAKE_TIMEOUT:
                self.retry(conn, conn.sock, "timeout")

    # -- reporting
    def maybe_report(self) -> None:
        if not self.reported_ready and not self.todo and self.inflight == 0:
            self.reported_ready = True
            _emit({"ready": self.ready, "failed": self.failed, "errors": self.errors})
        if self.target > self.reported_target and self.reached >= self.ready:
            self.reported_target = self.target
            _emit({"got": self.target, "live": self.ready, "lost": self.lost})

    def expect(self, target: int) -> None:
        self.target = target
        self.reached = sum(1 for c in self.by_fd.values()
                           if c.state == READY and c.count >= target)

    def close_all(self) -> None:
        for conn in list(self.by_fd.values()):
            self.drop(conn)


def _emit(obj: dict[str, Any]) -> None:
    os.write(1, json.dumps(obj).encode() + b"\n")


def _client_main() -> int:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fleet: _Fleet | None = None
    ep = select.epoll()
    ep.register(0, select.EPOLLIN)
    buf = b""
    last_check = time.monotonic()
    while True:
        if fleet is not None:
            fleet.start_more()
            fleet.maybe_report()
        for fd, events in ep.poll(0.5):
            if fd != 0:
                conn = fleet.by_fd.get(fd) if fleet is not None else None
                if conn is not None and fleet is not None:
                    fleet.on_event(conn, events)
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                if fleet is not None:
                    fleet.close_all()
                return 0
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                if cmd["cmd"] == "connect":
                    fleet = _Fleet(cmd, ep)
                elif cmd["cmd"] == "expect" and fleet is not None:
                    fleet.expect(cmd["total"])
                elif cmd["cmd"] == "close":
                    if fleet is not None:
                        fleet.close_all()
                    return 0
        now = time.monotonic()
        if fleet is not None and now - last_check > 1.0:
            last_check = now
            fleet.check_stuck()


# --------------------------------------------------------------------------- redis + turnout
class _Resp:
    """A minimal synchronous Redis client (RESP2) for the trigger; no extra dependency."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def call(self, *args: str | bytes | int) -> Any:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts)
                          + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return self._reply()

    def _reply(self) -> Any:
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise BenchError(f"redis: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise BenchError(f"redis: unexpected reply {line!r}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class _TurnoutPublisher:
    """Publishes exactly as the node's HTTP API would, minus the HTTP: the node's Lua script."""

    def __init__(self, redis_port: int, key_prefix: str) -> None:
        from server import protocol
        from server.broker import PUBLISH_LUA, Broker

        keys = cast(Broker, SimpleNamespace(key_prefix=key_prefix))
        self.keys = (Broker._meta(keys, APP_ID, CHANNEL), Broker._stream(keys, APP_ID, CHANNEL),
                     Broker.channel_key(keys, APP_ID, CHANNEL))
        self.prefix = protocol.event_prefix(EVENT, CHANNEL, event_data())
        self.redis = _Resp(redis_port)
        self.sha = self.redis.call("SCRIPT", "LOAD", PUBLISH_LUA)

    def __call__(self) -> None:
        # Same arguments as Broker.publish_many with the node's default history (1000, 300 s).
        self.redis.call("EVALSHA", self.sha, 3, *self.keys, secrets.token_hex(4), 1000, 300,
                        "", self.prefix)


class _SockudoPublisher:
    """One signed Pusher HTTP API publish to the Sockudo node (its only way in)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.body = json.dumps({"name": EVENT, "channels": [CHANNEL],
                                "data": event_data()}).encode()

    def __call__(self) -> None:
        from urllib.parse import urlencode

        from server.auth import sign_request

        path = f"/apps/{APP_ID}/events"
        query = urlencode(sign_request(APP_KEY, APP_SECRET, "POST", path, self.body))
        request = urllib.request.Request(f"{self.url}{path}?{query}", data=self.body,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise BenchError(f"sockudo refused the publish: {response.status}")


def _wait_http_ok(url: str, proc: Child, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise BenchError(f"node exited: {proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"node not healthy after {timeout} s: {proc.log_tail()}")


# --------------------------------------------------------------------------- one server run
@dataclass
class Run:
    server: str
    round: int
    connections: int
    connect_s: float
    rss_before: int
    rss_after: int
    idle_cpu_pct: float
    cpu_us: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    ticks_us: float = 0.0

    @property
    def rss_kib_per_conn(self) -> float:
        return (self.rss_after - self.rss_before) / 1024 / max(1, self.connections)


@dataclass
class Options:
    connections: int
    rounds: int
    messages: int
    clients: int
    servers: list[str]
    pause: float
    settle: float
    tmp: Path
    log: Callable[[str], None]


def _start_server(kind: str, opts: Options, run_id: str, redis_port: int | None
                  ) -> tuple[Child, int, Callable[[], None], Callable[[], None]]:
    """The server process, its port, its trigger and the trigger's cleanup."""
    log_path = opts.tmp / f"{run_id}.log"
    if kind in ("floor", "naive", "asyncio"):
        server = Child(_role_argv(kind), log_path)
        line = server.read_line(time.monotonic() + 20)
        if not line.startswith("port "):
            raise BenchError(f"{kind} server said {line!r}")
        return server, int(line.split()[1]), lambda: server.send("send"), lambda: None
    assert redis_port is not None
    port = free_port()
    if kind == "sockudo":
        from harness.servers import NodeLaunch, SockudoServer
        from harness.topology import TopologySpec

        adapter = SockudoServer()
        spec = TopologySpec(server="sockudo", app_id=APP_ID, app_key=APP_KEY,
                            app_secret=APP_SECRET, activity_timeout_s=3600)
        launch = NodeLaunch(name="bench", port=port, cwd=opts.tmp, chaos_token="",
                            redis_url=f"redis://127.0.0.1:{redis_port}/0")
        process = adapter.process_spec(spec, launch)
        env = dict(os.environ)
        for key, value in {**process.env, "RUST_LOG": "warn"}.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        server = Child(list(process.argv), log_path, env=env, pipes=False)
        _wait_http_ok(adapter.health_url(port), server)
        return server, port, _SockudoPublisher(port), lambda: None
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    prefix = f"bench-{run_id}"
    server = Child([sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                    "--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--node-id", "bench",
                    "--app-id", APP_ID, "--app-key", APP_KEY, "--app-secret", APP_SECRET,
                    "--key-prefix", prefix, "--activity-timeout", "3600",
                    "--log-level", "warning"], log_path, env=env, pipes=False)
    _wait_http_ok(f"http://127.0.0.1:{port}/health", server)
    publisher = _TurnoutPublisher(redis_port, prefix)
    return server, port, publisher, publisher.redis.close


def _wait_all(clients: Sequence[Child], key: str, deadline: float) -> list[dict[str, Any]]:
    replies = []
    for client in clients:
        while True:
            reply = client.read_json(deadline)
            if key in reply:
                replies.append(reply)
                break
    return replies


def measure(kind: str, rnd: int, opts: Options, redis_port: int | None) -> Run:
    run_id = f"{kind}-r{rnd}"
    server, port, trigger, cleanup = _start_server(kind, opts, run_id, redis_port)
    clients: list[Child] = []
    try:
        time.sleep(opts.settle / 2)
        rss_before = rss_bytes(server.pid)
        pusher = kind in PUSHER_SERVERS
        path = f"/app/{APP_KEY}?protocol=7" if pusher else "/"
        base, extra = divmod(opts.connections, opts.clients)
        started = time.monotonic()
        for i in range(opts.clients):
            count = base + (1 if i < extra else 0)
            client = Child(_role_argv("client"), opts.tmp / f"{run_id}-client{i}.log")
            clients.append(client)
            client.send({"cmd": "connect", "host": "127.0.0.1", "port": port, "path": path,
                         "source": f"127.0.0.{2 + i}", "count": count,
                         "subscribe": CHANNEL if pusher else None})
        replies = _wait_all(clients, "ready", time.monotonic() + 120 + opts.connections / 200)
        connect_s = time.monotonic() - started
        connected = sum(r["ready"] for r in replies)
        if connected != opts.connections:
            errors = [r["errors"] for r in replies]
            raise BenchError(f"{kind}: only {connected}/{opts.connections} connected: {errors}")
        time.sleep(opts.settle)
        rss_after = rss_bytes(server.pid)
        c0, t0 = cpu_ns(server.pid), time.perf_counter()
        time.sleep(1.0)
        idle = (cpu_ns(server.pid) - c0) / 1e9 / (time.perf_counter() - t0) * 100
        run = Run(kind, rnd, connected, connect_s, rss_before, rss_after, idle)
        ticks = 0.0
        deliveries = 0
        for m in range(1, opts.messages + 1):
            for client in clients:
                client.send({"cmd": "expect", "total": m})
            k0, c0, t0 = cpu_ticks_s(server.pid), cpu_ns(server.pid), time.perf_counter()
            trigger()
            got = _wait_all(clients, "got", time.monotonic() + 60)
            wall = time.perf_counter() - t0
            c1, k1 = cpu_ns(server.pid), cpu_ticks_s(server.pid)
            live = sum(r["live"] for r in got)
            if live != connected:
                raise BenchError(f"{kind}: {connected - live} connections lost during fan-out")
            run.cpu_us.append((c1 - c0) / 1e3 / live)
            run.wall_ms.append(wall * 1e3)
            ticks += k1 - k0
            deliveries += live
            time.sleep(opts.pause)
        run.ticks_us = ticks * 1e6 / max(1, deliveries)
        opts.log(f"  {kind:8} round {rnd}: {statistics.median(run.cpu_us):6.2f} µs/delivery "
                 f"(psutil {run.ticks_us:5.1f}), {run.rss_kib_per_conn:5.2f} KiB/conn, "
                 f"fan-out {statistics.median(run.wall_ms):6.1f} ms, connect {connect_s:4.1f} s")
        return run
    finally:
        cleanup()
        server.kill()
        for client in clients:
            if client.proc.poll() is None:
                try:
                    client.send({"cmd": "close"})
                except OSError:
                    pass
        for client in clients:
            try:
                client.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            client.kill()


# --------------------------------------------------------------------------- the whole run
def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(runs: list[Run], opts: Options, started: dt.datetime, load: Sequence[float]
              ) -> dict[str, Any]:
    servers: dict[str, Any] = {}
    for kind in opts.servers:
        mine = [r for r in runs if r.server == kind]
        cpu = [x for r in mine for x in r.cpu_us]
        servers[kind] = {
            "cpu_us_per_delivery": {**_stats(cpu), "samples": [round(x, 3) for x in cpu]},
            "cpu_us_per_delivery_round_medians": [statistics.median(r.cpu_us) for r in mine],
            "cpu_us_per_delivery_psutil_ticks": [round(r.ticks_us, 2) for r in mine],
            "rss_kib_per_conn": {**_stats([r.rss_kib_per_conn for r in mine]),
                                 "samples": [round(r.rss_kib_per_conn, 3) for r in mine]},
            "rss_mib_before": [round(r.rss_before / 2**20, 1) for r in mine],
            "rss_mib_after": [round(r.rss_after / 2**20, 1) for r in mine],
            "fanout_wall_ms": _stats([x for r in mine for x in r.wall_ms]),
            "connect_s": [round(r.connect_s, 2) for r in mine],
            "idle_cpu_pct": [round(r.idle_cpu_pct, 2) for r in mine],
        }
    ratios: dict[str, Any] = {}
    if "floor" in servers:
        floor = servers["floor"]
        for kind in opts.servers:
            if kind == "floor":
                continue
            other = servers[kind]
            per_round = [a / b for a, b in zip(other["cpu_us_per_delivery_round_medians"],
                                               floor["cpu_us_per_delivery_round_medians"],
                                               strict=True)]
            ratios[f"{kind}/floor"] = {
                "median": other["cpu_us_per_delivery"]["median"]
                / floor["cpu_us_per_delivery"]["median"],
                "per_round": [round(x, 3) for x in per_round],
            }
    targets: dict[str, Any] = {"cpu_ratio_max": TARGET_CPU_RATIO, "rss_kib_max": TARGET_RSS_KIB}
    if "turnout/floor" in ratios:
        targets["cpu_met"] = ratios["turnout/floor"]["median"] <= TARGET_CPU_RATIO
    if "turnout" in servers:
        targets["rss_met"] = servers["turnout"]["rss_kib_per_conn"]["median"] <= TARGET_RSS_KIB
    return {
        "benchmark": "fanout",
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "kernel": platform.release(), "load_avg_at_start": [round(x, 2) for x in load]},
        "config": {"connections": opts.connections, "rounds": opts.rounds,
                   "messages": opts.messages, "client_processes": opts.clients,
                   "frame_bytes": FRAME_BYTES, "servers": opts.servers},
        "servers": servers,
        "ratios": ratios,
        "targets": targets,
    }


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg = result["config"]
    table = Table(title=f"fan-out, {cfg['connections']:,} idle connections, {cfg['rounds']} "
                        f"rounds x {cfg['messages']} messages of {cfg['frame_bytes']} B "
                        f"({result['date']})")
    table.add_column("server")
    table.add_column("CPU µs/delivery\nmin / median / max", justify="right")
    table.add_column("x floor\n(median)", justify="right")
    table.add_column("RSS KiB/idle conn\nmin / median / max", justify="right")
    table.add_column("fan-out wall ms\n(median)", justify="right")
    table.add_column("idle CPU %\n(median)", justify="right")
    for kind, s in result["servers"].items():
        c, r = s["cpu_us_per_delivery"], s["rss_kib_per_conn"]
        ratio = result["ratios"].get(f"{kind}/floor")
        table.add_row(
            kind,
            f"{c['min']:.2f} / {c['median']:.2f} / {c['max']:.2f}",
            "1.00" if kind == "floor" else (f"{ratio['median']:.2f}" if ratio else "-"),
            f"{r['min']:.2f} / {r['median']:.2f} / {r['max']:.2f}",
            f"{s['fanout_wall_ms']['median']:.1f}",
            f"{statistics.median(s['idle_cpu_pct']):.2f}",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=132)
    console.print(table)
    for name, ratio in result["ratios"].items():
        console.print(f"{name}: median {ratio['median']:.2f}, per round {ratio['per_round']}")
    t = result["targets"]
    if "cpu_met" in t:
        console.print(f"target CPU ≤ {t['cpu_ratio_max']}x floor: "
                      f"{'met' if t['cpu_met'] else 'MISSED'}")
    if "rss_met" in t:
        console.print(f"target RSS ≤ {t['rss_kib_max']} KiB/conn: "
                      f"{'met' if t['rss_met'] else 'MISSED'}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description="Server CPU per delivered message and RSS per idle connection: the raw "
                    "non-blocking send floor, a naive trio-websocket loop and turnout, measured "
                    "in one run against the same client fleet.")
    parser.add_argument("--connections", type=int, default=10_000,
                        help="idle connections per server (default 10000)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="times each server is started, filled and measured (default 4)")
    parser.add_argument("--messages", type=int, default=10,
                        help="broadcasts measured per server per round (default 10)")
    parser.add_argument("--clients", type=int, default=0,
                        help="client processes (default: max(2, connections / 5000))")
    parser.add_argument("--servers", default=None,
                        help="comma-separated subset of floor,naive,asyncio,turnout,sockudo "
                        "(default: all; sockudo only when installed, see scripts/setup-peers.sh)")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds between broadcasts (default 0.1)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to let a server settle before reading RSS (default 1)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--timeout", type=float, default=900,
                        help="abort the whole run after this many seconds (default 900)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the child process logs (their directory is printed)")
    parser.add_argument("--role", choices=("floor", "naive", "asyncio", "client"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def default_servers() -> list[str]:
    """Every server, Sockudo only when its binary is installed (it is optional)."""
    from harness.procs import HarnessSetupError
    from harness.servers import find_sockudo

    try:
        find_sockudo()
    except HarnessSetupError as exc:
        print(f"fan-out: sockudo left out: {exc}", file=sys.stderr)
        return [s for s in SERVERS if s != "sockudo"]
    return list(SERVERS)


def _alarm(signum: int, frame: Any) -> None:
    raise BenchError("benchmark exceeded --timeout")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.role == "client":
        return _client_main()
    if args.role == "asyncio":
        _asyncio_server()
        return 0
    if args.role in ("floor", "naive"):
        import trio

        trio.run(_floor_server if args.role == "floor" else _naive_server)
        return 0
    servers = [s for s in (args.servers or ",".join(default_servers())).split(",") if s]
    if not servers or any(s not in SERVERS for s in servers):
        print(f"--servers must name some of {','.join(SERVERS)}", file=sys.stderr)
        return 2
    clients = args.clients or max(2, -(-args.connections // PER_CLIENT_DEFAULT))
    if args.connections < 1 or args.rounds < 1 or args.messages < 1:
        print("--connections, --rounds and --messages must be >= 1", file=sys.stderr)
        return 2
    if -(-args.connections // clients) > PER_CLIENT_MAX:
        print(f"more than {PER_CLIENT_MAX} connections per client process; raise --clients",
              file=sys.stderr)
        return 2
    if clients > 250:
        print("at most 250 client processes (source addresses 127.0.0.2-251)", file=sys.stderr)
        return 2

    from rich.console import Console

    from harness.procs import HarnessSetupError
    from harness.redis_server import RedisServer, start_redis

    console = Console(stderr=True)
    tmp = Path(tempfile.mkdtemp(prefix="turnout-bench-"))
    opts = Options(args.connections, args.rounds, args.messages, clients, servers, args.pause,
                   args.settle, tmp, lambda line: console.print(line, highlight=False))
    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()
    redis: RedisServer | None = None
    runs: list[Run] = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    ok = False
    try:
        redis_port = None
        if any(s in PUSHER_SERVERS for s in servers):
            try:
                redis = start_redis(tmp)
            except HarnessSetupError as exc:
                raise BenchError(str(exc)) from None
            redis_port = redis.port
        opts.log(f"fan-out benchmark: {args.connections} connections over {clients} client "
                 f"processes, {args.rounds} rounds x {args.messages} messages; logs in {tmp}")
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(servers)
            for kind in servers[shift:] + servers[:shift]:
                runs.append(measure(kind, rnd, opts, redis_port))
        ok = True
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}", highlight=False)
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if redis is not None:
            redis.stop()
        if ok and not args.keep_logs:
            for path in tmp.iterdir():
                path.unlink()
            tmp.rmdir()
    result = summarize(runs, opts, started, load)
    render(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
