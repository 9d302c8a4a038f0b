"""The fleet's Pusher client, sans-IO: one viewer's conversation and what it records.

A :class:`Viewer` is one measured client. It is driven by the worker's event loop
(:mod:`harness.fleet`), which owns the socket, and never touches I/O itself:

- ``opened(now)`` once the websocket upgrade is done; ``on_text(payload, now)`` for every text
  message, or ``on_update(update, now)`` for one the worker already decoded (a positioned update,
  :func:`as_update`; an :class:`UpdateCache` decodes each distinct one once for every viewer of
  a worker); ``tick(now)`` from the loop's timer sweep; ``lost(now, code, reason)`` when the
  connection ended, whatever the cause; ``begin_final_read(now)`` when the harness drains.
- What it wants sent lands in ``outbox`` (text payloads, framed and masked by the loop); when
  the connection must end, ``tick``/``on_text`` return a close request (code, reason); a
  finished final read returns :data:`FINISHED`.
- What it observes goes to its :class:`harness.recording.Recorder`: control ops (connect,
  subscribe, disconnect, drain, stale windows) as history ops, and every delivery into the
  compact record (runs of positions per subscription, the worker's position table and
  per-update latency) or, for a seeded sample of viewers, as a full ``deliver`` op too.

Behaviour (what the shipped experiments rely on): resume every channel from the last position
(offset, epoch) unless ``resume`` is off; exponential backoff with full jitter between
reconnects, reset after a connection was established; a ``pusher:ping`` after
``silence_ping_s`` without a message and a reconnect if nothing answers within
``pong_timeout_s``; ``pusher:pong`` to the server's pings; a slow-consumer stall (the loop
stops reading; see ``stalled_until``); and a final read that completes once every subscription
is answered, every replay a ``recovered: true`` promised has arrived and the line has been
quiet for :data:`DRAIN_QUIET_S`.

A viewer given a :class:`PresenceJoin` also joins one presence channel as a user (signed
channel_data, as an app's auth endpoint would sign it), on every connection and without a
position (a member list is a snapshot), and records its member list as ops for
:mod:`harness.checks.presence`: ``members`` invoke when it subscribes, ``members`` ok with each
``subscription_succeeded``'s list, ``member`` ok with each ``member_added``/``member_removed``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from server.auth import channel_auth

from .recording import LATENCY_BITS

if TYPE_CHECKING:
    from .recording import Recorder

__all__ = [
    "DRAIN_QUIET_S",
    "ESTABLISH_TIMEOUT_S",
    "FINISHED",
    "Backoff",
    "PresenceJoin",
    "Subscription",
    "Update",
    "UpdateCache",
    "Viewer",
    "as_update",
    "parse_update",
]

DRAIN_QUIET_S: Final = 1.0
ESTABLISH_TIMEOUT_S: Final = 10.0
FINISHED: Final = (1000, "final read complete")
PING: Final = b'{"event":"pusher:ping","data":{}}'
PONG: Final = b'{"event":"pusher:pong","data":{}}'

# Where a delivery stands relative to what the subscription already held.
NEW, DUPLICATE, REORDERED = 0, 1, 2

# The publisher puts id, seq and its invoke time first in every update; reading them with one
# anchored match avoids decoding the whole ~600-byte result for each delivery. Anything else
# (another publisher's data) falls back to a full JSON decode.
_HEAD = re.compile(r'\{"id":"([^"\\]*)","seq":(\d+),"t":(-?[0-9.eE+-]+)[,}]')


def parse_update(data: Any) -> tuple[str | None, int | None, float | None]:
    """(id, seq, publish invoke time) of an update's ``data`` (a JSON string)."""
    if isinstance(data, str):
        m = _HEAD.match(data)
        if m is not None:
            return m.group(1), int(m.group(2)), float(m.group(3))
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    pid, seq, t = data.get("id"), data.get("seq"), data.get("t")
    return (
        pid if isinstance(pid, str) else None if pid is None else str(pid),
        seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None,
    )


#: A decoded channel update with everything the in-order path needs:
#: (channel, update id, seq, publish invoke time, offset, epoch, the decoded message).
Update = tuple[str, str, int | None, float, int, str, dict[str, Any]]


def as_update(message: dict[str, Any]) -> Update | None:
    """The delivery fields of a positioned channel event (not ``pusher*``) whose data names an
    update id and a publish time, or None for any other message (which then takes the
    viewer's general path)."""
    event = message.get("event")
    channel = message.get("channel")
    offset = message.get("offset")
    epoch = message.get("epoch")
    if (type(event) is not str or event.startswith("pusher") or type(channel) is not str
            or type(offset) is not int or type(epoch) is not str):
        return None
    pid, seq, t = parse_update(message.get("data"))
    if pid is None or t is None:
        return None
    return channel, pid, seq, t, offset, epoch, message


class UpdateCache:
    """Each distinct update message decoded once per worker, not once per viewer.

    A broadcast hands every viewer of a channel the same bytes (the node's frame for an update
    is fixed: same event, channel, data and position whichever node sends it), so a worker
    with thousands of viewers would decode the same ~760-byte message thousands of times.
    Keyed by the exact bytes received (a whole frame, or one message's payload), a hit is the
    decode of those very bytes: no layout is assumed, only equality. Only positioned updates
    are kept (:func:`as_update`); everything else is decoded by the viewer each time. Bounded:
    messages over ``max_bytes`` are not kept, and at ``limit`` entries the cache starts over (a
    worker sees a few distinct updates a second).
    """

    __slots__ = ("entries", "hits", "limit", "max_bytes", "misses")

    def __init__(self, limit: int = 1024, max_bytes: int = 16_384) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        #: key bytes -> Update; the fleet's loop reads it directly (``entries.get``)
        self.entries: dict[bytes, Update] = {}
        self.hits = 0  # lookups that went through :meth:`lookup`
        self.misses = 0

    def lookup(self, key: bytes, payload: bytes) -> Update | None:
        """The update ``payload`` (received as ``key``) carries, decoding it on a miss; None
        when it is not a positioned update (or not JSON: the viewer records the error)."""
        update = self.entries.get(key)
        if update is not None:
            self.hits += 1
            return update
        self.misses += 1
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if type(message) is not dict:
            return None
        update = as_update(message)
        if update is not None and len(key) <= self.max_bytes:
            if len(self.entries) >= self.limit:
                self.entries.clear()
            self.entries[key] = update
        return update


@dataclass(frozen=True, slots=True)
class PresenceJoin:
    """The presence channel a viewer joins, and as whom: ``user``, or with ``fresh`` a new user
    per connection (``user.1``, ``user.2``, ...: an anonymous page load each time)."""

    channel: str
    user: str
    key: str
    secret: str = field(repr=False)  # never in a log line
    fresh: bool = False

    def user_on(self, connection: int) -> str:
        return f"{self.user}.{connection}" if self.fresh else self.user

    def subscribe(self, socket_id: str, user: str) -> bytes:
        """The signed pusher:subscribe (the signature covers socket_id:channel:channel_data)."""
        channel_data = orjson.dumps({"user_id": user}).decode()
        auth = channel_auth(self.key, self.secret, socket_id, self.channel, channel_data)
        return orjson.dumps({"event": "pusher:subscribe", "data": {
            "channel": self.channel, "channel_data": channel_data, "auth": auth}})


#: Pusher's "reconnect after backing off" close codes (the protocol's 4100-4199), and how
#: long pusher-js waits after one.
TRY_LATER_CODES: Final = (4100, 4199)
TRY_LATER_WAIT_S: Final = 1.0


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog): a fleet that lost its node
    at once spreads its reconnects over [0, current) instead of arriving together.

    A node that sends the viewer away with "try again later" (Pusher close codes 4100-4199:
    over capacity, cannot reach Redis) gets a second before the reconnect, as pusher-js
    waits (its ``retryIn(1000)`` on those codes). Coming straight back, as after a 4200,
    feeds the storm the node is refusing under (seen at 40,000 viewers: one node turned away
    thousands of subscriptions a minute for nine minutes)."""

    __slots__ = ("current", "floor", "maximum", "minimum")

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.current = minimum
        self.floor = 0.0

    def reset(self) -> None:
        self.current = self.minimum
        self.floor = 0.0

    def try_later(self) -> None:
        self.current = self.minimum
        self.floor = TRY_LATER_WAIT_S

    def next_delay(self, rng: random.Random) -> float:
        delay = min(self.floor + rng.uniform(0, self.current), max(self.maximum, self.floor))
        self.current = min(self.current * 2, self.maximum)
        return delay


class Subscription:
    """One (viewer, channel): its position and the run-length record of what it received.

    ``runs`` is the sequence of delivered positions, run-length encoded: ``[epoch, lo, hi]``
    means offsets lo, lo+1, ..., hi arrived one after the other in that epoch. Deliveries in
    order extend the current run; anything else (a hole, a duplicate, an older offset, a new
    epoch) starts a new one, so the record keeps the exact order of every delivery while an
    18-minute run in order is a single run. ``top`` is the highest offset held per epoch.
    """

    __slots__ = ("channel", "epoch", "first_ok", "hi", "lo", "offset", "pending",
                 "replay_epoch", "replay_until", "run_epoch", "runs", "stale_done",
                 "stale_hold", "table", "top", "tops")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.first_ok = math.inf  # time of the first subscribe ok: updates invoked later are owed
        self.offset = -1  # last position (offset, epoch); -1: none yet
        self.epoch = ""
        self.runs: list[list[Any]] = []  # closed runs [epoch, lo, hi]
        self.run_epoch = ""  # the open run is [lo, hi] in run_epoch; hi < lo: no open run
        self.lo = 0
        self.hi = -1
        self.top = -1  # highest offset held in run_epoch
        self.tops: dict[str, int] = {}  # the same for the other epochs seen
        self.pending = False
        self.replay_until = -1  # a recovered:true replay promised up to this offset
        self.replay_epoch = ""
        self.stale_hold = 0.0
        self.stale_done = True
        #: the worker's position table of (channel, run_epoch): offset -> update id
        self.table: dict[int, str] = {}

    def all_runs(self) -> list[list[Any]]:
        """Every run, the open one included (what the record op carries)."""
        if self.hi >= self.lo:
            return [*self.runs, [self.run_epoch, self.lo, self.hi]]
        return list(self.runs)

    def note(self, epoch: str, offset: int) -> int:
        """Record one delivered position; NEW, DUPLICATE or REORDERED (relative to what this
        subscription held before)."""
        if offset == self.hi + 1 and self.hi == self.top and epoch == self.run_epoch:
            self.hi = self.top = offset
            return NEW
        return self._note_slow(epoch, offset)

    def _note_slow(self, epoch: str, offset: int) -> int:
        tops = self.tops
        if self.top >= 0:
            tops[self.run_epoch] = self.top
        held = any(e == epoch and lo <= offset <= hi for e, lo, hi in self.all_runs())
        top = tops.get(epoch, -1)
        kind = DUPLICATE if held else REORDERED if offset < top else NEW
        if offset > top:
            tops[epoch] = offset
        if self.hi >= self.lo and epoch == self.run_epoch and offset == self.hi + 1:
            self.hi = offset
        else:
            if self.hi >= self.lo:
                self.runs.append([self.run_epoch, self.lo, self.hi])
            self.run_epoch = epoch
            self.lo = self.hi = offset
        self.top = tops[epoch]
        return kind


class Viewer:
    """One measured client (see the module docstring)."""

    __slots__ = (
        "backoff",
        "channels",
        "connected",
        "due",
        "established",
        "final",
        "finished",
        "full",
        "id",
        "last_heard",
        "opened_at",
        "outbox",
        "ping_sent",
        "pong_timeout_s",
        "presence",
        "presence_connections",
        "presence_pending",
        "presence_user",
        "process",
        "quiet_since",
        "reconnected_at",
        "recorder",
        "resume",
        "silence_ping_s",
        "stale_since",
        "stalled_until",
        "subs",
    )

    def __init__(self, client_id: int, channels: tuple[str, ...], recorder: Recorder, *,
                 resume: bool = True, backoff: Backoff | None = None, full: bool = False,
                 silence_ping_s: float = 5.0, pong_timeout_s: float = 5.0,
                 presence: PresenceJoin | None = None) -> None:
        self.id = client_id
        self.process = f"client-{client_id}"
        self.channels = channels
        self.subs = {ch: Subscription(ch) for ch in channels}
        self.recorder = recorder
        self.resume = resume
        self.backoff = backoff or Backoff(0.1, 5.0)
        self.full = full
        self.silence_ping_s = silence_ping_s
        self.pong_timeout_s = pong_timeout_s
        self.presence = presence
        self.presence_pending = False
        self.presence_connections = 0  # connections that joined the presence channel
        self.presence_user = ""  # the user of the current connection's join
        self.outbox: list[bytes] = []
        self.connected = False  # pusher:connection_established seen on the current connection
        self.established = False  # the websocket is open (upgrade done)
        self.opened_at = 0.0
        self.last_heard = 0.0
        self.ping_sent = -1.0
        self.final = False
        self.finished = False
        self.quiet_since = 0.0
        self.stalled_until = 0.0
        self.stale_since = -1.0  # disconnect time of the open stale window; -1: none
        self.reconnected_at = -1.0
        #: no timer of this viewer can fire before this time: the loop calls ``tick`` only from
        #: then on (``tick`` moves it; messages only make the real deadline later)
        self.due = math.inf

    # ------------------------------------------------------------------ connection lifecycle
    def opened(self, now: float) -> None:
        self.established = True
        self.connected = False
        self.opened_at = now
        self.last_heard = now
        self.ping_sent = -1.0
        self.due = now + ESTABLISH_TIMEOUT_S

    def lost(self, now: float, code: int | None, reason: str) -> None:
        """The connection ended (closed by either side, failed, or never opened)."""
        was_connected = self.connected
        self.established = False
        self.connected = False
        self.due = math.inf
        for sub in self.subs.values():
            sub.pending = False
        self.presence_pending = False
        if self.finished:
            return
        if was_connected:
            self.recorder.disconnected()
            if code is not None and TRY_LATER_CODES[0] <= code <= TRY_LATER_CODES[1]:
                self.backoff.try_later()
            else:
                self.backoff.reset()
            if self.stale_since < 0:
                self.stale_since = now
            self.reconnected_at = -1.0
        self.recorder.op(self.process, "info", "disconnect", {"code": code, "reason": reason},
                         now)

    def begin_final_read(self, now: float) -> None:
        self.final = True
        self.stalled_until = 0.0
        self.quiet_since = now
        self.due = min(self.due, now + DRAIN_QUIET_S)

    def stall(self, until: float) -> None:
        """Stop reading until ``until`` (a slow consumer); the loop stops polling the socket."""
        self.stalled_until = until
        self.due = min(self.due, until)

    @property
    def read_complete(self) -> bool:
        if not self.connected or self.presence_pending:
            return False
        for sub in self.subs.values():
            if sub.pending or sub.replay_until >= 0:
                return False
        return True

    def tick(self, now: float) -> tuple[int, str] | None:
        """Timers: the connect deadline, the silence ping, the pong deadline, the final read's
        quiet line. Returns a close request when the connection must end; sets ``due``."""
        if not self.established:
            self.due = math.inf
            return None
        if not self.connected:
            if now - self.opened_at > ESTABLISH_TIMEOUT_S:
                return (1002, "no connection_established within 10 s")
            self.due = self.opened_at + ESTABLISH_TIMEOUT_S + 1e-3
            return None
        if self.final:
            if now - self.quiet_since >= DRAIN_QUIET_S and self.read_complete:
                self._finish(now)
                return FINISHED
            self.due = max(now, self.quiet_since) + DRAIN_QUIET_S / 4
            return None
        if now < self.stalled_until:
            self.due = self.stalled_until
            return None  # a stalled consumer reads nothing, so it hears nothing either
        if self.ping_sent >= 0:
            if now - self.ping_sent >= self.pong_timeout_s:
                return (1002, "no pong from server")
            self.due = self.ping_sent + self.pong_timeout_s
        elif now - self.last_heard >= self.silence_ping_s:
            self.ping_sent = now
            self.outbox.append(PING)
            self.due = now + self.pong_timeout_s
        else:
            self.due = self.last_heard + self.silence_ping_s
        return None

    def _finish(self, now: float) -> None:
        self.finished = True
        self.connected = False
        self.recorder.finished()
        self._close_stale_window(now, by_drain=True)
        self.recorder.op(self.process, "ok", "drain", {"channels": list(self.channels)}, now)

    # ------------------------------------------------------------------ messages
    def on_text(self, payload: bytes, now: float) -> tuple[int, str] | None:
        self.last_heard = now
        self.ping_sent = -1.0
        if self.final:
            self.quiet_since = now
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.recorder.op(self.process, "info", "error",
                             {"message": payload[:200].decode("utf-8", "replace")}, now)
            return None
        if type(message) is not dict:
            return None
        update = as_update(message)
        if update is not None:
            return self.on_update(update, now)
        return self._on_message(message, now)

    def on_update(self, update: Update, now: float) -> tuple[int, str] | None:
        """A positioned update, already decoded (:func:`as_update`, often shared by every
        viewer of the worker through an :class:`UpdateCache`): the same as ``on_text`` of its
        payload.

        The hot path, ~32,000 times a second at full size: the next update of a channel in
        order, outside any replay, stale window or full-history recording, is recorded here
        (what :meth:`_deliver` does for a NEW delivery that extends the open run, inlined: the
        position table and the latency book are written directly). Everything else takes the
        general path.
        """
        self.last_heard = now
        self.ping_sent = -1.0
        if self.final:
            self.quiet_since = now
        channel, pid, _seq, t, offset, epoch, message = update
        sub = self.subs.get(channel)
        # (hi < 0: nothing received yet, so the subscription's position table is not attached;
        # the general path attaches it)
        if (sub is None or offset != sub.hi + 1 or sub.hi != sub.top or epoch != sub.run_epoch
                or sub.hi < 0 or self.full or sub.replay_until >= 0 or self.stale_since >= 0):
            return self._on_message(message, now)
        sub.hi = sub.top = sub.offset = offset
        sub.epoch = epoch
        table = sub.table
        known = table.get(offset)
        recorder = self.recorder
        if known is None:
            table[offset] = pid
        elif known != pid:
            recorder.position(channel, epoch, offset, pid, self.process, now)
        stats = recorder.stats
        stats.delivered += 1
        book = recorder.latency
        entry = book.get(pid)
        if entry is None:
            entry = book[pid] = [now, -1.0, {}]
        if t > sub.first_ok:
            latency = now - t
            if latency >= 0:
                if now > entry[1]:
                    entry[1] = now
                us = int(latency * 1e6)
                shift = us.bit_length() - LATENCY_BITS
                if shift > 0:
                    us = (us >> shift) << shift
                hist = entry[2]
                hist[us] = hist.get(us, 0) + 1
                live = stats.live_latency
                live[us] = live.get(us, 0) + 1
        return None

    def _on_message(self, message: dict[str, Any], now: float) -> tuple[int, str] | None:
        """The general path of a decoded message (``last_heard`` already updated)."""
        event = message.get("event")
        if not isinstance(event, str):
            return None
        channel = message.get("channel")
        if self.presence is not None and channel == self.presence.channel:
            self._on_presence(event, message, now)
            return None
        if not event.startswith("pusher"):
            if isinstance(channel, str):
                self._deliver(channel, message, now)
            return None
        if event == "pusher:connection_established":
            return self._established(message, now)
        if event == "pusher_internal:subscription_succeeded":
            self._subscribed(str(channel), message, now)
        elif event == "pusher:ping":
            self.outbox.append(PONG)
        elif event in ("pusher:error", "pusher:subscription_error"):
            self.recorder.op(self.process, "info", "error", {"message": message}, now)
            if event == "pusher:subscription_error":
                sub = self.subs.get(str(channel))
                if sub is not None:
                    sub.pending = False
                self.recorder.op(self.process, "fail", "subscribe",
                                 {"channel": channel, "error": str(message.get("data"))[:200]},
                                 now)
        return None

    def _established(self, message: dict[str, Any], now: float) -> tuple[int, str] | None:
        try:
            info = orjson.loads(message["data"]) if isinstance(message.get("data"), str) \
                else message["data"]
            socket_id = info["socket_id"]
        except (KeyError, TypeError, orjson.JSONDecodeError):
            return (1002, "malformed connection_established")
        if self.connected:
            return None
        self.connected = True
        self.due = now + self.silence_ping_s
        activity = info.get("activity_timeout")
        if isinstance(activity, int | float) and activity > 0:
            self.silence_ping_s = min(self.silence_ping_s, float(activity))
            self.due = now + self.silence_ping_s
        self.recorder.op(self.process, "ok", "connect", {"socket_id": socket_id}, now)
        self.recorder.connected(self)
        if self.stale_since >= 0:
            self.reconnected_at = now
        for sub in self.subs.values():
            data: dict[str, Any] = {"channel": sub.channel}
            value: dict[str, Any] = {"channel": sub.channel}
            if self.resume and sub.offset >= 0:
                data["offset"] = sub.offset
                data["epoch"] = sub.epoch
                value["position"] = {"offset": sub.offset, "epoch": sub.epoch}
            sub.pending = True
            sub.replay_until = -1
            if self.stale_since >= 0:
                sub.stale_done = False
                sub.stale_hold = now
            self.recorder.op(self.process, "invoke", "subscribe", value, now)
            self.outbox.append(orjson.dumps({"event": "pusher:subscribe", "data": data}))
        if self.presence is not None:
            self.presence_connections += 1
            self.presence_user = self.presence.user_on(self.presence_connections)
            self.presence_pending = True
            self.recorder.op(self.process, "invoke", "members",
                             {"channel": self.presence.channel, "user": self.presence_user},
                             now)
            self.outbox.append(self.presence.subscribe(str(socket_id), self.presence_user))
        return None

    def _on_presence(self, event: str, message: dict[str, Any], now: float) -> None:
        """A message on the presence channel: the member list and its changes, recorded."""
        assert self.presence is not None
        channel = self.presence.channel
        data = message.get("data")
        if isinstance(data, str):
            try:
                data = orjson.loads(data)
            except orjson.JSONDecodeError:
                data = None
        if event == "pusher_internal:subscription_succeeded":
            self.presence_pending = False
            presence = data.get("presence") if isinstance(data, dict) else None
            ids = presence.get("ids") if isinstance(presence, dict) else None
            self.recorder.op(self.process, "ok", "members",
                             {"channel": channel, "user": self.presence_user,
                              "members": [str(i) for i in ids or ()]}, now)
        elif event in ("pusher_internal:member_added", "pusher_internal:member_removed"):
            user = data.get("user_id") if isinstance(data, dict) else None
            self.recorder.op(self.process, "ok", "member",
                             {"channel": channel, "user": str(user),
                              "change": "added" if event.endswith("added") else "removed"},
                             now)
        elif event == "pusher:subscription_error":
            self.presence_pending = False
            self.recorder.op(self.process, "fail", "members",
                             {"channel": channel, "error": str(data)[:200]}, now)

    def _subscribed(self, channel: str, message: dict[str, Any], now: float) -> None:
        sub = self.subs.get(channel)
        recovered = message.get("recovered")
        offset = message.get("offset")
        epoch = message.get("epoch")
        self.recorder.op(self.process, "ok", "subscribe",
                         {"channel": channel, "recovered": recovered, "offset": offset,
                          "epoch": epoch}, now)
        self.recorder.subscribed()
        if sub is None:
            return
        sub.pending = False
        if sub.first_ok == math.inf:
            sub.first_ok = now
        if isinstance(offset, int) and not isinstance(offset, bool):
            if recovered is True:
                sub.replay_until = offset
                sub.replay_epoch = epoch or ""
                self._check_replay(sub)
            if recovered is not True or sub.offset < 0:
                # Start from the server's position; "" = channel not yet published, so a resume
                # asks for everything from its first event.
                sub.offset = offset
                sub.epoch = epoch or ""
        if self.stale_since >= 0 and not sub.stale_done:
            sub.stale_hold = max(sub.stale_hold, now)
            if recovered is False:
                self._close_stale_window(now, unrecovered=True)

    def _deliver(self, channel: str, message: dict[str, Any], now: float) -> None:
        pid, seq, t = parse_update(message.get("data"))
        offset = message.get("offset")
        epoch = message.get("epoch")
        sub = self.subs.get(channel)
        recorder = self.recorder
        if sub is None or not isinstance(offset, int) or isinstance(offset, bool) \
                or not isinstance(pid, str):
            # Not a positioned update of ours (a server without positions, or a foreign
            # event): recorded in full, judged by id.
            recorder.deliver_op(self.process, channel, pid, seq, offset, epoch, now)
            recorder.unpositioned(pid, t, now)
            if sub is not None:
                self._stale_progress(sub, t, now)
            return
        epoch = epoch if isinstance(epoch, str) else ""
        kind = sub.note(epoch, offset)
        sub.offset = offset
        sub.epoch = epoch
        recorder.position(channel, epoch, offset, pid, self.process, now)
        sub.table = recorder.table_for(channel, sub.run_epoch)
        if self.full:
            recorder.deliver_op(self.process, channel, pid, seq, offset, epoch, now)
        if kind != DUPLICATE:  # a first delivery, in order or not: its latency counts
            if t is not None:
                recorder.received(pid, now, now - t if t > sub.first_ok else -1.0)
            else:
                recorder.stats.delivered += 1
        if kind != NEW:
            recorder.out_of_line(kind)
        if sub.replay_until >= 0:
            self._check_replay(sub)
        self._stale_progress(sub, t, now)

    def _stale_progress(self, sub: Subscription, t: float | None, now: float) -> None:
        """A delivery on ``sub`` during a stale window: the window closes once every channel
        delivered an update published after the reconnect."""
        if self.stale_since >= 0 and self.reconnected_at >= 0 and not sub.stale_done:
            if t is not None and t >= self.reconnected_at:
                sub.stale_done = True
                self._maybe_caught_up(now)
            else:
                sub.stale_hold = now

    @staticmethod
    def _check_replay(sub: Subscription) -> None:
        """Forget the replay target once the position reached it (or moved to another epoch:
        then that replay is over, and the checker judges what came of it)."""
        if sub.epoch != sub.replay_epoch or sub.offset >= sub.replay_until:
            sub.replay_until = -1

    # ------------------------------------------------------------------ stale windows
    def _maybe_caught_up(self, now: float) -> None:
        if all(sub.stale_done for sub in self.subs.values()):
            self._close_stale_window(now)

    def _close_stale_window(self, now: float, *, unrecovered: bool = False,
                            by_drain: bool = False) -> None:
        """A viewer disconnected at D, reconnected at C, holds every update invoked before C
        from H on: the stale window D..H, recorded once per window."""
        if self.stale_since < 0 or (self.reconnected_at < 0 and not unrecovered):
            return
        held = max((sub.stale_hold for sub in self.subs.values()), default=now)
        value: dict[str, Any] = {
            "disconnected": self.stale_since,
            "reconnected": self.reconnected_at,
            "caught_up": None if unrecovered else held,
        }
        if unrecovered:
            value["unrecovered"] = True
        if by_drain:
            value["ended_by_drain"] = True
        self.recorder.op(self.process, "ok", "stale", value, now)
        self.stale_since = -1.0
        self.reconnected_at = -1.0
        for sub in self.subs.values():
            sub.stale_done = True
