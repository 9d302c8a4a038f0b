"""Channel registry and sequenced fan-out: the heart of the zero-drop contract on one node.

Each channel the node has local subscribers for has a ChannelState holding the position
(epoch, offset) of the last event delivered to them. Events from Redis pub/sub are delivered
only in offset order: a duplicate is ignored, a gap stops live delivery for that channel until
the missing events are read from the channel's stream (catch-up). A gap the stream cannot fill
(history off, trimmed or expired) is never skipped silently: the channel's subscribers are
closed with 4200 so they resubscribe and are told ``recovered: false``.

A client resubscribing with its last position is held as a *joiner* while the gap is read from
the stream; live events delivered meanwhile are buffered for it, so replay and live meet at the
seam with no hole and no duplicate.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import trio

from . import protocol
from .broker import Broker
from .cluster import LocalCluster
from .frames import encode_text
from .interfaces import ChannelFull, Member, Position, Subscriber, SubscribeRefused
from .redis_link import RedisError, RedisLinkDown
from .store import NO_WEBHOOKS, PresenceFull, WebhookPolicy

log = logging.getLogger("turnout.hub")

__all__ = ["ChannelState", "Hub"]

# Live messages buffered per channel while it catches up. Past the bound they are dropped:
# everything is in the stream, and catch-up reads up to the stream's top anyway.
MAX_PENDING = 10_000
SETTLE_TIMEOUT = 5.0
CATCHUP_RETRY_MIN = 0.1
CATCHUP_RETRY_MAX = 2.0
# Presence leaves sent per pipeline; how often a node re-checks its memberships in Redis
# against the members it holds (anti-entropy for a join that landed after its client left).
LEAVE_BATCH = 500
PRESENCE_RECONCILE_INTERVAL = 30.0
SUBSCRIPTION_COUNT_INTERVAL = 1.0
_TERMINATE = b'{"event":"%s"' % protocol.TERMINATE_EVENT.encode()


class _SnapshotGone(Exception):
    """The channel's history was reset between a snapshot and the node reaching it."""


class _Joiner:
    """A subscriber between its snapshot (or replay target) and going live: what the node
    delivers meanwhile is buffered, with the epoch it was delivered in."""

    __slots__ = ("conn", "epoch", "frames")

    def __init__(self, conn: Subscriber, epoch: str | None) -> None:
        self.conn = conn
        self.epoch = epoch  # the node's epoch for the channel when buffering started
        self.frames: list[tuple[int, str | None, bytes]] = []

    def after(self, offset: int, epoch: str | None) -> list[bytes]:
        """The buffered frames after position (offset, epoch), in delivery order.

        Frames of an older epoch than ``epoch`` (the node was still behind when buffering
        began) predate the position; frames of a later one (the history was reset while
        we waited) all come after it.
        """
        seen = self.epoch == epoch
        out = []
        for frame_offset, frame_epoch, frame in self.frames:
            if frame_epoch == epoch:
                seen = True
                if frame_offset > offset:
                    out.append(frame)
            elif seen:
                out.append(frame)
        return out


class _PresenceMember:
    """A presence membership held by this node: its user, its unique key in Redis and the
    membership set it is in (the presence channel, or protocol.ONLINE for a sign-in)."""

    __slots__ = ("channel", "key", "member")

    def __init__(self, key: str, member: Member, channel: str) -> None:
        self.key = key  # socket id + '#' + a node-wide serial: a re-join is a new membership
        self.member = member
        self.channel = channel


class _Pending:
    __slots__ = ("epoch", "exclude", "message", "offset")

    def __init__(self, offset: int, epoch: str, exclude: str, message: bytes) -> None:
        self.offset = offset
        self.epoch = epoch
        self.exclude = exclude
        self.message = message


class ChannelState:
    __slots__ = ("app_id", "arriving", "catching_up", "catchup_again", "catchup_running",
                 "epoch", "init_lock", "internal", "joiners", "key", "last", "last_count",
                 "members", "name", "pending", "ready", "settled", "subscribers", "suspect_top",
                 "user")

    def __init__(self, app_id: str, name: str, key: bytes) -> None:
        self.app_id = app_id
        self.name = name
        self.key = key
        self.subscribers: dict[Subscriber, None] = {}
        self.joiners: list[_Joiner] = []
        # Subscribers between _ready_state and going live (waiting for the channel to settle
        # or to pass their position): they hold the state as surely as subscribers do.
        self.arriving = 0
        # Presence memberships of this node's subscribers (presence channels only).
        self.members: dict[Subscriber, _PresenceMember] = {}
        # A user's #server-to-user- channel: carries the terminate event.
        self.user = protocol.is_user_channel(name)
        # Subscribed to by the server for a connection (user, watchlist): not counted.
        self.internal = protocol.is_internal(name)
        self.last_count = -1  # cluster-wide count last sent as subscription_count
        self.epoch: str | None = None
        self.last = 0
        self.ready = False
        self.init_lock = trio.Lock()
        self.catching_up = False
        self.catchup_running = False
        self.catchup_again = False
        self.settled = trio.Event()
        self.settled.set()
        self.pending: list[_Pending] = []
        self.suspect_top: int | None = None

    @property
    def occupied(self) -> bool:
        return bool(self.subscribers or self.joiners or self.arriving)


class Hub:
    """Owns every ChannelState of a node (its `interfaces.Channels`, what connections subscribe
    through). Start with ``nursery.start(hub.serve)``."""

    def __init__(self, broker_factory: Any, *, position_check_interval: float,
                 history_enabled: bool,
                 max_members: Callable[[str], int] = lambda app: 100,
                 webhooks: Callable[[str], WebhookPolicy] = lambda app: NO_WEBHOOKS,
                 subscription_count_apps: Callable[[], list[str]] = lambda: []) -> None:
        self.channels: dict[bytes, ChannelState] = {}
        self.broker: Broker = broker_factory(self._on_message, self._on_link)
        self.position_check_interval = position_check_interval
        self.history_enabled = history_enabled
        self.max_members = max_members
        self.webhooks = webhooks
        self.subscription_count_apps = subscription_count_apps
        # The node's membership in the cluster (server.cluster.Cluster once wired by Node).
        self.cluster: Any = LocalCluster()
        self._nursery: trio.Nursery | None = None
        # Presence memberships to remove from Redis (app, channel, member key): at most one
        # per membership this node held, so bounded by them; retried until Redis takes them.
        self._leaves: dict[tuple[str, str, str], None] = {}
        self._leaves_event = trio.Event()
        self._joining: set[str] = set()  # node-set entries of joins in flight
        self._member_serial = itertools.count(1)
        self.terminated = 0
        self.presence_joins = 0
        self.presence_leaves = 0
        self.delivered = 0
        self.frames_out = 0
        self.gaps_detected = 0
        self.catchups = 0
        self.unrecoverable = 0

    # ------------------------------------------------------------------ lifecycle
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.broker.serve)
            nursery.start_soon(self._position_checker)
            nursery.start_soon(self._leaver)
            nursery.start_soon(self._presence_reconciler)
            nursery.start_soon(self._subscription_counter)
            task_status.started()

    # ------------------------------------------------------------------ Redis → hub
    def _on_message(self, key: bytes, payload: bytes) -> None:
        state = self.channels.get(key)
        if state is None:
            return
        try:
            offset_b, epoch_b, exclude_b, message = payload.split(b":", 3)
            offset = int(offset_b)
        except ValueError:
            log.error("malformed pub/sub payload on %r", key)
            return
        self._accept(state, _Pending(offset, epoch_b.decode(), exclude_b.decode(), message))

    def _on_link(self, up: bool) -> None:
        if up:
            # Resubscribed by the broker; every channel may have missed events: catch up all.
            for state in list(self.channels.values()):
                if state.ready:
                    self._start_catch_up(state)

    def _accept(self, state: ChannelState, item: _Pending) -> None:
        if not state.ready or state.catching_up:
            if len(state.pending) < MAX_PENDING:
                state.pending.append(item)
            return
        if item.epoch != state.epoch:
            if state.epoch is not None:
                log.warning("channel %s epoch changed %s -> %s: stream was reset",
                            state.name, state.epoch, item.epoch)
            state.epoch = item.epoch
            state.last = 0
        if item.offset <= state.last:
            return
        if item.offset == state.last + 1:
            self._deliver(state, item.offset, item.message, item.exclude)
            return
        self.gaps_detected += 1
        state.pending.append(item)
        self._start_catch_up(state)

    def _deliver(self, state: ChannelState, offset: int, message: bytes, exclude: str) -> None:
        """Frame once; write the same bytes to every subscriber without waiting on any."""
        if state.user and message.startswith(_TERMINATE):
            state.last = offset
            self._terminate(state)
            return
        frame = encode_text(message)
        state.last = offset
        n = 0
        for conn in state.subscribers:
            if conn.socket_id != exclude:
                conn.send(frame)
                n += 1
        for joiner in state.joiners:
            if joiner.conn.socket_id != exclude:
                joiner.frames.append((offset, state.epoch, frame))
        self.delivered += 1
        self.frames_out += n

    # ------------------------------------------------------------------ catch-up
    def _start_catch_up(self, state: ChannelState) -> None:
        if not state.catching_up:
            state.catching_up = True
            state.settled = trio.Event()
        if state.catchup_running:
            state.catchup_again = True
            return
        state.catchup_running = True
        assert self._nursery is not None
        self._nursery.start_soon(self._catch_up, state)

    async def _catch_up(self, state: ChannelState) -> None:
        self.catchups += 1
        backoff = CATCHUP_RETRY_MIN
        try:
            while True:
                state.catchup_again = False
                try:
                    done = await self._catch_up_once(state)
                except (RedisLinkDown, RedisError) as exc:
                    if not self.broker.link_up:
                        # Stay in catching-up: the link-up callback starts us again. No
                        # checkpoint lies between this test and the finally below, so the
                        # callback cannot slip in between and find us still running.
                        log.info("catch-up of %s paused until the link is back: %s",
                                 state.name, exc)
                        return
                    # The pub/sub link is up but the command failed (a slow link timed out,
                    # an error reply): nobody else will restart us, so retry, backing off.
                    log.warning("catch-up of %s failed, retrying in %.1f s: %s",
                                state.name, backoff, exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, CATCHUP_RETRY_MAX)
                    continue
                if done and not state.catchup_again:
                    state.catching_up = False
                    state.settled.set()
                    return
        finally:
            state.catchup_running = False

    async def _catch_up_once(self, state: ChannelState) -> bool:
        top, epoch, entries = await self.broker.read_history(
            state.app_id, state.name, state.last + 1, None
        )
        if epoch is not None and state.epoch is not None and epoch != state.epoch:
            log.warning("channel %s epoch changed during catch-up", state.name)
            state.last = 0
            state.epoch = epoch
            return False
        if state.epoch is None:
            state.epoch = epoch
        expected = state.last + 1
        if top >= expected and (not entries or entries[0].offset != expected):
            self._unrecoverable(state, expected, top)
        for entry in entries:
            if entry.offset == state.last + 1:
                self._deliver(state, entry.offset,
                              protocol.with_position(entry.prefix, entry.offset, state.epoch or ""),
                              entry.exclude)
        pending = sorted(
            (p for p in state.pending if p.offset > state.last), key=lambda p: p.offset
        )
        state.pending = []
        for index, item in enumerate(pending):
            if item.epoch != state.epoch:
                state.pending = pending[index:]
                return False
            if item.offset <= state.last:
                continue
            if item.offset != state.last + 1:
                state.pending = pending[index:]
                return False
            self._deliver(state, item.offset, item.message, item.exclude)
        return True

    def _unrecoverable(self, state: ChannelState, expected: int, top: int) -> None:
        """The stream cannot fill [expected, ...]: never skip silently, send everyone away."""
        self.unrecoverable += 1
        log.warning("channel %s: events from offset %d are gone from the stream (top %d); "
                    "closing %d subscribers with 4200 so they resubscribe",
                    state.name, expected, top, len(state.subscribers) + len(state.joiners))
        for conn in list(state.subscribers):
            conn.close(protocol.RECONNECT, "channel position lost; resubscribe")
        for joiner in state.joiners:
            joiner.conn.close(protocol.RECONNECT, "channel position lost; resubscribe")
        state.last = top

    # ------------------------------------------------------------------ subscriptions
    async def _ready_state(self, app_id: str, name: str) -> ChannelState:
        """The channel's state, initialised; the caller is counted in ``arriving`` (it must
        :meth:`_arrived` once live, or pass the state to :meth:`_abandon`), so the state is
        not released under it while it waits."""
        key = self.broker.channel_key(app_id, name)
        while True:
            state = self.channels.get(key)
            if state is None:
                state = self.channels[key] = ChannelState(app_id, name, key)
            if state.ready:
                state.arriving += 1
                return state
            async with state.init_lock:
                if self.channels.get(key) is not state:
                    continue
                if not state.ready:
                    await self.broker.wait_subscribed(key)
                    ((top, epoch),) = await self.broker.read_top(app_id, [name])
                    state.last, state.epoch, state.ready = top, epoch, True
                    buffered, state.pending = state.pending, []
                    for item in sorted(buffered, key=lambda p: p.offset):
                        self._accept(state, item)
                state.arriving += 1
                return state

    async def subscribe(self, conn: Subscriber, app_id: str, name: str,
                        position: Position | None, *, member: Member | None = None,
                        quiet: bool = False) -> None:
        """Subscribe ``conn``; replays from ``position`` when given. Raises SubscribeRefused,
        ChannelFull.

        Presence and cache channels start from a *snapshot* (the members, the cached event)
        read from Redis atomically with the channel's position: the subscriber is buffered
        as a joiner first, so every event after that position reaches it exactly once.
        ``quiet``: no subscription_succeeded (the user channel a sign-in subscribes to).
        """
        previous: ChannelState | None = conn.channels.get(name)
        if previous is not None:
            # Subscribed again without unsubscribing: deliveries continue from the new answer
            # only (not twice while the new subscription buffers).
            previous.subscribers.pop(conn, None)
        try:
            if member is not None and protocol.is_user_channel(name):
                await self._subscribe_plain(conn, app_id, name, position, quiet)
                await self._join_online(conn, app_id, name, member)
            elif member is not None or protocol.is_cache(name):
                await self._subscribe_snapshot(conn, app_id, name, position, member, quiet)
            else:
                await self._subscribe_plain(conn, app_id, name, position, quiet)
        except BaseException:
            kept: bool = conn.channels.get(name) is previous
            if previous is not None and kept:
                registered: bool = self.channels.get(previous.key) is previous
                if registered:
                    previous.subscribers[conn] = None
                else:
                    conn.channels.pop(name, None)
            raise

    async def _subscribe_plain(self, conn: Subscriber, app_id: str, name: str,
                               position: Position | None, quiet: bool) -> None:
        key = self.broker.channel_key(app_id, name)
        joiner: _Joiner | None = None
        arrived: ChannelState | None = None
        try:
            with trio.fail_after(SETTLE_TIMEOUT):
                state = arrived = await self._ready_state(app_id, name)
                await state.settled.wait()
                if position is not None and position[1] == "":
                    # Epoch "" = the channel had no epoch yet when the client subscribed: it
                    # owes everything of the channel's first epoch since its offset.
                    position = (position[0], state.epoch or "")
                if position is not None and position[1] == (state.epoch or "") and \
                        position[0] > state.last:
                    await self._wait_until_passed(state, position[0])
                replay: list[bytes] = []
                recovered: bool | None = None
                since, epoch = state.last, state.epoch
                if position is not None:
                    p_offset, p_epoch = position
                    recovered = p_epoch == (epoch or "") and p_offset <= since
                    if recovered and p_offset < since:
                        joiner = _Joiner(conn, epoch)
                        state.joiners.append(joiner)
                        replay, recovered = await self._replay(
                            conn, app_id, name, p_offset, since, epoch)
                    elif recovered:
                        since = p_offset
        except (RedisLinkDown, RedisError, trio.TooSlowError) as exc:
            self._abandon(key, joiner, arrived=arrived)
            raise SubscribeRefused(f"cannot subscribe to {name} now: {exc}") from None
        except BaseException:
            # cancelled: the connection went away mid-subscribe
            self._abandon(key, joiner, arrived=arrived)
            raise
        # From here to the end nothing awaits: replay, buffered live events and the switch to
        # live delivery happen atomically with respect to the fan-out.
        self._arrived(state)
        if joiner is not None:
            state.joiners.remove(joiner)
        if not quiet:
            conn.send_message(protocol.subscription_succeeded(
                name, offset=since, epoch=epoch, recovered=recovered))
        for frame in replay:
            conn.send(frame)
        if joiner is not None:
            for frame in joiner.after(since, epoch):
                conn.send(frame)
        self._go_live(conn, state, name)

    async def _subscribe_snapshot(self, conn: Subscriber, app_id: str, name: str,
                                  position: Position | None, member: Member | None,
                                  quiet: bool) -> None:
        key = self.broker.channel_key(app_id, name)
        joiner: _Joiner | None = None
        membership: _PresenceMember | None = None
        entry = ""
        arrived: ChannelState | None = None
        try:
            with trio.fail_after(SETTLE_TIMEOUT):
                state = arrived = await self._ready_state(app_id, name)
                await state.settled.wait()
                # Buffer from before the snapshot: every event after its position that this
                # node delivers from now on reaches the joiner.
                joiner = _Joiner(conn, state.epoch)
                state.joiners.append(joiner)
                store = self.broker.store
                if member is not None:
                    membership = _PresenceMember(
                        f"{conn.socket_id}#{next(self._member_serial)}", member, name)
                    entry = store.entry(app_id, name, membership.key)
                    self._joining.add(entry)
                    snapshot = await store.join(
                        app_id, name, self.cluster.incarnation, membership.key,
                        member.user_id, member.user_info, max_members=self.max_members(app_id),
                        webhooks=self.webhooks(app_id))
                    self.presence_joins += 1
                else:
                    snapshot = await store.snapshot(app_id, name, webhooks=self.webhooks(app_id))
                await self._wait_for_position(state, snapshot.offset, snapshot.epoch)
                since, epoch = snapshot.offset, snapshot.epoch
                replay: list[bytes] = []
                recovered: bool | None = None
                if position is not None:
                    p_offset, p_epoch = position
                    if p_epoch == "":
                        p_epoch = epoch
                    recovered = p_epoch == epoch and p_offset <= since
                    if recovered and p_offset < since:
                        # Member events are not replayed: the snapshot's members supersede them.
                        replay, recovered = await self._replay(
                            conn, app_id, name, p_offset, since, epoch,
                            skip_members=member is not None)
        except PresenceFull:
            self._abandon(key, joiner, entry, arrived=arrived)
            raise ChannelFull(f"presence channel {name} has {self.max_members(app_id)} "
                              "members already") from None
        except (RedisLinkDown, RedisError, trio.TooSlowError, _SnapshotGone) as exc:
            self._abandon(key, joiner, entry, membership, app_id, name, arrived=arrived)
            raise SubscribeRefused(f"cannot subscribe to {name} now: {exc}") from None
        except BaseException:
            self._abandon(key, joiner, entry, membership, app_id, name, arrived=arrived)
            raise
        # Atomic from here, as in subscribe().
        self._arrived(state)
        state.joiners.remove(joiner)
        self._joining.discard(entry)
        if not quiet:
            data = b'"{}"' if snapshot.members is None else protocol.presence_data(
                snapshot.members)
            conn.send_message(protocol.subscription_succeeded(
                name, offset=since, epoch=epoch, recovered=recovered, data=data))
        for frame in replay:
            conn.send(frame)
        if recovered is not True and protocol.is_cache(name):
            if snapshot.cached is not None:
                conn.send_message(protocol.cached_event(snapshot.cached.prefix))
            else:
                conn.send_message(protocol.cache_miss(name))
        for frame in joiner.after(since, epoch):
            conn.send(frame)
        if membership is not None:
            old = state.members.pop(conn, None)
            if old is not None:  # subscribed again on the same connection: one membership
                self._leave(app_id, old.channel, old.key)
            state.members[conn] = membership
        self._go_live(conn, state, name)

    async def _join_online(self, conn: Subscriber, app_id: str, name: str,
                           member: Member) -> None:
        """The connection signed in (``name`` is its user channel): the user is online."""
        state: ChannelState | None = conn.channels.get(name)
        if state is None or conn in state.members:
            return
        membership = _PresenceMember(f"{conn.socket_id}#{next(self._member_serial)}", member,
                                     protocol.ONLINE)
        entry = self.broker.store.entry(app_id, protocol.ONLINE, membership.key)
        self._joining.add(entry)
        try:
            with trio.fail_after(SETTLE_TIMEOUT):
                await self.broker.store.join(app_id, protocol.ONLINE, self.cluster.incarnation,
                                             membership.key, member.user_id, None,
                                             max_members=2**62)
        except (RedisLinkDown, RedisError, trio.TooSlowError) as exc:
            self._leave(app_id, protocol.ONLINE, membership.key)
            self.unsubscribe(conn, name)
            raise SubscribeRefused(f"cannot sign in now: {exc}") from None
        except BaseException:
            self._leave(app_id, protocol.ONLINE, membership.key)
            raise
        finally:
            self._joining.discard(entry)
        if conn.channels.get(name) is state and state is not None:
            state.members[conn] = membership
        else:  # the connection left meanwhile
            self._leave(app_id, protocol.ONLINE, membership.key)

    async def _replay(self, conn: Subscriber, app_id: str, name: str, after: int, upto: int,
                      epoch: str | None, *, skip_members: bool = False
                      ) -> tuple[list[bytes], bool]:
        """Frames of the stream's (after, upto] for ``conn``, and whether they are complete."""
        if not self.history_enabled:
            return [], False
        _, stream_epoch, entries = await self.broker.read_history(app_id, name, after + 1, upto)
        complete = (stream_epoch == epoch and len(entries) == upto - after
                    and entries[0].offset == after + 1)
        if not complete:
            return [], False
        return [encode_text(protocol.with_position(e.prefix, e.offset, epoch or ""))
                for e in entries
                if e.exclude != conn.socket_id and not e.prefix.startswith(_TERMINATE)
                and not (skip_members and protocol.is_member_event(e.prefix))], True

    async def _wait_for_position(self, state: ChannelState, offset: int, epoch: str) -> None:
        """Wait until this node has delivered the channel through (offset, epoch), so no event
        at or before a snapshot reaches its subscriber live. Raises _SnapshotGone if the
        channel's history moved past it (its epoch was reset meanwhile)."""
        while offset > 0 and not (state.epoch == epoch and state.last >= offset):
            if self.history_enabled:
                self._start_catch_up(state)
                await state.settled.wait()
                if state.epoch == epoch and state.last >= offset:
                    return
            ((top, top_epoch),) = await self.broker.read_top(state.app_id, [state.name])
            if top_epoch != epoch or top < offset:
                raise _SnapshotGone(f"channel {state.name} was reset during the subscription")
            await trio.sleep(0.05)

    def _go_live(self, conn: Subscriber, state: ChannelState, name: str) -> None:
        state.subscribers[conn] = None
        conn.channels[name] = state
        self._count_changed(state)

    async def _wait_until_passed(self, state: ChannelState, offset: int) -> None:
        """Wait until this node has delivered the channel up to ``offset``.

        A resuming client may be ahead of this node: it came from a node further along, and
        our pub/sub copy is still in flight. With history on we catch up from the stream;
        with it off live delivery gets there by itself (reading the stream would only find
        nothing and send every subscriber away). A position beyond the channel's top can
        never be reached (a reset stream, a made-up position): we stop waiting and the
        caller answers ``recovered: false``.
        """
        while offset > state.last:
            if self.history_enabled:
                self._start_catch_up(state)
                await state.settled.wait()
                if offset <= state.last:
                    return
            ((top, epoch),) = await self.broker.read_top(state.app_id, [state.name])
            if top < offset or (epoch or "") != (state.epoch or ""):
                log.info("channel %s: a client resumed at %d, beyond the channel's top %d; "
                         "answering recovered:false", state.name, offset, top)
                return
            await trio.sleep(0.05)

    def _arrived(self, state: ChannelState) -> None:
        """The subscriber counted by _ready_state goes live now (no await until it does)."""
        state.arriving -= 1
        # Held while it waited, the state cannot have been released: going live on a released
        # state would be a subscription nothing ever delivers to.
        assert self.channels.get(state.key) is state, f"{state.name}: released under a subscriber"

    def _abandon(self, key: bytes, joiner: _Joiner | None, entry: str = "",
                 membership: _PresenceMember | None = None, app_id: str = "",
                 name: str = "", *, arrived: ChannelState | None = None) -> None:
        if arrived is not None:
            arrived.arriving -= 1
        state = self.channels.get(key)
        if state is not None and joiner is not None and joiner in state.joiners:
            state.joiners.remove(joiner)
        self._joining.discard(entry)
        if membership is not None:
            # The join may have reached Redis before the failure: leave (idempotent).
            self._leave(app_id, membership.channel, membership.key)
        self._maybe_release(key)

    def unsubscribe(self, conn: Subscriber, name: str) -> None:
        state = conn.channels.pop(name, None)
        if state is None:
            return
        state.subscribers.pop(conn, None)
        membership = state.members.pop(conn, None)
        if membership is not None:
            self._leave(state.app_id, membership.channel, membership.key)
        self._count_changed(state)
        self._maybe_release(state.key)

    def drop_connection(self, conn: Subscriber) -> None:
        for name in list(conn.channels):
            self.unsubscribe(conn, name)

    def _terminate(self, state: ChannelState) -> None:
        """The app ended this user's connections (POST .../terminate_connections)."""
        for conn in list(state.subscribers):
            self.terminated += 1
            conn.close(protocol.UNAUTHORIZED, "connection terminated by the app")
        for joiner in state.joiners:
            joiner.conn.close(protocol.UNAUTHORIZED, "connection terminated by the app")

    # ------------------------------------------------------------------ presence upkeep
    def _leave(self, app_id: str, name: str, member_key: str) -> None:
        self._leaves[(app_id, name, member_key)] = None
        self._leaves_event.set()

    async def _leaver(self) -> None:
        """Send queued presence leaves to Redis, in batches, retrying until it takes them."""
        while True:
            await self._leaves_event.wait()
            self._leaves_event = trio.Event()
            while self._leaves:
                batch = list(itertools.islice(self._leaves, LEAVE_BATCH))
                try:
                    await self.broker.store.leave_many(
                        [(app, ch, self.cluster.incarnation, key) for app, ch, key in batch],
                        webhooks=self.webhooks)
                except (RedisLinkDown, RedisError) as exc:
                    log.info("presence leaves wait for redis: %s", exc)
                    await trio.sleep(0.5)
                    continue
                self.presence_leaves += len(batch)
                for item in batch:
                    self._leaves.pop(item, None)

    async def resync_presence(self) -> None:
        """Make Redis hold exactly this node's memberships: join those it lost (a reaper
        took them while we were cut off), leave those it should not have (a join that
        landed after its client had gone)."""
        store = self.broker.store
        registered = await store.node_entries(self.cluster.incarnation)
        local: dict[str, tuple[ChannelState, _PresenceMember]] = {}
        for state in list(self.channels.values()):
            for membership in state.members.values():
                local[store.entry(state.app_id, membership.channel, membership.key)] = (
                    state, membership)
        stale = registered - local.keys() - self._joining
        for entry in stale:
            app, channel, key = entry.split("\n", 2)
            self._leave(app, channel, key)
        missing = [local[entry] for entry in local.keys() - registered]
        for start in range(0, len(missing), LEAVE_BATCH):
            batch = [(state, m) for state, m in missing[start:start + LEAVE_BATCH]
                     if m in state.members.values()]
            results = await store.join_many([
                (state.app_id, m.channel, self.cluster.incarnation, m.key, m.member.user_id,
                 None if m.channel == protocol.ONLINE else m.member.user_info,
                 2**62 if m.channel == protocol.ONLINE else self.max_members(state.app_id))
                for state, m in batch], self.webhooks)
            for (state, m), result in zip(batch, results, strict=True):
                if result is None:
                    log.warning("presence channel %s filled up while this node was away: %s "
                                "is no longer a member", state.name, m.member.user_id)
        if stale or local.keys() - registered:
            log.info("presence resync: %d memberships re-joined, %d stale ones left",
                     len(local.keys() - registered), len(stale))

    async def _presence_reconciler(self) -> None:
        while True:
            await trio.sleep(PRESENCE_RECONCILE_INTERVAL)
            if not self.broker.link_up or not any(s.members for s in self.channels.values()):
                continue
            try:
                await self.resync_presence()
            except (RedisLinkDown, RedisError) as exc:
                log.debug("presence reconcile failed: %s", exc)

    def _maybe_release(self, key: bytes) -> None:
        state = self.channels.get(key)
        if state is None or state.occupied:
            return
        del self.channels[key]
        if self._nursery is not None:
            self._nursery.start_soon(self.broker.release, key, self.channels.__contains__)

    # ------------------------------------------------------------------ background checks
    async def _position_checker(self) -> None:
        """Detect pub/sub messages lost without a link error (anti-entropy).

        A channel whose stream top stays above what we delivered across two checks lost a
        message on the way: catch it up from the stream.
        """
        while True:
            await trio.sleep(self.position_check_interval)
            if not self.broker.link_up:
                continue
            by_app: dict[str, list[ChannelState]] = {}
            for state in self.channels.values():
                if state.ready and not state.catching_up:
                    by_app.setdefault(state.app_id, []).append(state)
            for app_id, states in by_app.items():
                try:
                    tops = await self.broker.read_top(app_id, [s.name for s in states])
                except (RedisLinkDown, RedisError):
                    break
                for state, (top, epoch) in zip(states, tops, strict=True):
                    if state.catching_up:
                        continue
                    reset = epoch is not None and state.epoch is not None and epoch != state.epoch
                    if reset or (state.suspect_top is not None and state.last < state.suspect_top):
                        state.suspect_top = None
                        self.gaps_detected += 1
                        self._start_catch_up(state)
                    else:
                        state.suspect_top = top if top > state.last else None

    def _count_changed(self, state: ChannelState) -> None:
        if not state.internal:
            self.cluster.count_changed(state.app_id, state.name)

    def local_counts(self, app_id: str, channels: set[str]) -> dict[str, int]:
        """Local subscriptions of ``channels`` of the app (every channel if empty)."""
        if channels:
            out = dict.fromkeys(channels, 0)
            out.pop(" connections", None)
            for name in out:
                state = self.channels.get(self.broker.channel_key(app_id, name))
                if state is not None:
                    out[name] = len(state.subscribers)
            return out
        return {s.name: len(s.subscribers) for s in self.channels.values()
                if s.app_id == app_id and s.subscribers and not s.internal}

    async def _subscription_counter(self) -> None:
        """pusher_internal:subscription_count to the local subscribers of a channel whose
        cluster-wide count changed, for the apps that want it (once a second at most)."""
        while True:
            await trio.sleep(SUBSCRIPTION_COUNT_INTERVAL)
            apps = self.subscription_count_apps()
            if not apps or not self.broker.link_up:
                continue
            for app_id in apps:
                try:
                    totals = await self.broker.store.read_totals(app_id)
                except (RedisLinkDown, RedisError):
                    break
                for state in list(self.channels.values()):
                    if state.app_id != app_id or state.internal or not state.subscribers:
                        continue
                    count = totals.get(state.name, 0)
                    if count != state.last_count:
                        state.last_count = count
                        message = protocol.subscription_count(state.name, count)
                        for conn in state.subscribers:
                            conn.send_message(message)

    def statistics(self) -> dict[str, int]:
        return {
            "channels": len(self.channels),
            "subscriptions": sum(len(s.subscribers) for s in self.channels.values()),
            "delivered": self.delivered,
            "frames_out": self.frames_out,
            "gaps_detected": self.gaps_detected,
            "catchups": self.catchups,
            "unrecoverable": self.unrecoverable,
            "presence_members": sum(len(s.members) for s in self.channels.values()
                                    if not s.user),
            "presence_joins": self.presence_joins,
            "presence_leaves": self.presence_leaves,
            "presence_leaves_pending": len(self._leaves),
            "terminated": self.terminated,
        }
