"""The Pusher protocol of one connection, sans-IO: client messages in, replies and closes out.

A `PusherSession` knows the rules (which events exist, channel names, the per-connection
subscription limit, private-channel signatures, resume positions) and nothing about sockets or
frames: it reads text payloads, answers through the `Subscriber` it is given (the connection:
``send_message``/``close``) and subscribes it through `Channels`. The connection is passed to
each call rather than kept, so the two never reference each other (a cycle would leave every
closed connection to the cyclic garbage collector). The tests feed it directly
(tests/server/test_session.py).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Literal

from . import protocol
from .auth import verify_channel_auth
from .config import AppConfig
from .interfaces import ConnectionContext, Position, Subscriber, SubscribeRefused
from .peerlog import clip

log = logging.getLogger("turnout.connection")

__all__ = ["PusherSession", "new_socket_id"]

# Epochs are short server-made tokens; a longer one is made up.
MAX_EPOCH = 64


def new_socket_id() -> str:
    return f"{secrets.randbelow(10**9) + 1}.{secrets.randbelow(10**9) + 1}"


class PusherSession:
    __slots__ = ("app", "context", "peer")

    def __init__(self, app: AppConfig, context: ConnectionContext, peer: str) -> None:
        self.app = app
        self.context = context
        self.peer = peer

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
            self.context.channels.unsubscribe(client, channel)
        elif event == "pusher:signin":
            self._error(client, protocol.UNAUTHORIZED,
                        "user sign-in is not supported by this server yet")
        elif event.startswith("client-"):
            self._error(client, protocol.CLIENT_EVENT_REJECTED,
                        "client events are not enabled on this server")
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

    async def _on_subscribe(self, client: Subscriber, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("channel"), str):
            self._error(client, protocol.RECONNECT,
                        "invalid message format: subscribe needs 'channel'")
            return
        channel: str = data["channel"]
        if not protocol.valid_channel_name(channel):
            self._error(client, protocol.RECONNECT,
                        f"invalid channel name {clip(channel, 170)}: at most 164 characters "
                        "of A-Z a-z 0-9 _ - = @ , . ;")
            return
        context = self.context
        limit = context.config.max_subscriptions
        if channel not in client.channels and len(client.channels) >= limit:
            context.stats.subscriptions_refused += 1
            message = (f"subscription limit reached: at most {limit} channels per connection; "
                       "unsubscribe from one first")
            self._log(client, "%s (refused %s)", message, channel)
            client.send_message(protocol.subscription_error(
                channel, message, 429, error_type="LimitReached"))
            return
        if protocol.is_presence(channel):
            self._refuse(client, channel,
                         "presence channels are not supported by this server yet")
            return
        if protocol.is_private(channel) and not verify_channel_auth(
            self.app.key, self.app.secret, client.socket_id, channel, data.get("auth")
        ):
            self._refuse(client, channel, "invalid or missing signature for private channel")
            return
        position = _position(data)
        if position is False:
            self._error(client, protocol.RECONNECT,
                        "invalid message format: 'offset' must be an integer >= 0 and 'epoch' "
                        "a string")
            return
        try:
            await context.channels.subscribe(client, self.app.id, channel, position)
        except SubscribeRefused as exc:
            context.peer_log.warning(log, "refusing subscription of %s to %s: %s",
                                     client.socket_id, channel, exc)
            client.close(protocol.OVER_CAPACITY,
                              "node cannot reach redis; reconnect elsewhere")

    def _refuse(self, client: Subscriber, channel: str, message: str) -> None:
        self.context.stats.auth_failures += 1
        self._log(client, "subscription to %s refused: %s", channel, message)
        client.send_message(protocol.subscription_error(channel, message, 401))
        client.send_message(protocol.error(protocol.UNAUTHORIZED, message))


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
