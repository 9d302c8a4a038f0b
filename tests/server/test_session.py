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

import orjson
import pytest
import trio

from server import protocol
from server.auth import channel_auth, user_auth
from server.config import AppConfig, Config, WebhookConfig
from server.interfaces import ConnectionContext, Member
from server.metrics import NodeStats
from server.peerlog import PeerLog
from server.session import PusherSession
from tests.support.fakes import (
    CountingCluster,
    MemoryChannels,
    RecordingPublisher,
    RecordingSubscriber,
)

APP = AppConfig("7", "app-key", "app-secret")
CHATTY = AppConfig("7", "app-key", "app-secret", enable_client_events=True,
                   client_event_rate=3)


class Harness:
    """A session, its client and the recorders behind it."""

    def __init__(self, app: AppConfig = APP, max_subscriptions: int = 3) -> None:
        self.client = RecordingSubscriber()
        self.channels = MemoryChannels()
        self.publisher = RecordingPublisher()
        self.stats = NodeStats()
        config = Config(apps=(app,), node_id="t", max_subscriptions=max_subscriptions)
        context = ConnectionContext(config, self.stats, PeerLog(100),
                                    self.channels, self.publisher,  # type: ignore[arg-type]
                                    CountingCluster())
        self.app = app
        self.session = PusherSession(app, context, "127.0.0.1:1")

    async def send(self, event: str, data: Any = None, **extra: Any) -> None:
        await self.session.on_text(self.client, message(event, data, **extra))

    def sign(self, channel: str, channel_data: str | None = None) -> str:
        return channel_auth(self.app.key, self.app.secret, self.client.socket_id, channel,
                            channel_data)

    async def join(self, channel: str, user_id: Any, user_info: Any = None) -> None:
        channel_data = json.dumps({"user_id": user_id, "user_info": user_info})
        await self.send("pusher:subscribe", {"channel": channel, "channel_data": channel_data,
                                             "auth": self.sign(channel, channel_data)})

    async def signin(self, user_data: dict[str, Any]) -> str:
        text = json.dumps(user_data)
        auth = user_auth(self.app.key, self.app.secret, self.client.socket_id, text)
        await self.send("pusher:signin", {"auth": auth, "user_data": text})
        return text


def make(max_subscriptions: int = 3) -> tuple[PusherSession, RecordingSubscriber, MemoryChannels,
                                              NodeStats]:
    h = Harness(max_subscriptions=max_subscriptions)
    return h.session, h.client, h.channels, h.stats


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


@pytest.mark.parametrize("name", ["bad name", "x" * 165, "star*", "#server-to-nobody"])
async def test_an_invalid_channel_name_is_a_channel_level_error(name: str) -> None:
    h = Harness()
    await h.send("pusher:subscribe", {"channel": name})
    assert h.channels.subscribed == []
    # Echo's .error() and pusher-js's pusher:subscription_error need the channel.
    assert h.client.events() == ["pusher:subscription_error", "pusher:error"]
    refusal, error = h.client.messages
    assert refusal["channel"] == name
    assert refusal["data"]["status"] == 400
    assert "invalid channel name" in refusal["data"]["error"]
    assert error["data"]["code"] == protocol.RECONNECT
    assert h.client.closed == []


@pytest.mark.parametrize(("data", "expected"), [
    ({}, "subscribe needs 'channel'"),
    ({"channel": 12}, "subscribe needs 'channel'"),
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
    (message("pusher:signin", {}), protocol.UNAUTHORIZED),
    (message("pusher:signin", "x"), protocol.RECONNECT),
    (message("client-typing", {}, channel="private-a"), protocol.CLIENT_EVENT_REJECTED),
    (message("pusher:nonsense", {}), protocol.RECONNECT),
    (b"{not json", protocol.RECONNECT),
    (b"[1, 2]", protocol.RECONNECT),
    (message("pusher:unsubscribe", {}), protocol.RECONNECT),
])
async def test_bad_messages_are_answered_not_closed(payload: bytes, code: int) -> None:
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


# ----------------------------------------------------------------------------- presence


async def test_a_presence_subscribe_joins_as_its_signed_member() -> None:
    h = Harness()
    await h.join("presence-room", 42, {"name": "Ada"})  # Laravel sends integer ids
    assert h.channels.subscribed == [("7", "presence-room", None)]
    assert h.channels.members["presence-room"] == Member("42", {"name": "Ada"})
    assert h.session.presence_users == {"presence-room": "42"}
    await h.send("pusher:unsubscribe", {"channel": "presence-room"})
    assert not h.session.presence_users


@pytest.mark.parametrize("how", ["no channel_data", "no auth", "data not signed",
                                 "other socket", "other channel"])
async def test_a_presence_subscribe_needs_its_channel_data_signed(how: str) -> None:
    h = Harness()
    channel_data = json.dumps({"user_id": "1"})
    data: dict[str, Any] = {"channel": "presence-room", "channel_data": channel_data,
                            "auth": h.sign("presence-room", channel_data)}
    if how == "no channel_data":
        del data["channel_data"]
    elif how == "no auth":
        del data["auth"]
    elif how == "data not signed":
        data["auth"] = h.sign("presence-room")
    elif how == "other socket":
        data["auth"] = channel_auth(APP.key, APP.secret, "1.1", "presence-room", channel_data)
    else:
        data["auth"] = h.sign("presence-other", channel_data)
    await h.send("pusher:subscribe", data)
    assert h.channels.subscribed == []
    assert h.client.events() == ["pusher:subscription_error", "pusher:error"]
    assert h.client.messages[0]["channel"] == "presence-room"
    assert h.client.messages[0]["data"]["status"] == 401
    assert h.client.messages[1]["data"]["code"] == protocol.UNAUTHORIZED
    assert h.stats.auth_failures == 1


@pytest.mark.parametrize(("channel_data", "why"), [
    ("not json", "not JSON"),
    ("[1]", "JSON object"),
    (json.dumps({"user_info": {}}), "user_id"),
    (json.dumps({"user_id": ""}), "user_id"),
    (json.dumps({"user_id": True}), "user_id"),
    (json.dumps({"user_id": "x" * 129}), "user_id"),
    (json.dumps({"user_id": "1", "user_info": {"bio": "x" * 1100}}), "larger than 1024"),
])
async def test_bad_channel_data_is_refused_for_the_channel(channel_data: str, why: str) -> None:
    h = Harness()
    await h.send("pusher:subscribe", {"channel": "presence-room", "channel_data": channel_data,
                                      "auth": h.sign("presence-room", channel_data)})
    assert h.channels.subscribed == []
    refusal = h.client.messages[0]
    assert refusal["event"] == "pusher:subscription_error"
    assert refusal["channel"] == "presence-room"
    assert refusal["data"]["status"] == 400
    assert why in refusal["data"]["error"]


async def test_a_full_presence_channel_refuses_the_channel_only() -> None:
    h = Harness()
    h.channels.full.add("presence-room")
    await h.join("presence-room", "101")
    assert h.client.events() == ["pusher:subscription_error"]
    refusal = h.client.messages[0]
    assert (refusal["channel"], refusal["data"]["status"], refusal["data"]["type"]) == (
        "presence-room", 403, "LimitReached")
    assert not h.session.presence_users
    assert h.client.closed == []


async def test_a_signed_in_connection_joins_presence_without_channel_data() -> None:
    """pusher-js 8 authorizes presence with only `auth` when the user is signed in."""
    h = Harness()
    await h.signin({"id": "u1", "user_info": {"name": "Ada"}})
    await h.send("pusher:subscribe", {"channel": "presence-room",
                                      "auth": h.sign("presence-room")})
    assert h.channels.members["presence-room"] == Member("u1", {"name": "Ada"})


# ----------------------------------------------------------------------------- sign-in


async def test_signin_success_subscribes_the_users_channel_quietly() -> None:
    h = Harness()
    text = await h.signin({"id": "u1", "user_info": {"name": "Ada"}})
    assert h.client.events() == ["pusher:signin_success"]
    assert json.loads(h.client.messages[0]["data"]) == {"user_data": text}
    assert h.channels.quiet == ["#server-to-user-u1"]
    # pusher-js then subscribes to it explicitly: confirmed, for this user only.
    await h.send("pusher:subscribe", {"channel": "#server-to-user-u1", "auth": ""})
    assert h.client.events()[-1] == "pusher_internal:subscription_succeeded"
    await h.send("pusher:subscribe", {"channel": "#server-to-user-u2"})
    assert h.client.events()[-2:] == ["pusher:subscription_error", "pusher:error"]
    assert h.client.messages[-1]["data"]["code"] == protocol.UNAUTHORIZED
    # Signing in again as the same user is fine (no second subscription); as another, not.
    await h.signin({"id": "u1"})
    assert h.client.events()[-1] == "pusher:signin_success"
    assert h.channels.quiet == ["#server-to-user-u1"]
    await h.signin({"id": "u2"})
    assert h.client.messages[-1]["data"]["code"] == protocol.UNAUTHORIZED


async def test_a_user_channel_needs_a_sign_in() -> None:
    h = Harness()
    await h.send("pusher:subscribe", {"channel": "#server-to-user-u1"})
    assert h.channels.subscribed == []
    assert h.client.messages[0]["channel"] == "#server-to-user-u1"


@pytest.mark.parametrize(("user_data", "code", "why"), [
    ({"user_info": {}}, protocol.UNAUTHORIZED, "'id'"),
    ({"id": 7}, protocol.UNAUTHORIZED, "'id'"),
    ({"id": "has space"}, protocol.UNAUTHORIZED, "'id'"),
    ({"id": "u", "watchlist": "u2"}, protocol.WATCHLIST_LIMIT, "watchlist"),
    ({"id": "u", "watchlist": [f"u{i}" for i in range(101)]}, protocol.WATCHLIST_LIMIT,
     "at most 100"),
    ({"id": "u", "watchlist": ["not an id"]}, protocol.WATCHLIST_LIMIT, "not a user id"),
])
async def test_bad_user_data_is_refused(user_data: dict[str, Any], code: int, why: str) -> None:
    h = Harness()
    await h.signin(user_data)
    assert h.client.events() == ["pusher:error"]
    assert h.client.messages[0]["data"]["code"] == code
    assert why in h.client.messages[0]["data"]["message"]
    assert h.channels.subscribed == []


async def test_a_signin_with_a_bad_signature_is_refused_4009() -> None:
    h = Harness()
    await h.send("pusher:signin", {"auth": f"{APP.key}:{'0' * 64}",
                                   "user_data": json.dumps({"id": "u1"})})
    assert h.client.messages[0]["data"]["code"] == protocol.UNAUTHORIZED
    assert h.session.user is None
    assert h.stats.auth_failures == 1


# ----------------------------------------------------------------------------- client events


async def test_client_events_are_published_to_others_with_the_senders_user_id() -> None:
    h = Harness(CHATTY)
    await h.join("presence-room", "u1")
    await h.send("pusher:subscribe", {"channel": "private-chat", "auth": h.sign("private-chat")})
    await h.send("client-typing", {"who": "me"}, channel="presence-room")
    await h.send("client-typing", "plain text", channel="private-chat")
    (_, presence), (_, private) = h.publisher.items
    assert presence.exclude == private.exclude == h.client.socket_id  # never echoed
    assert orjson.loads(presence.prefix + b"}") == {
        "event": "client-typing", "channel": "presence-room", "data": {"who": "me"},
        "user_id": "u1"}
    assert orjson.loads(private.prefix + b"}") == {
        "event": "client-typing", "channel": "private-chat", "data": "plain text"}
    assert not presence.cache
    assert not presence.webhook  # no endpoint wants client_event
    assert h.stats.client_events == 2


@pytest.mark.parametrize(("app", "channel", "subscribe", "why"), [
    (APP, "private-chat", True, "not enabled"),
    (CHATTY, "public-chat", True, "only allowed on private and presence"),
    (CHATTY, "private-encrypted-chat", True, "encrypted"),
    (CHATTY, "private-chat", False, "not subscribed"),
    (CHATTY, None, False, "needs 'channel'"),
])
async def test_refused_client_events_are_answered_4301(app: AppConfig, channel: str | None,
                                                       subscribe: bool, why: str) -> None:
    h = Harness(app)
    if subscribe:
        assert channel is not None
        await h.send("pusher:subscribe", {"channel": channel, "auth": h.sign(channel)})
        h.client.messages.clear()
    await h.send("client-x", {}, channel=channel)
    assert h.publisher.items == []
    assert h.client.events() == ["pusher:error"]
    assert h.client.messages[0]["data"]["code"] == protocol.CLIENT_EVENT_REJECTED
    assert why in h.client.messages[0]["data"]["message"]
    assert h.client.closed == []


async def test_the_client_event_rate_limit_closes_4301(autojump_clock: Any) -> None:
    h = Harness(CHATTY)  # 3 per second, a bucket of 3
    await h.send("pusher:subscribe", {"channel": "private-chat", "auth": h.sign("private-chat")})
    for _ in range(3):
        await h.send("client-a", {}, channel="private-chat")
    await trio.sleep(0.34)  # one token back
    await h.send("client-a", {}, channel="private-chat")
    assert len(h.publisher.items) == 4
    assert h.client.closed == []
    await h.send("client-a", {}, channel="private-chat")  # the bucket is empty: one too many
    assert len(h.publisher.items) == 4
    assert h.client.closed == [(protocol.CLIENT_EVENT_REJECTED,
                                "client event rate limit: at most 3 per second")]
    assert h.client.messages[-1]["data"]["code"] == protocol.CLIENT_EVENT_REJECTED
    assert h.stats.client_events_rejected == 1


async def test_a_client_event_webhook_rides_with_the_publish() -> None:
    app = AppConfig("7", "app-key", "app-secret", enable_client_events=True, webhooks=(
        WebhookConfig("http://127.0.0.1:1/hook", ("client_event",)),))
    h = Harness(app)
    await h.join("presence-room", "u1")
    await h.send("client-move", {"x": 1}, channel="presence-room")
    ((_, item),) = h.publisher.items
    assert orjson.loads(item.webhook) == {
        "name": "client_event", "channel": "presence-room", "event": "client-move",
        "data": '{"x":1}', "socket_id": h.client.socket_id, "user_id": "u1"}


async def test_a_client_event_redis_cannot_take_is_reported() -> None:
    h = Harness(CHATTY)
    await h.send("pusher:subscribe", {"channel": "private-chat", "auth": h.sign("private-chat")})
    h.publisher.fail = True
    await h.send("client-a", {}, channel="private-chat")
    assert h.client.messages[-1]["event"] == "pusher:error"
    assert "not delivered" in h.client.messages[-1]["data"]["message"]
    assert h.client.closed == []


async def test_the_sign_in_channel_does_not_count_against_the_subscription_limit() -> None:
    h = Harness(max_subscriptions=2)
    await h.signin({"id": "u1"})
    for name in ("a", "b", "c"):
        await h.send("pusher:subscribe", {"channel": name})
    assert [name for _, name, _ in h.channels.subscribed] == ["#server-to-user-u1", "a", "b"]
    assert h.client.messages[-1]["data"]["type"] == "LimitReached"


async def test_a_watchlist_subscribes_its_users_and_tells_who_is_online() -> None:
    h = Harness(max_subscriptions=2)
    h.publisher.online = {"u3"}
    await h.signin({"id": "u1", "watchlist": ["u2", "u3", "u2"]})
    assert h.channels.quiet == ["#server-to-user-u1", "#watchlist-u2", "#watchlist-u3"]
    assert h.channels.members["#server-to-user-u1"] == Member("u1", None)  # online
    assert h.client.events() == ["pusher:signin_success", "pusher_internal:watchlist_events"]
    assert json.loads(h.client.messages[1]["data"]) == {
        "events": [{"name": "online", "user_ids": ["u3"]}]}
    # The internal subscriptions do not count against the client's own.
    for name in ("a", "b"):
        await h.send("pusher:subscribe", {"channel": name})
    assert h.client.events()[-1] == "pusher_internal:subscription_succeeded"
