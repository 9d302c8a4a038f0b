"""One pass over a history into the structures every other part judges (pure).

Two recordings feed the same model:

- the fleet's compact record (``record``, ``positions`` and ``latency`` ops, see
  :mod:`harness.recording`), where a subscription's deliveries are runs of server positions;
- plain ``deliver`` ops (hand-written histories, the fleet's full-history sample, foreign
  events without a position), from which the same runs, position table and latencies are
  rebuilt here with the fleet's own rules (:meth:`harness.pusher_client.Subscription.note`).

Where a subscription has both (a sampled viewer), the runs rebuilt from its ``deliver`` ops
must equal its ``record``: a disagreement is reported as an inconsistent recording.

Only each process's own op order matters (true of every history file and of merges); the rest
is decided by the ``time`` fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.recording import latency_bucket

__all__ = ["FaultWindow", "Pub", "RunData", "Stale", "Sub", "ViewerData", "accumulate",
           "runs_of"]

_CLIENT_FS = frozenset({"connect", "subscribe", "deliver", "disconnect", "drain", "record",
                        "stale", "error"})


class Pub:
    __slots__ = ("channel", "done", "epoch", "error", "id", "invoke", "offset", "seq", "status")

    def __init__(self, pid: str) -> None:
        self.id = pid
        self.channel = ""
        self.seq: int | None = None
        self.invoke = math.nan
        self.done = math.nan
        self.status = "pending"  # ok | fail | info | pending (never completed)
        self.error: str | None = None
        self.offset = -1  # the position the server acknowledged (ok publishes), -1: unknown
        self.epoch = ""


class Sub:
    """One (viewer, channel)."""

    __slots__ = ("channel", "conflicts", "delivers", "first_ok", "has_record", "id_delivers",
                 "invoked", "runs", "worker")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.first_ok = math.inf
        self.invoked = False
        self.runs: list[tuple[str, int, int]] = []
        self.has_record = False
        #: positioned deliver ops (time, id, offset, epoch), in the viewer's order
        self.delivers: list[tuple[float, str, int, str]] = []
        #: deliver ops without a position (time, id): judged by id
        self.id_delivers: list[tuple[float, str]] = []
        #: the fleet worker whose position table says what each of ``runs`` carried
        self.worker: str | None = None
        #: deliveries that carried another update than that table says: (epoch, offset, id)
        self.conflicts: list[tuple[str, int, str]] = []


class ViewerData:
    __slots__ = ("disconnects", "drain", "resubscribes", "subs", "unrecovered")

    def __init__(self) -> None:
        self.drain: float | None = None
        self.disconnects = 0
        self.resubscribes = 0
        self.unrecovered = 0
        self.subs: dict[str, Sub] = {}

    def sub(self, channel: str) -> Sub:
        s = self.subs.get(channel)
        if s is None:
            s = self.subs[channel] = Sub(channel)
        return s


@dataclass(frozen=True, slots=True)
class Stale:
    process: str
    disconnected: float
    reconnected: float | None
    caught_up: float | None
    unrecovered: bool
    ended_by_drain: bool


class FaultWindow:
    """One fault as the history shows it: when it was injected and healed, how it went."""

    __slots__ = ("error", "fault", "fault_id", "heal_error", "healed", "injected", "observed",
                 "params", "status", "target")

    def __init__(self, fault_id: str) -> None:
        self.fault_id = fault_id
        self.fault = ""
        self.target = ""
        self.params: Mapping[str, Any] = {}
        self.status = "pending"
        self.injected: float | None = None
        self.healed: float | None = None
        self.error: str | None = None
        self.heal_error: str | None = None  # the heal op failed
        self.observed: Mapping[str, Any] = {}


@dataclass
class RunData:
    t0: float = math.inf
    t1: float = -math.inf
    pubs: dict[str, Pub] = field(default_factory=dict)
    viewers: dict[str, ViewerData] = field(default_factory=dict)
    #: (channel, epoch) -> offset -> update id first seen there (by any worker or op): labels
    table: dict[tuple[str, str], dict[int, str]] = field(default_factory=dict)
    #: per fleet worker, (channel, epoch) -> offset -> the update id its viewers' runs carried
    #: there (the worker's ``positions`` op); a delivery of another id is a sub's conflict
    worker_tables: dict[str, dict[tuple[str, str], dict[int, str]]] = field(
        default_factory=dict)
    #: every update id seen at each position, where more than one was (or the run is judged
    #: from plain deliver ops): (channel, epoch, offset) -> ids
    observed: dict[tuple[str, str, int], set[str]] = field(default_factory=dict)
    #: update id -> [first receive by anyone, last receive by a viewer owing it,
    #: {latency bucket µs: count} over the viewers owing it]
    latency: dict[str, list[Any]] = field(default_factory=dict)
    stale: list[Stale] = field(default_factory=list)
    faults: dict[str, FaultWindow] = field(default_factory=dict)
    phases: list[tuple[str, float]] = field(default_factory=list)
    #: (process, channel, why) of subscriptions whose full deliveries disagree with the record
    inconsistent: list[tuple[str, str, str]] = field(default_factory=list)
    compact: bool = False  # any record op seen

    @property
    def start(self) -> float:
        return self.t0 if self.t0 != math.inf else 0.0

    def viewer(self, process: str) -> ViewerData:
        v = self.viewers.get(process)
        if v is None:
            v = self.viewers[process] = ViewerData()
        return v


def runs_of(positions: Iterable[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """Run-length encode a sequence of (epoch, offset): consecutive offsets of one epoch join."""
    runs: list[tuple[str, int, int]] = []
    epoch, lo, hi = "", 0, -1
    for e, off in positions:
        if hi >= lo and e == epoch and off == hi + 1:
            hi = off
            continue
        if hi >= lo:
            runs.append((epoch, lo, hi))
        epoch, lo, hi = e, off, off
    if hi >= lo:
        runs.append((epoch, lo, hi))
    return runs


class _Accumulator:
    def __init__(self) -> None:
        self.data = RunData()

    def add(self, t: float, process: str, typ: str, f: str, value: Mapping[str, Any]) -> None:
        d = self.data
        if t < d.t0:
            d.t0 = t
        if t > d.t1:
            d.t1 = t
        if f == "deliver":
            if typ == "ok":
                self._deliver(t, process, value)
        elif f == "publish":
            self._publish(t, typ, value)
        elif f in _CLIENT_FS:
            self._client(t, process, typ, f, value)
        elif f in ("fault", "heal"):
            self._fault(t, typ, f, value)
        elif f == "fault_skipped":
            self._skipped(value)
        elif f == "phase":
            d.phases.append((str(value.get("phase")), t))
        elif f == "positions":
            self._positions(process, value.get("positions") or {})
        elif f == "latency":
            self._latency(value.get("latency") or {})

    def _deliver(self, t: float, process: str, value: Mapping[str, Any]) -> None:
        channel = str(value.get("channel"))
        pid = str(value.get("id"))
        sub = self.data.viewer(process).sub(channel)
        offset = value.get("offset")
        if "conflict" in value and isinstance(offset, int):
            epoch = str(value.get("epoch") or "")
            sub.conflicts.append((epoch, offset, pid))
            self._observe(channel, epoch, offset, pid, str(value["conflict"]))
            return
        if isinstance(offset, int) and not isinstance(offset, bool):
            sub.delivers.append((t, pid, offset, str(value.get("epoch") or "")))
        else:
            sub.id_delivers.append((t, pid))

    def _publish(self, t: float, typ: str, value: Mapping[str, Any]) -> None:
        pid = str(value.get("id"))
        pub = self.data.pubs.get(pid)
        if pub is None:
            pub = self.data.pubs[pid] = Pub(pid)
        if "channel" in value:
            pub.channel = str(value["channel"])
        seq = value.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            pub.seq = seq
        if typ == "invoke":
            pub.invoke = t
            return
        pub.status = typ
        pub.done = t
        if typ == "ok":
            offset = value.get("offset")
            if isinstance(offset, int) and not isinstance(offset, bool):
                pub.offset = offset
                pub.epoch = str(value.get("epoch") or "")
        elif "error" in value:
            pub.error = str(value["error"])

    def _client(self, t: float, process: str, typ: str, f: str,
                value: Mapping[str, Any]) -> None:
        v = self.data.viewer(process)
        if f == "subscribe":
            sub = v.sub(str(value.get("channel")))
            if typ == "invoke":
                sub.invoked = True
            elif typ == "ok":
                if sub.first_ok != math.inf:
                    v.resubscribes += 1
                if t < sub.first_ok:
                    sub.first_ok = t
                if value.get("recovered") is False:
                    v.unrecovered += 1
        elif f == "disconnect":
            v.disconnects += 1
        elif f == "drain":
            if v.drain is None or t < v.drain:
                v.drain = t
        elif f == "record":
            sub = v.sub(str(value.get("channel")))
            sub.has_record = True
            self.data.compact = True
            first = value.get("first_ok")
            if isinstance(first, int | float) and first < sub.first_ok:
                sub.first_ok = float(first)
            sub.runs = [(str(e), int(lo), int(hi)) for e, lo, hi in value.get("runs") or ()]
            worker = value.get("worker")
            sub.worker = None if worker is None else str(worker)
        elif f == "stale":
            caught = value.get("caught_up")
            reconnected = value.get("reconnected")
            self.data.stale.append(Stale(
                process, float(value.get("disconnected", t)),
                None if reconnected is None else float(reconnected),
                None if caught is None else float(caught),
                bool(value.get("unrecovered")), bool(value.get("ended_by_drain"))))

    def _skipped(self, value: Mapping[str, Any]) -> None:
        """A scheduled fault the cluster's server cannot take (harness.nemesis): never run."""
        fid = str(value.get("fault_id"))
        flt = self.data.faults.setdefault(fid, FaultWindow(fid))
        flt.fault = str(value.get("fault", ""))
        flt.target = str(value.get("target", ""))
        params = value.get("params")
        if isinstance(params, Mapping):
            flt.params = dict(params)
        flt.status = "skipped"
        flt.error = str(value.get("reason", ""))

    def _fault(self, t: float, typ: str, f: str, value: Mapping[str, Any]) -> None:
        fid = str(value.get("fault_id"))
        flt = self.data.faults.get(fid)
        if flt is None:
            flt = self.data.faults[fid] = FaultWindow(fid)
        if f == "heal":
            if typ == "ok" and (flt.healed is None or t < flt.healed):
                flt.healed = t
            elif typ != "ok":
                flt.heal_error = str(value.get("error", ""))
            observed = value.get("observed")
            if isinstance(observed, Mapping):
                flt.observed = dict(observed)
            return
        if "fault" in value:
            flt.fault = str(value["fault"])
        if "target" in value:
            flt.target = str(value["target"])
        params = value.get("params")
        if isinstance(params, Mapping):
            flt.params = dict(params)
        if typ == "invoke":
            flt.injected = t
        else:
            flt.status = typ
            if typ != "ok":
                flt.error = str(value.get("error", ""))

    def _positions(self, process: str, positions: Mapping[str, Any]) -> None:
        tables = self.data.worker_tables.setdefault(process, {})
        for channel, by_epoch in positions.items():
            for epoch, (first, ids) in by_epoch.items():
                key = (str(channel), str(epoch))
                table = tables.setdefault(key, {})
                for i, pid in enumerate(ids):
                    if pid is not None:
                        table[int(first) + i] = pid
                        self._observe(key[0], key[1], int(first) + i, pid)

    def _observe(self, channel: str, epoch: str, offset: int, *pids: str) -> None:
        """Note the update ids seen at a position; keep the set only where they disagree."""
        merged = self.data.table.setdefault((channel, epoch), {})
        known = merged.get(offset)
        if known is None:
            known = merged[offset] = pids[0]
        if any(pid != known for pid in pids) or (channel, epoch, offset) in self.data.observed:
            self.data.observed.setdefault((channel, epoch, offset), {known}).update(pids)

    def _latency(self, latency: Mapping[str, Any]) -> None:
        book = self.data.latency
        for pid, (first, last, flat) in latency.items():
            entry = book.get(pid)
            if entry is None:
                entry = book[pid] = [first, last, {}]
            else:
                entry[0] = min(entry[0], first)
                entry[1] = max(entry[1], last)
            hist = entry[2]
            get = hist.get
            for bucket, count in zip(flat[::2], flat[1::2], strict=True):
                hist[bucket] = get(bucket, 0) + count


def _finalize(acc: _Accumulator) -> RunData:
    """Rebuild runs, observed positions and latencies from plain deliver ops where no record
    op exists; cross-check sampled subscriptions against their record."""
    data = acc.data
    pubs = data.pubs
    for pub in pubs.values():
        if math.isnan(pub.invoke):  # completion seen without its invoke: best effort
            pub.invoke = data.start if math.isnan(pub.done) else pub.done
    book = data.latency
    for process, viewer in data.viewers.items():
        for sub in viewer.subs.values():
            if sub.delivers:
                rebuilt = runs_of((e, off) for _t, _pid, off, e in sub.delivers)
                if sub.has_record:
                    if rebuilt != sub.runs:
                        data.inconsistent.append((process, sub.channel, (
                            f"record runs {sub.runs[:4]} but deliveries give {rebuilt[:4]}")))
                else:
                    sub.runs = rebuilt
                    for _t, pid, off, epoch in sub.delivers:
                        acc._observe(sub.channel, epoch, off, pid)
                    _book_deliveries(book, pubs, sub,
                                     ((t, pid) for t, pid, _o, _e in sub.delivers))
            if sub.id_delivers:
                _book_deliveries(book, pubs, sub, iter(sub.id_delivers))
    return data


def _book_deliveries(book: dict[str, list[Any]], pubs: Mapping[str, Pub], sub: Sub,
                     deliveries: Iterable[tuple[float, str]]) -> None:
    """Latency of first deliveries, as the fleet's recorder books them."""
    seen: set[str] = set()
    for t, pid in deliveries:
        if pid in seen:
            continue
        seen.add(pid)
        pub = pubs.get(pid)
        entry = book.get(pid)
        if entry is None:
            entry = book[pid] = [t, -1.0, {}]
        elif t < entry[0]:
            entry[0] = t
        if pub is None or not pub.invoke > sub.first_ok:
            continue
        if t > entry[1]:
            entry[1] = t
        bucket = latency_bucket(max(0, int((t - pub.invoke) * 1e6)))
        entry[2][bucket] = entry[2].get(bucket, 0) + 1


def accumulate(ops: Iterable[tuple[float, str, str, str, Mapping[str, Any]]]) -> RunData:
    """The model of a history given as (time, process, type, f, value) tuples."""
    acc = _Accumulator()
    add = acc.add
    for t, process, typ, f, value in ops:
        add(t, process, typ, f, value)
    return _finalize(acc)
