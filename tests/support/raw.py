"""Raw websocket and HTTP clients for tests that must send or withhold what no library would:
a subscriber that never reads, hand-built masked frames, byte-exact HTTP exchanges."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from typing import Any

from .procs import APP_KEY

__all__ = [
    "client_frame",
    "drain_raw",
    "http_exchange",
    "raw_subscriber",
    "read_frame",
    "upgrade_request",
]


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
                 length: int | None = None, rsv: int = 0) -> bytes:
    """One client frame, masked unless told otherwise; ``length`` may lie about the payload."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    if not payload:
        return head + key
    stream = (key * (len(payload) // 4 + 1))[:len(payload)]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        len(payload), "little")
    return head + key + masked


def upgrade_request(port: int, target: str | None = None, *, key: str | None = None,
                    version: str = "13", extra: str = "") -> bytes:
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {target or f'/app/{APP_KEY}?protocol=7'} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: {version}\r\n{extra}\r\n"
    ).encode("latin-1")


def http_exchange(port: int, request: bytes, *, timeout: float = 10.0,
                  host: str = "127.0.0.1") -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or the timeout).

    A reset after some bytes were read still returns them; a reset before any raises.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                if answer:
                    break
                raise
            except TimeoutError:
                break
            if not data:
                break
            answer += data
        return answer


def read_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Pop one unmasked server frame off ``buf``; None if it is not complete yet."""
    if len(buf) < 2:
        return None
    opcode = buf[0] & 0x0F
    length = buf[1] & 0x7F
    offset = 2
    if length == 126:
        if len(buf) < 4:
            return None
        length = struct.unpack("!H", buf[2:4])[0]
        offset = 4
    elif length == 127:
        if len(buf) < 10:
            return None
        length = struct.unpack("!Q", buf[2:10])[0]
        offset = 10
    assert not buf[1] & 0x80, "server frames must not be masked"
    if len(buf) < offset + length:
        return None
    payload = bytes(buf[offset:offset + length])
    del buf[:offset + length]
    return opcode, payload


def _next_message(sock: socket.socket, buf: bytearray) -> dict[str, Any]:
    while True:
        frame = read_frame(buf)
        if frame is not None:
            opcode, payload = frame
            assert opcode == 0x1, (opcode, payload)
            message: dict[str, Any] = json.loads(payload)
            return message
        data = sock.recv(65536)
        assert data, "server closed the raw websocket during setup"
        buf += data


def raw_subscriber(port: int, channel: str, rcvbuf: int = 4096) -> socket.socket:
    """Handshake, subscribe to ``channel``, and hand back the socket (with a tiny receive
    buffer) for the caller to leave unread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((
        f"GET /app/{APP_KEY}?protocol=7 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode())
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        assert data, "server closed during the handshake"
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    buf = bytearray(rest)
    hello = _next_message(sock, buf)
    assert hello["event"] == "pusher:connection_established", hello
    subscribe = {"event": "pusher:subscribe", "data": {"channel": channel}}
    sock.sendall(client_frame(0x1, json.dumps(subscribe).encode()))
    ok = _next_message(sock, buf)
    assert ok["event"] == "pusher_internal:subscription_succeeded", ok
    assert not buf, "nothing else should have arrived yet"
    return sock


def drain_raw(sock: socket.socket, timeout: float) -> tuple[list[tuple[int, bytes]], bool]:
    """Read a raw websocket to its end: every complete frame, and whether it ended cleanly
    (EOF after whole frames, not a reset or a time-out)."""
    sock.settimeout(1.0)
    deadline = time.monotonic() + timeout
    buf = bytearray()
    frames: list[tuple[int, bytes]] = []
    clean = False
    while time.monotonic() < deadline:
        try:
            data = sock.recv(262144)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            clean = not buf
            break
        buf += data
        while (frame := read_frame(buf)) is not None:
            frames.append(frame)
    sock.close()
    return frames, clean
