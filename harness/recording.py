"""What a fleet worker records, compactly enough for 40,000 viewers and exactly enough for the
checker to judge every (viewer, update) pair.

At the election's full size the fleet receives ~35 million updates; one JSON op per delivery
would be gigabytes of history. A worker therefore records:

- **control ops** as before, one JSON line each (``connect``, ``subscribe``, ``disconnect``,
  ``error``, ``drain``) and one ``stale`` op per stale window a viewer went through;
- per (viewer, channel), at the end, a ``record`` op: the *runs* of delivered positions (see
  :class:`harness.pusher_client.Subscription`), which keep the exact order of every delivery,
  the time of the first successful subscribe, and the worker whose position table says what
  the runs carried;
- per worker, at the end, a ``positions`` op: which update id arrived at each (channel, epoch,
  offset). Every delivery is compared with it on arrival; a delivery of another id at a known
  position is recorded in full (``deliver`` op with ``conflict``), so the runs plus this table
  say exactly which update each delivery carried;
- per worker, at the end, a ``latency`` op: per update id, the first and last receive times and
  a histogram of receive - publish-invoke latencies of the viewers that owe it (first deliveries
  of updates invoked after the viewer's first subscribe), in log-linear buckets of 7
  significant bits (a bucket spans at most 1/64 of its value);
- a ``deliver`` op for every delivery of a seeded sample of viewers (``full``), for deliveries
  without a position or an update id (foreign events, judged by id), and for conflicts.

The checker (:mod:`harness.checker`) rebuilds the same structures from plain ``deliver`` ops
when a history has no ``record`` ops, so hand-written histories and full recordings are judged
by the same code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .history import HistoryWriter, OpType

if TYPE_CHECKING:
    from .pusher_client import Viewer

__all__ = ["LATENCY_BITS", "LiveStats", "Recorder", "latency_bucket"]

LATENCY_BITS: Final = 7


def latency_bucket(us: int) -> int:
    """The bucket of a latency in µs: the value with all but its top LATENCY_BITS bits cleared
    (a log-linear scale like HdrHistogram's, at most 1/64 below the true value)."""
    shift = us.bit_length() - LATENCY_BITS
    return (us >> shift) << shift if shift > 0 else us


@dataclass
class LiveStats:
    """Provisional counters for the status line (the checker decides from the record)."""

    clients: int = 0
    connected: int = 0
    subscribed: int = 0
    delivered: int = 0
    reconnects: int = 0
    drained: int = 0
    stalled: int = 0
    live_duplicates: int = 0
    live_reorders: int = 0
    conflicts: int = 0
    #: Every owed first delivery's latency since the last snapshot: µs bucket -> count. All
    #: of them, not the first N: a burst's first deliveries are its fastest.
    live_latency: dict[int, int] = field(default_factory=dict)

    def latency_snapshot(self) -> dict[str, float] | None:
        """p50/p99/max of the latencies since the last snapshot (ms), then start afresh."""
        buckets = self.live_latency
        if not buckets:
            return None
        self.live_latency = {}
        n = sum(buckets.values())
        ordered = sorted(buckets.items())

        def pick(q: float) -> float:
            rank, seen = min(n - 1, int(q * n)), 0
            for us, count in ordered:
                seen += count
                if seen > rank:
                    return round(us / 1000.0, 1)
            return round(ordered[-1][0] / 1000.0, 1)

        return {"p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1][0] / 1000.0, 1),
                "n": n}


class Recorder:
    """One worker's record (see the module docstring). Pure bookkeeping plus history appends."""

    def __init__(self, history: HistoryWriter, worker: int = 0) -> None:
        self.history = history
        self.process = f"fleet-w{worker}"
        self.stats = LiveStats()
        #: channel -> epoch -> offset -> update id (first seen)
        self.table: dict[str, dict[str, dict[int, str]]] = {}
        #: update id -> [first receive, last owed receive, {bucket µs: count}]
        self.latency: dict[str, list[Any]] = {}

    # ------------------------------------------------------------------ control ops
    def op(self, process: str, type: OpType, f: str, value: dict[str, Any], now: float) -> None:
        self.history.record(process, type, f, value, time=now)
        if f == "disconnect":
            self.stats.reconnects += 1

    def connected(self, viewer: Viewer) -> None:
        self.stats.connected += 1

    def disconnected(self) -> None:
        self.stats.connected -= 1

    def finished(self) -> None:
        self.stats.drained += 1
        self.stats.connected -= 1

    def subscribed(self) -> None:
        self.stats.subscribed += 1

    # ------------------------------------------------------------------ deliveries
    def table_for(self, channel: str, epoch: str) -> dict[int, str]:
        """The position table of one (channel, epoch): offset -> update id."""
        by_epoch = self.table.get(channel)
        if by_epoch is None:
            by_epoch = self.table[channel] = {}
        offsets = by_epoch.get(epoch)
        if offsets is None:
            offsets = by_epoch[epoch] = {}
        return offsets

    def position(self, channel: str, epoch: str, offset: int, pid: str, process: str,
                 now: float) -> None:
        offsets = self.table_for(channel, epoch)
        known = offsets.get(offset)
        if known is None:
            offsets[offset] = pid
        elif known != pid:
            self.stats.conflicts += 1
            self.history.record(process, "ok", "deliver",
                                {"channel": channel, "id": pid, "offset": offset,
                                 "epoch": epoch, "conflict": known}, time=now)

    def received(self, pid: str, now: float, latency_s: float) -> None:
        """A first delivery of ``pid``; ``latency_s`` < 0 when the viewer does not owe it."""
        stats = self.stats
        stats.delivered += 1
        entry = self.latency.get(pid)
        if entry is None:
            entry = self.latency[pid] = [now, -1.0, {}]
        elif now < entry[0]:
            entry[0] = now
        if latency_s >= 0:
            if now > entry[1]:
                entry[1] = now
            us = latency_bucket(int(latency_s * 1e6))
            hist = entry[2]
            hist[us] = hist.get(us, 0) + 1
            live = stats.live_latency
            live[us] = live.get(us, 0) + 1

    def out_of_line(self, kind: int) -> None:
        """A duplicate (counted as a delivery here) or a reorder (already counted)."""
        from .pusher_client import DUPLICATE

        if kind == DUPLICATE:
            self.stats.delivered += 1
            self.stats.live_duplicates += 1
        else:
            self.stats.live_reorders += 1

    def unpositioned(self, pid: str | None, t: float | None, now: float) -> None:
        self.stats.delivered += 1
        if t is not None and now >= t:
            us = latency_bucket(int((now - t) * 1e6))
            live = self.stats.live_latency
            live[us] = live.get(us, 0) + 1

    def deliver_op(self, process: str, channel: str, pid: str | None, seq: int | None,
                   offset: Any, epoch: Any, now: float) -> None:
        value: dict[str, Any] = {"channel": channel, "id": pid, "seq": seq}
        if isinstance(offset, int) and not isinstance(offset, bool):
            value["offset"] = offset
            value["epoch"] = epoch
        self.history.record(process, "ok", "deliver", value, time=now)

    # ------------------------------------------------------------------ the end
    def finish(self, viewers: Iterable[Viewer], now: float) -> None:
        """Append the compact record: one ``record`` op per (viewer, channel) that subscribed or
        received anything, then the worker's ``positions`` and ``latency`` ops."""
        record = self.history.record
        for viewer in viewers:
            for sub in viewer.subs.values():
                runs = sub.all_runs()
                if not runs and sub.first_ok == float("inf"):
                    continue
                record(viewer.process, "ok", "record",
                       {"channel": sub.channel,
                        "first_ok": None if sub.first_ok == float("inf") else sub.first_ok,
                        "runs": runs, "worker": self.process}, time=now)
        positions: dict[str, dict[str, list[Any]]] = {}
        for channel, by_epoch in self.table.items():
            out: dict[str, list[Any]] = {}
            for epoch, offsets in by_epoch.items():
                first, last = min(offsets), max(offsets)
                ids: list[str | None] = [None] * (last - first + 1)
                for offset, pid in offsets.items():
                    ids[offset - first] = pid
                out[epoch] = [first, ids]
            positions[channel] = out
        record(self.process, "ok", "positions", {"positions": positions}, time=now)
        latency = {pid: [first, last, [x for kv in sorted(hist.items()) for x in kv]]
                   for pid, (first, last, hist) in self.latency.items()}
        record(self.process, "ok", "latency", {"latency": latency}, time=now)
        self.history.flush()
