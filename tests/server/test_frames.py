"""Unit tests of server/frames.py: the hand-written RFC 6455 parser and encoder.

Frames are built with the one client encoder (``harness.ws_wire.client_frame``, whose knobs reach
every header form and every violation) and cross-checked against wsproto: what a wsproto client
encodes our parser must decode, and what our encoder produces a wsproto client must decode.
"""

from __future__ import annotations

import os
import struct

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from harness.ws_wire import client_frame
from server.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    accept_key,
    encode_close,
    encode_frame,
    encode_text,
)

MAX = 1024 * 1024


def parse_server_frame(frame: bytes) -> tuple[bool, int, bytes]:
    """(fin, opcode, payload) of one unmasked server frame, checking the length is minimal."""
    b0, b1 = frame[0], frame[1]
    assert not b1 & 0x80, "server frames must not be masked"
    n = b1 & 0x7F
    head = 2
    if n == 126:
        n = struct.unpack_from("!H", frame, 2)[0]
        head = 4
        assert n >= 126, "16-bit length used for a short payload"
    elif n == 127:
        n = struct.unpack_from("!Q", frame, 2)[0]
        head = 10
        assert n >= 65536, "64-bit length used for a payload that fits 16 bits"
    assert len(frame) == head + n, "frame length does not match its header"
    return bool(b0 & 0x80), b0 & 0x0F, frame[head:]


# ---------------------------------------------------------------------------- parsing


def test_accept_key_rfc6455_example():
    # RFC 6455 section 1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_accept_key_matches_what_a_wsproto_client_expects():
    client = WSConnection(ConnectionType.CLIENT)
    request = client.send(Request(host="localhost", target="/app/k?protocol=7"))
    key = next(line.split(b": ", 1)[1] for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    client.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n")
    assert isinstance(next(client.events()), AcceptConnection)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_masked_text_of_every_length_form(size):
    payload = os.urandom(size)
    parser = FrameParser(MAX)
    assert parser.feed(client_frame(OP_TEXT, payload, key=os.urandom(4))) == [(OP_TEXT, payload)]


def test_length_header_forms_are_chosen_by_size():
    assert client_frame(OP_TEXT, b"x" * 125)[1] & 0x7F == 125
    assert client_frame(OP_TEXT, b"x" * 126)[1] & 0x7F == 126
    assert client_frame(OP_TEXT, b"x" * 65536)[1] & 0x7F == 127


def test_byte_at_a_time_feeding_reassembles():
    payload = b'{"event":"pusher:ping","data":{}}' * 10  # > 125: 16-bit length
    data = client_frame(OP_TEXT, payload) + client_frame(OP_PING, b"hi")
    parser = FrameParser(MAX)
    out = []
    for i in range(len(data)):
        out += parser.feed(data[i:i + 1])
    assert out == [(OP_TEXT, payload), (OP_PING, b"hi")]


def test_several_frames_in_one_chunk_and_a_split_64_bit_header():
    big = os.urandom(70000)
    data = client_frame(OP_TEXT, b"a") + client_frame(OP_BINARY, big) + client_frame(OP_TEXT, b"b")
    parser = FrameParser(MAX)
    # Split inside the 64-bit extended length of the second frame.
    cut = len(client_frame(OP_TEXT, b"a")) + 5
    assert parser.feed(data[:cut]) == [(OP_TEXT, b"a")]
    assert parser.feed(data[cut:]) == [(OP_BINARY, big), (OP_TEXT, b"b")]


def test_fragmented_message_with_interleaved_ping():
    parser = FrameParser(MAX)
    frames = (
        client_frame(OP_TEXT, b"hel", fin=False)
        + client_frame(OP_PING, b"p1")
        + client_frame(OP_CONT, b"lo ", fin=False)
        + client_frame(OP_PONG, b"")
        + client_frame(OP_CONT, b"world", fin=True)
    )
    assert parser.feed(frames) == [(OP_PING, b"p1"), (OP_PONG, b""), (OP_TEXT, b"hello world")]
    # The parser is back at a message boundary: a new unfragmented message parses.
    assert parser.feed(client_frame(OP_TEXT, b"next")) == [(OP_TEXT, b"next")]


def test_fragmented_binary_reassembles_with_its_opcode():
    parser = FrameParser(MAX)
    out = parser.feed(client_frame(OP_BINARY, b"\x00\x01", fin=False))
    assert out == []
    assert parser.feed(client_frame(OP_CONT, b"\x02", fin=True)) == [(OP_BINARY, b"\x00\x01\x02")]


def test_message_of_exactly_the_limit_is_accepted():
    parser = FrameParser(300)
    payload = b"x" * 300
    assert parser.feed(client_frame(OP_TEXT, payload)) == [(OP_TEXT, payload)]


@pytest.mark.parametrize("size", [301, 65536, 2**40])
def test_oversize_announced_is_refused_1009_before_buffering(size):
    parser = FrameParser(300)
    # Only the header arrives: the parser must refuse from the announced length alone.
    header = client_frame(OP_TEXT, b"", length=size)
    with pytest.raises(FrameError) as exc:
        parser.feed(header)
    assert exc.value.code == 1009


def test_oversize_counts_all_fragments():
    parser = FrameParser(300)
    assert parser.feed(client_frame(OP_TEXT, b"x" * 200, fin=False)) == []
    with pytest.raises(FrameError) as exc:
        parser.feed(client_frame(OP_CONT, b"", fin=True, length=101))
    assert exc.value.code == 1009


def test_control_frames_do_not_count_towards_the_fragment_limit():
    parser = FrameParser(300)
    data = (client_frame(OP_TEXT, b"x" * 200, fin=False) + client_frame(OP_PING, b"y" * 125)
            + client_frame(OP_CONT, b"z" * 100))
    assert parser.feed(data) == [(OP_PING, b"y" * 125), (OP_TEXT, b"x" * 200 + b"z" * 100)]


def test_unmasked_client_frame_is_1002():
    with pytest.raises(FrameError) as exc:
        FrameParser(MAX).feed(client_frame(OP_TEXT, b"hi", mask=False))
    assert exc.value.code == 1002


@pytest.mark.parametrize("rsv", [1, 2, 4, 7])
def test_reserved_bits_are_1002(rsv):
    with pytest.raises(FrameError) as exc:
        FrameParser(MAX).feed(client_frame(OP_TEXT, b"hi", rsv=rsv))
    assert exc.value.code == 1002


def test_continuation_without_start_is_1002():
    with pytest.raises(FrameError) as exc:
        FrameParser(MAX).feed(client_frame(OP_CONT, b"orphan"))
    assert exc.value.code == 1002


def test_new_message_inside_a_fragmented_one_is_1002():
    parser = FrameParser(MAX)
    parser.feed(client_frame(OP_TEXT, b"a", fin=False))
    with pytest.raises(FrameError) as exc:
        parser.feed(client_frame(OP_TEXT, b"b"))
    assert exc.value.code == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_reserved_opcodes_are_1002(opcode):
    with pytest.raises(FrameError) as exc:
        FrameParser(MAX).feed(client_frame(opcode, b"x"))
    assert exc.value.code == 1002


def test_long_control_frame_is_1002():
    with pytest.raises(FrameError) as exc:
        FrameParser(MAX).feed(client_frame(OP_PING, b"x" * 126))
    assert exc.value.code == 1002


def test_fragmented_control_frame_is_1002():
    with pytest.raises(FrameError) as exc:
        FrameParser(MAX).feed(client_frame(OP_PING, b"x", fin=False))
    assert exc.value.code == 1002


# ---------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(("size", "header_len"), [(0, 2), (125, 2), (126, 4), (65535, 4),
                                                  (65536, 10), (100000, 10)])
def test_encode_frame_uses_the_minimal_length_form(size, header_len):
    payload = os.urandom(size)
    frame = encode_frame(OP_BINARY, payload)
    assert len(frame) == header_len + size
    assert parse_server_frame(frame) == (True, OP_BINARY, payload)


def test_encode_text_and_close():
    assert encode_text(b"hi") == b"\x81\x02hi"
    fin, opcode, body = parse_server_frame(encode_close(4001, "nope"))
    assert (fin, opcode) == (True, OP_CLOSE)
    assert struct.unpack("!H", body[:2])[0] == 4001
    assert body[2:] == b"nope"


def test_encode_close_keeps_the_control_frame_under_126_bytes():
    fin, opcode, body = parse_server_frame(encode_close(1002, "x" * 500))
    assert (fin, opcode) == (True, OP_CLOSE)
    assert len(body) <= 125
    assert struct.unpack("!H", body[:2])[0] == 1002


# ---------------------------------------------------------------------------- wsproto


def open_pair() -> tuple[WSConnection, WSConnection]:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/app/k?protocol=7")))
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection()))
    assert isinstance(next(client.events()), AcceptConnection)
    return client, server


@pytest.mark.parametrize("size", [0, 10, 126, 65536, 200000])
def test_wsproto_client_text_decodes_in_our_parser(size):
    client, _ = open_pair()
    text = ("é" * size)[:size]
    data = client.send(TextMessage(data=text))
    assert data[1] & 0x80, "wsproto clients mask"
    assert FrameParser(MAX).feed(data) == [(OP_TEXT, text.encode())]


def test_wsproto_client_fragments_and_pings_decode_in_our_parser():
    client, _ = open_pair()
    data = (client.send(TextMessage(data="part one, ", message_finished=False))
            + client.send(Ping(payload=b"ping!"))
            + client.send(TextMessage(data="part two", message_finished=True))
            + client.send(BytesMessage(data=b"\x00\xff"))
            + client.send(Pong(payload=b"pong")))
    assert FrameParser(MAX).feed(data) == [
        (OP_PING, b"ping!"),
        (OP_TEXT, b"part one, part two"),
        (OP_BINARY, b"\x00\xff"),
        (OP_PONG, b"pong"),
    ]


def test_wsproto_client_close_decodes_in_our_parser():
    client, _ = open_pair()
    ((opcode, payload),) = FrameParser(MAX).feed(client.send(CloseConnection(code=1000)))
    assert opcode == OP_CLOSE
    assert struct.unpack("!H", payload[:2])[0] == 1000


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 150000])
def test_our_encode_text_decodes_in_a_wsproto_client(size):
    client, _ = open_pair()
    text = "x" * size
    client.receive_data(encode_text(text.encode()))
    events = list(client.events())
    received = "".join(e.data for e in events if isinstance(e, TextMessage))
    assert received == text
    assert events
    assert events[-1].message_finished


def test_our_pong_and_close_decode_in_a_wsproto_client():
    client, _ = open_pair()
    client.receive_data(encode_frame(OP_PONG, b"abc") + encode_close(4201, "pong not received"))
    events = list(client.events())
    assert isinstance(events[0], Pong)
    assert events[0].payload == b"abc"
    assert isinstance(events[1], CloseConnection)
    assert events[1].code == 4201
    assert events[1].reason == "pong not received"
