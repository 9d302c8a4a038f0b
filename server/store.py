"""Cluster state in Redis beside the channel streams: presence members, cache channels'
last events, subscription and connection counts, node liveness, webhook queues.

`Keys` names every key (one place, so no two kinds of key can collide); `ClusterStore` runs the
scripts of server/lua.py and reads the results. Nothing here keeps state of its own: every
node reads and writes the same keys, so what one node wrote is what every other node reads.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from . import protocol
from .lua import COUNTS_LUA, JOIN_LUA, LEAVE_LUA, SNAPSHOT_LUA, Script
from .redis_link import RedisClient, RedisError, reply_int, reply_str

__all__ = ["CONNECTIONS_FIELD", "NO_WEBHOOKS", "Cached", "ClusterStore", "Keys", "Snapshot",
           "WebhookPolicy", "webhook_policies"]

#: The field of the count hashes that holds an app's websocket connections (a channel name
#: never starts with a space).
CONNECTIONS_FIELD = " connections"
#: Webhook events queued per app before the oldest are dropped (a sender that cannot deliver
#: for this long has an endpoint that is down for good; the drop is logged and counted).
WEBHOOK_QUEUE_MAX = 10_000


class Keys:
    """Every Redis key of one cluster (``prefix``). Channel keys are ``P:app:channel:x`` (a
    channel name has no ':'); app keys ``P:app::x``; cluster keys ``P::x``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def pubsub(self, app: str, channel: str) -> bytes:
        return f"{self.prefix}:{app}:{channel}".encode()

    def channel(self, app: str, channel: str, suffix: str) -> str:
        return f"{self.prefix}:{app}:{channel}:{suffix}"

    def meta(self, app: str, channel: str) -> str:
        return self.channel(app, channel, "m")

    def stream(self, app: str, channel: str) -> str:
        return self.channel(app, channel, "s")

    def cache(self, app: str, channel: str) -> str:
        return self.channel(app, channel, "c")

    def app(self, app: str, suffix: str) -> str:
        return f"{self.prefix}:{app}::{suffix}"

    def webhooks(self, app: str) -> str:
        return self.app(app, "webhooks")

    def totals(self, app: str) -> str:
        return self.app(app, "counts")

    def node_counts(self, app: str, incarnation: str) -> str:
        return self.app(app, f"counts:{incarnation}")

    def cluster(self, suffix: str) -> str:
        return f"{self.prefix}::{suffix}"

    def incarnations(self) -> str:
        return self.cluster("incarnations")

    def alive(self, incarnation: str) -> str:
        return self.cluster(f"inc:{incarnation}:alive")

    def node_presence(self, incarnation: str) -> str:
        return self.cluster(f"inc:{incarnation}:presence")

    def node_apps(self, incarnation: str) -> str:
        return self.cluster(f"inc:{incarnation}:apps")


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Where a script queues webhook events for one app, and which kinds it wants."""

    queue: str = ""
    types: str = ","

    def args(self) -> list[Any]:
        return [self.queue, self.types, WEBHOOK_QUEUE_MAX]


NO_WEBHOOKS = WebhookPolicy()


def webhook_policies(apps: Iterable[Any], keys: Keys) -> dict[str, WebhookPolicy]:
    """Per app id, where its scripts queue webhook events and which kinds (AppConfig has the
    endpoints); apps without webhooks queue nothing."""
    out = {}
    for app in apps:
        types = app.webhook_types()
        out[app.id] = WebhookPolicy(keys.webhooks(app.id), "," + ",".join(sorted(types)) + ",") \
            if types else NO_WEBHOOKS
    return out


@dataclass(frozen=True, slots=True)
class Cached:
    """A cache channel's last event: its position and its message without position fields."""

    offset: int
    epoch: str
    prefix: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a snapshot subscription starts from: the channel position (offset, epoch), the
    presence members true at it (None if not presence), the cached event (None on a miss)."""

    offset: int
    epoch: str
    members: dict[str, Any] | None
    cached: Cached | None
    cache_miss: bool
    added: bool = False


class PresenceFull(Exception):
    """The presence channel has max_presence_members users already."""


def _cached(value: Any) -> Cached | None:
    if not value:
        return None
    offset, epoch, prefix = bytes(value).split(b":", 2)
    return Cached(int(offset), epoch.decode(), prefix)


def _check(replies: Iterable[Any]) -> None:
    for reply in replies:
        if isinstance(reply, RedisError):
            raise reply


class ClusterStore:
    """Runs the cluster-state scripts over the node's command connection."""

    def __init__(self, commands: RedisClient, keys: Keys, *, history_size: int,
                 history_ttl: int) -> None:
        self.commands = commands
        self.keys = keys
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._join = Script(JOIN_LUA)
        self._leave = Script(LEAVE_LUA)
        self._snapshot = Script(SNAPSHOT_LUA)
        self._counts = Script(COUNTS_LUA)

    # ------------------------------------------------------------------ presence
    def _presence_keys(self, app: str, channel: str) -> list[str]:
        k = self.keys
        return [k.meta(app, channel), k.stream(app, channel), k.pubsub(app, channel).decode(),
                k.channel(app, channel, "pm"), k.channel(app, channel, "pu"),
                k.channel(app, channel, "pr")]

    @staticmethod
    def entry(app: str, channel: str, socket_id: str) -> str:
        """A presence connection in its node's set (what the reaper reads)."""
        return f"{app}\n{channel}\n{socket_id}"

    async def join(self, app: str, channel: str, incarnation: str, socket_id: str,
                   user_id: str, user_info: Any, *, max_members: int,
                   webhooks: WebhookPolicy = NO_WEBHOOKS) -> Snapshot:
        """Make the connection a member; the members and the position they are true at.
        Raises PresenceFull. ``channel`` protocol.ONLINE: the app's signed-in users (the
        user's first connection publishes its watchlist 'online' event; no snapshot)."""
        reply = await self._join.run(self.commands, *self._join_call(
            app, channel, incarnation, socket_id, user_id, user_info, max_members, webhooks))
        return self._snapshot_of(channel, reply)

    async def join_many(self, joins: Sequence[tuple[str, str, str, str, str, Any, int]],
                        webhooks: Any) -> list[Snapshot | None]:
        """Join (app, channel, incarnation, socket_id, user_id, user_info, max_members)
        memberships, pipelined; None for each refused as full. ``webhooks``: app -> policy."""
        replies = await self._join.run_many(self.commands, [
            self._join_call(app, ch, inc, sid, uid, info, limit, webhooks(app))
            for app, ch, inc, sid, uid, info, limit in joins])
        _check(replies)
        return [None if reply[0] == b"full" else self._snapshot_of(join[1], reply)
                for join, reply in zip(joins, replies, strict=True)]

    def _join_call(self, app: str, channel: str, incarnation: str, socket_id: str,
                   user_id: str, user_info: Any, max_members: int,
                   webhooks: WebhookPolicy) -> tuple[list[Any], list[Any]]:
        k = self.keys
        online = channel == protocol.ONLINE
        keys = self._presence_keys(app, channel)
        if online:
            watch = protocol.watch_channel(user_id)
            keys[:3] = [k.meta(app, watch), k.stream(app, watch), k.pubsub(app, watch).decode()]
            prefix = protocol.watchlist_online_prefix(user_id)
        else:
            prefix = protocol.member_added_prefix(channel, user_id, user_info)
        keys += [k.node_presence(incarnation), k.cache(app, channel)]
        args = [f"{incarnation}/{socket_id}", user_id, orjson.dumps(user_info), max_members,
                secrets.token_hex(4), self.history_size, self.history_ttl, prefix,
                self.entry(app, channel, socket_id),
                *(NO_WEBHOOKS if online else webhooks).args(), channel,
                "1" if protocol.is_cache(channel) else "0", "1" if online else "0"]
        return keys, args

    @staticmethod
    def _snapshot_of(channel: str, reply: Any) -> Snapshot:
        if reply[0] == b"full":
            raise PresenceFull(channel)
        _, offset, epoch, flat, cached, added = reply
        members = {reply_str(flat[i]) or "": orjson.loads(flat[i + 1])
                   for i in range(0, len(flat), 2)}
        return Snapshot(int(offset), reply_str(epoch) or "", members, _cached(cached),
                        protocol.is_cache(channel) and not cached, bool(added))

    def _leave_call(self, app: str, channel: str, incarnation: str, socket_id: str,
                    conditional: bool, webhooks: WebhookPolicy) -> tuple[list[Any], list[Any]]:
        keys = [*self._presence_keys(app, channel), self.keys.node_presence(incarnation),
                self.keys.alive(incarnation)]
        online = channel == protocol.ONLINE
        args = [f"{incarnation}/{socket_id}", self.entry(app, channel, socket_id),
                "1" if conditional else "0", secrets.token_hex(4), self.history_size,
                self.history_ttl, channel, *(NO_WEBHOOKS if online else webhooks).args(),
                self.keys.pubsub(app, protocol.WATCH_CHANNEL_PREFIX).decode() if online else ""]
        return keys, args

    async def leave_many(self, leaves: Sequence[tuple[str, str, str, str]], *,
                         conditional: bool = False,
                         webhooks: Any = None) -> list[int]:
        """Leave (app, channel, incarnation, socket_id) memberships, pipelined; per leave 1 if
        it removed the user (member_removed published), 0 if not, -1 if skipped (its node is
        alive: ``conditional``). ``webhooks``: app id -> WebhookPolicy."""
        calls = [self._leave_call(app, channel, inc, sid, conditional,
                                  webhooks(app) if webhooks else NO_WEBHOOKS)
                 for app, channel, inc, sid in leaves]
        replies = await self._leave.run_many(self.commands, calls)
        _check(replies)
        return [int(r) for r in replies]

    async def members(self, app: str, channel: str) -> dict[str, Any]:
        flat = await self.commands.execute("HGETALL", self.keys.channel(app, channel, "pu"))
        return {reply_str(flat[i]) or "": orjson.loads(flat[i + 1])
                for i in range(0, len(flat or []), 2)}

    async def online(self, app: str, users: Sequence[str]) -> list[str]:
        """Which of ``users`` are signed in somewhere in the cluster."""
        if not users:
            return []
        refs = await self.commands.execute(
            "HMGET", self.keys.channel(app, protocol.ONLINE, "pr"), *users)
        return [user for user, n in zip(users, refs, strict=True) if reply_int(n) > 0]

    async def user_counts(self, app: str, channels: Sequence[str]) -> list[int]:
        replies = await self.commands.execute_many(
            [("HLEN", self.keys.channel(app, ch, "pu")) for ch in channels])
        _check(replies)
        return [reply_int(r) for r in replies]

    async def node_entries(self, incarnation: str) -> set[str]:
        members = await self.commands.execute("SMEMBERS", self.keys.node_presence(incarnation))
        return {reply_str(m) or "" for m in members or []}

    # ------------------------------------------------------------------ cache channels
    async def snapshot(self, app: str, channel: str, *,
                       webhooks: WebhookPolicy = NO_WEBHOOKS) -> Snapshot:
        """A cache channel's position and cached event, read together."""
        k = self.keys
        offset, epoch, cached = await self._snapshot.run(
            self.commands, [k.meta(app, channel), k.stream(app, channel), k.cache(app, channel)],
            [secrets.token_hex(4), self.history_ttl, *webhooks.args(), channel])
        return Snapshot(int(offset), reply_str(epoch) or "", None, _cached(cached),
                        not cached)

    async def read_cache(self, app: str, channel: str) -> tuple[Cached | None, int]:
        """The cached event and its remaining time to live in seconds."""
        key = self.keys.cache(app, channel)
        value, ttl = await self.commands.execute_many([("GET", key), ("TTL", key)])
        _check((value, ttl))
        return _cached(value), max(0, reply_int(ttl))

    # ------------------------------------------------------------------ counts
    async def write_counts(self, app: str, incarnation: str, counts: dict[str, int], *,
                           mode: str = "full",
                           webhooks: WebhookPolicy = NO_WEBHOOKS) -> dict[str, int]:
        """Set this node's counts for ``app`` (see COUNTS_LUA); the cluster totals back."""
        k = self.keys
        flat: list[Any] = []
        for field, n in counts.items():
            flat += [field, n]
        reply = await self._counts.run(
            self.commands,
            [k.node_counts(app, incarnation), k.totals(app), k.node_apps(incarnation),
             k.alive(incarnation)],
            [mode, app, *webhooks.args(), *flat])
        return {reply_str(reply[i]) or "": reply_int(reply[i + 1])
                for i in range(0, len(reply), 2)}

    async def reap_counts(self, app: str, incarnation: str, webhooks: WebhookPolicy) -> None:
        await self.write_counts(app, incarnation, {}, mode="reap", webhooks=webhooks)

    async def read_totals(self, app: str) -> dict[str, int]:
        """Cluster-wide counts of ``app``: channel -> subscriptions (and CONNECTIONS_FIELD)."""
        flat = await self.commands.execute("HGETALL", self.keys.totals(app))
        return {reply_str(flat[i]) or "": reply_int(flat[i + 1])
                for i in range(0, len(flat or []), 2)}

    async def read_total_connections(self, apps: Sequence[str]) -> dict[str, int]:
        replies = await self.commands.execute_many(
            [("HGET", self.keys.totals(app), CONNECTIONS_FIELD) for app in apps])
        _check(replies)
        return {app: reply_int(r) for app, r in zip(apps, replies, strict=True)}
