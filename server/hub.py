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

import logging
from typing import Any

import trio

from . import protocol
from .broker import Broker
from .frames import encode_text
from .interfaces import Position, Subscriber, SubscribeRefused
from .redis_link import RedisError, RedisLinkDown

log = logging.getLogger("turnout.hub")

__all__ = ["ChannelState", "Hub"]

# Live messages buffered per channel while it catches up. Past the bound they are dropped:
# everything is in the stream, and catch-up reads up to the stream's top anyway.
MAX_PENDING = 10_000
SETTLE_TIMEOUT = 5.0
CATCHUP_RETRY_MIN = 0.1
CATCHUP_RETRY_MAX = 2.0


class _Joiner:
    __slots__ = ("conn", "frames")

    def __init__(self, conn: Subscriber) -> None:
        self.conn = conn
        self.frames: list[tuple[int, bytes]] = []


class _Pending:
    __slots__ = ("epoch", "exclude", "message", "offset")

    def __init__(self, offset: int, epoch: str, exclude: str, message: bytes) -> None:
        self.offset = offset
        self.epoch = epoch
        self.exclude = exclude
        self.message = message


class ChannelState:
    __slots__ = ("app_id", "catching_up", "catchup_again", "catchup_running", "epoch",
                 "init_lock", "joiners", "key", "last", "name", "pending", "ready", "settled",
                 "subscribers", "suspect_top")

    def __init__(self, app_id: str, name: str, key: bytes) -> None:
        self.app_id = app_id
        self.name = name
        self.key = key
        self.subscribers: dict[Subscriber, None] = {}
        self.joiners: list[_Joiner] = []
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
        return bool(self.subscribers or self.joiners)


class Hub:
    """Owns every ChannelState of a node (its `interfaces.Channels`, what connections subscribe
    through). Start with ``nursery.start(hub.serve)``."""

    def __init__(self, broker_factory: Any, *, position_check_interval: float,
                 history_enabled: bool) -> None:
        self.channels: dict[bytes, ChannelState] = {}
        self.broker: Broker = broker_factory(self._on_message, self._on_link)
        self.position_check_interval = position_check_interval
        self.history_enabled = history_enabled
        self._nursery: trio.Nursery | None = None
        self._counts_dirty: set[str] = set()
        self._counts_event = trio.Event()
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
            nursery.start_soon(self._count_syncer)
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
        frame = encode_text(message)
        state.last = offset
        n = 0
        for conn in state.subscribers:
            if conn.socket_id != exclude:
                conn.send(frame)
                n += 1
        for joiner in state.joiners:
            if joiner.conn.socket_id != exclude:
                joiner.frames.append((offset, frame))
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
        key = self.broker.channel_key(app_id, name)
        while True:
            state = self.channels.get(key)
            if state is None:
                state = self.channels[key] = ChannelState(app_id, name, key)
            if state.ready:
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
                return state

    async def subscribe(self, conn: Subscriber, app_id: str, name: str,
                        position: Position | None) -> None:
        """Subscribe ``conn``; replays from ``position`` when given. Raises SubscribeRefused."""
        key = self.broker.channel_key(app_id, name)
        joiner: _Joiner | None = None
        try:
            with trio.fail_after(SETTLE_TIMEOUT):
                state = await self._ready_state(app_id, name)
                await state.settled.wait()
                if position is not None and position[1] == "":
                    # Epoch "" = the channel had no epoch yet when the client subscribed: it
                    # owes everything of the channel's first epoch since its offset.
                    position = (position[0], state.epoch or "")
                if position is not None and position[1] == (state.epoch or "") and \
                        position[0] > state.last:
                    await self._wait_until_passed(state, position[0])
                replay: list[tuple[int, bytes]] = []
                recovered: bool | None = None
                since = state.last
                if position is not None:
                    p_offset, p_epoch = position
                    recovered = p_epoch == (state.epoch or "") and p_offset <= state.last
                    if recovered and p_offset < state.last:
                        if not self.history_enabled:
                            recovered = False
                        else:
                            joiner = _Joiner(conn)
                            state.joiners.append(joiner)
                            target = state.last
                            _, epoch, entries = await self.broker.read_history(
                                app_id, name, p_offset + 1, target
                            )
                            complete = (
                                epoch == state.epoch and len(entries) == target - p_offset
                                and entries[0].offset == p_offset + 1
                            )
                            if complete:
                                replay = [
                                    (e.offset, encode_text(protocol.with_position(
                                        e.prefix, e.offset, epoch or "")))
                                    for e in entries if e.exclude != conn.socket_id
                                ]
                                since = target
                            else:
                                recovered = False
                    elif recovered:
                        since = p_offset
        except (RedisLinkDown, RedisError, trio.TooSlowError) as exc:
            self._abandon(key, joiner)
            raise SubscribeRefused(f"cannot subscribe to {name} now: {exc}") from None
        except BaseException:
            self._abandon(key, joiner)  # cancelled: the connection went away mid-subscribe
            raise
        # From here to the end nothing awaits: replay, buffered live events and the switch to
        # live delivery happen atomically with respect to the fan-out.
        if joiner is not None:
            state.joiners.remove(joiner)
        conn.send_message(protocol.subscription_succeeded(
            name, offset=since, epoch=state.epoch, recovered=recovered))
        for _, frame in replay:
            conn.send(frame)
        if joiner is not None:
            for offset, frame in joiner.frames:
                if offset > since:
                    conn.send(frame)
        state.subscribers[conn] = None
        conn.channels[name] = state
        self._count_changed(app_id)

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

    def _abandon(self, key: bytes, joiner: _Joiner | None) -> None:
        state = self.channels.get(key)
        if state is not None and joiner is not None and joiner in state.joiners:
            state.joiners.remove(joiner)
        self._maybe_release(key)

    def unsubscribe(self, conn: Subscriber, name: str) -> None:
        state = conn.channels.pop(name, None)
        if state is None:
            return
        state.subscribers.pop(conn, None)
        self._count_changed(state.app_id)
        self._maybe_release(state.key)

    def drop_connection(self, conn: Subscriber) -> None:
        for name in list(conn.channels):
            self.unsubscribe(conn, name)

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

    def _count_changed(self, app_id: str) -> None:
        self._counts_dirty.add(app_id)
        self._counts_event.set()

    def local_counts(self, app_id: str) -> dict[str, int]:
        return {
            s.name: len(s.subscribers) for s in self.channels.values()
            if s.app_id == app_id and s.subscribers
        }

    async def _count_syncer(self) -> None:
        """Mirror local subscription counts into Redis (debounced), refreshing their TTL."""
        refresh_every = 3.0
        last_refresh = -refresh_every
        known: set[str] = set()
        while True:
            with trio.move_on_after(refresh_every):
                await self._counts_event.wait()
            await trio.sleep(0.05)
            self._counts_event = trio.Event()
            dirty, self._counts_dirty = self._counts_dirty, set()
            known |= dirty
            now = trio.current_time()
            if now - last_refresh >= refresh_every:
                dirty = set(known)
                last_refresh = now
            for app_id in dirty:
                try:
                    await self.broker.write_counts(app_id, self.local_counts(app_id), ttl=10)
                except (RedisLinkDown, RedisError):
                    self._counts_dirty.add(app_id)

    def statistics(self) -> dict[str, int]:
        return {
            "channels": len(self.channels),
            "subscriptions": sum(len(s.subscribers) for s in self.channels.values()),
            "delivered": self.delivered,
            "frames_out": self.frames_out,
            "gaps_detected": self.gaps_detected,
            "catchups": self.catchups,
            "unrecoverable": self.unrecoverable,
        }
