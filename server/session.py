"""The Pusher protocol of one connection, sans-IO: client messages in, replies and closes out.

A `PusherSession` knows the rules (which events exist, channel names, the per-connection
subscription limit, channel signatures, presence channel_data, user sign-in, client events and
their rate limit, resume positions) and nothing about sockets or frames: it reads text
payloads, answers through the `Subscriber` it is given (the connection: ``send_message``/
``close``), subscribes it through `Channels` and publishes client events through the
`Publisher`. The connection is passed to each call rather than kept, so the two never
reference each other (a cycle would leave every closed connection to the cyclic garbage
collector). The tests feed it directly (tests/server/test_session.py).

A refusal that concerns one channel is a ``pusher:subscription_error`` carrying the channel
(pusher-js and Echo route it to that channel's error handler), followed by the connection-level
``pusher:error`` with its code for clients that only listen there.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Literal

import orjson
import trio

from . import protocol
from .auth import verify_channel_auth, verify_user_auth
from .config import AppConfig
from .interfaces import (
    ChannelFull,
    ConnectionContext,
    Member,
    Position,
    PublishItem,
    Subscriber,
    SubscribeRefused,
)
from .peerlog import clip
from .redis_link import RedisError, RedisLinkDown

log = logging.getLogger("turnout.connection")

__all__ = ["PusherSession", "new_socket_id"]

# Epochs are short server-made tokens; a longer one is made up.
MAX_EPOCH = 64
MAX_EVENT_NAME = 200
MAX_WATCHLIST = 100


def new_socket_id() -> str:
    return f"{secrets.randbelow(10**9) + 1}.{secrets.randbelow(10**9) + 1}"


class _User:
    """The user a connection signed in as (pusher:signin)."""

    __slots__ = ("id", "info", "watchlist")

    def __init__(self, user_id: str, info: Any, watchlist: list[str]) -> None:
        self.id = user_id
        self.info = info
        self.watchlist = watchlist


class PusherSession:
    __slots__ = ("_bucket", "_bucket_at", "app", "context", "peer", "presence_users", "user")

    def __init__(self, app: AppConfig, context: ConnectionContext, peer: str) -> None:
        self.app = app
        self.context = context
        self.peer = peer
        self.user: _User | None = None
        # presence channel -> the user id this connection joined it as (for client events);
        # made on the first join (an idle connection's memory is the node's budget).
        self.presence_users: dict[str, str] | None = None
        # Client-event token bucket: tokens left and when they were counted.
        self._bucket = app.client_event_rate
        self._bucket_at = 0.0

    def welcome(self, client: Subscriber) -> None:
        """pusher:connection_established, the first message of every connection."""
        client.send_message(protocol.connection_established(
            client.socket_id, self.context.config.activity_timeout))

    async def on_text(self, client: Subscriber, payload: bytes) -> None:
        """One complete text message from the client."""
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            self.context.stats.bad_messages += 1
            self._log(client, "text frame is not valid UTF-8, closing 1007")
            client.close(1007, "text frame is not valid UTF-8")
            return
        try:
            event, data = protocol.parse_client_message(payload)
        except protocol.BadMessage as exc:
            self._error(client, protocol.RECONNECT,
                        f"invalid message format: {clip(str(exc), 120)}")
            return
        if event == "pusher:ping":
            client.send_message(protocol.pong())
        elif event == "pusher:pong":
            pass
        elif event == "pusher:subscribe":
            await self._on_subscribe(client, data)
        elif event == "pusher:unsubscribe":
            channel = data.get("channel") if isinstance(data, dict) else None
            if not isinstance(channel, str):
                self._error(client, protocol.RECONNECT,
                            "invalid message format: missing 'channel'")
                return
            if self.presence_users:
                self.presence_users.pop(channel, None)
            self.context.channels.unsubscribe(client, channel)
        elif event == "pusher:signin":
            await self._on_signin(client, data)
        elif event.startswith("client-"):
            await self._on_client_event(client, event, data)
        else:
            self._error(client, protocol.RECONNECT,
                        f"invalid message format: unsupported event {clip(event, 64)}")

    def _log(self, client: Subscriber, message: str, *args: Any) -> None:
        self.context.peer_log.info(log, "client %s (%s): " + message, client.socket_id,
                                   self.peer, *args)

    def _error(self, client: Subscriber, code: int | None, message: str) -> None:
        """Refuse one message with pusher:error; ``message`` must clip anything client-made."""
        self.context.stats.bad_messages += 1
        self._log(client, "%s", message)
        client.send_message(protocol.error(code, message))

    def _channel_error(self, client: Subscriber, channel: str, status: int, message: str, *,
                       code: int | None, error_type: str) -> None:
        """Refuse a subscription: pusher:subscription_error carrying the channel (what
        pusher-js and Echo's .error() listen to), then pusher:error with ``code``."""
        self._log(client, "subscription to %s refused: %s", clip(channel, 170), message)
        client.send_message(protocol.subscription_error(channel, message, status, error_type))
        if code is not None:
            client.send_message(protocol.error(code, message))

    # ------------------------------------------------------------------ subscribe
    async def _on_subscribe(self, client: Subscriber, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("channel"), str):
            self._error(client, protocol.RECONNECT,
                        "invalid message format: subscribe needs 'channel'")
            return
        channel: str = data["channel"]
        context = self.context
        if protocol.is_user_channel(channel):
            await self._subscribe_user_channel(client, channel, data)
            return
        if not protocol.valid_channel_name(channel):
            context.stats.bad_messages += 1
            self._channel_error(
                client, channel, 400, f"invalid channel name {clip(channel, 170)}: at most 164 "
                "characters of A-Z a-z 0-9 _ - = @ , . ;", code=protocol.RECONNECT,
                error_type="InvalidChannel")
            return
        limit = context.config.max_subscriptions
        if channel not in client.channels and _subscriptions(client) >= limit:
            context.stats.subscriptions_refused += 1
            message = (f"subscription limit reached: at most {limit} channels per connection; "
                       "unsubscribe from one first")
            self._log(client, "%s (refused %s)", message, channel)
            client.send_message(protocol.subscription_error(
                channel, message, 429, error_type="LimitReached"))
            return
        position = _position(data)
        if position is False:
            self._error(client, protocol.RECONNECT,
                        "invalid message format: 'offset' must be an integer >= 0 and 'epoch' "
                        "a string")
            return
        member: Member | None = None
        if protocol.is_presence(channel):
            member = self._presence_member(client, channel, data)
            if member is None:
                return
        elif protocol.is_private(channel) and not verify_channel_auth(
            self.app.key, self.app.secret, client.socket_id, channel, data.get("auth")
        ):
            self._refuse(client, channel, "invalid or missing signature for private channel")
            return
        try:
            await context.channels.subscribe(client, self.app.id, channel, position,
                                             member=member)
        except ChannelFull as exc:
            self._channel_error(client, channel, 403, str(exc), code=None,
                                error_type="LimitReached")
            return
        except SubscribeRefused as exc:
            context.peer_log.warning(log, "refusing subscription of %s to %s: %s",
                                     client.socket_id, channel, exc)
            client.close(protocol.OVER_CAPACITY,
                         "node cannot reach redis; reconnect elsewhere")
            return
        if member is not None:
            if self.presence_users is None:
                self.presence_users = {}
            self.presence_users[channel] = member.user_id

    def _presence_member(self, client: Subscriber, channel: str,
                         data: dict[str, Any]) -> Member | None:
        """The member a presence subscribe joins as, from its signed channel_data or, without
        channel_data, from the connection's sign-in (pusher-js 8 does that); None if refused."""
        channel_data = data.get("channel_data")
        if channel_data is None and self.user is not None:
            if not verify_channel_auth(self.app.key, self.app.secret, client.socket_id,
                                       channel, data.get("auth")):
                self._refuse(client, channel, "invalid or missing signature for presence "
                             "channel")
                return None
            return Member(self.user.id, self.user.info)
        if not isinstance(channel_data, str) or not verify_channel_auth(
                self.app.key, self.app.secret, client.socket_id, channel, data.get("auth"),
                channel_data):
            self._refuse(client, channel, "invalid or missing signature for presence channel "
                         "(the signature covers socket_id:channel:channel_data)")
            return None
        try:
            member = parse_channel_data(channel_data, self.app.max_presence_user_info)
        except ValueError as exc:
            self.context.stats.bad_messages += 1
            self._channel_error(client, channel, 400, f"invalid channel_data: {exc}",
                                code=protocol.RECONNECT, error_type="InvalidChannelData")
            return None
        return member

    async def _subscribe_user_channel(self, client: Subscriber, channel: str,
                                      data: dict[str, Any]) -> None:
        """#server-to-user-{id}: only the connection signed in as that user (pusher-js
        subscribes to it after pusher:signin_success; the sign-in already did)."""
        if self.user is None or channel != protocol.user_channel(self.user.id):
            self._refuse(client, channel, "only a connection signed in as this user may "
                         "subscribe to its channel")
            return
        position = _position(data)
        try:
            await self.context.channels.subscribe(client, self.app.id, channel,
                                                  position or None)
        except SubscribeRefused:
            client.close(protocol.OVER_CAPACITY, "node cannot reach redis; reconnect elsewhere")

    def _refuse(self, client: Subscriber, channel: str, message: str) -> None:
        self.context.stats.auth_failures += 1
        self._channel_error(client, channel, 401, message, code=protocol.UNAUTHORIZED,
                            error_type="AuthError")

    # ------------------------------------------------------------------ sign-in
    async def _on_signin(self, client: Subscriber, data: Any) -> None:
        if not isinstance(data, dict):
            self._error(client, protocol.RECONNECT, "invalid message format: signin needs "
                        "'auth' and 'user_data'")
            return
        user_data = data.get("user_data")
        if not isinstance(user_data, str) or not verify_user_auth(
                self.app.key, self.app.secret, client.socket_id, user_data, data.get("auth")):
            self.context.stats.auth_failures += 1
            self._error(client, protocol.UNAUTHORIZED, "invalid or missing signature for "
                        "sign-in (the signature covers socket_id::user::user_data)")
            return
        try:
            user = parse_user_data(user_data, self.app.max_presence_user_info)
        except ValueError as exc:
            code = protocol.WATCHLIST_LIMIT if isinstance(exc, WatchlistError) else \
                protocol.UNAUTHORIZED
            self._error(client, code, f"invalid user_data: {exc}")
            return
        if self.user is not None and self.user.id != user.id:
            self._error(client, protocol.UNAUTHORIZED, "this connection is signed in as "
                        "another user already")
            return
        first = self.user is None
        self.user = user
        online: list[str] = []
        if first:
            channels = self.context.channels
            try:
                # The user's channel (send_to_user, terminate), the user online for those
                # who watch it, and the users it watches.
                await channels.subscribe(client, self.app.id, protocol.user_channel(user.id),
                                         None, quiet=True, member=Member(user.id, user.info))
                for watched in user.watchlist:
                    await channels.subscribe(client, self.app.id,
                                             protocol.watch_channel(watched), None, quiet=True)
                online = await self.context.publisher.read_online(self.app.id, user.watchlist)
            except (SubscribeRefused, RedisLinkDown, RedisError):
                self.user = None
                client.close(protocol.OVER_CAPACITY,
                             "node cannot reach redis; reconnect elsewhere")
                return
        client.send_message(protocol.signin_success(user_data))
        if first and online:
            # The watched users online now; later changes arrive as they happen.
            client.send_message(protocol.watchlist_events([{"name": "online",
                                                            "user_ids": online}]))

    # ------------------------------------------------------------------ client events
    async def _on_client_event(self, client: Subscriber, event: str, data: Any) -> None:
        channel = data.get("channel") if isinstance(data, dict) else None
        body = data.get("data") if isinstance(data, dict) else None
        refusal = self._client_event_refusal(client, event, channel)
        if refusal is not None:
            self._error(client, protocol.CLIENT_EVENT_REJECTED, refusal)
            return
        assert isinstance(channel, str)
        if not self._take_token():
            self.context.stats.client_events_rejected += 1
            message = (f"client event rate limit: at most {self.app.client_event_rate:g} "
                       "per second")
            self._log(client, "%s, closing 4301", message)
            client.send_message(protocol.error(protocol.CLIENT_EVENT_REJECTED, message))
            client.close(protocol.CLIENT_EVENT_REJECTED, message)
            return
        user_id = self.presence_users.get(channel) if self.presence_users else None
        webhook = b""
        if "client_event" in self.app.webhook_types():
            hook: dict[str, Any] = {
                "name": "client_event", "channel": channel, "event": event,
                "data": body if isinstance(body, str) else orjson.dumps(body).decode(),
                "socket_id": client.socket_id}
            if user_id is not None:
                hook["user_id"] = user_id
            webhook = orjson.dumps(hook)
        item = PublishItem(channel, protocol.client_event_prefix(event, channel, body, user_id),
                           client.socket_id, False, webhook)
        try:
            await self.context.publisher.publish_many(self.app.id, [item])
        except (RedisLinkDown, RedisError) as exc:
            self._error(client, None, f"client event not delivered: redis unavailable "
                        f"({clip(str(exc), 80)})")
            return
        self.context.stats.client_events += 1

    def _client_event_refusal(self, client: Subscriber, event: str,
                              channel: object) -> str | None:
        if not self.app.enable_client_events:
            return "client events are not enabled for this app"
        if len(event) > MAX_EVENT_NAME:
            return f"client event name longer than {MAX_EVENT_NAME} characters"
        if not isinstance(channel, str):
            return "a client event needs 'channel'"
        if not protocol.is_private(channel) or protocol.is_user_channel(channel):
            return "client events are only allowed on private and presence channels"
        if protocol.is_encrypted(channel):
            return "client events are not supported on encrypted channels"
        if channel not in client.channels:
            return f"not subscribed to {clip(channel, 170)}"
        return None

    def _take_token(self) -> bool:
        rate = self.app.client_event_rate
        now = trio.current_time()
        self._bucket = min(rate, self._bucket + (now - self._bucket_at) * rate)
        self._bucket_at = now
        if self._bucket >= 1:
            self._bucket -= 1
            return True
        return False


def parse_channel_data(text: str, max_info: int) -> Member:
    """A presence member from its channel_data JSON: user_id (string, or an integer as
    Laravel sends it) and optional user_info; raises ValueError with the reason."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    user_id = _user_id(value.get("user_id"), "user_id")
    info = value.get("user_info")
    if len(orjson.dumps(info)) > max_info:
        raise ValueError(f"user_info larger than {max_info} bytes")
    return Member(user_id, info)


def parse_user_data(text: str, max_info: int) -> _User:
    """A signed-in user from its user_data JSON: id (string), user_info, watchlist."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    user_id = value.get("id")
    if not protocol.valid_user_id(user_id):
        raise ValueError(f"'id' must be a string of 1-{protocol.MAX_USER_ID} characters of "
                         "A-Z a-z 0-9 _ - = @ , . ;")
    info = value.get("user_info")
    if len(orjson.dumps(info)) > max_info:
        raise ValueError(f"user_info larger than {max_info} bytes")
    watchlist = value.get("watchlist") or []
    if not isinstance(watchlist, list) or len(watchlist) > MAX_WATCHLIST:
        raise WatchlistError(f"'watchlist' must be a list of at most {MAX_WATCHLIST} user ids")
    for watched in watchlist:
        if not protocol.valid_user_id(watched):
            raise WatchlistError(f"watchlist entry {clip(str(watched), 40)} is not a user id")
    assert isinstance(user_id, str)
    return _User(user_id, info, list(dict.fromkeys(watchlist)))


class WatchlistError(ValueError):
    """A sign-in's watchlist breaks its limits (pusher:error 4302)."""


def _user_id(value: object, name: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= protocol.MAX_USER_ID:
        raise ValueError(f"'{name}' must be a string (or an integer) of 1-"
                         f"{protocol.MAX_USER_ID} characters")
    return value


def _subscriptions(client: Subscriber) -> int:
    """The client's own subscriptions (not those its sign-in made: user, watchlist)."""
    return sum(1 for name in client.channels if not protocol.is_internal(name))


def _position(data: dict[str, Any]) -> Position | Literal[False] | None:
    """(offset, epoch) from a subscribe message, None if absent, False if malformed."""
    offset = data.get("offset")
    epoch = data.get("epoch")
    if offset is None and epoch is None:
        return None
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**63:
        return False
    if not isinstance(epoch, str) or len(epoch) > MAX_EPOCH:
        return False
    return offset, epoch
