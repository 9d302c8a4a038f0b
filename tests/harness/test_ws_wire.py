"""The fleet's client side of RFC 6455, without sockets."""

from __future__ import annotations

import base64
import hashlib

import pytest

from harness.ws_wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameReader,
    HandshakeError,
    WireError,
    client_frame,
    close_payload,
    handshake_request,
    masked_frame,
    parse_close,
    parse_handshake_response,
)
from server.frames import FrameParser, encode_close, encode_frame, encode_text


def test_reader_returns_whole_frames_of_every_length_encoding() -> None:
    small, medium, large = b"x" * 100, b"y" * 700, b"z" * 70_000
    data = encode_text(small) + encode_text(medium) + encode_frame(OP_BINARY, large)
    assert FrameReader().feed(data) == [(OP_TEXT, small), (OP_TEXT, medium), (OP_BINARY, large)]


def test_reader_reassembles_frames_split_anywhere() -> None:
    frames = encode_text(b'{"event":"a"}') + encode_text(b"b" * 300) + encode_close(1000, "bye")
    reader = FrameReader()
    got = []
    for i in range(len(frames)):  # one byte at a time: every split point
        got += reader.feed(frames[i:i + 1])
    assert got == [(OP_TEXT, b'{"event":"a"}'), (OP_TEXT, b"b" * 300),
                   (OP_CLOSE, close_payload(1000, "bye"))]
    assert reader.buffered == 0


def test_fragmented_message_with_an_interleaved_ping() -> None:
    first = bytes((0x01, 3)) + b"abc"  # text, not final
    ping = bytes((0x89, 2)) + b"hi"
    last = bytes((0x80, 3)) + b"def"  # continuation, final
    assert FrameReader().feed(first + ping + last) == [(OP_PING, b"hi"), (OP_TEXT, b"abcdef")]


@pytest.mark.parametrize(("frame", "code"), [
    (bytes((0x81, 0x82)) + b"mask" + b"ab", 1002),  # servers must not mask
    (bytes((0xC1, 1)) + b"a", 1002),  # reserved bit without an extension
    (bytes((0x89, 126, 0, 200)) + b"p" * 200, 1002),  # control frame too long
    (bytes((0x80, 1)) + b"a", 1002),  # continuation without a message
    (bytes((0x83, 1)) + b"a", 1002),  # unknown data opcode
])
def test_protocol_violations_fail_the_connection(frame: bytes, code: int) -> None:
    with pytest.raises(WireError) as info:
        FrameReader().feed(frame)
    assert info.value.code == code


def test_oversized_message_is_refused_from_its_header() -> None:
    reader = FrameReader(max_message=1000)
    with pytest.raises(WireError) as info:
        reader.feed(bytes((0x81, 126)) + (2000).to_bytes(2, "big"))  # no payload needed
    assert info.value.code == 1009


def test_masked_frames_are_what_the_server_parser_reads() -> None:
    for payload in (b"", b'{"event":"pusher:ping","data":{}}', b"q" * 300, b"w" * 70_000):
        assert FrameParser(1 << 20).feed(masked_frame(OP_TEXT, payload)) == [(OP_TEXT, payload)]


def test_client_frame_matches_rfc_6455_and_breaks_rules_only_when_told() -> None:
    # RFC 6455 5.7: a single-frame masked text message containing "Hello".
    hello = bytes.fromhex("818537fa213d7f9f4d5158")
    assert client_frame(OP_TEXT, b"Hello", key=bytes.fromhex("37fa213d")) == hello
    assert client_frame(OP_TEXT, b"Hello", mask=False) == bytes.fromhex("810548656c6c6f")
    assert client_frame(OP_TEXT, b"Hel", fin=False, mask=False)[0] == 0x01
    assert client_frame(OP_TEXT, b"", rsv=0b100, mask=False)[0] == 0xC1
    assert client_frame(OP_TEXT, b"", length=70_000, mask=False)[1:10] == b"\x7f" + (
        70_000).to_bytes(8, "big")


def test_handshake_accepts_only_a_101_with_the_right_key() -> None:
    request, accept = handshake_request("127.0.0.1", 6001, "/app/key?protocol=7")
    head = request.split(b"\r\n")
    assert head[0] == b"GET /app/key?protocol=7 HTTP/1.1"
    key = next(line.split(b": ", 1)[1] for line in head if line.startswith(b"Sec-WebSocket-Key"))
    assert accept == base64.b64encode(hashlib.sha1(
        key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    ok = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    assert parse_handshake_response(ok[:20], accept) == 0  # incomplete
    assert parse_handshake_response(ok + b"\x81\x00", accept) == len(ok)
    with pytest.raises(HandshakeError, match="bad Sec-WebSocket-Accept"):
        parse_handshake_response(ok.replace(accept, b"nope"), accept)
    with pytest.raises(HandshakeError, match="503"):
        parse_handshake_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", accept)


def test_close_payload_round_trip() -> None:
    assert parse_close(close_payload(4200, "restart")) == (4200, "restart")
    assert parse_close(b"") == (None, "")
