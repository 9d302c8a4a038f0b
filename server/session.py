"""The Pusher protocol of one connection, sans-IO: client messages in, replies and closes out.

A `PusherSession` knows the rules (which events exist, channel names, the per-connection
subscription limit, private-channel signatures, resume positions) and nothing about sockets or
frames: it reads text payloads, answers through its `Subscriber` (``send_message``/``close``)
and subscribes through `Channels`. The websocket connection feeds it; the tests feed it
directly (tests/server/test_session.py).
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
    __slots__ = ("app", "client", "context", "peer")

    def __init__(self, client: Subscriber, app: AppConfig, context: ConnectionContext,
                 peer: str) -> None:
        self.client = client
        self.app = app
        self.context = context
        self.peer = peer

    def welcome(self) -> None:
        """pusher:connection_established, the first message of every connection."""
        self.client.send_message(protocol.connection_established(
            self.client.socket_id, self.context.config.activity_timeout))

    async def on_text(self, payload: bytes) -> None:
        """One complete text message from the client."""
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            self.context.stats.bad_messages += 1
            self._log("text frame is not valid UTF-8, closing 1007")
            self.client.close(1007, "text frame is not valid UTF-8")
            return
        try:
            event, data = protocol.parse_client_message(payload)
        except protocol.BadMessage as exc:
            self._error(protocol.RECONNECT, f"invalid message format: {clip(str(exc), 120)}")
            return
        if event == "pusher:ping":
            self.client.send_message(protocol.pong())
        elif event == "pusher:pong":
            pass
        elif event == "pusher:subscribe":
            await self._on_subscribe(data)
        elif event == "pusher:unsubscribe":
            channel = data.get("channel") if isinstance(data, dict) else None
            if not isinstance(channel, str):
                self._error(protocol.RECONNECT, "invalid message format: missing 'channel'")
                return
            self.context.channels.unsubscribe(self.client, channel)
        elif event == "pusher:signin":
            self._error(protocol.UNAUTHORIZED, "user sign-in is not supported by this server yet")
        elif event.startswith("client-"):
            self._error(protocol.CLIENT_EVENT_REJECTED,
                        "client events are not enabled on this server")
        else:
            self._error(protocol.RECONNECT,
                        f"invalid message format: unsupported event {clip(event, 64)}")

    def _log(self, message: str, *args: Any) -> None:
        self.context.peer_log.info(log, "client %s (%s): " + message, self.client.socket_id,
                                   self.peer, *args)

    def _error(self, code: int | None, message: str) -> None:
        """Refuse one message with pusher:error; ``message`` must clip anything client-made."""
        self.context.stats.bad_messages += 1
        self._log("%s", message)
        self.client.send_message(protocol.error(code, message))

    async def _on_subscribe(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("channel"), str):
            self._error(protocol.RECONNECT, "invalid message format: subscribe needs 'channel'")
            return
        channel: str = data["channel"]
        if not protocol.valid_channel_name(channel):
            self._error(protocol.RECONNECT,
                        f"invalid channel name {clip(channel, 170)}: at most 164 characters "
                        "of A-Z a-z 0-9 _ - = @ , . ;")
            return
        context = self.context
        limit = context.config.max_subscriptions
        if channel not in self.client.channels and len(self.client.channels) >= limit:
            context.stats.subscriptions_refused += 1
            message = (f"subscription limit reached: at most {limit} channels per connection; "
                       "unsubscribe from one first")
            self._log("%s (refused %s)", message, channel)
            self.client.send_message(protocol.subscription_error(
                channel, message, 429, error_type="LimitReached"))
            return
        if protocol.is_presence(channel):
            self._refuse(channel, "presence channels are not supported by this server yet")
            return
        if protocol.is_private(channel) and not verify_channel_auth(
            self.app.key, self.app.secret, self.client.socket_id, channel, data.get("auth")
        ):
            self._refuse(channel, "invalid or missing signature for private channel")
            return
        position = _position(data)
        if position is False:
            self._error(protocol.RECONNECT,
                        "invalid message format: 'offset' must be an integer >= 0 and 'epoch' "
                        "a string")
            return
        try:
            await context.channels.subscribe(self.client, self.app.id, channel, position)
        except SubscribeRefused as exc:
            context.peer_log.warning(log, "refusing subscription of %s to %s: %s",
                                     self.client.socket_id, channel, exc)
            self.client.close(protocol.OVER_CAPACITY,
                              "node cannot reach redis; reconnect elsewhere")

    def _refuse(self, channel: str, message: str) -> None:
        self.context.stats.auth_failures += 1
        self._log("subscription to %s refused: %s", channel, message)
        self.client.send_message(protocol.subscription_error(channel, message, 401))
        self.client.send_message(protocol.error(protocol.UNAUTHORIZED, message))


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
