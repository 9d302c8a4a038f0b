"""The seams between a node's parts: each part depends on one small surface, never on ``Node``
(which only wires them), so server/ has no import cycle and each part is testable with a fake.
A connection sees a `ConnectionContext` (config, stats, peer log, `Channels`); the hub sees
connections as `Subscriber`s; the HTTP API sees a `Publisher` and `NodeStatus`; the chaos
endpoint sees `NodeStatus`. docs/architecture.md shows how issue 12's features fit them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from .config import Config
    from .metrics import NodeStats
    from .peerlog import PeerLog
    from .store import Cached

__all__ = ["ChannelFull", "Channels", "ClusterView", "ConnectionContext", "Member", "NodeStatus",
           "Position", "PublishItem", "PublishResult", "Publisher", "SubscribeRefused",
           "Subscriber"]

#: A client's resume position in a channel: (offset of the last event it has, epoch).
Position = tuple[int, str]


class SubscribeRefused(Exception):
    """The node cannot serve this subscription now (Redis unreachable); client should retry."""


class ChannelFull(Exception):
    """A presence channel already has as many users as its app allows."""


@dataclass(frozen=True, slots=True)
class Member:
    """A presence channel member as its signed channel_data (or its sign-in) describes it."""

    user_id: str
    user_info: Any = None


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a published event sits in its channel."""

    offset: int
    epoch: str


class PublishItem(NamedTuple):
    """One event to publish: its channel, its JSON without the closing brace, the socket id
    that must not receive it, whether it becomes the channel's cached event (cache channels,
    HTTP publishes only), and a webhook event (JSON) to queue with it, if any."""

    channel: str
    prefix: bytes
    exclude: str = ""
    cache: bool = False
    webhook: bytes = b""


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
                        position: Position | None, *, member: Member | None = None,
                        quiet: bool = False) -> None:
        """Confirm (pusher_internal:subscription_succeeded, after any replay; not if
        ``quiet``) and deliver from then on. ``member``: join the presence channel as it
        (on a user's channel: the user is online, for the watchlists that name it).
        Raises SubscribeRefused if the node cannot serve it now, ChannelFull."""

    def unsubscribe(self, conn: Subscriber, name: str) -> None: ...
    def drop_connection(self, conn: Subscriber) -> None: ...


class Publisher(Protocol):
    """Sequenced publishing and cluster-wide channel counts (the broker)."""

    link_up: bool

    async def publish_many(self, app_id: str,
                           items: Iterable[PublishItem]) -> list[PublishResult]:
        """Publish items in one pipeline; raises RedisUnreachable when nothing was published."""

    async def read_counts(self, app_id: str) -> dict[str, int]:
        """Cluster-wide subscriptions per occupied channel."""

    async def read_members(self, app_id: str, channel: str) -> dict[str, Any]:
        """A presence channel's members: user id -> user info."""

    async def read_user_counts(self, app_id: str, channels: list[str]) -> list[int]: ...

    async def read_cache(self, app_id: str, channel: str) -> tuple[Cached | None, int]:
        """A cache channel's last event and its seconds to live."""

    async def read_online(self, app_id: str, users: list[str]) -> list[str]:
        """Which of ``users`` are signed in on some node."""


class ClusterView(Protocol):
    """What a connection reports to, and reads of, the cluster (server.cluster.Cluster)."""

    def connection_opened(self, app: str) -> None: ...
    def connection_closed(self, app: str) -> None: ...
    def app_connections(self, app: str) -> int:
        """The app's websocket connections across the cluster (others' as of the last sync)."""


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
    publisher: Publisher
    cluster: ClusterView
