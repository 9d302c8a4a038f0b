"""Bad input of every kind against one live node, watched by an innocent bystander.

One node and one bystander client subscribed to a channel. An attacker then sends each kind of
bad input in turn. For each case the test checks four things: the documented answer (a
pusher:error code with the connection left open, a close code, or an HTTP status), a log line
from the node about it, that the node process is still alive, and that the bystander still
receives an event published afterwards.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from harness.ws_wire import client_frame
from server.auth import channel_auth, sign_request, user_auth
from tests.support.client import publish, pusher_client
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, NodeProc, app_toml
from tests.support.raw import http_exchange, upgrade_request

MAX_MESSAGE = 1024  # the node's --max-message-size in this module
MAX_FRAGMENTS = 100  # the default --max-fragments
HEADER_TIMEOUT = 1.0  # the node's --header-timeout and --body-timeout in this module
CLIENT_EVENT_RATE = 3  # the app's client_event_rate in this module
MAX_USER_INFO = 100  # the app's max_presence_user_info in this module


# ---------------------------------------------------------------------------- raw client


class RawClient:
    """A websocket client that can send frames no well-behaved library would."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.pending: list[Any] = []

    @classmethod
    async def connect(cls, node: NodeProc, target: str | None = None) -> RawClient:
        stream = await trio.open_tcp_stream("127.0.0.1", node.port)
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(
            host="127.0.0.1", target=target or f"/app/{APP_KEY}?protocol=7")))
        client = cls(stream, ws)
        assert isinstance(await client.event(), AcceptConnection)
        return client

    async def event(self, timeout: float = 5.0) -> Any:
        with trio.fail_after(timeout):
            while not self.pending:
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                self.pending += list(self.ws.events())
            return self.pending.pop(0)

    async def message(self) -> dict[str, Any]:
        event = await self.event()
        assert isinstance(event, TextMessage), event
        return json.loads(event.data)

    async def close_code(self) -> int:
        """Read until the server's close frame; its code."""
        while True:
            event = await self.event()
            if isinstance(event, CloseConnection):
                return event.code

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


# ---------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    run: Callable[[NodeProc], Awaitable[None]]
    log: str | None  # regex expected in the node's log after the case; None: not checked


async def pusher_error_then_open(node: NodeProc, payload: str | bytes, code: int = 4200) -> None:
    """Send one message; expect pusher:error ``code`` and a connection that still works."""
    async with pusher_client(node.ws_url) as client:
        await client.ws.send_message(payload)
        message = await client.next()
        assert message["event"] == "pusher:error", message
        assert message["data"]["code"] == code, message
        assert message["data"]["message"]
        await client.send("pusher:ping", {})
        assert (await client.next())["event"] == "pusher:pong", "connection must stay open"


async def closed_by_server(ws: WebSocketConnection) -> int:
    """Read until the server closes the websocket; its close code."""
    with trio.fail_after(5):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code


def text_case(name: str, payload: str | bytes, log: str, code: int = 4200) -> Case:
    return Case(name, lambda node: pusher_error_then_open(node, payload, code), log)


async def channel_error_then_open(node: NodeProc, channel: str, code: int) -> None:
    """Subscribe to ``channel``; expect pusher:subscription_error carrying it, then
    pusher:error ``code``, and a connection that still works."""
    async with pusher_client(node.ws_url) as client:
        await client.send("pusher:subscribe", {"channel": channel})
        refusal = await client.next()
        assert refusal["event"] == "pusher:subscription_error", refusal
        assert refusal["channel"] == channel, refusal
        message = await client.next()
        assert message["event"] == "pusher:error", message
        assert message["data"]["code"] == code, message
        await client.send("pusher:ping", {})
        assert (await client.next())["event"] == "pusher:pong", "connection must stay open"


def channel_case(name: str, channel: str, log: str, code: int = 4200) -> Case:
    return Case(name, lambda node: channel_error_then_open(node, channel, code), log)


async def oversize_message(node: NodeProc) -> None:
    start = len(node.log())
    began = trio.current_time()
    async with pusher_client(node.ws_url) as client:
        await client.ws.send_message(json.dumps({"event": "pusher:ping",
                                                 "data": "x" * (MAX_MESSAGE * 200)}))
        assert await closed_by_server(client.ws) == 1009
    # The close completes at once: the node does not wait out its close timeout, and does not
    # parse the refused frame's body as more frames (one frame error, not a cascade).
    assert trio.current_time() - began < 1.0
    await trio.sleep(0.1)
    assert len(re.findall(r"frame error", node.log()[start:])) == 1, node.log()[start:]


async def oversize_announced(node: NodeProc) -> None:
    # Only a header announcing 1 GiB: refused from the header alone, nothing buffered.
    client = await RawClient.connect(node)
    assert (await client.message())["event"] == "pusher:connection_established"
    await client.send_raw(client_frame(0x1, b"", length=1 << 30))
    assert await client.close_code() == 1009
    await client.aclose()


async def oversize_fragments(node: NodeProc) -> None:
    client = await RawClient.connect(node)
    await client.message()
    chunk = b"x" * (MAX_MESSAGE // 2)
    await client.send_raw(client_frame(0x1, chunk, fin=False) + client_frame(0x0, chunk, fin=False)
                          + client_frame(0x0, chunk, fin=True))
    assert await client.close_code() == 1009
    await client.aclose()


async def unmasked_frame(node: NodeProc) -> None:
    client = await RawClient.connect(node)
    await client.message()
    await client.send_raw(client_frame(0x1, b'{"event":"pusher:ping","data":{}}', mask=False))
    assert await client.close_code() == 1002
    await client.aclose()


async def orphan_continuation(node: NodeProc) -> None:
    client = await RawClient.connect(node)
    await client.message()
    await client.send_raw(client_frame(0x0, b"orphan"))
    assert await client.close_code() == 1002
    await client.aclose()


async def reserved_bits(node: NodeProc) -> None:
    client = await RawClient.connect(node)
    await client.message()
    data = bytearray(client_frame(0x1, b"{}"))
    data[0] |= 0x40  # RSV1 without a negotiated extension
    await client.send_raw(bytes(data))
    assert await client.close_code() == 1002
    await client.aclose()


async def invalid_utf8(node: NodeProc) -> None:
    client = await RawClient.connect(node)
    await client.message()
    await client.send_raw(client_frame(0x1, b'{"event":"pusher:ping","data":"\xff\xfe"}'))
    assert await client.close_code() == 1007
    await client.aclose()


async def binary_frame(node: NodeProc) -> None:
    await pusher_error_then_open(node, b"\x00\x01binary\xff")


async def truncated_frame_then_hangup(node: NodeProc) -> None:
    client = await RawClient.connect(node)
    await client.message()
    await client.send_raw(client_frame(0x1, b"x" * 100)[:20])
    await client.aclose()


async def endless_empty_continuations(node: NodeProc) -> None:
    # FIN=0 text, then empty continuation frames: no bytes accumulate, but the fragment count
    # does, and the message is refused with 1009 once it passes the limit.
    client = await RawClient.connect(node)
    await client.message()
    await client.send_raw(client_frame(0x1, b'{"event":', fin=False)
                          + client_frame(0x0, b"", fin=False) * (MAX_FRAGMENTS + 50))
    assert await client.close_code() == 1009
    await client.aclose()


def close_case(name: str, payload: bytes, expected: int) -> Case:
    """Send a close frame with ``payload``; expect the server's close code ``expected``."""
    async def run(node: NodeProc) -> None:
        client = await RawClient.connect(node)
        await client.message()
        await client.send_raw(client_frame(0x8, payload))
        assert await client.close_code() == expected
        await client.aclose()

    log = r"frame error.*close" if expected in (1002, 1007) else None
    return Case(name, run, log)


async def http_status(node: NodeProc, request: bytes) -> tuple[int, bytes]:
    answer = await trio.to_thread.run_sync(lambda: http_exchange(node.port, request, timeout=5))
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert match, f"no HTTP status line in {answer[:200]!r}"
    return int(match.group(1)), answer


def raw_http_case(name: str, request: bytes, status: int, log: str | None = None,
                  header: bytes | None = None) -> Case:
    async def run(node: NodeProc) -> None:
        got, answer = await http_status(node, request)
        assert got == status, answer[:300]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert json.loads(body)["error"], answer  # the refusal says why
        assert b"connection: close" in head.lower(), head
        if header is not None:
            assert header in head.lower(), head

    return Case(name, run, log or rf"refused with {status}")


def upgrade_with(**how: Any) -> bytes:
    return upgrade_request(1, **how)


async def slow_head(node: NodeProc) -> None:
    """A head dripping in one byte at a time: each byte must not restart the clock."""
    stream = await trio.open_tcp_stream("127.0.0.1", node.port)
    began = trio.current_time()
    await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    answer = b""
    with trio.fail_after(HEADER_TIMEOUT + 4):
        async with trio.open_nursery() as nursery:
            async def drip() -> None:
                try:
                    while True:
                        await trio.sleep(0.1)
                        await stream.send_all(b"a")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            nursery.start_soon(drip)
            while chunk := await stream.receive_some(4096):
                answer += chunk
            nursery.cancel_scope.cancel()
    took = trio.current_time() - began
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert HEADER_TIMEOUT - 0.1 <= took < HEADER_TIMEOUT + 2.5, took
    await stream.aclose()


async def slow_body(node: NodeProc) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", node.port)
    await stream.send_all(f"POST /apps/{APP_ID}/events HTTP/1.1\r\nHost: x\r\n"
                          "Content-Length: 1000\r\n\r\n{".encode())
    answer = b""
    with trio.fail_after(HEADER_TIMEOUT + 4):
        async with trio.open_nursery() as nursery:
            async def drip() -> None:
                try:
                    while True:
                        await trio.sleep(0.1)
                        await stream.send_all(b" ")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            nursery.start_soon(drip)
            while chunk := await stream.receive_some(4096):
                answer += chunk
            nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    await stream.aclose()


async def silent_connection(node: NodeProc) -> None:
    # Connect and say nothing: closed with 408 at the head deadline, not held forever.
    status, _ = await http_status(node, b"")
    assert status == 408


async def refused_upgrade(node: NodeProc, target: str, code: int) -> None:
    with trio.fail_after(5):
        async with open_websocket_url(f"ws://127.0.0.1:{node.port}{target}") as ws:
            message = json.loads(await ws.get_message())
            assert message["event"] == "pusher:error"
            assert message["data"]["code"] == code
            assert await closed_by_server(ws) == code


def upgrade_case(name: str, target: str, code: int) -> Case:
    return Case(name, lambda node: refused_upgrade(node, target, code), rf"refused with {code}")


def http_case(name: str, status: int, **how: Any) -> Case:
    async def run(node: NodeProc) -> None:
        path = how.get("path", f"/apps/{APP_ID}/events")
        body = how.get("body", json.dumps({"name": "e", "data": "{}", "channel": "x"}).encode())
        params = sign_request(how.get("key", APP_KEY), how.get("secret", APP_SECRET), "POST",
                              path, body, timestamp=how.get("timestamp"))
        params.update(how.get("tamper", {}))
        response = await trio.to_thread.run_sync(
            lambda: httpx.post(f"{node.url}{path}", params=params, content=body, timeout=5))
        assert response.status_code == status, response.text
        assert response.json()["error"]

    return Case(name, run, rf"-> {status}")



# ----------------------------------- issue 12's messages: sign-in, presence, client events

SignedData = Callable[[str], dict[str, Any]]  # socket id -> the message's data


async def signed_error_then_open(node: NodeProc, event: str, build: SignedData, code: int,
                                 channel: str | None = None) -> None:
    """Send ``event`` with data made for this connection's socket id (so it can carry a valid
    signature); expect pusher:subscription_error carrying ``channel`` first when given, then
    pusher:error ``code``, and a connection that still works."""
    async with pusher_client(node.ws_url) as client:
        await client.send(event, build(client.socket_id))
        if channel is not None:
            refusal = await client.next()
            assert refusal["event"] == "pusher:subscription_error", refusal
            assert refusal["channel"] == channel, refusal
        message = await client.next()
        assert message["event"] == "pusher:error", message
        assert message["data"]["code"] == code, message
        await client.send("pusher:ping", {})
        assert (await client.next())["event"] == "pusher:pong", "connection must stay open"


def signin_case(name: str, user_data: str, log: str, code: int = 4009) -> Case:
    """A sign-in correctly signed over a bad ``user_data``."""
    def build(socket_id: str) -> dict[str, Any]:
        return {"user_data": user_data,
                "auth": user_auth(APP_KEY, APP_SECRET, socket_id, user_data)}

    return Case(name, lambda node: signed_error_then_open(node, "pusher:signin", build, code),
                log)


def presence_case(name: str, channel_data: Any, log: str, code: int = 4200,
                  sign: bool = True) -> Case:
    """A presence subscribe with ``channel_data`` (correctly signed if ``sign``)."""
    channel = "presence-room"

    def build(socket_id: str) -> dict[str, Any]:
        data = {"channel": channel, "channel_data": channel_data}
        if sign:
            data["auth"] = channel_auth(APP_KEY, APP_SECRET, socket_id, channel, channel_data)
        return data

    return Case(name, lambda node: signed_error_then_open(node, "pusher:subscribe", build, code,
                                                          channel), log)


def client_event_case(name: str, event: str, channel: Any, log: str,
                      subscribe: str | None = None) -> Case:
    """A client event to ``channel`` (None: without one) the node must refuse with 4301."""
    async def run(node: NodeProc) -> None:
        async with pusher_client(node.ws_url) as client:
            if subscribe is not None:
                ok = await client.subscribe(subscribe, sign=subscribe.startswith("private-"))
                assert ok["event"] == "pusher_internal:subscription_succeeded", ok
            message_out: dict[str, Any] = {"event": event, "data": {"n": 1}}
            if channel is not None:
                message_out["channel"] = channel
            await client.ws.send_message(json.dumps(message_out))
            message = await client.next()
            assert message["event"] == "pusher:error", message
            assert message["data"]["code"] == 4301, message
            await client.send("pusher:ping", {})
            assert (await client.next())["event"] == "pusher:pong", "connection must stay open"

    return Case(name, run, log)


async def second_user_on_one_connection(node: NodeProc) -> None:
    async with pusher_client(node.ws_url) as client:
        assert (await client.signin("alice"))["event"] == "pusher:signin_success"
        message = await client.signin("mallory")
        assert message["event"] == "pusher:error", message
        assert message["data"]["code"] == 4009, message
        await client.send("pusher:ping", {})
        assert (await client.next())["event"] == "pusher:pong", "connection must stay open"


async def client_event_flood(node: NodeProc) -> None:
    """Past client_event_rate: pusher:error 4301 and a close 4301; a fellow subscriber gets
    only the events within the rate."""
    channel = "private-flood"
    async with pusher_client(node.ws_url) as sender, pusher_client(node.ws_url) as watcher:
        for client in (sender, watcher):
            ok = await client.subscribe(channel, sign=True)
            assert ok["event"] == "pusher_internal:subscription_succeeded", ok
        for n in range(CLIENT_EVENT_RATE * 4):
            await sender.send("client-flood", {"n": n}, channel=channel)
        messages, code = await sender.closed()
        assert code == 4301
        assert [m["data"]["code"] for m in messages if m["event"] == "pusher:error"] == [4301]
        relayed = [m for m in await watcher.drain(0.3) if m["event"] == "client-flood"]
        assert CLIENT_EVENT_RATE <= len(relayed) < CLIENT_EVENT_RATE * 2, relayed


async def refused_origin(node: NodeProc, origin: str) -> None:
    with trio.fail_after(5):
        async with open_websocket_url(node.ws_url, extra_headers=[("Origin", origin)]) as ws:
            message = json.loads(await ws.get_message())
            assert message["event"] == "pusher:error", message
            assert message["data"]["code"] == 4009, message
            assert await closed_by_server(ws) == 4009


def origin_case(name: str, origin: str) -> Case:
    return Case(name, lambda node: refused_origin(node, origin), r"refused with 4009.*origin")


CASES = [
    text_case("malformed JSON", '{"event": "pusher:ping", ', r"invalid message format"),
    text_case("JSON array", '[{"event": "pusher:ping"}]', r"invalid message format"),
    text_case("JSON string", '"pusher:ping"', r"invalid message format"),
    text_case("missing event", '{"data": {"channel": "x"}}', r"missing 'event'"),
    text_case("event not a string", '{"event": 7}', r"missing 'event'"),
    text_case("unknown pusher event", '{"event": "pusher:bogus", "data": {}}',
              r"unsupported event 'pusher:bogus'"),
    text_case("double-encoded data that is not JSON",
              '{"event": "pusher:subscribe", "data": "{not json"}', r"not valid JSON"),
    text_case("subscribe without data", '{"event": "pusher:subscribe"}', r"needs 'channel'"),
    text_case("deeply nested JSON", "[" * 500 + "]" * 500, r"invalid message format"),
    text_case("bad resume position",
              '{"event": "pusher:subscribe", "data": {"channel": "x", "offset": -1, '
              '"epoch": "e"}}', r"'offset' must be"),
    Case("binary frame", binary_frame, r"binary frame"),
    Case("oversize message", oversize_message, r"frame error.*larger than 1024"),
    Case("oversize announced in the header", oversize_announced, r"frame error.*larger than"),
    Case("oversize across fragments", oversize_fragments, r"frame error.*larger than"),
    Case("unmasked frame", unmasked_frame, r"frame error.*masked"),
    Case("continuation without start", orphan_continuation, r"frame error.*continuation"),
    Case("reserved bits", reserved_bits, r"frame error.*reserved"),
    Case("invalid UTF-8 text", invalid_utf8, r"UTF-8"),
    Case("truncated frame then hang-up", truncated_frame_then_hangup, None),
    Case("endless empty continuation frames", endless_empty_continuations,
         rf"frame error.*more than {MAX_FRAGMENTS} fragments"),
    *[close_case(f"close code {code}", struct.pack("!H", code), 1002)
      for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)],
    close_case("close payload of 1 byte", b"\x03", 1002),
    close_case("close reason not UTF-8", struct.pack("!H", 1000) + b"\xff\xfe", 1007),
    *[close_case(f"valid close code {code} echoed", struct.pack("!H", code) + b"bye", code)
      for code in (1000, 1001, 1011, 1012, 3000, 4999)],
    close_case("empty close answered 1000", b"", 1000),
    raw_http_case("garbage instead of HTTP",
                  b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n", 400),
    raw_http_case("garbage request line", b"HELLO\r\n\r\n", 400),
    raw_http_case("request target not a path", b"GET health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    raw_http_case("bad Content-Length",
                  b"POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", 400),
    raw_http_case("negative Content-Length",
                  b"POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    raw_http_case("two different Content-Lengths",
                  b"POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                  b"Content-Length: 3\r\n\r\n{}", 400),
    raw_http_case("Content-Length with Transfer-Encoding",
                  b"POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    raw_http_case("HTTP/1.1 without Host", b"GET /health HTTP/1.1\r\n\r\n", 400),
    raw_http_case("100 KB header",
                  b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
                  431),
    raw_http_case("body over 1 MiB announced",
                  b"POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
                  413),
    raw_http_case("Sec-WebSocket-Key not base64", upgrade_with(key="not base64 at all!"), 400),
    raw_http_case("Sec-WebSocket-Key of 15 bytes", upgrade_with(key="AAAAAAAAAAAAAAAAAAAA"), 400),
    raw_http_case("Sec-WebSocket-Key not ASCII", upgrade_with(key="\xe9"), 400),
    raw_http_case("Sec-WebSocket-Version 8", upgrade_with(version="8"), 426,
                  header=b"sec-websocket-version: 13"),
    raw_http_case("websocket handshake with a body",
                  upgrade_with(extra="Content-Length: 5\r\n") + b"hello", 400),
    raw_http_case("websocket handshake over HTTP/1.0",
                  upgrade_with().replace(b"HTTP/1.1", b"HTTP/1.0", 1), 400),
    Case("request head dripping in", slow_head, r"refused with 408"),
    Case("request body dripping in", slow_body, r"refused with 408"),
    Case("connection that says nothing", silent_connection, r"refused with 408"),
    *[channel_case(f"invalid channel name {name!r}", name, r"invalid channel name")
      for name in ["x" * 165, "with space", "semi;colon/slash", ""]],
    channel_case("a user channel without a sign-in", "#server-to-user-1",
                 r"only a connection signed in as this user", 4009),
    text_case("channel name not a string",
              '{"event": "pusher:subscribe", "data": {"channel": ["a"]}}', r"needs 'channel'"),
    http_case("bad HTTP signature", 401, tamper={"auth_signature": "0" * 64}),
    http_case("expired HTTP timestamp", 401, timestamp=1353088179),
    http_case("future HTTP timestamp", 401, timestamp=4102444800),
    http_case("wrong HTTP body_md5", 401, tamper={"body_md5": "0" * 32}),
    http_case("wrong HTTP key", 401, key="not-the-key"),
    http_case("unknown app id", 404, path="/apps/404/events"),
    http_case("bad JSON body", 400, body=b"{nope"),
    upgrade_case("wrong app key", f"/app/not-{APP_KEY}?protocol=7", 4001),
    upgrade_case("protocol 4", f"/app/{APP_KEY}?protocol=4", 4007),
    upgrade_case("no protocol", f"/app/{APP_KEY}", 4008),
    upgrade_case("wrong path", f"/apps/{APP_KEY}?protocol=7", 4005),
    # issue 12: sign-in, presence, client events, Origin, user routes
    text_case("sign-in data not an object", '{"event": "pusher:signin", "data": [1]}',
              r"signin needs 'auth' and 'user_data'"),
    text_case("sign-in badly signed",
              json.dumps({"event": "pusher:signin",
                          "data": {"user_data": '{"id":"1"}', "auth": f"{APP_KEY}:{'0' * 64}"}}),
              r"signature for sign-in", 4009),
    text_case("sign-in without user_data",
              json.dumps({"event": "pusher:signin", "data": {"auth": f"{APP_KEY}:{'0' * 64}"}}),
              r"signature for sign-in", 4009),
    signin_case("signed user_data not JSON", "{nope", r"invalid user_data: not JSON"),
    signin_case("signed user_data not an object", "[1]", r"invalid user_data: must be"),
    signin_case("signed user id with a space", '{"id": "a b"}', r"invalid user_data: 'id'"),
    signin_case("signed user id a number", '{"id": 7}', r"invalid user_data: 'id'"),
    signin_case("signed user_info over the app's limit",
                json.dumps({"id": "1", "user_info": "x" * (MAX_USER_INFO + 1)}),
                r"user_info larger than"),
    signin_case("watchlist over 100 users", json.dumps({"id": "1", "watchlist": ["a"] * 101}),
                r"'watchlist' must be a list of at most 100", 4302),
    signin_case("watchlist not a list", json.dumps({"id": "1", "watchlist": "a"}),
                r"'watchlist' must be a list", 4302),
    signin_case("watchlist entry not a user id", json.dumps({"id": "1", "watchlist": [{}]}),
                r"watchlist entry", 4302),
    Case("a second user on one connection", second_user_on_one_connection,
         r"signed in as another user already"),
    presence_case("presence channel_data unsigned", '{"user_id": "1"}',
                  r"signature for presence channel", 4009, sign=False),
    presence_case("presence channel_data not a string", {"user_id": "1"},
                  r"signature for presence channel", 4009, sign=False),
    presence_case("presence channel_data not JSON", "{nope", r"invalid channel_data: not JSON"),
    presence_case("presence channel_data not an object", '"1"',
                  r"invalid channel_data: must be a JSON object"),
    presence_case("presence channel_data without user_id", '{"user_info": {}}',
                  r"invalid channel_data: 'user_id'"),
    presence_case("presence user_id a list", '{"user_id": ["1"]}',
                  r"invalid channel_data: 'user_id'"),
    presence_case("presence user_id of 129 characters", json.dumps({"user_id": "u" * 129}),
                  r"invalid channel_data: 'user_id'"),
    presence_case("presence user_info over the app's limit",
                  json.dumps({"user_id": "1", "user_info": "x" * (MAX_USER_INFO + 1)}),
                  r"user_info larger than"),
    client_event_case("client event without a channel", "client-x", None,
                      r"a client event needs 'channel'"),
    client_event_case("client event channel not a string", "client-x", ["private-x"],
                      r"a client event needs 'channel'"),
    client_event_case("client event on a public channel", "client-x", "bystander",
                      r"only allowed on private", subscribe="bystander"),
    client_event_case("client event on a channel not subscribed", "client-x", "private-other",
                      r"not subscribed"),
    client_event_case("client event on an encrypted channel", "client-x",
                      "private-encrypted-x", r"not supported on encrypted channels"),
    client_event_case("client event on a user channel", "client-x", "#server-to-user-1",
                      r"only allowed on private"),
    client_event_case("client event name over 200 characters", "client-" + "x" * 200,
                      "private-other", r"longer than 200"),
    Case("client events past the rate limit", client_event_flood, r"rate limit.*closing 4301"),
    origin_case("foreign Origin", "https://evil.example.org"),
    origin_case("malformed Origin", "http://[not-an-address"),
    http_case("user event to a bad user id", 400, path=f"/apps/{APP_ID}/users/a:b/events",
              body=json.dumps({"name": "e", "data": "{}"}).encode()),
    http_case("terminate a bad user id", 400,
              path=f"/apps/{APP_ID}/users/{'u' * 129}/terminate_connections", body=b"{}"),
]


async def test_every_bad_input_is_answered_and_harms_nobody(start_nodes):
    node = start_nodes("node-1", "--max-message-size", str(MAX_MESSAGE),
                       "--header-timeout", str(HEADER_TIMEOUT),
                       "--body-timeout", str(HEADER_TIMEOUT),
                       config=app_toml(enable_client_events=True,
                                       client_event_rate=CLIENT_EVENT_RATE,
                                       max_presence_user_info=MAX_USER_INFO,
                                       allowed_origins=["https://*.example.com"]))
    async with pusher_client(node.ws_url) as bystander:
        ok = await bystander.subscribe("bystander")
        assert ok["event"] == "pusher_internal:subscription_succeeded"
        for n, case in enumerate(CASES):
            log_start = len(node.log())
            try:
                await case.run(node)
            except BaseException as exc:
                raise AssertionError(f"case {case.name!r}: {exc!r}") from exc
            assert node.proc.poll() is None, f"node died on {case.name!r}:\n{node.log()}"
            if case.log is not None:
                await wait_for_log(node, log_start, case.log, case.name)
            response = await trio.to_thread.run_sync(
                publish, node.url, "bystander", "still-here", {"after": case.name})
            assert response.status_code == 200, (case.name, response.text)
            event = await bystander.next()
            assert event["event"] == "still-here", (case.name, event)
            assert json.loads(event["data"]) == {"after": case.name}
            assert event["offset"] == n + 1, f"bystander missed an event around {case.name!r}"
    assert node.proc.poll() is None
    # Every case was an expected refusal, not a bug caught by the crash guard.
    metrics = (await trio.to_thread.run_sync(
        lambda: httpx.get(f"{node.url}/metrics", timeout=5))).text
    assert re.search(r"^turnout_internal_errors_total\{[^}]*\} 0\.0$", metrics, re.M), metrics
    assert "unexpected error" not in node.log(), node.log()


async def wait_for_log(node: NodeProc, start: int, pattern: str, case: str) -> None:
    with trio.move_on_after(3):
        while True:
            if re.search(pattern, node.log()[start:]):
                return
            await trio.sleep(0.02)
    raise AssertionError(f"case {case!r}: no log line matching {pattern!r} in:\n"
                         f"{node.log()[start:]}")


def test_cases_have_unique_names():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
