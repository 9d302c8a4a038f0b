"""RFC 6455, client side, sans-IO: the opening handshake and a frame reader for the fleet.

Why by hand and not wsproto: the fleet receives ~32,000 frames a second at the election's full
size on two cores, and its budget per frame is about one ``recv`` syscall (docs/benchmarks.md,
"Fleet receive"). wsproto spends ~25 µs per event on its state machine; the reader here does
the header arithmetic of one unmasked server frame in well under a microsecond. The client
sends little (a subscribe, a ping, a close), so its masking need not be fast.

Nothing here touches a socket: :class:`FrameReader` takes bytes and returns messages,
:func:`handshake_request`/:func:`parse_handshake_response` build and check the upgrade.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Final

from server.frames import accept_key, apply_mask  # the same arithmetic on the server side

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameReader",
    "HandshakeError",
    "WireError",
    "client_frame",
    "close_payload",
    "handshake_request",
    "masked_frame",
    "parse_close",
    "parse_handshake_response",
]

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

MAX_RESPONSE_HEAD: Final = 16_384
DEFAULT_MAX_MESSAGE: Final = 1 << 20


class WireError(Exception):
    """The server broke RFC 6455; the connection must be failed (``code`` for the close)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class HandshakeError(Exception):
    """The upgrade was refused or malformed."""


def handshake_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """The GET upgrade request and the Sec-WebSocket-Accept value the server must answer."""
    key = base64.b64encode(os.urandom(16))
    accept = accept_key(key.decode("ascii")).encode("ascii")
    request = (b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n") % (path.encode(), host.encode(), port, key)
    return request, accept


def parse_handshake_response(buf: bytes, accept: bytes) -> int:
    """How many bytes of ``buf`` the response head used, or 0 while it is incomplete.

    Raises HandshakeError unless it is a 101 with the right Sec-WebSocket-Accept.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_RESPONSE_HEAD:
            raise HandshakeError("response head too large")
        return 0
    head = buf[:end]
    status_line, _, rest = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or parts[1] != b"101":
        raise HandshakeError(f"upgrade refused: {status_line[:80].decode('latin-1')}")
    got = b""
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            got = value.strip()
    if got != accept:
        raise HandshakeError("bad Sec-WebSocket-Accept")
    return end + 4


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented client frame, masked with a random key (RFC 6455 5.3)."""
    return client_frame(opcode, payload)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """(code, reason) of a close frame's payload; (None, "") when it carries no code."""
    if len(payload) < 2:
        return None, ""
    return struct.unpack_from("!H", payload)[0], payload[2:].decode("utf-8", "replace")


class FrameReader:
    """Incremental reader of server frames (which must not be masked).

    ``feed(data)`` returns the complete messages as ``(opcode, payload)``: fragmented data
    messages are reassembled, control frames may interleave. The common case, one whole frame
    per ``recv``, costs a few header reads and one slice.
    """

    __slots__ = ("_frag_op", "_frag_parts", "_frag_size", "buffer", "max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.buffer = b""
        self._frag_op = -1
        self._frag_parts: list[bytes] = []
        self._frag_size = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back (``buffer``; the fleet's loop reads a whole
        frame itself when this is empty)."""
        return len(self.buffer)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buffer + data if self.buffer else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1]
            if length & 0x80:
                raise WireError(1002, "server frames must not be masked")
            if b0 & 0x70:
                raise WireError(1002, "reserved bits set (no extension was negotiated)")
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            opcode = b0 & 0x0F
            if opcode >= 0x8:
                if length > 125 or not b0 & 0x80:
                    raise WireError(1002, "control frames must be short and unfragmented")
            elif length + self._frag_size > self.max_message:
                raise WireError(1009, f"message larger than {self.max_message} bytes")
            stop = pos + head + length
            if stop > end:
                break
            payload = buf[pos + head:stop]
            pos = stop
            if b0 == 0x81 or b0 == 0x82:  # whole text/binary message: the hot path
                if self._frag_op >= 0:
                    raise WireError(1002, "new message before the fragmented one ended")
                out.append((opcode, payload))
            elif opcode >= 0x8:
                if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                    raise WireError(1002, f"unknown control opcode {opcode:#x}")
                out.append((opcode, payload))
            elif opcode == OP_CONT:
                if self._frag_op < 0:
                    raise WireError(1002, "continuation frame without a message")
                self._frag_parts.append(payload)
                self._frag_size += length
                if b0 & 0x80:
                    out.append((self._frag_op, b"".join(self._frag_parts)))
                    self._frag_op = -1
                    self._frag_parts = []
                    self._frag_size = 0
            elif opcode in (OP_TEXT, OP_BINARY):  # first fragment
                if self._frag_op >= 0:
                    raise WireError(1002, "new message before the fragmented one ended")
                self._frag_op = opcode
                self._frag_parts = [payload]
                self._frag_size = length
            else:
                raise WireError(1002, f"unknown data opcode {opcode:#x}")
        self.buffer = buf[pos:] if pos < end else b""
        return out


# --- client frames: the one encoder ---------------------------------------------------------
# Every client frame of the harness, the benchmarks and the tests is built here; the knobs
# beyond ``fin`` exist so tests of a peer's parser can break the rules on purpose.


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
                 key: bytes | None = None, rsv: int = 0, length: int | None = None) -> bytes:
    """One client frame (RFC 6455 5.2), masked with ``key`` (4 random bytes unless given).

    Valid by default. On purpose, for tests: ``mask=False`` sends it unmasked, ``rsv`` sets the
    reserved bits, ``length`` announces a length other than the payload's.
    """
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
    key = os.urandom(4) if key is None else key
    return head + key + apply_mask(payload, key)
