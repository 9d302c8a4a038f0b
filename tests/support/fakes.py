"""In-memory stand-ins for the node's seams (server/interfaces.py), for unit tests of one part.

`RecordingSubscriber` is a connection as the hub and the session see it: it records the
messages (and frames) it is sent and the closes it is asked for. `MemoryChannels` is the hub
as a connection sees it: it records subscriptions and confirms them at once.
`RecordingPublisher` is the broker as a connection sees it (client events), `CountingCluster`
the cluster.
"""

from __future__ import annotations

from typing import Any

import orjson

from server import protocol
from server.broker import PublishResult
from server.interfaces import ChannelFull, Member, Position, PublishItem, SubscribeRefused
from server.redis_link import RedisUnreachable


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
    """Subscriptions recorded and confirmed at once; ``refuse`` makes them fail, ``full``
    names presence channels that have no room."""

    def __init__(self) -> None:
        self.subscribed: list[tuple[str, str, Position | None]] = []
        self.members: dict[str, Member] = {}
        self.quiet: list[str] = []
        self.unsubscribed: list[str] = []
        self.refuse = False
        self.full: set[str] = set()

    async def subscribe(self, conn: Any, app_id: str, name: str,
                        position: Position | None, *, member: Member | None = None,
                        quiet: bool = False) -> None:
        if self.refuse:
            raise SubscribeRefused("redis is unreachable")
        if name in self.full:
            raise ChannelFull(f"presence channel {name} is full")
        self.subscribed.append((app_id, name, position))
        if member is not None:
            self.members[name] = member
        conn.channels[name] = object()
        if quiet:
            self.quiet.append(name)
            return
        conn.send_message(protocol.subscription_succeeded(
            name, offset=0, epoch="e", recovered=None if position is None else False))

    def unsubscribe(self, conn: Any, name: str) -> None:
        self.unsubscribed.append(name)
        conn.channels.pop(name, None)

    def drop_connection(self, conn: Any) -> None:
        conn.channels.clear()


class RecordingPublisher:
    """Publishes nowhere: records the items; ``fail`` makes publishing raise as a down link."""

    link_up = True

    def __init__(self) -> None:
        self.items: list[tuple[str, PublishItem]] = []
        self.fail = False
        self.online: set[str] = set()

    async def publish_many(self, app_id: str, items: Any) -> list[PublishResult]:
        if self.fail:
            raise RedisUnreachable("redis link is down")
        items = list(items)
        self.items += [(app_id, item) for item in items]
        return [PublishResult(len(self.items), "e") for _ in items]

    async def read_counts(self, app_id: str) -> dict[str, int]:
        return {}

    async def read_members(self, app_id: str, channel: str) -> dict[str, Any]:
        return {}

    async def read_user_counts(self, app_id: str, channels: list[str]) -> list[int]:
        return [0 for _ in channels]

    async def read_cache(self, app_id: str, channel: str) -> tuple[None, int]:
        return None, 0

    async def read_online(self, app_id: str, users: list[str]) -> list[str]:
        return [user for user in users if user in self.online]


class CountingCluster:
    """The cluster as a connection sees it: connections per app, counted here only."""

    incarnation = "test"

    def __init__(self) -> None:
        self.connections: dict[str, int] = {}

    def connection_opened(self, app: str) -> None:
        self.connections[app] = self.connections.get(app, 0) + 1

    def connection_closed(self, app: str) -> None:
        self.connections[app] -= 1

    def app_connections(self, app: str) -> int:
        return self.connections.get(app, 0)

    def count_changed(self, app: str, channel: str) -> None:
        pass
