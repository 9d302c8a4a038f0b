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
UNSUPPORTED_PROTOCOL = 4007
NO_PROTOCOL = 4008
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
RECONNECT = 4200
PONG_NOT_RECEIVED = 4201
INACTIVE = 4202
CLIENT_EVENT_REJECTED = 4301
# RFC 6455 codes used when the frame layer, not the Pusher layer, is at fault.
WS_PROTOCOL_ERROR = 1002
WS_MESSAGE_TOO_BIG = 1009
WS_GOING_AWAY = 1001

SUPPORTED_PROTOCOL = 7
MAX_CHANNEL_NAME = 164
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,164}")


def valid_channel_name(name: object) -> bool:
    return isinstance(name, str) and _CHANNEL_RE.fullmatch(name) is not None


def is_private(channel: str) -> bool:
    return channel.startswith("private-")


def is_presence(channel: str) -> bool:
    return channel.startswith("presence-")


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
    channel: str, *, offset: int, epoch: str | None, recovered: bool | None
) -> bytes:
    """Subscription confirmation, with turnout's position extension as top-level fields.

    pusher-js ignores unknown top-level fields; resuming clients read ``offset``/``epoch`` (the
    position the live stream starts after) and ``recovered`` (see docs/protocol-extensions.md).
    """
    message: dict[str, Any] = {
        "event": "pusher_internal:subscription_succeeded",
        "channel": channel,
        "data": "{}",
        "offset": offset,
        "epoch": epoch,
    }
    if recovered is not None:
        message["recovered"] = recovered
    return orjson.dumps(message)


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
