"""This node as a member of the cluster: liveness, the reaper of dead nodes, counts.

Each process is one *incarnation* (``node_id.random``: a node restarted under the same id is a
new incarnation, so nothing the old one registered survives as a ghost). It keeps a key alive
in Redis with a heartbeat every ``node_timeout / 5`` seconds (TTL ``node_timeout``). Every node
runs the reaper once a second: an incarnation whose key has expired is dead, and the reaper
removes what it registered, its presence memberships (member_removed published once per user,
LEAVE_LUA being idempotent) and its subscription counts (channel_vacated queued once). Every
step is conditional on the key still being absent, so a node that was only slow (a partition,
a pause) and comes back loses nothing for good: its heartbeat finds its key gone, sets it again
and re-registers everything it still holds (the ``rejoin`` callback), after which no reaper
step touches it. A killed node's members are therefore gone within ``node_timeout`` + the
reaper's period (1 s ± 20 %).

Counts: the hub marks (app, channel) pairs whose local subscription count changed; the syncer
writes them (debounced) through COUNTS_LUA, which keeps the cluster totals and queues the
occupied/vacated/subscription_count webhooks. Connections per app ride along in the same hash
(for the per-app max_connections).
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .redis_link import RedisError, RedisLinkDown, reply_int, reply_str
from .store import CONNECTIONS_FIELD, ClusterStore, WebhookPolicy

log = logging.getLogger("turnout.cluster")

__all__ = ["Cluster", "LocalCluster"]

REAPER_INTERVAL = 1.0
SYNC_DEBOUNCE = 0.05
# Leaves of a dead node sent per pipeline (a node may have held tens of thousands).
REAP_BATCH = 500


class LocalCluster:
    """A node's cluster surface when there is no cluster to speak to (unit tests)."""

    incarnation = "local"

    def count_changed(self, app: str, channel: str) -> None:
        pass

    def connection_opened(self, app: str) -> None:
        pass

    def connection_closed(self, app: str) -> None:
        pass

    def app_connections(self, app: str) -> int:
        return 0


class Cluster:
    """Start with ``nursery.start(cluster.serve)``."""

    def __init__(self, store: ClusterStore, *, node_id: str, node_timeout: float,
                 link_up: Callable[[], bool],
                 local_counts: Callable[[str, set[str]], dict[str, int]],
                 webhooks: Callable[[str], WebhookPolicy],
                 limited_apps: Callable[[], list[str]],
                 rejoin: Callable[[], Awaitable[None]], reap: bool = True) -> None:
        self.store = store
        self.reap = reap  # False: the negative control's node without the reaper
        self.incarnation = f"{node_id}.{secrets.token_hex(4)}"
        self.node_timeout = node_timeout
        self._link_up = link_up
        self._local_counts = local_counts
        self._webhooks = webhooks
        self._limited_apps = limited_apps
        self._rejoin = rejoin
        self._dirty: dict[str, set[str]] = {}
        self._dirty_event = trio.Event()
        self._full_sync = True
        self.connections: dict[str, int] = {}
        # Per app: the cluster's connections as of the last read, and ours at that time.
        self._cluster_connections: dict[str, tuple[int, int]] = {}
        self._last_reported: dict[str, int] = {}
        self._rejoin_wanted = trio.Event()
        self.alive = False
        self.retired = False
        self.rejoins = 0
        self.reaped = 0

    # ------------------------------------------------------------------ what the node reports
    def count_changed(self, app: str, channel: str) -> None:
        self._dirty.setdefault(app, set()).add(channel)
        self._dirty_event.set()

    def connection_opened(self, app: str) -> None:
        self.connections[app] = self.connections.get(app, 0) + 1
        self.count_changed(app, CONNECTIONS_FIELD)

    def connection_closed(self, app: str) -> None:
        left = self.connections.get(app, 0) - 1
        if left > 0:
            self.connections[app] = left
        else:
            self.connections.pop(app, None)
        self.count_changed(app, CONNECTIONS_FIELD)

    def app_connections(self, app: str) -> int:
        """The app's connections: ours now plus the other nodes' as of the last count sync or
        read (at most a heartbeat old)."""
        total, ours = self._cluster_connections.get(app, (0, 0))
        return self.connections.get(app, 0) + max(0, total - ours)

    # ------------------------------------------------------------------ tasks
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        if not self.reap:
            log.warning("the reaper is off (--no-reap-dead-nodes): a dead node's presence "
                        "members and counts will never be removed")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat)
            nursery.start_soon(self._rejoiner)
            nursery.start_soon(self._reaper)
            nursery.start_soon(self._count_syncer)
            task_status.started()

    async def _heartbeat(self) -> None:
        commands = self.store.commands
        keys = self.store.keys
        alive = keys.alive(self.incarnation)
        ttl_ms = int(self.node_timeout * 1000)
        interval = self.node_timeout / 5
        while not self.retired:
            try:
                refreshed = await commands.execute("SET", alive, "1", "PX", ttl_ms, "XX")
                if refreshed is None:
                    # First beat, or the key expired (we were partitioned or paused) and a
                    # reaper may have removed what we registered: register it all again.
                    await commands.execute_many([
                        ("SET", alive, "1", "PX", ttl_ms),
                        ("SADD", keys.incarnations(), self.incarnation)])
                    if self.alive or self.rejoins:
                        log.warning("incarnation %s was presumed dead (no heartbeat for %g s):"
                                    " re-registering its presence members and counts",
                                    self.incarnation, self.node_timeout)
                    self.rejoins += 1
                    self._full_sync = True
                    self._dirty_event.set()
                    self._rejoin_wanted.set()  # not here: the heartbeat must keep beating
                self.alive = True
                await self._read_connection_totals()
            except (RedisLinkDown, RedisError) as exc:
                log.debug("heartbeat failed: %s", exc)
            await trio.sleep(interval)

    async def _rejoiner(self) -> None:
        while True:
            await self._rejoin_wanted.wait()
            self._rejoin_wanted = trio.Event()
            try:
                await self._rejoin()
            except (RedisLinkDown, RedisError) as exc:
                log.info("re-registering presence members failed, retrying: %s", exc)
                self._rejoin_wanted.set()
                await trio.sleep(0.5)

    async def retire(self) -> None:
        """A clean exit (after a drain): declare this incarnation dead at once and remove
        what it still holds, instead of leaving it to the reapers' timeout."""
        commands = self.store.commands
        self.retired = True  # the heartbeat must not bring it back to life
        with trio.move_on_after(3):
            try:
                await commands.execute("DEL", self.store.keys.alive(self.incarnation))
                await self._reap(self.incarnation)
            except (RedisLinkDown, RedisError) as exc:
                log.warning("could not retire %s (the reapers will): %s", self.incarnation, exc)

    async def _read_connection_totals(self) -> None:
        apps = self._limited_apps()
        if apps:
            totals = await self.store.read_total_connections(apps)
            for app, total in totals.items():
                self._cluster_connections[app] = (total, self._reported(app))

    def _reported(self, app: str) -> int:
        return self._last_reported.get(app, 0)

    async def _count_syncer(self) -> None:
        while True:
            await self._dirty_event.wait()
            await trio.sleep(SYNC_DEBOUNCE)
            self._dirty_event = trio.Event()
            if not self.alive:
                continue  # the first heartbeat's full sync covers it
            full, self._full_sync = self._full_sync, False
            dirty, self._dirty = self._dirty, {}
            todo: dict[str, set[str] | None]
            if full:
                apps = set(self.connections) | set(dirty) | await self._registered_apps()
                todo = dict.fromkeys(apps)
            else:
                todo = {app: channels for app, channels in dirty.items()}
            for app, channels in todo.items():
                counts = self._local_counts(app, channels or set())
                if channels is None or CONNECTIONS_FIELD in channels:
                    counts[CONNECTIONS_FIELD] = self.connections.get(app, 0)
                try:
                    totals = await self.store.write_counts(
                        app, self.incarnation, counts, mode="full" if channels is None else
                        "delta", webhooks=self._webhooks(app))
                except (RedisLinkDown, RedisError) as exc:
                    log.debug("count sync of app %s failed: %s", app, exc)
                    if channels is None:
                        self._full_sync = True
                    else:
                        self._dirty.setdefault(app, set()).update(channels)
                    self._dirty_event.set()
                    await trio.sleep(0.5)
                    continue
                if CONNECTIONS_FIELD in counts:
                    self._last_reported[app] = counts[CONNECTIONS_FIELD]
                    self._cluster_connections[app] = (totals.get(CONNECTIONS_FIELD, 0),
                                                      counts[CONNECTIONS_FIELD])

    async def _registered_apps(self) -> set[str]:
        try:
            apps = await self.store.commands.execute(
                "SMEMBERS", self.store.keys.node_apps(self.incarnation))
        except (RedisLinkDown, RedisError):
            return set()
        return {reply_str(a) or "" for a in apps or []}

    # ------------------------------------------------------------------ the reaper
    async def _reaper(self) -> None:
        while True:
            # Jittered so the nodes' reapers do not all run at the same instant.
            await trio.sleep(REAPER_INTERVAL * random.uniform(0.8, 1.2))
            if not self._link_up() or not self.alive or not self.reap:
                continue
            try:
                await self.reap_once()
            except (RedisLinkDown, RedisError) as exc:
                log.debug("reaper pass failed: %s", exc)

    async def reap_once(self) -> int:
        """Reap every dead incarnation; how many were found dead."""
        commands = self.store.commands
        keys = self.store.keys
        known = [reply_str(i) or "" for i in
                 await commands.execute("SMEMBERS", keys.incarnations()) or []]
        others = [i for i in known if i != self.incarnation]
        if not others:
            return 0
        exists = await commands.execute_many([("EXISTS", keys.alive(i)) for i in others])
        dead = [i for i, e in zip(others, exists, strict=True) if reply_int(e) == 0]
        for incarnation in dead:
            await self._reap(incarnation)
        return len(dead)

    async def _reap(self, incarnation: str) -> None:
        store = self.store
        keys = store.keys
        entries = sorted(await store.node_entries(incarnation))
        removed = 0
        for start in range(0, len(entries), REAP_BATCH):
            leaves = []
            for entry in entries[start:start + REAP_BATCH]:
                app, channel, socket_id = entry.split("\n", 2)
                leaves.append((app, channel, incarnation, socket_id))
            results = await store.leave_many(leaves, conditional=True, webhooks=self._webhooks)
            if -1 in results:
                return  # it is alive again: it re-registers itself
            removed += sum(results)
        apps = await store.commands.execute("SMEMBERS", keys.node_apps(incarnation))
        for app in (reply_str(a) or "" for a in apps or []):
            await store.reap_counts(app, incarnation, self._webhooks(app))
        left: list[Any] = await store.commands.execute_many([
            ("EXISTS", keys.alive(incarnation)), ("EXISTS", keys.node_presence(incarnation)),
            ("EXISTS", keys.node_apps(incarnation))])
        if not any(reply_int(r) for r in left):
            await store.commands.execute("SREM", keys.incarnations(), incarnation)
        self.reaped += 1
        log.warning("node incarnation %s is dead (no heartbeat for %g s): removed %d presence "
                    "connections (%d users left their channels) and its subscription counts",
                    incarnation, self.node_timeout, len(entries), removed)
