"""RFC 6455 framing, written by hand for the broadcast hot path.

Why not wsproto or trio-websocket here: a server frame is unmasked, so one prebuilt frame can be
written to every subscriber of a channel (encode once, fan out the same bytes). wsproto builds a
frame per connection per send (~25 µs) and keeps a state machine per connection; trio-websocket
adds a reader task, a memory channel and an awaited, locked ``send_all`` per connection. Incoming
client traffic is tiny (subscribe, ping), so a small parser suffices and keeps idle connections
cheap. See docs/benchmarks.md for the measured difference.
"""

from __future__ import annotations

import base64
import hashlib
import struct

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameError",
    "FrameParser",
    "accept_key",
    "apply_mask",
    "encode_close",
    "encode_frame",
    "encode_text",
    "parse_close",
    "valid_close_code",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class FrameError(Exception):
    """A protocol violation: the connection must be closed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def accept_key(client_key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    digest = hashlib.sha1(client_key.encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented, unmasked server frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def encode_text(payload: bytes) -> bytes:
    return encode_frame(OP_TEXT, payload)


def encode_close(code: int, reason: str = "") -> bytes:
    # 123 bytes of reason at most (control frames carry 125); never cut a character in half.
    body = struct.pack("!H", code) + reason.encode("utf-8")[:123].decode(
        "utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, body)


def valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (RFC 6455 7.4, IANA registry).

    1004 is reserved, 1005/1006/1015 are for local reporting only and never go on the wire,
    1016-2999 are reserved for future RFCs, 3000-4999 belong to libraries and applications.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """(code, reason) of a client's close frame; FrameError if the payload is invalid.

    An empty payload means no code was given (None). One byte cannot hold a code, a code
    outside ``valid_close_code`` is a protocol error (1002) and a reason that is not UTF-8 is
    inconsistent data (1007, RFC 6455 8.1).
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FrameError(1002, "close frame payload of 1 byte (a code needs 2)")
    code = int.from_bytes(payload[:2], "big")
    if not valid_close_code(code):
        raise FrameError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "close reason is not valid UTF-8") from None
    return code, reason


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XORed with the 4-byte ``mask`` (RFC 6455 5.3): masks and unmasks alike."""
    n = len(payload)
    if n == 0:
        return payload
    # XOR as one big integer: far faster in CPython than a per-byte loop.
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


class FrameParser:
    """Incremental parser of client frames (which must be masked).

    ``feed`` returns complete messages as ``(opcode, payload)``; fragmented data messages are
    reassembled, control frames may interleave. A message larger than ``max_message_size``
    raises FrameError(1009) as soon as its header announces it, before buffering it, and so
    does a message in more than ``max_fragments`` frames (empty continuation frames cost no
    bytes, but each one costs parsing and, unbounded, a list entry). So what one connection
    holds is bounded: at most one frame header plus ``max_message_size`` bytes in the buffer,
    at most ``max_fragments`` parts.
    """

    __slots__ = (
        "_buf", "_frag_count", "_frag_op", "_frag_parts", "_frag_size", "max_fragments",
        "max_message_size",
    )

    def __init__(self, max_message_size: int, max_fragments: int = 100) -> None:
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self._buf = b""
        self._frag_op: int | None = None
        self._frag_parts: list[bytes] = []
        self._frag_size = 0
        self._frag_count = 0

    @property
    def buffered(self) -> int:
        """Bytes held: unparsed input plus the parts of an unfinished message."""
        return len(self._buf) + self._frag_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            fin = b0 & 0x80
            if b0 & 0x70:
                raise FrameError(1002, "reserved bits set (no extension was negotiated)")
            opcode = b0 & 0x0F
            if not b1 & 0x80:
                raise FrameError(1002, "client frames must be masked")
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            is_control = opcode >= 0x8
            if is_control:
                if length > 125 or not fin:
                    raise FrameError(1002, "control frames must be short and unfragmented")
            elif length + self._frag_size > self.max_message_size:
                raise FrameError(1009, f"message larger than {self.max_message_size} bytes")
            if end - pos < head + 4 + length:
                break
            mask = buf[pos + head : pos + head + 4]
            start = pos + head + 4
            payload = apply_mask(buf[start : start + length], mask)
            pos = start + length
            if is_control:
                if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                    raise FrameError(1002, f"unknown control opcode {opcode:#x}")
                out.append((opcode, payload))
                continue
            if opcode == OP_CONT:
                if self._frag_op is None:
                    raise FrameError(1002, "continuation frame without a message")
                self._frag_count += 1
                if self._frag_count > self.max_fragments:
                    raise FrameError(
                        1009, f"message in more than {self.max_fragments} fragments")
                if payload:
                    self._frag_parts.append(payload)
                    self._frag_size += length
                if fin:
                    out.append((self._frag_op, b"".join(self._frag_parts)))
                    self._frag_op = None
                    self._frag_parts = []
                    self._frag_size = 0
                    self._frag_count = 0
                continue
            if opcode not in (OP_TEXT, OP_BINARY):
                raise FrameError(1002, f"unknown data opcode {opcode:#x}")
            if self._frag_op is not None:
                raise FrameError(1002, "new message before the fragmented one ended")
            if fin:
                out.append((opcode, payload))
            else:
                self._frag_op = opcode
                self._frag_parts = [payload] if payload else []
                self._frag_size = length
                self._frag_count = 1
        self._buf = buf[pos:] if pos < end else b""
        return out
