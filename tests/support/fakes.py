"""In-memory stand-ins for the node's seams (server/interfaces.py), for unit tests of one part.

`RecordingSubscriber` is a connection as the hub and the session see it: it records the
messages (and frames) it is sent and the closes it is asked for. `MemoryChannels` is the hub
as a connection sees it: it records subscriptions and confirms them at once.
"""

from __future__ import annotations

from typing import Any

import orjson

from server import protocol
from server.interfaces import Position, SubscribeRefused


class RecordingSubscriber:
    def __init__(self, socket_id: str = "123.456") -> None:
        self.socket_id = socket_id
        self.channels: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []
        self.closed: list[tuple[int, str]] = []

    def send(self, frame: bytes) -> None:
        # frame = 2..10 header bytes + JSON; the JSON starts at the first '{'.
        self.messages.append(orjson.loads(frame[frame.index(b"{"):]))

    def send_message(self, message: bytes) -> None:
        self.messages.append(orjson.loads(message))

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    def events(self) -> list[str]:
        return [m["event"] for m in self.messages]

    def offsets(self, event: str = "e") -> list[int]:
        return [m["offset"] for m in self.messages if m.get("event") == event]

    def confirmation(self) -> dict[str, Any]:
        return next(m for m in self.messages
                    if m["event"] == "pusher_internal:subscription_succeeded")


class MemoryChannels:
    """Subscriptions recorded and confirmed at once; ``refuse`` makes them fail."""

    def __init__(self) -> None:
        self.subscribed: list[tuple[str, str, Position | None]] = []
        self.unsubscribed: list[str] = []
        self.refuse = False

    async def subscribe(self, conn: Any, app_id: str, name: str,
                        position: Position | None) -> None:
        if self.refuse:
            raise SubscribeRefused("redis is unreachable")
        self.subscribed.append((app_id, name, position))
        conn.channels[name] = object()
        conn.send_message(protocol.subscription_succeeded(
            name, offset=0, epoch="e", recovered=None if position is None else False))

    def unsubscribe(self, conn: Any, name: str) -> None:
        self.unsubscribed.append(name)
        conn.channels.pop(name, None)

    def drop_connection(self, conn: Any) -> None:
        conn.channels.clear()
