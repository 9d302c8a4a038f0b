"""The Pusher session logic without sockets: messages in, replies, closes and subscriptions out.

server/session.py is sans-IO; these tests feed it payloads and read what it asked its client
(the connection) and its channel registry (the hub) to do, both recorders from
tests/support/fakes.py.
The same rules against a real node and real clients are in test_protocol.py and
test_bad_input.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from server import protocol
from server.auth import channel_auth
from server.config import AppConfig, Config
from server.interfaces import ConnectionContext
from server.metrics import NodeStats
from server.peerlog import PeerLog
from server.session import PusherSession
from tests.support.fakes import MemoryChannels, RecordingSubscriber

APP = AppConfig("7", "app-key", "app-secret")


def make(max_subscriptions: int = 3) -> tuple[PusherSession, RecordingSubscriber, MemoryChannels,
                                              NodeStats]:
    client, channels, stats = RecordingSubscriber(), MemoryChannels(), NodeStats()
    config = Config(apps=(APP,), node_id="t", max_subscriptions=max_subscriptions)
    context = ConnectionContext(config, stats, PeerLog(100), channels)  # type: ignore[arg-type]
    return PusherSession(APP, context, "127.0.0.1:1"), client, channels, stats


def message(event: str, data: Any = None, **extra: Any) -> bytes:
    return json.dumps({"event": event, "data": data, **extra}).encode()


async def test_welcome_and_ping() -> None:
    session, client, _, _ = make()
    session.welcome(client)
    await session.on_text(client, message("pusher:ping", {}))
    assert client.events() == ["pusher:connection_established", "pusher:pong"]
    established = json.loads(client.messages[0]["data"])
    assert established == {"socket_id": "123.456", "activity_timeout": 120}


async def test_subscribe_public_with_and_without_a_position() -> None:
    session, client, channels, _ = make()
    await session.on_text(client, message("pusher:subscribe", {"channel": "results"}))
    await session.on_text(client, message("pusher:subscribe", json.dumps(
        {"channel": "other", "offset": 5, "epoch": "ab"})))  # data as a JSON string, as pusher-js
    assert channels.subscribed == [("7", "results", None), ("7", "other", (5, "ab"))]
    await session.on_text(client, message("pusher:unsubscribe", {"channel": "results"}))
    assert channels.unsubscribed == ["results"]
    assert client.closed == []


@pytest.mark.parametrize(("data", "expected"), [
    ({"channel": "bad name"}, "invalid channel name"),
    ({"channel": "x" * 165}, "invalid channel name"),
    ({}, "subscribe needs 'channel'"),
    ({"channel": "c", "offset": -1, "epoch": "e"}, "'offset' must be an integer"),
    ({"channel": "c", "offset": True, "epoch": "e"}, "'offset' must be an integer"),
    ({"channel": "c", "offset": 1, "epoch": "e" * 65}, "'offset' must be an integer"),
])
async def test_bad_subscribes_are_refused_with_4200(data: dict[str, Any], expected: str) -> None:
    session, client, channels, stats = make()
    await session.on_text(client, message("pusher:subscribe", data))
    assert channels.subscribed == []
    assert client.events() == ["pusher:error"]
    assert client.messages[0]["data"]["code"] == protocol.RECONNECT
    assert expected in client.messages[0]["data"]["message"]
    assert stats.bad_messages == 1


async def test_the_subscription_limit_refuses_one_more_and_keeps_the_connection() -> None:
    session, client, channels, stats = make(max_subscriptions=2)
    for name in ("a", "b", "a", "c"):
        await session.on_text(client, message("pusher:subscribe", {"channel": name}))
    assert [name for _, name, _ in channels.subscribed] == ["a", "b", "a"]  # 'a' again is fine
    refusal = client.messages[-1]
    assert refusal["event"] == "pusher:subscription_error"
    assert refusal["data"]["status"] == 429
    assert refusal["data"]["type"] == "LimitReached"
    assert stats.subscriptions_refused == 1
    assert client.closed == []


async def test_private_channels_need_the_apps_signature() -> None:
    session, client, channels, stats = make()
    await session.on_text(client, message("pusher:subscribe",
                                          {"channel": "private-a", "auth": "k:bad"}))
    assert channels.subscribed == []
    assert client.events() == ["pusher:subscription_error", "pusher:error"]
    assert client.messages[1]["data"]["code"] == protocol.UNAUTHORIZED
    assert stats.auth_failures == 1
    auth = channel_auth(APP.key, APP.secret, client.socket_id, "private-a")
    await session.on_text(client, message("pusher:subscribe",
                                          {"channel": "private-a", "auth": auth}))
    assert channels.subscribed == [("7", "private-a", None)]
    # Signed for another socket: refused.
    other = channel_auth(APP.key, APP.secret, "9.9", "private-b")
    await session.on_text(client, message("pusher:subscribe",
                                          {"channel": "private-b", "auth": other}))
    assert [name for _, name, _ in channels.subscribed] == ["private-a"]


async def test_a_subscription_the_node_cannot_serve_closes_4100() -> None:
    session, client, channels, _ = make()
    channels.refuse = True
    await session.on_text(client, message("pusher:subscribe", {"channel": "c"}))
    assert client.closed == [(protocol.OVER_CAPACITY, "node cannot reach redis; reconnect "
                                                      "elsewhere")]


@pytest.mark.parametrize(("payload", "code"), [
    (message("pusher:subscribe", {"channel": "presence-x"}), protocol.UNAUTHORIZED),
    (message("pusher:signin", {}), protocol.UNAUTHORIZED),
    (message("client-typing", {}, channel="private-a"), protocol.CLIENT_EVENT_REJECTED),
    (message("pusher:nonsense", {}), protocol.RECONNECT),
    (b"{not json", protocol.RECONNECT),
    (b"[1, 2]", protocol.RECONNECT),
    (message("pusher:unsubscribe", {}), protocol.RECONNECT),
])
async def test_what_is_not_supported_yet_is_answered_not_closed(payload: bytes,
                                                                code: int) -> None:
    session, client, channels, _ = make()
    await session.on_text(client, payload)
    assert channels.subscribed == []
    assert client.messages[-1]["event"] == "pusher:error"
    assert client.messages[-1]["data"]["code"] == code
    assert client.closed == []


async def test_text_that_is_not_utf8_closes_1007() -> None:
    session, client, _, stats = make()
    await session.on_text(client, b'{"event":"pusher:ping","data":"\xff"}')
    assert client.closed == [(1007, "text frame is not valid UTF-8")]
    assert client.messages == []
    assert stats.bad_messages == 1
