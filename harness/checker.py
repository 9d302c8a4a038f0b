"""The zero-drop checker: a pure, deterministic function of a recorded history.

In the spirit of Jepsen's ``set-full`` checker (and Maelstrom's broadcast workload), every
client is scored against every update, per channel:

owed
    A client owes update *u* on channel *c* when the publish of *u* completed ``ok``, its
    publish **invoke** time is after the client's **first** ``subscribe`` ``ok`` on *c*, and its
    publish ``ok`` time is before the client's ``drain`` op (its final read). A later
    resubscribe, recovered or not, does not restart the obligation: ``recovered: false`` is the
    server admitting a gap, and the updates in that gap are counted lost.
lost
    Owed and never delivered (counted per client and update).
delivered
    Owed and delivered at least once, so ``owed = delivered + lost``.
duplicated
    Every delivery of an update to a client beyond the first (the extra copies are counted).
reordered
    A first delivery of an ``ok`` update whose ``seq`` is lower than the highest ``seq`` of an
    ``ok`` update already delivered to that client on that channel (in the client's own receive
    order). Indeterminate updates are left out: when they were applied is unknown.
unexpected
    A delivery of an id that was never published, whose publish ``fail``-ed, or that was
    published on another channel than the one it arrived on.
indeterminate
    Publishes that ended ``info`` (or never ended): their delivery is neither required nor an
    error. Deliveries of them are counted as ``indeterminate_delivered``.
extra_ok
    First deliveries of ``ok`` updates that were not owed (published before the subscription,
    e.g. replayed history). Fine, just counted.
unsubscribed
    A (client, channel) whose subscribe was invoked but never succeeded.
latency
    For each delivered owed update: first receive time - publish invoke time, in an
    HdrHistogram (1 µs .. 1 h, 3 significant digits); percentiles in ms. ``max`` is exact.
recovery_s (per fault)
    ``max(first receive time of U) - heal time``, clipped at 0, where U is every (client, update)
    pair that was owed and whose publish invoke time is <= the fault's heal time: how long after
    the heal the last client had everything published up to the heal. ``None`` when any such
    owed update was lost (never recovered) or the fault was never healed. ``0`` when nothing
    owed was published before the heal.

A client without a ``drain`` op never finished: it fails the verdict on its own and is left out
of owed/lost (its deliveries are still checked for duplicates, order and unexpected ids).

The checker relies on one ordering property only: each process's ops appear in the order the
process recorded them (true of each history file, and of :func:`harness.history.merge_histories`).
Everything else is decided by the ``time`` fields, so any interleaving of processes gives the
same report.
"""

from __future__ import annotations

import math
import re
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from xml.etree import ElementTree as ET

import orjson
from hdrh.histogram import HdrHistogram

from harness.history import HistoryError, Op

__all__ = [
    "ClientProblems",
    "FaultResult",
    "InvariantResult",
    "Invariants",
    "Report",
    "Verdict",
    "check",
    "check_files",
    "error_report",
    "render_junit",
    "render_markdown",
]

Verdict = Literal["pass", "fail", "error"]

LATENCY_MIN_US: Final = 1
LATENCY_MAX_US: Final = 3600 * 1_000_000
LATENCY_DIGITS: Final = 3
PERCENTILES: Final[dict[str, float]] = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
DETAIL_IDS: Final = 20  # ids listed per category in a client's detail
DETAIL_CLIENTS: Final = 200  # clients listed in the report's detail
EXAMPLE_GROUPS: Final = 3  # (client, channel) groups quoted in a violation message
EXAMPLE_IDS: Final = 5  # ids quoted per group

_CLIENT_FS: Final = frozenset({"connect", "subscribe", "deliver", "disconnect", "drain"})


@dataclass(frozen=True, slots=True)
class Invariants:
    """What a run must satisfy. Counts are maxima except ``min_delivered``."""

    max_lost: int = 0
    max_duplicated: int = 0
    max_reordered: int = 0
    max_unexpected: int = 0
    max_unsubscribed: int = 0
    p99_ms: float | None = None
    max_recovery_s: float | None = None
    # A run where nothing was owed and delivered must fail: a checker that cannot fail
    # proves nothing.
    min_delivered: int = 1
    # Judged by harness.leak_check from the run's node RSS samples (not from the history).
    max_rss_slope_mb_per_h: float | None = None


@dataclass(frozen=True, slots=True)
class InvariantResult:
    name: str
    ok: bool
    actual: float | int | None
    limit: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "actual": self.actual,
            "limit": self.limit,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class FaultResult:
    fault_id: str
    fault: str
    target: str
    params: Mapping[str, Any]
    status: str  # "ok" (injected), "fail", "info" or "pending" (never completed)
    injected_at: float | None  # seconds since the first op of the history
    healed_at: float | None
    recovery_s: float | None
    lost_before_heal: int  # owed (client, update) pairs published before the heal and lost
    error: str | None = None
    observed: Mapping[str, Any] = field(default_factory=dict)  # the fault's own evidence

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault_id": self.fault_id,
            "fault": self.fault,
            "target": self.target,
            "params": dict(self.params),
            "status": self.status,
            "injected_at": self.injected_at,
            "healed_at": self.healed_at,
            "recovery_s": self.recovery_s,
            "lost_before_heal": self.lost_before_heal,
            "error": self.error,
            "observed": dict(self.observed),
        }


@dataclass(frozen=True, slots=True)
class ClientProblems:
    """One client's problems; id lists hold at most DETAIL_IDS entries, counts are complete."""

    client: str
    finished: bool
    lost: int
    lost_ids: Mapping[str, Sequence[str]]  # channel -> first ids
    duplicated: int
    duplicated_ids: Sequence[str]
    reordered: int
    reordered_ids: Sequence[str]
    unexpected: int
    unexpected_ids: Sequence[str]
    unsubscribed: Sequence[str]  # channels whose subscribe never succeeded
    reconnects: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "finished": self.finished,
            "lost": self.lost,
            "lost_ids": {ch: list(ids) for ch, ids in self.lost_ids.items()},
            "duplicated": self.duplicated,
            "duplicated_ids": list(self.duplicated_ids),
            "reordered": self.reordered,
            "reordered_ids": list(self.reordered_ids),
            "unexpected": self.unexpected,
            "unexpected_ids": list(self.unexpected_ids),
            "unsubscribed": list(self.unsubscribed),
            "reconnects": self.reconnects,
        }


@dataclass(frozen=True, slots=True)
class Report:
    verdict: Verdict
    totals: Mapping[str, int]
    latency_ms: Mapping[str, float | None]
    reconnects: Mapping[str, int]
    faults: tuple[FaultResult, ...]
    violations: tuple[str, ...]
    invariants: tuple[InvariantResult, ...]
    clients: tuple[ClientProblems, ...]  # at most DETAIL_CLIENTS, clients with problems only
    clients_with_problems: int
    incomplete_clients: tuple[str, ...]
    phases: tuple[tuple[str, float], ...]  # (phase, seconds since the first op)
    duration_s: float
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "error": self.error,
            "duration_s": self.duration_s,
            "totals": dict(self.totals),
            "latency_ms": dict(self.latency_ms),
            "reconnects": dict(self.reconnects),
            "faults": [f.to_dict() for f in self.faults],
            "violations": list(self.violations),
            "invariants": [i.to_dict() for i in self.invariants],
            "clients_with_problems": self.clients_with_problems,
            "clients": [c.to_dict() for c in self.clients],
            "incomplete_clients": list(self.incomplete_clients),
            "phases": [{"phase": p, "at_s": t} for p, t in self.phases],
        }


_TOTAL_KEYS: Final = (
    "published",
    "failed",
    "indeterminate",
    "owed",
    "delivered",
    "lost",
    "duplicated",
    "reordered",
    "unexpected",
    "extra_ok",
    "indeterminate_delivered",
    "unsubscribed",
    "deliveries",
    "clients",
)


def error_report(reason: str) -> Report:
    """The report of a run the harness could not carry out (verdict "error", exit code 2)."""
    return Report(
        verdict="error",
        totals=dict.fromkeys(_TOTAL_KEYS, 0),
        latency_ms=_empty_latency(),
        reconnects={"total": 0, "max_per_client": 0, "resubscribes": 0, "unrecovered": 0},
        faults=(),
        violations=(f"error: {reason}",),
        invariants=(),
        clients=(),
        clients_with_problems=0,
        incomplete_clients=(),
        phases=(),
        duration_s=0.0,
        error=reason,
    )


# --------------------------------------------------------------------------------------------
# Accumulation: one pass over the ops into compact per-client structures.


class _Pub:
    __slots__ = (
        "channel",
        "done",
        "error",
        "id",
        "invoke",
        "lost",
        "max_recv",
        "owed",
        "seq",
        "status",
    )

    def __init__(self, pid: str) -> None:
        self.id = pid
        self.channel = ""
        self.seq: int | None = None
        self.invoke = math.nan  # NaN until seen
        self.done = math.nan
        self.status = "pending"
        self.error: str | None = None
        self.owed = 0  # clients that owed it
        self.lost = 0  # clients that owed it and never got it
        self.max_recv = -math.inf


class _Deliveries:
    __slots__ = ("ids", "times")

    def __init__(self) -> None:
        self.ids = array("q")
        self.times = array("d")


class _Client:
    __slots__ = (
        "deliveries",
        "disconnects",
        "drain",
        "first_sub",
        "resubscribes",
        "sub_invoked",
        "unrecovered",
    )

    def __init__(self) -> None:
        self.first_sub: dict[str, float] = {}
        self.sub_invoked: set[str] = set()
        self.drain: float | None = None
        self.disconnects = 0
        self.resubscribes = 0
        self.unrecovered = 0
        self.deliveries: dict[str, _Deliveries] = {}


class _Fault:
    __slots__ = ("error", "fault", "fault_id", "healed", "injected", "observed", "params",
                 "status", "target")

    def __init__(self, fault_id: str) -> None:
        self.fault_id = fault_id
        self.fault = ""
        self.target = ""
        self.params: Mapping[str, Any] = {}
        self.status = "pending"
        self.injected: float | None = None
        self.healed: float | None = None
        self.error: str | None = None
        self.observed: Mapping[str, Any] = {}


class _Accumulator:
    def __init__(self) -> None:
        self.t0 = math.inf
        self.t1 = -math.inf
        self.id_index: dict[str, int] = {}
        self.ids: list[str] = []
        self.pubs: dict[str, _Pub] = {}
        self.clients: dict[str, _Client] = {}
        self.faults: dict[str, _Fault] = {}
        self.phases: list[tuple[str, float]] = []

    def _intern(self, pid: str) -> int:
        idx = self.id_index.get(pid)
        if idx is None:
            idx = len(self.ids)
            self.id_index[pid] = idx
            self.ids.append(pid)
        return idx

    def _client(self, process: str) -> _Client:
        c = self.clients.get(process)
        if c is None:
            c = self.clients[process] = _Client()
        return c

    def add(self, t: float, process: str, typ: str, f: str, value: Mapping[str, Any]) -> None:
        if t < self.t0:
            self.t0 = t
        if t > self.t1:
            self.t1 = t
        if f == "deliver":  # by far the most frequent op: handled first and lean
            if typ != "ok":
                return
            c = self.clients.get(process) or self._client(process)
            ch = str(value.get("channel"))
            d = c.deliveries.get(ch)
            if d is None:
                d = c.deliveries[ch] = _Deliveries()
            d.ids.append(self._intern(str(value.get("id"))))
            d.times.append(t)
        elif f == "publish":
            self._publish(t, typ, value)
        elif f in _CLIENT_FS:
            self._client_op(t, process, typ, f, value)
        elif f in ("fault", "heal"):
            self._fault_op(t, typ, f, value)
        elif f == "phase":
            self.phases.append((str(value.get("phase")), t))

    def _publish(self, t: float, typ: str, value: Mapping[str, Any]) -> None:
        pid = str(value.get("id"))
        pub = self.pubs.get(pid)
        if pub is None:
            pub = self.pubs[pid] = _Pub(pid)
            self._intern(pid)
        if "channel" in value:
            pub.channel = str(value["channel"])
        seq = value.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            pub.seq = seq
        if typ == "invoke":
            pub.invoke = t
        else:
            pub.status = typ
            pub.done = t
            if typ != "ok" and "error" in value:
                pub.error = str(value["error"])

    def _client_op(
        self, t: float, process: str, typ: str, f: str, value: Mapping[str, Any]
    ) -> None:
        c = self._client(process)
        if f == "subscribe":
            ch = str(value.get("channel"))
            if typ == "invoke":
                c.sub_invoked.add(ch)
            elif typ == "ok":
                first = c.first_sub.get(ch)
                if first is None or t < first:
                    if first is not None:
                        c.resubscribes += 1
                    c.first_sub[ch] = t
                else:
                    c.resubscribes += 1
                if value.get("recovered") is False:
                    c.unrecovered += 1
        elif f == "disconnect":
            c.disconnects += 1
        elif f == "drain":
            if c.drain is None or t < c.drain:
                c.drain = t

    def _fault_op(self, t: float, typ: str, f: str, value: Mapping[str, Any]) -> None:
        fid = str(value.get("fault_id"))
        flt = self.faults.get(fid)
        if flt is None:
            flt = self.faults[fid] = _Fault(fid)
        if f == "heal":
            if typ == "ok" and (flt.healed is None or t < flt.healed):
                flt.healed = t
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


# --------------------------------------------------------------------------------------------
# Scoring.


class _ClientScore:
    __slots__ = (
        "dup",
        "dup_ids",
        "lost",
        "lost_ids",
        "reord",
        "reord_ids",
        "unexp",
        "unexp_ids",
        "unsub",
    )

    def __init__(self) -> None:
        self.lost = 0
        self.lost_ids: dict[str, list[str]] = {}
        self.dup = 0
        self.dup_ids: list[str] = []
        self.reord = 0
        self.reord_ids: list[str] = []
        self.unexp = 0
        self.unexp_ids: list[str] = []
        self.unsub: list[str] = []

    def any(self) -> bool:
        return bool(self.lost or self.dup or self.reord or self.unexp or self.unsub)


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _score(acc: _Accumulator, invariants: Invariants) -> Report:
    t0 = acc.t0 if acc.t0 != math.inf else 0.0
    pubs_by_idx: list[_Pub | None] = [None] * len(acc.ids)
    for pub in acc.pubs.values():
        if math.isnan(pub.invoke):  # completion seen without its invoke: best effort
            pub.invoke = t0 if math.isnan(pub.done) else pub.done
        pubs_by_idx[acc.id_index[pub.id]] = pub

    # ok publishes per channel, by invoke time, for the owed window lookups.
    ok_by_channel: dict[str, list[_Pub]] = {}
    for pub in acc.pubs.values():
        if pub.status == "ok":
            ok_by_channel.setdefault(pub.channel, []).append(pub)
    invokes_by_channel: dict[str, list[float]] = {}
    for ch, plist in ok_by_channel.items():
        plist.sort(key=lambda p: (p.invoke, p.seq if p.seq is not None else -1))
        invokes_by_channel[ch] = [p.invoke for p in plist]

    totals = Counter[str]()
    for pub in acc.pubs.values():
        if pub.status == "ok":
            totals["published"] += 1
        elif pub.status == "fail":
            totals["failed"] += 1
        else:
            totals["indeterminate"] += 1

    lat_us = Counter[int]()
    lat_max = -math.inf
    scores: dict[str, _ClientScore] = {}
    ids = acc.ids
    for name, c in acc.clients.items():
        sc = _ClientScore()
        finished = c.drain is not None
        drain = c.drain if c.drain is not None else math.inf
        for ch in sorted(set(c.first_sub) | set(c.deliveries)):
            first: dict[int, float] = {}
            indet_here = 0
            d = c.deliveries.get(ch)
            if d is not None:
                totals["deliveries"] += len(d.ids)
                max_seq = -math.inf
                for idx, t in zip(d.ids, d.times, strict=True):
                    dpub = pubs_by_idx[idx]
                    if dpub is None or dpub.status == "fail" or dpub.channel != ch:
                        sc.unexp += 1
                        if len(sc.unexp_ids) < DETAIL_IDS:
                            why = (
                                "never published"
                                if dpub is None
                                else "publish failed"
                                if dpub.status == "fail"
                                else f"published on {dpub.channel}"
                            )
                            sc.unexp_ids.append(f"{ch}:{ids[idx]} ({why})")
                        continue
                    if idx in first:
                        sc.dup += 1
                        if len(sc.dup_ids) < DETAIL_IDS:
                            sc.dup_ids.append(f"{ch}:{ids[idx]}")
                        continue
                    first[idx] = t
                    if dpub.status != "ok":
                        indet_here += 1
                    seq = dpub.seq
                    # Order is judged among acknowledged updates only: an indeterminate publish
                    # may have been applied at any moment (after a timeout, after its retry).
                    if seq is not None and dpub.status == "ok":
                        if seq < max_seq:
                            sc.reord += 1
                            if len(sc.reord_ids) < DETAIL_IDS:
                                sc.reord_ids.append(
                                    f"{ch}:{ids[idx]} (seq {seq} after {int(max_seq)})"
                                )
                        else:
                            max_seq = seq
            delivered_here = 0
            sub = c.first_sub.get(ch)
            if finished and sub is not None and ch in ok_by_channel:
                plist = ok_by_channel[ch]
                lost_here: list[str] = []
                lats: list[int] = []
                for pub in plist[bisect_right(invokes_by_channel[ch], sub) :]:
                    if pub.done >= drain:
                        continue
                    pub.owed += 1
                    recv = first.get(acc.id_index[pub.id])
                    if recv is None:
                        pub.lost += 1
                        lost_here.append(pub.id)
                        continue
                    delivered_here += 1
                    if recv > pub.max_recv:
                        pub.max_recv = recv
                    lat = recv - pub.invoke
                    if lat > lat_max:
                        lat_max = lat
                    lats.append(int(lat * 1e6))
                lat_us.update(lats)
                totals["owed"] += delivered_here + len(lost_here)
                totals["delivered"] += delivered_here
                if lost_here:
                    sc.lost += len(lost_here)
                    sc.lost_ids[ch] = lost_here[:DETAIL_IDS]
            totals["indeterminate_delivered"] += indet_here
            totals["extra_ok"] += len(first) - delivered_here - indet_here
        if finished:
            sc.unsub = sorted(ch for ch in c.sub_invoked if ch not in c.first_sub)
        totals["lost"] += sc.lost
        totals["duplicated"] += sc.dup
        totals["reordered"] += sc.reord
        totals["unexpected"] += sc.unexp
        totals["unsubscribed"] += len(sc.unsub)
        scores[name] = sc
    totals["clients"] = len(acc.clients)

    latency = _latency(lat_us, lat_max)
    faults = _faults(acc, t0)
    incomplete = tuple(
        sorted((n for n, c in acc.clients.items() if c.drain is None), key=_natural_key)
    )
    disconnects = [c.disconnects for c in acc.clients.values()]
    reconnects = {
        "total": sum(disconnects),
        "max_per_client": max(disconnects, default=0),
        "resubscribes": sum(c.resubscribes for c in acc.clients.values()),
        "unrecovered": sum(c.unrecovered for c in acc.clients.values()),
    }
    full_totals = {k: totals.get(k, 0) for k in _TOTAL_KEYS}
    results = _judge(full_totals, latency, faults, incomplete, scores, invariants)
    violations = tuple(r.message for r in results if not r.ok)

    problem_names = sorted((n for n, s in scores.items() if s.any()), key=_natural_key)
    problem_names_all = sorted(set(problem_names) | set(incomplete), key=_natural_key)
    details = tuple(
        _details(n, scores[n], acc.clients[n]) for n in problem_names_all[:DETAIL_CLIENTS]
    )
    return Report(
        verdict="fail" if violations else "pass",
        totals=full_totals,
        latency_ms=latency,
        reconnects=reconnects,
        faults=faults,
        violations=violations,
        invariants=results,
        clients=details,
        clients_with_problems=len(problem_names_all),
        incomplete_clients=incomplete,
        phases=tuple((p, round(t - t0, 6)) for p, t in sorted(acc.phases, key=lambda x: x[1])),
        duration_s=round(acc.t1 - t0, 6) if acc.t1 != -math.inf else 0.0,
    )


def _details(name: str, sc: _ClientScore, c: _Client) -> ClientProblems:
    return ClientProblems(
        client=name,
        finished=c.drain is not None,
        lost=sc.lost,
        lost_ids={ch: tuple(v) for ch, v in sorted(sc.lost_ids.items())},
        duplicated=sc.dup,
        duplicated_ids=tuple(sc.dup_ids),
        reordered=sc.reord,
        reordered_ids=tuple(sc.reord_ids),
        unexpected=sc.unexp,
        unexpected_ids=tuple(sc.unexp_ids),
        unsubscribed=tuple(sc.unsub),
        reconnects=c.disconnects,
    )


def _empty_latency() -> dict[str, float | None]:
    return {**dict.fromkeys(PERCENTILES, None), "max": None}


def _latency(lat_us: Counter[int], lat_max: float) -> dict[str, float | None]:
    if not lat_us:
        return _empty_latency()
    hist = HdrHistogram(LATENCY_MIN_US, LATENCY_MAX_US, LATENCY_DIGITS)
    for us, n in lat_us.items():
        # Out-of-range values are clamped rather than dropped: a histogram that silently
        # loses the worst latencies would flatter the run.
        hist.record_value(min(max(us, LATENCY_MIN_US), LATENCY_MAX_US), n)
    values = hist.get_percentile_to_value_dict(list(PERCENTILES.values()))
    max_ms = round(max(lat_max, 0.0) * 1000.0, 3)
    # HdrHistogram reports the top of a value's bucket (up to 0.1% high); a percentile above
    # the exact maximum would read as nonsense, so clip at it.
    out: dict[str, float | None] = {
        key: min(round(values[pct] / 1000.0, 3), max_ms) for key, pct in PERCENTILES.items()
    }
    out["max"] = max_ms
    return out


def _faults(acc: _Accumulator, t0: float) -> tuple[FaultResult, ...]:
    owed = sorted((p for p in acc.pubs.values() if p.owed), key=lambda p: p.invoke)
    invokes = [p.invoke for p in owed]
    # Prefix aggregates over publishes ordered by invoke time: latest first-receive of any owed
    # copy, and how many (client, update) pairs were lost, among all publishes up to index i.
    prefix_recv: list[float] = []
    prefix_lost: list[int] = []
    best, lost = -math.inf, 0
    for p in owed:
        best = max(best, p.max_recv)
        lost += p.lost
        prefix_recv.append(best)
        prefix_lost.append(lost)
    out = []
    def order(f: _Fault) -> tuple[float, str]:
        return (math.inf if f.injected is None else f.injected, f.fault_id)

    for flt in sorted(acc.faults.values(), key=order):
        recovery: float | None = None
        lost_before = 0
        if flt.healed is not None:
            n = bisect_right(invokes, flt.healed)
            lost_before = prefix_lost[n - 1] if n else 0
            if lost_before == 0:
                last = prefix_recv[n - 1] if n else -math.inf
                recovery = round(max(0.0, last - flt.healed), 6)
        out.append(
            FaultResult(
                fault_id=flt.fault_id,
                fault=flt.fault,
                target=flt.target,
                params=flt.params,
                status=flt.status,
                injected_at=None if flt.injected is None else round(flt.injected - t0, 6),
                healed_at=None if flt.healed is None else round(flt.healed - t0, 6),
                recovery_s=recovery,
                lost_before_heal=lost_before,
                error=flt.error,
                observed=flt.observed,
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Judging against the invariants.


def _examples(scores: Mapping[str, _ClientScore], pick: str) -> str:
    groups: list[str] = []
    more = 0
    for name in sorted(scores, key=_natural_key):
        sc = scores[name]
        if pick == "lost":
            items = [(f"{name} {ch}", ids) for ch, ids in sorted(sc.lost_ids.items())]
        else:
            raw: list[str] = getattr(sc, f"{pick}_ids")
            by_channel: dict[str, list[str]] = {}
            for entry in raw:
                ch, _, rest = entry.partition(":")
                by_channel.setdefault(ch, []).append(rest)
            items = [(f"{name} {ch}", v) for ch, v in sorted(by_channel.items())]
        for label, ids in items:
            if len(groups) < EXAMPLE_GROUPS:
                shown = ", ".join(ids[:EXAMPLE_IDS])
                tail = ", …" if len(ids) > EXAMPLE_IDS else ""
                groups.append(f"{label}: {shown}{tail}")
            else:
                more += 1
    text = "; ".join(groups)
    if more:
        text += f"; and {more} more"
    return text


def _count_check(
    name: str, actual: int, limit: int, scores: Mapping[str, _ClientScore], pick: str
) -> InvariantResult:
    ok = actual <= limit
    msg = f"{name} = {actual} <= {limit}"
    if not ok:
        msg = f"{name} = {actual} > {limit} ({_examples(scores, pick)})"
    return InvariantResult(name, ok, actual, f"<= {limit}", msg)


def _judge(
    totals: Mapping[str, int],
    latency: Mapping[str, float | None],
    faults: Sequence[FaultResult],
    incomplete: Sequence[str],
    scores: Mapping[str, _ClientScore],
    inv: Invariants,
) -> tuple[InvariantResult, ...]:
    res = [
        _count_check("lost", totals["lost"], inv.max_lost, scores, "lost"),
        _count_check("duplicated", totals["duplicated"], inv.max_duplicated, scores, "dup"),
        _count_check("reordered", totals["reordered"], inv.max_reordered, scores, "reord"),
        _count_check("unexpected", totals["unexpected"], inv.max_unexpected, scores, "unexp"),
    ]
    unsub = totals["unsubscribed"]
    unsub_msg = f"unsubscribed = {unsub} <= {inv.max_unsubscribed}"
    if unsub > inv.max_unsubscribed:
        groups = [
            f"{n} {', '.join(s.unsub)}"
            for n, s in sorted(scores.items(), key=lambda kv: _natural_key(kv[0]))
            if s.unsub
        ]
        unsub_msg = (
            f"unsubscribed = {unsub} > {inv.max_unsubscribed} (subscribe never succeeded: "
            + "; ".join(groups[:EXAMPLE_GROUPS])
            + (f"; and {len(groups) - EXAMPLE_GROUPS} more" if len(groups) > EXAMPLE_GROUPS else "")
            + ")"
        )
    res.append(
        InvariantResult(
            "unsubscribed",
            unsub <= inv.max_unsubscribed,
            unsub,
            f"<= {inv.max_unsubscribed}",
            unsub_msg,
        )
    )
    if incomplete:
        shown = ", ".join(incomplete[:10]) + (", …" if len(incomplete) > 10 else "")
        if len(incomplete) == 1:
            msg = f"clients_finished: {incomplete[0]} never finished (no drain op)"
        else:
            msg = (
                f"clients_finished: {len(incomplete)} clients never finished (no drain op): "
                + shown
            )
    else:
        msg = f"clients_finished: all {totals['clients']} clients drained"
    res.append(InvariantResult("clients_finished", not incomplete, len(incomplete), "== 0", msg))

    delivered = totals["delivered"]
    ok = delivered >= inv.min_delivered
    msg = f"delivered = {delivered} >= {inv.min_delivered}"
    if not ok:
        msg = (
            f"min_delivered: delivered = {delivered} < {inv.min_delivered} "
            f"(owed {totals['owed']}, published {totals['published']}, "
            f"{totals['clients']} clients): the run proves nothing"
        )
    res.append(InvariantResult("min_delivered", ok, delivered, f">= {inv.min_delivered}", msg))

    bad = [f for f in faults if f.status != "ok"]
    msg = f"faults_injected: {len(faults)} faults injected"
    if bad:
        msg = "faults_injected: " + "; ".join(
            f"{f.fault_id} ({f.fault} {f.target}) injection {f.status}"
            + (f": {f.error}" if f.error else "")
            for f in bad
        )
    res.append(InvariantResult("faults_injected", not bad, len(bad), "== 0", msg))

    if inv.p99_ms is not None:
        p99 = latency["p99"]
        ok = p99 is not None and p99 <= inv.p99_ms
        if p99 is None:
            msg = f"p99_ms: no latency measured (nothing delivered), limit {inv.p99_ms} ms"
        else:
            rel = "<=" if ok else ">"
            msg = f"p99 latency = {p99:g} ms {rel} {inv.p99_ms:g} ms"
        res.append(InvariantResult("p99_ms", ok, p99, f"<= {inv.p99_ms:g}", msg))

    if inv.max_recovery_s is not None:
        limit = inv.max_recovery_s
        problems = []
        worst: float | None = 0.0
        for f in faults:
            label = f"{f.fault_id} ({f.fault} {f.target})"
            if f.healed_at is None:
                problems.append(f"{label} was never healed")
                worst = None
            elif f.recovery_s is None:
                problems.append(
                    f"{label} never recovered: {f.lost_before_heal} owed updates "
                    "published before the heal were lost"
                )
                worst = None
            else:
                if worst is not None:
                    worst = max(worst, f.recovery_s)
                if f.recovery_s > limit:
                    problems.append(f"{label} recovered in {f.recovery_s:g} s > {limit:g} s")
        if problems:
            msg = "recovery_s: " + "; ".join(problems)
        else:
            msg = f"recovery_s: worst {worst:g} s <= {limit:g} s over {len(faults)} faults"
        res.append(InvariantResult("recovery_s", not problems, worst, f"<= {limit:g}", msg))
    return tuple(res)


# --------------------------------------------------------------------------------------------
# Entry points.


def check(history: Iterable[Op], invariants: Invariants = Invariants()) -> Report:
    """Score a history (see the module docstring for the definitions). Pure and deterministic."""
    acc = _Accumulator()
    add = acc.add
    for op in history:
        add(op.time, op.process, op.type, op.f, op.value)
    return _score(acc, invariants)


def check_files(paths: Iterable[str | Path], invariants: Invariants = Invariants()) -> Report:
    """Like :func:`check` over the ops of JSONL history files, streamed without building Ops.

    The files need not be merged or sorted: only each process's own order matters, and a
    process writes to one file. Malformed lines raise :class:`harness.history.HistoryError`
    (a torn final line, from a killed writer, is skipped as in ``iter_history``).
    """
    acc = _Accumulator()
    add = acc.add
    loads = orjson.loads
    for path in paths:
        with open(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    o = loads(line)
                    t = o["time"]
                    if not isinstance(t, int | float) or isinstance(t, bool):
                        raise TypeError("time is not a number")
                    add(float(t), o["process"], o["type"], o["f"], o.get("value") or {})
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                    if not line.endswith(b"\n"):
                        break
                    raise HistoryError(f"{path}:{lineno}: not a history op: {exc}") from None
    return _score(acc, invariants)


# --------------------------------------------------------------------------------------------
# Rendering.


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render_markdown(report: Report, title: str = "turnout run") -> str:
    """report.md: verdict, violations, totals, latency, reconnects, faults, problem clients."""
    icon = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}[report.verdict]
    lines = [f"# {title}: {icon}", ""]
    if report.error:
        lines += [f"The harness could not run: {report.error}", ""]
    if report.violations:
        lines += ["## Violations", ""]
        lines += [f"- {v}" for v in report.violations]
        lines.append("")
    if report.invariants:
        lines += ["## Invariants", "", "| invariant | result | actual | limit |"]
        lines.append("|---|---|---|---|")
        for r in report.invariants:
            ok = "ok" if r.ok else "**violated**"
            lines.append(f"| {r.name} | {ok} | {_fmt(r.actual)} | {r.limit} |")
        lines.append("")
    lines += ["## Totals", "", "| total | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report.totals.items()]
    lines += ["", f"Duration: {report.duration_s:g} s", ""]
    lines += ["## Delivery latency (ms)", "", "| " + " | ".join(report.latency_ms) + " |"]
    lines.append("|" + "---:|" * len(report.latency_ms))
    lines.append("| " + " | ".join(_fmt(v) for v in report.latency_ms.values()) + " |")
    lines += ["", "## Reconnects", ""]
    lines += [f"- {k}: {v}" for k, v in report.reconnects.items()]
    lines.append("")
    if report.phases:
        lines += ["## Phases", ""]
        lines += [f"- {p} at {t:g} s" for p, t in report.phases]
        lines.append("")
    if report.faults:
        lines += [
            "## Faults",
            "",
            "| id | fault | target | status | injected at (s) | healed at (s) | recovery (s) "
            "| observed |",
            "|---|---|---|---|---:|---:|---:|---|",
        ]
        for f in report.faults:
            rec = _fmt(f.recovery_s)
            if f.recovery_s is None and f.healed_at is not None:
                rec = f"never ({f.lost_before_heal} lost)"
            lines.append(
                f"| {f.fault_id} | {f.fault} | {f.target} | {f.status} | {_fmt(f.injected_at)} "
                f"| {_fmt(f.healed_at)} | {rec} "
                f"| {', '.join(f'{k}: {v}' for k, v in f.observed.items())} |"
            )
        lines.append("")
    if report.clients:
        shown = len(report.clients)
        lines += [
            "## Clients with problems",
            "",
            f"{report.clients_with_problems} clients had problems"
            + (f"; the first {shown} are listed." if shown < report.clients_with_problems else "."),
            "",
        ]
        for c in report.clients:
            parts = []
            if not c.finished:
                parts.append("never finished")
            if c.lost:
                ids = "; ".join(f"{ch}: {', '.join(v)}" for ch, v in c.lost_ids.items())
                parts.append(f"lost {c.lost} ({ids})")
            for label, n, ids_ in (
                ("duplicated", c.duplicated, c.duplicated_ids),
                ("reordered", c.reordered, c.reordered_ids),
                ("unexpected", c.unexpected, c.unexpected_ids),
            ):
                if n:
                    parts.append(f"{label} {n} ({', '.join(ids_)})")
            if c.unsubscribed:
                parts.append(f"never subscribed to {', '.join(c.unsubscribed)}")
            parts.append(f"{c.reconnects} reconnects")
            lines.append(f"- **{c.client}**: " + "; ".join(parts))
        lines.append("")
    return "\n".join(lines)


def render_junit(report: Report, name: str) -> str:
    """junit.xml: one testcase per invariant, a <failure> for each violated one.

    A run the harness could not carry out becomes one testcase with an <error>.
    """
    suites = ET.Element("testsuites")
    failures = sum(1 for r in report.invariants if not r.ok)
    errors = 1 if report.verdict == "error" else 0
    tests = len(report.invariants) + errors
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=name,
        tests=str(tests),
        failures=str(failures),
        errors=str(errors),
        time=f"{report.duration_s:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="verdict", value=report.verdict)
    for key, val in report.totals.items():
        ET.SubElement(props, "property", name=f"totals.{key}", value=str(val))
    for key, lat in report.latency_ms.items():
        ET.SubElement(props, "property", name=f"latency_ms.{key}", value=_fmt(lat))
    if report.verdict == "error":
        case = ET.SubElement(suite, "testcase", classname=name, name="harness")
        err = ET.SubElement(case, "error", message=report.error or "harness error")
        err.text = report.error or ""
    for r in report.invariants:
        case = ET.SubElement(suite, "testcase", classname=name, name=r.name)
        if r.ok:
            out = ET.SubElement(case, "system-out")
            out.text = r.message
        else:
            fail = ET.SubElement(case, "failure", message=r.message, type="InvariantViolated")
            fail.text = r.message
    ET.indent(suites)
    body = ET.tostring(suites, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'
