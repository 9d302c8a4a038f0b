"""Pusher Channels protocol v7: sans-IO message building and parsing, channel names, codes.

No trio and no sockets here: everything is a pure function of bytes and strings, so the
connection, the hub and the tests share one definition of the wire format.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# Close codes and pusher:error codes (Pusher protocol, "Error codes").
UNKNOWN_APP = 4001
APP_DISABLED = 4003
OVER_QUOTA = 4004
PATH_NOT_FOUND = 4005
INVALID_VERSION = 4006
UNSUPPORTED_PROTOCOL = 4007
NO_PROTOCOL = 4008
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
RECONNECT = 4200
PONG_NOT_RECEIVED = 4201
INACTIVE = 4202
CLIENT_EVENT_REJECTED = 4301
WATCHLIST_LIMIT = 4302

#: Protocol versions accepted on the handshake: 7 (pusher-js, Echo), 6, and 5 (the official
#: Java/Android client). They differ in nothing a server does today: every refusal is sent both
#: as a close code (what 6 and 7 read) and as pusher:error first (what 5 reads).
SUPPORTED_PROTOCOLS = frozenset({"5", "6", "7"})
MAX_CHANNEL_NAME = 164
MAX_USER_ID = 128
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,164}")
#: The channel a signed-in user's connections receive `send_to_user` events on.
USER_CHANNEL_PREFIX = "#server-to-user-"
#: Internal channels: a user's online/offline events for those who watch it, and the
#: membership set of an app's signed-in users (never a channel clients subscribe to).
WATCH_CHANNEL_PREFIX = "#watchlist-"
ONLINE = "#online"
CACHE_PREFIXES = ("cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-")
MEMBER_EVENT_PREFIX = b'{"event":"pusher_internal:member_'
TERMINATE_EVENT = "pusher_internal:terminate"


def valid_channel_name(name: object) -> bool:
    return isinstance(name, str) and _CHANNEL_RE.fullmatch(name) is not None


def valid_user_id(user_id: object) -> bool:
    """A signed-in user's id: it names the user's channel, so the channel-name characters."""
    return (isinstance(user_id, str) and 0 < len(user_id) <= MAX_USER_ID
            and _CHANNEL_RE.fullmatch(user_id) is not None)


def is_private(channel: str) -> bool:
    """private-, private-encrypted- and presence- channels need a signature."""
    return channel.startswith(("private-", "presence-"))


def is_encrypted(channel: str) -> bool:
    return channel.startswith("private-encrypted-")


def is_presence(channel: str) -> bool:
    return channel.startswith("presence-")


def is_cache(channel: str) -> bool:
    return channel.startswith(CACHE_PREFIXES)


def is_user_channel(channel: str) -> bool:
    return channel.startswith(USER_CHANNEL_PREFIX)


def is_internal(channel: str) -> bool:
    """A channel the server subscribes connections to for them (a user's, a watchlist's)."""
    return channel.startswith("#")


def user_channel(user_id: str) -> str:
    return USER_CHANNEL_PREFIX + user_id


def watch_channel(user_id: str) -> str:
    return WATCH_CHANNEL_PREFIX + user_id


def is_member_event(prefix: bytes) -> bool:
    """A stream entry that is a presence member_added/member_removed event."""
    return prefix.startswith(MEMBER_EVENT_PREFIX)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _pusher(event: str, data: Any, channel: str | None = None) -> bytes:
    message: dict[str, Any] = {"event": event}
    if channel is not None:
        message["channel"] = channel
    # pusher:* payloads are JSON-encoded strings ("double encoding"), except pusher:error.
    message["data"] = data if isinstance(data, str) else orjson.dumps(data).decode()
    return orjson.dumps(message)


def connection_established(socket_id: str, activity_timeout: int) -> bytes:
    return _pusher(
        "pusher:connection_established",
        {"socket_id": socket_id, "activity_timeout": activity_timeout},
    )


def error(code: int | None, message: str) -> bytes:
    return orjson.dumps({"event": "pusher:error", "data": {"code": code, "message": message}})


def pong() -> bytes:
    return b'{"event":"pusher:pong","data":"{}"}'


def ping() -> bytes:
    return b'{"event":"pusher:ping","data":"{}"}'


def subscription_succeeded(
    channel: str, *, offset: int, epoch: str | None, recovered: bool | None,
    data: bytes = b'"{}"',
) -> bytes:
    """Subscription confirmation, with turnout's position extension as top-level fields.

    pusher-js ignores unknown top-level fields; resuming clients read ``offset``/``epoch`` (the
    position the live stream starts after) and ``recovered`` (see docs/protocol-extensions.md).
    ``data`` is the JSON string already encoded (a presence channel's member list).
    """
    head = orjson.dumps({"event": "pusher_internal:subscription_succeeded", "channel": channel})
    tail: dict[str, Any] = {"offset": offset, "epoch": epoch}
    if recovered is not None:
        tail["recovered"] = recovered
    return b"%s,\"data\":%s,%s" % (head[:-1], data, orjson.dumps(tail)[1:])


def presence_data(members: dict[str, Any]) -> bytes:
    """The double-encoded ``data`` of a presence subscription_succeeded: ids, hash, count."""
    inner = orjson.dumps({"presence": {"ids": list(members), "hash": members,
                                       "count": len(members)}})
    return orjson.dumps(inner.decode())


def member_added_prefix(channel: str, user_id: str, user_info: Any) -> bytes:
    """pusher_internal:member_added without its closing brace (positions are appended)."""
    data = orjson.dumps({"user_id": user_id, "user_info": user_info}).decode()
    return event_prefix("pusher_internal:member_added", channel, data)


def signin_success(user_data: str) -> bytes:
    return _pusher("pusher:signin_success", {"user_data": user_data})


def cache_miss(channel: str) -> bytes:
    return orjson.dumps({"event": "pusher:cache_miss", "channel": channel, "data": "{}"})


def subscription_count(channel: str, count: int) -> bytes:
    return _pusher("pusher_internal:subscription_count", {"subscription_count": count}, channel)


def cached_event(prefix: bytes) -> bytes:
    """A cache channel's last event as replayed on subscribe: no position fields (it is a copy
    of an event older than the subscription, not part of its live stream), marked ``cached``."""
    return prefix + b',"cached":true}'


def client_event_prefix(event: str, channel: str, data: Any, user_id: str | None) -> bytes:
    """A client event as relayed to the other subscribers: ``data`` as the client sent it,
    ``user_id`` on presence channels; without its closing brace (positions are appended)."""
    message: dict[str, Any] = {"event": event, "channel": channel, "data": data}
    if user_id is not None:
        message["user_id"] = user_id
    return orjson.dumps(message)[:-1]


def terminate_prefix(channel: str) -> bytes:
    """The internal event that ends a user's connections (never sent to a client)."""
    return event_prefix(TERMINATE_EVENT, channel, "{}")


def watchlist_events(events: list[dict[str, Any]]) -> bytes:
    return _pusher("pusher_internal:watchlist_events", {"events": events})


def watchlist_online_prefix(user_id: str) -> bytes:
    """A user's 'online' watchlist event without its closing brace (sequenced in the user's
    watchlist channel; LEAVE_LUA builds the 'offline' one)."""
    return watchlist_events([{"name": "online", "user_ids": [user_id]}])[:-1]


def subscription_error(channel: str, message: str, status: int,
                       error_type: str = "AuthError") -> bytes:
    return orjson.dumps(
        {
            "event": "pusher:subscription_error",
            "channel": channel,
            "data": {"type": error_type, "error": message, "status": status},
        }
    )


def event_prefix(event: str, channel: str, data: str) -> bytes:
    """A channel event without its closing brace; the position is appended per publish."""
    return orjson.dumps({"event": event, "channel": channel, "data": data})[:-1]


def with_position(prefix: bytes, offset: int, epoch: str) -> bytes:
    return b"%s,\"offset\":%d,\"epoch\":\"%s\"}" % (prefix, offset, epoch.encode())


class BadMessage(Exception):
    """A client message that cannot be understood; answered with pusher:error, not a close."""


def parse_client_message(text: bytes) -> tuple[str, Any]:
    """Return (event, data) of a client message; ``data`` is decoded if it was a JSON string."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"invalid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise BadMessage("a message must be a JSON object")
    event = message.get("event")
    if not isinstance(event, str) or not event:
        raise BadMessage("missing 'event'")
    data = message.get("data")
    if isinstance(data, str) and event.startswith("pusher:") and data[:1] in ("{", "["):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BadMessage("'data' is not valid JSON") from None
    if event.startswith("client-"):
        data = {"channel": message.get("channel"), "data": data}
    return event, data
