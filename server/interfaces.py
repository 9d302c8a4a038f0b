"""The seams between a node's parts: each part depends on one small surface, never on ``Node``
(which only wires them), so server/ has no import cycle and each part is testable with a fake.
A connection sees a `ConnectionContext` (config, stats, peer log, `Channels`); the hub sees
connections as `Subscriber`s; the HTTP API sees a `Publisher` and `NodeStatus`; the chaos
endpoint sees `NodeStatus`. docs/architecture.md shows how issue 12's features fit them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .broker import PublishResult
    from .config import Config
    from .metrics import NodeStats
    from .peerlog import PeerLog

__all__ = ["Channels", "ConnectionContext", "NodeStatus", "Position", "Publisher",
           "SubscribeRefused", "Subscriber"]

#: A client's resume position in a channel: (offset of the last event it has, epoch).
Position = tuple[int, str]


class SubscribeRefused(Exception):
    """The node cannot serve this subscription now (Redis unreachable); client should retry."""


class Subscriber(Protocol):
    """What the hub sees of one connection. ``channels`` (name -> hub state) is the hub's."""

    socket_id: str
    channels: dict[str, Any]

    def send(self, frame: bytes) -> None: ...  # a ready websocket frame; never blocks
    def send_message(self, message: bytes) -> None: ...  # one Pusher message (JSON)
    def close(self, code: int, reason: str) -> None: ...


class Channels(Protocol):
    """The channel registry a connection subscribes through (the hub)."""

    async def subscribe(self, conn: Subscriber, app_id: str, name: str,
                        position: Position | None) -> None:
        """Confirm (pusher_internal:subscription_succeeded, after any replay) and deliver from
        then on; raises SubscribeRefused if the node cannot serve it now."""

    def unsubscribe(self, conn: Subscriber, name: str) -> None: ...
    def drop_connection(self, conn: Subscriber) -> None: ...


class Publisher(Protocol):
    """Sequenced publishing and cluster-wide channel counts (the broker)."""

    link_up: bool

    async def publish_many(self, app_id: str,
                           items: Iterable[tuple[str, bytes, str]]) -> list[PublishResult]:
        """Publish (channel, event JSON without its closing brace, excluded socket id) items;
        raises RedisUnreachable when nothing was published."""

    async def read_counts(self, app_id: str) -> dict[str, int]: ...


class NodeStatus(Protocol):
    """The node as a whole: is it draining, and the way to make it drain."""

    draining: bool
    drain_reason: str

    @property
    def connection_count(self) -> int: ...  # open websocket connections

    def request_drain(self, reason: str, exit_code: int = 0) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """What every websocket connection of one node shares."""

    config: Config
    stats: NodeStats
    peer_log: PeerLog
    channels: Channels
