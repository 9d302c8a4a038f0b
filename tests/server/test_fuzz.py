"""Property-based fuzzing (hypothesis) of the three places peer bytes enter a node: the HTTP
request handling (server/http.py + api.py), the websocket frame parser (server/frames.py) and
the Pusher message handler (server/connection.py).

Each property is about survival and bounds, not about one answer: whatever the input, nothing
but the documented refusal escapes (a FrameError, an HTTP status, a close code), nothing is
caught by the crash guard (``internal_errors`` stays 0: a caught exception here is a bug the
fuzzer found), what the node writes back is well-formed, and what it holds stays bounded.

The HTTP and message tests run the real code on a socket pair with a real ``Node`` whose hub is
an in-memory stand-in, ``Node(config, hub=StubHub())`` (no Redis: the broker is not what is
being fuzzed here; the live fuzzer in test_fuzz_live.py covers the whole node). Examples are
derandomized, so CI is repeatable; ``TURNOUT_FUZZ_EXAMPLES=5000`` explores more locally.
"""

from __future__ import annotations

import gc
import json
import os
import re
import socket
import struct
import weakref
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.ws_wire import FrameReader, client_frame
from server.auth import channel_auth, sign_request, user_auth
from server.broker import PublishResult
from server.config import AppConfig, Config
from server.connection import Connection
from server.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    encode_close,
    parse_close,
    valid_close_code,
)
from server.http import serve_socket
from server.node import Node
from tests.fuzz.generate import CHANNELS, EVENTS, EVIL_STRINGS, HEADER_NAMES, METHODS, TARGETS
from tests.support.fakes import CountingCluster, MemoryChannels, RecordingPublisher

EXAMPLES = int(os.environ.get("TURNOUT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
APP = AppConfig("1", "fuzz-key", "fuzz-secret", enable_client_events=True)
MAX_MESSAGE = 1024
MAX_FRAGMENTS = 8

# ============================================================================ frame parser

any_bytes = st.binary(max_size=3000)


def feed_all(parser: FrameParser,
             chunks: list[bytes]) -> tuple[list[tuple[int, bytes]], int | None]:
    """Feed chunks; (messages, close code of the FrameError or None)."""
    out: list[tuple[int, bytes]] = []
    code = None
    try:
        for chunk in chunks:
            out += parser.feed(chunk)
            # Bounded: one partial frame (header + at most the message limit) plus the parts.
            assert parser.buffered <= 14 + 2 * MAX_MESSAGE
            assert len(parser._frag_parts) <= MAX_FRAGMENTS
    except FrameError as exc:
        code = exc.code
    assert code in (None, 1002, 1009), code
    return out, code


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@FUZZ
@given(data=any_bytes, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_parser_survives_any_bytes_split_anywhere(data: bytes, cuts: list[int]) -> None:
    whole = feed_all(FrameParser(MAX_MESSAGE, MAX_FRAGMENTS), [data])
    pieces = feed_all(FrameParser(MAX_MESSAGE, MAX_FRAGMENTS), split(data, cuts))
    # How the bytes arrive never changes what they mean.
    assert pieces == whole


@st.composite
def frame_sequences(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Valid client frames (fragmented data messages, interleaved control frames) and the
    messages a correct parser must return for them."""
    wire = b""
    expected: list[tuple[int, bytes]] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            opcode = draw(st.sampled_from([OP_PING, OP_PONG]))
            payload = draw(st.binary(max_size=125))
            wire += client_frame(opcode, payload)
            expected.append((opcode, payload))
            continue
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        payload = draw(st.binary(max_size=MAX_MESSAGE))
        parts = draw(st.integers(1, MAX_FRAGMENTS))
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=parts - 1,
                                    max_size=parts - 1)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for i, piece in enumerate(pieces):
            wire += client_frame(opcode if i == 0 else OP_CONT, piece,
                                 fin=i == len(pieces) - 1)
            if i < len(pieces) - 1 and draw(st.booleans()):
                ping = draw(st.binary(max_size=20))
                wire += client_frame(OP_PING, ping)
                expected.append((OP_PING, ping))
        expected.append((opcode, payload))
    return wire, expected


@FUZZ
@given(sequence=frame_sequences(), cuts=st.lists(st.integers(0, 100_000), max_size=30))
def test_parser_returns_exactly_the_messages_sent(
    sequence: tuple[bytes, list[tuple[int, bytes]]], cuts: list[int]
) -> None:
    wire, expected = sequence
    messages, error = feed_all(FrameParser(MAX_MESSAGE, MAX_FRAGMENTS), split(wire, cuts))
    assert error is None
    # Control frames may overtake the message they interleave with; per kind, order holds.
    for kinds in ({OP_PING, OP_PONG}, {OP_TEXT, OP_BINARY}):
        assert [m for m in messages if m[0] in kinds] == [m for m in expected if m[0] in kinds]


@FUZZ
@given(head=st.binary(max_size=40), empties=st.integers(MAX_FRAGMENTS, 5000))
def test_empty_continuations_cannot_grow_a_message(head: bytes, empties: int) -> None:
    parser = FrameParser(MAX_MESSAGE, MAX_FRAGMENTS)
    wire = client_frame(OP_TEXT, head, fin=False) + client_frame(OP_CONT, b"", fin=False) * empties
    messages, error = feed_all(parser, [wire])
    assert (messages, error) == ([], 1009)


@FUZZ
@given(payload=st.binary(max_size=125))
def test_close_payloads_are_validated(payload: bytes) -> None:
    error = None
    try:
        code, reason = parse_close(payload)
    except FrameError as exc:
        error = exc.code
    if error is not None:
        assert error in (1002, 1007)
        if len(payload) >= 2 and valid_close_code(int.from_bytes(payload[:2], "big")):
            assert error == 1007  # a valid code: only the reason can be wrong
        return
    if code is None:
        assert payload == b""
    else:
        assert valid_close_code(code)
        assert encode_close(code, reason)[2:] == payload  # re-encodes to the same bytes


# ============================================================== a node on a socket pair

class StubBroker(RecordingPublisher):
    published = 0
    link_changes = 0

    async def publish_many(self, app_id: str, items: list[Any]) -> list[PublishResult]:
        self.published += len(items)
        return [PublishResult(i + 1, "e") for i in range(len(items))]

    async def read_counts(self, app_id: str) -> dict[str, int]:
        return {"results-1": 2}


class StubHub(MemoryChannels):
    """The hub's surface as the connection and the API use it, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.broker = StubBroker()
        self.cluster = CountingCluster()

    def statistics(self) -> dict[str, int]:
        return dict.fromkeys(("channels", "subscriptions", "delivered", "frames_out",
                              "gaps_detected", "catchups", "unrecoverable",
                              "presence_members", "presence_leaves_pending", "terminated"), 0)


def make_node(**overrides: Any) -> Node:
    config = Config(apps=(APP,), node_id="fuzz", max_message_size=MAX_MESSAGE,
                    max_fragments=MAX_FRAGMENTS, max_subscriptions=5, header_timeout=2,
                    body_timeout=2, **overrides)
    return Node(config, hub=StubHub())  # type: ignore[arg-type]


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Every server frame in ``data``, which must be whole, unmasked, well-formed frames."""
    reader = FrameReader()
    frames = reader.feed(data)
    assert not reader.buffered, f"truncated server frame in {reader.buffer[:60]!r}"
    return frames


def check_server_frames(frames: list[tuple[int, bytes]]) -> None:
    for opcode, payload in frames:
        assert opcode in (OP_TEXT, OP_CLOSE, OP_PONG), opcode
        if opcode == OP_TEXT:
            message = json.loads(payload)
            assert isinstance(message.get("event"), str), message
        elif opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0]
            assert valid_close_code(code), code
            payload[2:].decode("utf-8")


async def exchange(node: Node, chunks: list[bytes]) -> bytes:
    """Serve one socket of a socket pair: send ``chunks``, half-close, read all the answer."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    node.open_sockets += 1  # what the accept loop does before serve_socket
    node.sockets_by_ip["127.0.0.1"] = node.sockets_by_ip.get("127.0.0.1", 0) + 1
    client = trio.socket.from_stdlib_socket(ours)
    answer = b""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_socket, node, node.api_route, theirs, "127.0.0.1",
                               "127.0.0.1:1", False)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[await client.send(view):]
                    await trio.lowlevel.checkpoint()
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the node closed first: fine, read what it said
            while True:
                try:
                    data = await client.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                answer += data
    client.close()
    assert node.stats.internal_errors == 0, "the crash guard caught an exception: a bug"
    assert node.open_sockets == 0
    assert node.sockets_by_ip == {}
    return answer


ALLOWED_STATUSES = {101, 200, 400, 401, 404, 408, 413, 426, 431, 501, 505}


def check_http_answer(answer: bytes) -> None:
    if not answer:
        return  # e.g. the peer sent nothing at all before closing
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    status = int(answer[9:12])
    assert status in ALLOWED_STATUSES, answer[:300]
    if status == 101:
        _, _, rest = answer.partition(b"\r\n\r\n")
        frames = server_frames(rest)
        check_server_frames(frames)
        assert frames, "no pusher:connection_established after 101"


# ============================================================================ HTTP handling

def _text() -> st.SearchStrategy[str]:
    return st.text(alphabet=st.characters(codec="utf-8"), max_size=30)


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    """Requests: half well-framed (valid version, Host, framing: only method, target, headers
    and body are hostile, so they reach the routes), half hostile in framing too."""
    clean = draw(st.booleans())
    method = draw(st.sampled_from(METHODS[:9]) if clean else st.sampled_from(METHODS) | _text())
    target = draw(st.sampled_from(TARGETS) | _text())
    target = target.replace("{id}", APP.id).replace("{key}", APP.key)
    version = "HTTP/1.1" if clean else draw(
        st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 ", "http/1.1"]))
    names = st.sampled_from(HEADER_NAMES[:14]) if clean else st.sampled_from(HEADER_NAMES) | _text()
    headers = draw(st.lists(st.tuples(names, st.sampled_from(EVIL_STRINGS) | _text()),
                            max_size=2 if clean else 6))
    if clean:
        headers = [(k, v) for k, v in headers
                   if k.lower() not in ("host", "content-length", "transfer-encoding")]
    if clean or draw(st.booleans()):
        headers.insert(0, ("Host", "127.0.0.1"))
    body = draw(st.binary(max_size=200))
    framing = draw(st.sampled_from(["length", "chunked"] if clean else
                                   ["length", "chunked", "none", "both"]))
    if framing in ("length", "both"):
        headers.append(("Content-Length", str(len(body))))
    if framing in ("chunked", "both"):
        headers.append(("Transfer-Encoding", "chunked"))
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    raw = (f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
           + "\r\n").encode("utf-8", "surrogatepass") + body
    for _ in range(0 if clean else draw(st.integers(0, 3))):  # mutations hypothesis shrinks
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(max_size=4)) + raw[at + draw(st.integers(0, 4)):]
    return raw


@st.composite
def upgrade_requests(draw: st.DrawFn) -> bytes:
    """Websocket handshakes, mostly valid, then frames: the bytes after the head are parsed."""
    key = draw(st.sampled_from(["dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA=="])
               | _text())
    lines = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
    for name in draw(st.lists(st.sampled_from(sorted(lines)), max_size=2)):
        lines[name] = draw(st.sampled_from(EVIL_STRINGS) | _text())
    target = draw(st.sampled_from([f"/app/{APP.key}?protocol=7", f"/app/{APP.key}",
                                   "/app/x?protocol=7", f"/app/{APP.key}?protocol=6", "/"]))
    head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines.items())
    frames = b"".join(client_frame(OP_TEXT, m) for m in draw(st.lists(
        st.sampled_from([b'{"event":"pusher:ping","data":{}}',
                         b'{"event":"pusher:subscribe","data":{"channel":"results-1"}}']),
        max_size=3)))
    return (head + "\r\n").encode("utf-8", "surrogatepass") + frames + draw(
        st.binary(max_size=40))


@st.composite
def signed_requests(draw: st.DrawFn) -> bytes:
    """Well-framed, correctly signed API requests with hostile JSON bodies."""
    route = draw(st.sampled_from(["events", "batch_events", "channels", "channels/results-1"]))
    path = f"/apps/{APP.id}/{route}"
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text(), inner, max_size=4),
        max_leaves=12)
    event = st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(EVENTS) | json_values,
        "data": _text() | json_values,
        "channel": st.sampled_from(CHANNELS) | json_values,
        "channels": st.lists(st.sampled_from(CHANNELS) | json_values, max_size=4),
        "socket_id": st.sampled_from(["1.1", "x", "\u0661.\u0661"]) | json_values,
        "info": json_values,
    })
    if route == "batch_events":
        payload: Any = draw(st.fixed_dictionaries({"batch": st.lists(event, max_size=12)})
                            | json_values)
    else:
        payload = draw(event | json_values)
    method = "POST" if route.endswith("events") else "GET"
    body = json.dumps(payload).encode() if method == "POST" else b""
    params = draw(st.dictionaries(st.sampled_from(["info", "filter_by_prefix", "x"]), _text(),
                                  max_size=2))
    query = sign_request(APP.key, APP.secret, method, path, body, params=params)
    target = path + "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return (f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("utf-8", "surrogatepass") + body


@FUZZ
@given(request=http_requests() | upgrade_requests() | st.binary(max_size=400),
       cuts=st.lists(st.integers(0, 10_000), max_size=5))
def test_http_handling_survives_any_request(request: bytes, cuts: list[int]) -> None:
    node = make_node()
    check_http_answer(trio.run(exchange, node, split(request, cuts)))


@FUZZ
@given(requests=st.lists(signed_requests(), min_size=1, max_size=3))
def test_signed_api_requests_are_validated_not_crashed(requests: list[bytes]) -> None:
    node = make_node()
    answer = trio.run(exchange, node, [b"".join(requests)])
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3})", answer)]
    assert statuses, answer[:200]
    assert set(statuses) <= {200, 400, 401, 404, 413}, answer[:500]


# ======================================================================= Pusher messages

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text(), inner, max_size=4),
    max_leaves=10)


@st.composite
def pusher_messages(draw: st.DrawFn) -> bytes:
    event = draw(st.sampled_from(EVENTS) | _text())
    data: Any = draw(st.fixed_dictionaries({}, optional={
        "channel": st.sampled_from(CHANNELS) | json_values,
        "auth": st.sampled_from(["fuzz-key:" + "0" * 64, ""]) | json_values,
        "offset": st.integers() | json_values,
        "epoch": _text() | json_values,
    }) | json_values)
    message: dict[str, Any] = {"event": event}
    if draw(st.booleans()):
        message["data"] = json.dumps(data) if draw(st.booleans()) else data
    if draw(st.booleans()):
        message["channel"] = draw(st.sampled_from(CHANNELS) | json_values)
    raw = json.dumps(message).encode()
    if draw(st.integers(0, 9)) == 0:
        raw = draw(st.binary(max_size=60))
    return raw


# Messages whose signature is right but whose signed content is hostile (a backend that signs
# what a user typed): presence channel_data, sign-in user_data; then client events on the
# channels they joined. (kind, content): content is signed for the connection's socket id.
member_fields = st.fixed_dictionaries(  # well-formed: the accepting paths run too
    {"user_id": st.sampled_from(["1", "2"]), "id": st.sampled_from(["1", "2"])},
    optional={"user_info": json_values,
              "watchlist": st.lists(st.sampled_from(["1", "2", "a b"]), max_size=3)},
) | st.fixed_dictionaries({}, optional={
    "user_id": st.sampled_from(["1", "u" * 129, ""]) | json_values,
    "id": st.sampled_from(["1", "a b"]) | json_values,
    "user_info": json_values,
    "watchlist": st.lists(st.sampled_from(["1", "2", "a b"]) | json_values, max_size=3)
    | json_values,
}) | json_values
signed_contents = st.tuples(
    st.sampled_from(["presence", "signin", "client"]),
    member_fields.map(json.dumps) | _text())


def signed_frame(kind: str, content: str, socket_id: str) -> bytes:
    if kind == "presence":
        channel = "presence-a"
        data = {"channel": channel, "channel_data": content,
                "auth": channel_auth(APP.key, APP.secret, socket_id, channel, content)}
        return client_frame(OP_TEXT, json.dumps({"event": "pusher:subscribe",
                                                 "data": data}).encode())
    if kind == "signin":
        data = {"user_data": content, "auth": user_auth(APP.key, APP.secret, socket_id, content)}
        return client_frame(OP_TEXT, json.dumps({"event": "pusher:signin",
                                                 "data": data}).encode())
    return client_frame(OP_TEXT, json.dumps({"event": "client-x", "channel": "presence-a",
                                             "data": content}).encode())


@FUZZ
@given(messages=st.lists(pusher_messages(), max_size=12),
       private=st.lists(st.sampled_from(["private-a", "private-b"]), max_size=2),
       signed=st.lists(signed_contents, max_size=4))
def test_pusher_message_handler_survives_any_message(messages: list[bytes],
                                                      private: list[str],
                                                      signed: list[tuple[str, str]]) -> None:
    async def scenario() -> bytes:
        node = make_node()
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        ours.setblocking(False)
        conn = Connection(node.context, theirs, APP, "127.0.0.1:1")
        frames = [client_frame(OP_TEXT, m) for m in messages]
        for channel in private:  # correctly signed: the auth path runs to the end
            auth = channel_auth(APP.key, APP.secret, conn.socket_id, channel)
            frames.append(client_frame(OP_TEXT, json.dumps(
                {"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}
            ).encode()))
        frames += [signed_frame(kind, content, conn.socket_id) for kind, content in signed]
        for frame in frames:
            if not await conn._on_data(frame):
                break
            assert len(conn.channels) <= node.config.max_subscriptions
        answer = b""
        while True:
            try:
                data = ours.recv(65536)
            except BlockingIOError:
                break
            if not data:
                break
            answer += data
        ours.close()
        theirs.close()
        assert node.stats.internal_errors == 0
        return answer

    check_server_frames(server_frames(trio.run(scenario)))


def test_a_finished_connection_is_freed_without_the_cycle_collector() -> None:
    """Connection and its PusherSession must not reference each other: 40,000 clients that
    reconnect would otherwise leave their connections to the (rare) full collections."""
    async def scenario() -> weakref.ref[Connection]:
        node = make_node()
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        conn = Connection(node.context, theirs, APP, "127.0.0.1:1")
        ours.sendall(client_frame(OP_TEXT, b'{"event":"pusher:subscribe","data":'
                                           b'{"channel":"results-1"}}')
                     + client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        await conn.run()
        node.hub.drop_connection(conn)
        ours.close()
        theirs.close()
        return weakref.ref(conn)

    gc.disable()
    try:
        ref = trio.run(scenario)
        assert ref() is None, gc.get_referrers(ref())
    finally:
        gc.enable()

