"""Shared pieces of the delivery-pipeline benchmarks (``bench.hops``, ``bench.fleet_recv``).

A *source* process accepts websocket upgrades on a loopback port and, on command, writes one
prebuilt server frame (a realistic turnout channel event, ~750 bytes) to every connection with
a non-blocking ``send``. A *floor sink* process opens websocket connections to a target and
then does nothing but ``epoll`` + ``recv`` and count frames: the raw receive floor. Both are
plain ``select.epoll`` loops (no trio), controlled by JSON lines on stdin/stdout, and die with
their parent.

Child processes, their CPU time (``/proc/<pid>/task/*/schedstat``) and BenchError are
``bench.fanout``'s, re-exported here for the delivery benchmarks.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from bench.fanout import BenchError, Child, cpu_ns, free_port, upgrade_response
from harness.ws_wire import HandshakeError, handshake_request, parse_handshake_response

IP_BIND_ADDRESS_NO_PORT = 24
CHANNEL = "results-3"
EPOCH = "9f1c2a7b"
FRAME_LEN = 760  # every broadcast frame of the benchmarks is exactly this long


def server_frame(payload: bytes) -> bytes:
    from server.frames import encode_text

    return encode_text(payload)


def event_message(offset: int, seq: int | None = None, t: float | None = None) -> bytes:
    """The Pusher message a turnout node delivers for one update (with its position), padded
    so that its frame is exactly FRAME_LEN bytes whatever the offset and time."""
    import random

    from harness.publisher import election_payload
    from server import protocol

    seq = offset if seq is None else seq
    payload = election_payload(random.Random(seq), CHANNEL, f"p{seq}", seq, 200,
                               time.monotonic() if t is None else t)
    payload["note"] = ""
    base = len(server_frame(protocol.with_position(protocol.event_prefix(
        "result-update", CHANNEL, orjson.dumps(payload).decode()), offset, EPOCH)))
    payload["note"] = "x" * (FRAME_LEN - base)
    data = orjson.dumps(payload).decode()
    message = protocol.with_position(protocol.event_prefix("result-update", CHANNEL, data),
                                     offset, EPOCH)
    assert len(server_frame(message)) == FRAME_LEN, len(server_frame(message))
    return message


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _stdin_lines(buf: bytearray) -> list[dict[str, Any]]:
    chunk = os.read(0, 65536)
    if not chunk:
        raise SystemExit(0)
    buf += chunk
    out = []
    while b"\n" in buf:
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        if line.strip():
            out.append(json.loads(line))
    return out


# --------------------------------------------------------------------------- source role
def run_source() -> None:
    """Accept upgrades (any path), speak just enough Pusher for the fleet's viewers
    (connection_established, subscription_succeeded, pong) and broadcast one update frame to
    every connection on command, stamped with the monotonic time of the broadcast."""
    from server.frames import FrameParser

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listeners = [listener]
    # BENCH_UNIX_SOCKET: also accept on a Unix socket (a relay on this host reaching us
    # without the TCP stack, as the harness's HAProxy reaches turnout nodes).
    unix_path = os.environ.get("BENCH_UNIX_SOCKET", "")
    if unix_path:
        if os.path.exists(unix_path):  # the previous round's source was killed
            os.unlink(unix_path)
        unix_listener = socket.socket(socket.AF_UNIX)
        unix_listener.bind(unix_path)
        listeners.append(unix_listener)
    ep = select.epoll()
    for sock in listeners:
        sock.listen(4096)
        sock.setblocking(False)
        ep.register(sock.fileno(), select.EPOLLIN)
    by_fd = {sock.fileno(): sock for sock in listeners}
    ep.register(0, select.EPOLLIN)
    pending: dict[int, tuple[socket.socket, bytes]] = {}
    ready: dict[int, socket.socket] = {}
    parsers: dict[int, FrameParser] = {}
    stdin_buf = bytearray()
    offset = 0
    established = server_frame(orjson.dumps({
        "event": "pusher:connection_established",
        "data": orjson.dumps({"socket_id": "1.1", "activity_timeout": 3600}).decode()}))
    _emit({"port": listener.getsockname()[1]})
    while True:
        for fd, _ev in ep.poll():
            if fd in by_fd:
                for _ in range(512):
                    try:
                        sock, _addr = by_fd[fd].accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    if sock.family != socket.AF_UNIX:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    pending[sock.fileno()] = (sock, b"")
                    ep.register(sock.fileno(), select.EPOLLIN)
            elif fd == 0:
                for cmd in _stdin_lines(stdin_buf):
                    if cmd["cmd"] == "send":
                        offset += 1
                        frame = server_frame(event_message(offset))
                        sent = 0
                        for sock in ready.values():
                            try:
                                sock.send(frame)
                                sent += 1
                            except OSError:
                                pass
                        _emit({"sent": sent})
                    elif cmd["cmd"] == "count":
                        _emit({"ready": len(ready)})
                    elif cmd["cmd"] == "quit":
                        return
            elif fd in pending:
                sock, req = pending[fd]
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                if not data:
                    ep.unregister(fd)
                    sock.close()
                    del pending[fd]
                    continue
                req += data
                if b"\r\n\r\n" not in req:
                    pending[fd] = (sock, req)
                    continue
                del pending[fd]
                sock.send(upgrade_response(req) + established)
                ready[fd] = sock
                parsers[fd] = FrameParser(1 << 16)
            else:
                sock2 = ready.get(fd)
                if sock2 is None:
                    continue
                try:
                    data = sock2.recv(4096)
                except BlockingIOError:
                    continue
                if not data:
                    ep.unregister(fd)
                    sock2.close()
                    del ready[fd]
                    continue
                for _op, payload in parsers[fd].feed(data):
                    try:
                        msg = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        continue
                    if msg.get("event") == "pusher:subscribe":
                        channel = msg.get("data", {}).get("channel")
                        sock2.send(server_frame(orjson.dumps({
                            "event": "pusher_internal:subscription_succeeded",
                            "channel": channel, "data": "{}", "offset": offset,
                            "epoch": EPOCH})))
                    elif msg.get("event") == "pusher:ping":
                        sock2.send(server_frame(b'{"event":"pusher:pong","data":"{}"}'))


# --------------------------------------------------------------------------- floor sink role
def open_websockets(host: str, port: int, count: int, sources: Sequence[str],
                    path: str = "/app/key?protocol=7", inflight: int = 256,
                    timeout: float = 120.0) -> list[socket.socket]:
    """``count`` upgraded websocket connections (blocking helper for benchmark clients).

    Non-blocking connects, at most ``inflight`` handshakes at a time, each source address
    bound with IP_BIND_ADDRESS_NO_PORT. Returns the sockets, non-blocking, with the 101 read.
    """
    ep = select.epoll()
    todo = list(range(count))
    conns: dict[int, list[Any]] = {}
    done: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    request, accept = handshake_request(host, port, path)  # one key serves every connection
    attempts = 0
    while todo or conns:
        if time.monotonic() > deadline:
            raise BenchError(f"connected {len(done)} of {count} in {timeout:g}s")
        while todo and len(conns) < inflight:
            i = todo.pop()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.bind((sources[i % len(sources)], 0))
            sock.setblocking(False)
            err = sock.connect_ex((host, port))
            if err not in (0, 115):  # EINPROGRESS
                sock.close()
                todo.append(i)
                attempts += 1
                continue
            conns[sock.fileno()] = [sock, i, b"", False]
            ep.register(sock.fileno(), select.EPOLLOUT | select.EPOLLIN)
        for fd, _ev in ep.poll(1.0):
            entry = conns[fd]
            sock = entry[0]
            try:
                if not entry[3]:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise OSError("connect failed")
                    sock.send(request)
                    entry[3] = True
                    ep.modify(fd, select.EPOLLIN)
                    continue
                data = sock.recv(4096)
                if not data:
                    raise OSError("closed during handshake")
                entry[2] += data
                try:
                    used = parse_handshake_response(entry[2], accept)
                except HandshakeError as exc:
                    raise OSError(str(exc)) from exc
                if used:
                    ep.unregister(fd)
                    del conns[fd]
                    done.append(sock)
            except OSError:
                ep.unregister(fd)
                del conns[fd]
                sock.close()
                attempts += 1
                if attempts > count:
                    raise
                todo.append(entry[1])
    ep.close()
    return done


def run_floor_sink() -> None:
    """Connect, then count frames with nothing but epoll + recv (the raw receive floor).

    Every broadcast frame is FRAME_LEN bytes, so frames are counted from the byte count since
    the last ``expect``: the per-delivery work is one epoll event and one ``recv``, into the
    same buffer size the fleet uses.
    """
    from harness.fleet import RECV_BYTES

    stdin_buf = bytearray()
    cmd = _stdin_lines(stdin_buf)[0]
    socks = open_websockets(cmd["host"], cmd["port"], cmd["count"], cmd["sources"],
                            cmd.get("path", "/app/key?protocol=7"))
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    ep.register(0, select.EPOLLIN)
    time.sleep(0.5)
    for s in socks:  # whatever the server said after the upgrade is not part of the count
        try:
            while s.recv(RECV_BYTES):
                pass
        except BlockingIOError:
            pass
    _emit({"connected": len(socks)})
    target = 0
    received = 0
    recv_size = RECV_BYTES
    while True:
        for fd, _ev in ep.poll():
            if fd == 0:
                for c in _stdin_lines(stdin_buf):
                    if c["cmd"] == "expect":
                        target = int(c["frames"]) * FRAME_LEN
                        received = 0
                    elif c["cmd"] == "quit":
                        return
                continue
            received += len(by_fd[fd].recv(recv_size))
        if target and received >= target:
            _emit({"got": received // FRAME_LEN})
            target = 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    role = args[0] if args else ""
    if role == "source":
        run_source()
    elif role == "floor-sink":
        run_floor_sink()
    else:
        print("usage: python -m bench.wire source|floor-sink (internal roles)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["FRAME_LEN", "BenchError", "Child", "cpu_ns", "event_message", "free_port",
           "open_websockets", "server_frame"]
