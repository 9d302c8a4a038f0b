"""Raw websocket and HTTP clients for tests that must send or withhold what no library would:
a subscriber that never reads, byte-exact HTTP exchanges. Frames are built and read with the
harness's codec (harness.ws_wire: ``client_frame``, ``FrameReader``)."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from typing import Any

from harness.ws_wire import (
    OP_TEXT,
    FrameReader,
    client_frame,
    handshake_request,
    parse_handshake_response,
)

from .procs import APP_KEY

__all__ = ["drain_raw", "http_exchange", "raw_subscriber", "upgrade_request"]


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


def raw_subscriber(port: int, channel: str, rcvbuf: int = 4096) -> socket.socket:
    """Handshake, subscribe to ``channel``, and hand back the socket (with a tiny receive
    buffer) for the caller to leave unread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    request, accept = handshake_request("127.0.0.1", port, f"/app/{APP_KEY}?protocol=7")
    sock.sendall(request)
    buf = b""
    while not (used := parse_handshake_response(buf, accept)):
        data = sock.recv(4096)
        assert data, "server closed during the handshake"
        buf += data
    reader = FrameReader()
    messages = reader.feed(buf[used:])

    def next_message() -> dict[str, Any]:
        while not messages:
            data = sock.recv(65536)
            assert data, "server closed the raw websocket during setup"
            messages.extend(reader.feed(data))
        opcode, payload = messages.pop(0)
        assert opcode == OP_TEXT, (opcode, payload)
        message: dict[str, Any] = json.loads(payload)
        return message

    hello = next_message()
    assert hello["event"] == "pusher:connection_established", hello
    subscribe = {"event": "pusher:subscribe", "data": {"channel": channel}}
    sock.sendall(client_frame(OP_TEXT, json.dumps(subscribe).encode()))
    ok = next_message()
    assert ok["event"] == "pusher_internal:subscription_succeeded", ok
    assert not messages, "nothing else should have arrived yet"
    assert not reader.buffered, "nothing else should have arrived yet"
    return sock


def drain_raw(sock: socket.socket, timeout: float) -> tuple[list[tuple[int, bytes]], bool]:
    """Read a raw websocket to its end: every complete frame, and whether it ended cleanly
    (EOF after whole frames, not a reset or a time-out)."""
    sock.settimeout(1.0)
    deadline = time.monotonic() + timeout
    reader = FrameReader()
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
            clean = not reader.buffered
            break
        frames += reader.feed(data)
    sock.close()
    return frames, clean
