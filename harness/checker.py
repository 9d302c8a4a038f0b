"""The zero-drop checker: a pure, deterministic function of a recorded history.

In the spirit of Jepsen's ``set-full`` checker (and Maelstrom's broadcast workload), every
viewer is scored against every update, per channel. The parts live in :mod:`harness.checks`,
each a pure function of the history's model, and are composed here, in :func:`check`, and
nowhere else:

1. :func:`harness.checks.model.accumulate`: one pass over the ops;
2. :func:`harness.checks.delivery.judge_delivery`: owed, delivered, lost, unexpected
   (indeterminate publishes with set-full semantics);
3. :func:`harness.checks.order.judge_order`: duplicated and reordered, on server positions;
4. :func:`harness.checks.latency.judge_latency`: percentiles overall, per phase and per fault;
5. :func:`harness.checks.recovery.judge_recovery`: per fault, stale windows and catch-up;
6. :func:`harness.checks.presence.judge_presence`: presence viewers' member lists (only the
   ops it reads are kept for it, as the others stream past);
7. :func:`judge`: the invariants and the verdict.

Rendering (report.md, junit.xml) is :mod:`harness.render`'s. Definitions are in each part's
docstring and in docs/experiments.md ("How a run is judged").

A viewer without a ``drain`` op never finished: it fails the verdict on its own and is left
out of owed/lost (its deliveries are still checked for duplicates, order and unexpected ids).
The checker relies on one ordering property only: each process's ops appear in the order the
process recorded them (true of each history file and of merges). Everything else is decided by
the ``time`` fields, so any interleaving of processes gives the same report.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from harness.checks.delivery import DeliveryResult, judge_delivery
from harness.checks.groups import judge_groups
from harness.checks.latency import LatencyResult, empty_latency, judge_latency
from harness.checks.model import RunData, accumulate
from harness.checks.order import OrderResult, judge_order
from harness.checks.presence import PRESENCE_OPS, PresenceResult, RawOp, judge_presence
from harness.checks.recovery import FaultRecovery, fault_windows, judge_recovery
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
    "judge",
    "positions_note",
    "positions_summary",
]

Verdict = Literal["pass", "fail", "error"]

DETAIL_CLIENTS: Final = 200  # clients listed in the report's detail
EXAMPLE_GROUPS: Final = 3  # (client, channel) groups quoted in a violation message
EXAMPLE_IDS: Final = 5  # ids quoted per group


@dataclass(frozen=True, slots=True)
class Invariants:
    """What a run must satisfy. Counts are maxima except ``min_delivered``."""

    max_lost: int = 0
    max_duplicated: int = 0
    max_reordered: int = 0
    max_unexpected: int = 0
    max_unsubscribed: int = 0
    p99_ms: float | None = None
    #: phases whose p99 must be within ``p99_ms``; empty: the p99 over every delivery
    p99_phases: tuple[str, ...] = ()
    max_recovery_s: float | None = None
    # A run where nothing was owed and delivered must fail: a checker that cannot fail
    # proves nothing.
    min_delivered: int = 1
    # Judged by harness.leak_check from the run's node RSS samples (not from the history).
    max_rss_slope_mb_per_h: float | None = None
    #: judge presence (the experiment's clients join presence channels)
    presence: bool = False
    max_presence: int = 0


@dataclass(frozen=True, slots=True)
class InvariantResult:
    name: str
    ok: bool
    actual: float | int | None
    limit: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FaultResult:
    fault_id: str
    fault: str
    target: str
    params: Mapping[str, Any]
    #: "ok" (injected), "fail", "info", "pending" (never completed) or "skipped" (the
    #: cluster's server lacks a feature it needs; ``error`` says which)
    status: str
    injected_at: float | None  # seconds since the first op of the history
    healed_at: float | None
    #: max(stale window, catch-up); None = never recovered (see harness.checks.recovery)
    recovery_s: float | None
    lost_before_heal: int  # owed (viewer, update) pairs published before the heal and lost
    error: str | None = None
    heal_error: str | None = None  # the heal failed: the fault may still be in place
    observed: Mapping[str, Any] = field(default_factory=dict)  # the fault's own evidence
    #: stale windows of the viewers it disconnected (viewers, windows, unrecovered, p50, p99,
    #: max); None when it disconnected no viewer
    stale: Mapping[str, Any] | None = None
    caught_up_s: float | None = None
    latency_ms: Mapping[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault_id": self.fault_id, "fault": self.fault, "target": self.target,
            "params": dict(self.params), "status": self.status,
            "injected_at": self.injected_at, "healed_at": self.healed_at,
            "recovery_s": self.recovery_s, "lost_before_heal": self.lost_before_heal,
            "error": self.error, "heal_error": self.heal_error, "observed": dict(self.observed),
            "stale": None if self.stale is None else dict(self.stale),
            "caught_up_s": self.caught_up_s, "latency_ms": dict(self.latency_ms),
        }


@dataclass(frozen=True, slots=True)
class ClientProblems:
    """One viewer's problems; id lists are capped, counts are complete."""

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
            "client": self.client, "finished": self.finished, "lost": self.lost,
            "lost_ids": {ch: list(ids) for ch, ids in self.lost_ids.items()},
            "duplicated": self.duplicated, "duplicated_ids": list(self.duplicated_ids),
            "reordered": self.reordered, "reordered_ids": list(self.reordered_ids),
            "unexpected": self.unexpected, "unexpected_ids": list(self.unexpected_ids),
            "unsubscribed": list(self.unsubscribed), "reconnects": self.reconnects,
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
    latency_by_phase: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    #: how deliveries were recorded: compact (runs + tables) and/or full ops; inconsistencies
    recording: Mapping[str, Any] = field(default_factory=dict)
    #: per client group (the fleet, each [[client_groups]] entry): clients, lost, ...
    groups: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    #: the presence check (harness.checks.presence), when the clients joined presence channels
    presence: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "error": self.error, "duration_s": self.duration_s,
            "totals": dict(self.totals), "latency_ms": dict(self.latency_ms),
            "latency_by_phase": {k: dict(v) for k, v in self.latency_by_phase.items()},
            "reconnects": dict(self.reconnects),
            "faults": [f.to_dict() for f in self.faults],
            "violations": list(self.violations),
            "invariants": [i.to_dict() for i in self.invariants],
            "clients_with_problems": self.clients_with_problems,
            "clients": [c.to_dict() for c in self.clients],
            "incomplete_clients": list(self.incomplete_clients),
            "phases": [{"phase": p, "at_s": t} for p, t in self.phases],
            "recording": dict(self.recording),
            "groups": {name: dict(g) for name, g in self.groups.items()},
            "presence": None if self.presence is None else dict(self.presence),
        }


TOTAL_KEYS: Final = (
    "published", "failed", "indeterminate", "owed", "delivered", "lost", "duplicated",
    "reordered", "unexpected", "extra_ok", "indeterminate_delivered", "unsubscribed",
    "deliveries", "clients",
)


def error_report(reason: str) -> Report:
    """The report of a run the harness could not carry out (verdict "error", exit code 2)."""
    return Report(
        verdict="error", totals=dict.fromkeys(TOTAL_KEYS, 0), latency_ms=empty_latency(),
        reconnects={"total": 0, "max_per_client": 0, "resubscribes": 0, "unrecovered": 0},
        faults=(), violations=(f"error: {reason}",), invariants=(), clients=(),
        clients_with_problems=0, incomplete_clients=(), phases=(), duration_s=0.0,
        error=reason)


# --------------------------------------------------------------------------------------------
# Judging against the invariants.


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _examples(groups: Sequence[tuple[str, Sequence[str]]]) -> str:
    shown = []
    for label, ids in groups[:EXAMPLE_GROUPS]:
        tail = ", …" if len(ids) > EXAMPLE_IDS else ""
        shown.append(f"{label}: {', '.join(ids[:EXAMPLE_IDS])}{tail}")
    text = "; ".join(shown)
    if len(groups) > EXAMPLE_GROUPS:
        text += f"; and {len(groups) - EXAMPLE_GROUPS} more"
    return text


def _by_channel(name: str, ids: Sequence[str]) -> list[tuple[str, list[str]]]:
    per: dict[str, list[str]] = {}
    for entry in ids:
        ch, _, rest = entry.partition(":")
        per.setdefault(ch, []).append(rest)
    return [(f"{name} {ch}", v) for ch, v in sorted(per.items())]


def _count_check(name: str, actual: int, limit: int,
                 groups: Sequence[tuple[str, Sequence[str]]]) -> InvariantResult:
    ok = actual <= limit
    msg = f"{name} = {actual} <= {limit}"
    if not ok:
        msg = f"{name} = {actual} > {limit} ({_examples(groups)})"
    return InvariantResult(name, ok, actual, f"<= {limit}", msg)


def judge(totals: Mapping[str, int], latency: LatencyResult, faults: Sequence[FaultResult],
          incomplete: Sequence[str], problems: Sequence[ClientProblems],
          inconsistent: Sequence[tuple[str, str, str]], inv: Invariants,
          presence: PresenceResult | None = None) -> tuple[InvariantResult, ...]:
    """Every invariant's result (pure)."""
    ordered = sorted(problems, key=lambda c: _natural_key(c.client))
    lost_groups = [(f"{c.client} {ch}", ids) for c in ordered for ch, ids in
                   sorted(c.lost_ids.items())]
    res = [
        _count_check("lost", totals["lost"], inv.max_lost, lost_groups),
        _count_check("duplicated", totals["duplicated"], inv.max_duplicated,
                     [g for c in ordered for g in _by_channel(c.client, c.duplicated_ids)]),
        _count_check("reordered", totals["reordered"], inv.max_reordered,
                     [g for c in ordered for g in _by_channel(c.client, c.reordered_ids)]),
        _count_check("unexpected", totals["unexpected"], inv.max_unexpected,
                     [g for c in ordered for g in _by_channel(c.client, c.unexpected_ids)]),
    ]
    unsub = totals["unsubscribed"]
    unsub_msg = f"unsubscribed = {unsub} <= {inv.max_unsubscribed}"
    if unsub > inv.max_unsubscribed:
        groups = [f"{c.client} {', '.join(c.unsubscribed)}" for c in ordered if c.unsubscribed]
        unsub_msg = (
            f"unsubscribed = {unsub} > {inv.max_unsubscribed} (subscribe never succeeded: "
            + "; ".join(groups[:EXAMPLE_GROUPS])
            + (f"; and {len(groups) - EXAMPLE_GROUPS} more" if len(groups) > EXAMPLE_GROUPS
               else "") + ")")
    res.append(InvariantResult("unsubscribed", unsub <= inv.max_unsubscribed, unsub,
                               f"<= {inv.max_unsubscribed}", unsub_msg))
    if incomplete:
        shown = ", ".join(incomplete[:10]) + (", …" if len(incomplete) > 10 else "")
        msg = (f"clients_finished: {incomplete[0]} never finished (no drain op)"
               if len(incomplete) == 1 else
               f"clients_finished: {len(incomplete)} clients never finished (no drain op): "
               + shown)
    else:
        msg = f"clients_finished: all {totals['clients']} clients drained"
    res.append(InvariantResult("clients_finished", not incomplete, len(incomplete), "== 0", msg))

    delivered = totals["delivered"]
    ok = delivered >= inv.min_delivered
    msg = f"delivered = {delivered} >= {inv.min_delivered}"
    if not ok:
        msg = (f"min_delivered: delivered = {delivered} < {inv.min_delivered} "
               f"(owed {totals['owed']}, published {totals['published']}, "
               f"{totals['clients']} clients): the run proves nothing")
    res.append(InvariantResult("min_delivered", ok, delivered, f">= {inv.min_delivered}", msg))

    bad = [f for f in faults if f.status not in ("ok", "skipped")]
    skipped = [f for f in faults if f.status == "skipped"]
    msg = f"faults_injected: {len(faults) - len(skipped)} faults injected"
    if skipped:
        msg += f", {len(skipped)} skipped (" + "; ".join(
            f"{f.fault_id} {f.fault}: {f.error}" for f in skipped) + ")"
    if bad:
        msg = "faults_injected: " + "; ".join(
            f"{f.fault_id} ({f.fault} {f.target}) injection {f.status}"
            + (f": {f.error}" if f.error else "") for f in bad)
    res.append(InvariantResult("faults_injected", not bad, len(bad), "== 0", msg))
    unhealed = [f for f in faults if f.heal_error is not None]
    msg = "faults_healed: " + ("; ".join(
        f"{f.fault_id} ({f.fault} {f.target}) heal failed: {f.heal_error}" for f in unhealed)
        if unhealed else "every injected fault healed")
    res.append(InvariantResult("faults_healed", not unhealed, len(unhealed), "== 0", msg))

    if inconsistent:
        process, channel, why = inconsistent[0]
        msg = (f"recording: {len(inconsistent)} sampled subscriptions disagree with their "
               f"compact record (first: {process} {channel}: {why})")
    else:
        msg = "recording: the full-history sample agrees with the compact record"
    res.append(InvariantResult("recording", not inconsistent, len(inconsistent), "== 0", msg))

    if inv.p99_ms is not None:
        res.append(_p99_check(latency, inv))

    if inv.max_recovery_s is not None:
        res.append(_recovery_check(faults, inv.max_recovery_s))
    if inv.presence:
        res.append(_presence_check(presence, inv.max_presence))
    return tuple(res)


def _presence_check(result: PresenceResult | None, limit: int) -> InvariantResult:
    if result is None or result.finished == 0:
        return InvariantResult("presence", False, None, f"<= {limit}",
                               "presence: no client joined a presence channel and finished")
    actual = result.problems
    ok = actual <= limit
    counts = (f"{result.ghosts} ghosts, {result.missing} missing, {result.inconsistent} "
              f"inconsistent member events, {result.self_missing} snapshots without self, "
              f"{result.no_snapshot} never joined")
    if ok:
        msg = (f"presence = {actual} <= {limit}: {result.finished} clients' member lists "
               f"equal the {result.connected_users} connected users over "
               f"{result.member_events} member events")
    else:
        quoted = "; ".join(e for kind in ("ghosts", "missing", "inconsistent", "self_missing",
                                          "no_snapshot")
                           for e in result.examples.get(kind, [])[:2])
        msg = f"presence = {actual} > {limit} ({counts}: {quoted})"
    return InvariantResult("presence", ok, actual, f"<= {limit}", msg)


def _p99_check(latency: LatencyResult, inv: Invariants) -> InvariantResult:
    assert inv.p99_ms is not None
    limit = inv.p99_ms
    if not inv.p99_phases:
        p99 = latency.overall["p99"]
        ok = p99 is not None and p99 <= limit
        if p99 is None:
            msg = f"p99_ms: no latency measured (nothing delivered), limit {limit:g} ms"
        else:
            msg = f"p99 latency = {p99:g} ms {'<=' if ok else '>'} {limit:g} ms"
        return InvariantResult("p99_ms", ok, p99, f"<= {limit:g}", msg)
    parts = []
    worst: float | None = None
    ok = True
    measured = 0
    for phase in inv.p99_phases:
        p99 = latency.by_phase.get(phase, {}).get("p99")
        if p99 is None:
            parts.append(f"{phase}: nothing delivered")
            continue
        measured += 1
        worst = p99 if worst is None else max(worst, p99)
        if p99 > limit:
            ok = False
            parts.append(f"{phase} p99 = {p99:g} ms > {limit:g} ms")
        else:
            parts.append(f"{phase} p99 = {p99:g} ms")
    if not measured:
        ok = False
    return InvariantResult("p99_ms", ok, worst, f"<= {limit:g} in {', '.join(inv.p99_phases)}",
                           "p99_ms: " + "; ".join(parts))


def _recovery_check(faults: Sequence[FaultResult], limit: float) -> InvariantResult:
    problems = []
    worst: float | None = 0.0
    # A skipped fault never ran (faults_injected and the report say why): nothing to recover.
    faults = [f for f in faults if f.status != "skipped"]
    for f in faults:
        label = f"{f.fault_id} ({f.fault} {f.target})"
        if f.healed_at is None:
            problems.append(f"{label} was never healed")
            worst = None
        elif f.recovery_s is None:
            if f.lost_before_heal:
                problems.append(f"{label} never recovered: {f.lost_before_heal} owed updates "
                                "published before the heal were lost")
            else:
                n = (f.stale or {}).get("unrecovered", 0)
                problems.append(f"{label} never recovered: {n} disconnected viewers were told "
                                "recovered: false")
            worst = None
        else:
            if worst is not None:
                worst = max(worst, f.recovery_s)
            if f.recovery_s > limit:
                problems.append(f"{label} recovered in {f.recovery_s:g} s > {limit:g} s")
    msg = ("recovery_s: " + "; ".join(problems) if problems else
           f"recovery_s: worst {worst:g} s <= {limit:g} s over {len(faults)} faults")
    return InvariantResult("recovery_s", not problems, worst, f"<= {limit:g}", msg)


# --------------------------------------------------------------------------------------------
# Composition: the one place the parts meet.


def _report(data: RunData, invariants: Invariants,
            presence: PresenceResult | None = None) -> Report:
    t0 = data.start
    delivery: DeliveryResult = judge_delivery(data)
    order: OrderResult = judge_order(data)
    windows = fault_windows(data)
    latency = judge_latency(data, delivery.owable, windows)
    recovery: dict[str, FaultRecovery] = judge_recovery(data, delivery.owable,
                                                        delivery.lost_by_update)

    totals: Counter[str] = Counter(delivery.totals)
    totals.update(order.totals)
    full_totals = {k: int(totals.get(k, 0)) for k in TOTAL_KEYS}

    def order_key(flt: Any) -> tuple[float, str]:
        return (math.inf if flt.injected is None else flt.injected, flt.fault_id)

    faults = []
    for flt in sorted(data.faults.values(), key=order_key):
        rec = recovery[flt.fault_id]
        faults.append(FaultResult(
            fault_id=flt.fault_id, fault=flt.fault, target=flt.target, params=flt.params,
            status=flt.status,
            injected_at=None if flt.injected is None else round(flt.injected - t0, 6),
            healed_at=None if flt.healed is None else round(flt.healed - t0, 6),
            recovery_s=rec.recovery_s, lost_before_heal=rec.lost_before_heal, error=flt.error,
            heal_error=flt.heal_error,
            observed=flt.observed, stale=rec.stale, caught_up_s=rec.caught_up_s,
            latency_ms=latency.by_fault.get(flt.fault_id, empty_latency())))

    incomplete = tuple(sorted((n for n, v in data.viewers.items() if v.drain is None),
                              key=_natural_key))
    names = sorted(set(data.viewers) | set(delivery.viewers), key=_natural_key)
    problems = []
    for name in names:
        vd = delivery.viewers.get(name)
        vo = order.viewers.get(name)
        viewer = data.viewers.get(name)
        unfinished = viewer is not None and viewer.drain is None
        if not ((vd is not None and vd.any()) or (vo is not None and vo.any()) or unfinished):
            continue
        problems.append(ClientProblems(
            client=name, finished=not unfinished, lost=vd.lost if vd else 0,
            lost_ids={ch: tuple(v) for ch, v in sorted(vd.lost_ids.items())} if vd else {},
            duplicated=vo.duplicated if vo else 0,
            duplicated_ids=tuple(vo.duplicated_ids) if vo else (),
            reordered=vo.reordered if vo else 0,
            reordered_ids=tuple(vo.reordered_ids) if vo else (),
            unexpected=vd.unexpected if vd else 0,
            unexpected_ids=tuple(vd.unexpected_ids) if vd else (),
            unsubscribed=tuple(vd.unsubscribed) if vd else (),
            reconnects=viewer.disconnects if viewer else 0))
    results = judge(full_totals, latency, faults, incomplete, problems, data.inconsistent,
                    invariants, presence)
    violations = tuple(r.message for r in results if not r.ok)
    disconnects = [v.disconnects for v in data.viewers.values()]
    reconnects = {
        "total": sum(disconnects),
        "max_per_client": max(disconnects, default=0),
        "resubscribes": sum(v.resubscribes for v in data.viewers.values()),
        "unrecovered": sum(v.unrecovered for v in data.viewers.values()),
    }
    sampled = sum(1 for v in data.viewers.values() for s in v.subs.values()
                  if s.has_record and s.delivers)
    positioned = sum(hi - lo + 1 for v in data.viewers.values() for s in v.subs.values()
                     for _e, lo, hi in s.runs)
    unpositioned = sum(len(s.id_delivers) for v in data.viewers.values()
                       for s in v.subs.values())
    return Report(
        verdict="fail" if violations else "pass", totals=full_totals,
        latency_ms=latency.overall, reconnects=reconnects, faults=tuple(faults),
        violations=violations, invariants=results, clients=tuple(problems[:DETAIL_CLIENTS]),
        clients_with_problems=len(problems), incomplete_clients=incomplete,
        phases=tuple((p, round(t - t0, 6)) for p, t in sorted(data.phases, key=lambda x: x[1])),
        duration_s=round(data.t1 - t0, 6) if data.t1 != -math.inf else 0.0,
        latency_by_phase=latency.by_phase,
        recording={"compact": data.compact, "sampled_subscriptions": sampled,
                   "inconsistent": len(data.inconsistent),
                   **positions_summary(positioned, unpositioned)},
        groups=judge_groups(data, delivery.viewers, order.viewers),
        presence=None if presence is None or presence.viewers == 0 else presence.to_dict())


def positions_summary(positioned: int, unpositioned: int) -> dict[str, Any]:
    """Whether the server gave its deliveries positions (offset, epoch): "available" (every
    delivery had one), "unavailable" (none had: a plain Pusher server, judged by update ids
    alone), "partial", or "none" (nothing delivered)."""
    if positioned and unpositioned:
        state = "partial"
    elif positioned:
        state = "available"
    elif unpositioned:
        state = "unavailable"
    else:
        state = "none"
    return {"positions": state, "positioned_deliveries": positioned,
            "unpositioned_deliveries": unpositioned}


def positions_note(recording: Mapping[str, Any]) -> str | None:
    """The sentence a report carries when server positions were missing; None otherwise."""
    state = recording.get("positions")
    if state == "unavailable":
        return ("Server positions (offset/epoch) were not available: the server sent none, so "
                "lost and duplicated were judged by update ids and reordered by the "
                "publisher's per-channel sequence numbers; clients could not resume.")
    if state == "partial":
        missing = int(recording.get("unpositioned_deliveries", 0))
        total = missing + int(recording.get("positioned_deliveries", 0))
        return (f"Server positions were missing on {missing} of {total} deliveries: those "
                "were judged by update ids and sequence numbers.")
    return None


# --------------------------------------------------------------------------------------------
# Entry points.


def check(history: Iterable[Op], invariants: Invariants = Invariants()) -> Report:
    """Score a history (see :mod:`harness.checks` for the definitions). Pure, deterministic."""
    return _judged(((op.time, op.process, op.type, op.f, op.value) for op in history),
                   invariants)


def _judged(ops: Iterable[tuple[float, str, str, str, Any]], invariants: Invariants) -> Report:
    """One pass: the model accumulates every op; the presence part keeps the few it reads."""
    kept: list[RawOp] = []

    def tap() -> Iterator[tuple[float, str, str, str, Any]]:
        for op in ops:
            if op[3] in PRESENCE_OPS:
                kept.append(op)
            yield op

    data = accumulate(tap())
    return _report(data, invariants, judge_presence(kept))


def _file_ops(paths: Iterable[str | Path]) -> Iterable[tuple[float, str, str, str, Any]]:
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
                    yield float(t), o["process"], o["type"], o["f"], o.get("value") or {}
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                    if not line.endswith(b"\n"):
                        break  # a torn final line, from a killed writer
                    raise HistoryError(f"{path}:{lineno}: not a history op: {exc}") from None


def check_files(paths: Iterable[str | Path], invariants: Invariants = Invariants()) -> Report:
    """Like :func:`check` over the ops of JSONL history files, streamed without building Ops.

    The files need not be merged or sorted: only each process's own order matters, and a
    process writes to one file. Malformed lines raise :class:`harness.history.HistoryError`
    (a torn final line, from a killed writer, is skipped as in ``iter_history``).
    """
    return _judged(_file_ops(paths), invariants)


def check_run_dir(run_dir: Path, invariants: Invariants = Invariants()) -> Report:
    """The verdict of a run folder: its history (``history.jsonl``) and its nodes' RSS samples
    (``events.jsonl``, harness.leak_check). The live run and ``turnout check`` both call this,
    so they judge the same evidence the same way."""
    from .leak_check import apply_rss_invariant  # it imports this module

    report = check_files([run_dir / "history.jsonl"], invariants)
    return apply_rss_invariant(report, run_dir / "events.jsonl",
                               invariants.max_rss_slope_mb_per_h)
