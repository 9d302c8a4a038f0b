"""Per fault: the stale windows of the viewers it disconnected, and the catch-up after its
heal (pure).

stale window
    A viewer disconnected at D (while the fault was active: from its injection to one second
    after its heal), reconnected at C, and from H on held every update published before C;
    its stale window is H - D. The fleet closes a window when, on every channel, a delivery
    invoked after C arrives in order after everything invoked before it (or the final read
    ends it); H is never before the resubscription, so a viewer that was disconnected never
    shows 0 s. ``recovered: false`` leaves the window open: never recovered.
catch-up
    ``max(last owed receive of U) - heal``, clipped at 0, over the updates U invoked before the
    heal: how long after the heal the last viewer had everything published up to it. ``None``
    when any owed (viewer, update) pair among U was lost.
recovery_s
    What the ``recovery_s`` invariant limits: the larger of the longest stale window and the
    catch-up; ``None`` (never recovered) when something was lost or a window never closed.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .model import FaultWindow, Pub, RunData

__all__ = ["HEAL_GRACE_S", "FaultRecovery", "fault_windows", "judge_recovery"]

HEAL_GRACE_S: Final = 1.0


@dataclass(frozen=True)
class FaultRecovery:
    fault_id: str
    stale: dict[str, Any] | None  # None: the fault disconnected no viewer
    caught_up_s: float | None
    lost_before_heal: int
    recovery_s: float | None


def fault_windows(data: RunData) -> list[tuple[str, float, float]]:
    """(fault id, injected, healed or end of history) of every injected fault."""
    out = []
    for flt in data.faults.values():
        if flt.injected is not None:
            out.append((flt.fault_id, flt.injected,
                        flt.healed if flt.healed is not None else data.t1))
    return out


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _stale_summary(data: RunData, flt: FaultWindow) -> dict[str, Any] | None:
    if flt.injected is None:
        return None
    stop = (flt.healed if flt.healed is not None else data.t1) + HEAL_GRACE_S
    durations: list[float] = []
    viewers: set[str] = set()
    unrecovered = 0
    for window in data.stale:
        if not flt.injected <= window.disconnected <= stop:
            continue
        viewers.add(window.process)
        if window.caught_up is None:
            unrecovered += 1
        else:
            durations.append(window.caught_up - window.disconnected)
    if not viewers:
        return None
    durations.sort()
    summary: dict[str, Any] = {"viewers": len(viewers), "windows": len(durations) + unrecovered,
                               "unrecovered": unrecovered}
    if durations:
        summary.update(p50=round(_quantile(durations, 0.5), 3),
                       p99=round(_quantile(durations, 0.99), 3),
                       max=round(durations[-1], 3))
    else:
        summary.update(p50=None, p99=None, max=None)
    return summary


def judge_recovery(data: RunData, owable: Mapping[str, Pub],
                   lost_by_update: Mapping[str, int]) -> dict[str, FaultRecovery]:
    owed = sorted((p for p in owable.values() if p.id in data.latency or
                   lost_by_update.get(p.id)), key=lambda p: p.invoke)
    invokes = [p.invoke for p in owed]
    prefix_recv: list[float] = []
    prefix_lost: list[int] = []
    best, lost = -math.inf, 0
    for p in owed:
        entry = data.latency.get(p.id)
        if entry is not None and entry[1] > best:
            best = entry[1]
        lost += lost_by_update.get(p.id, 0)
        prefix_recv.append(best)
        prefix_lost.append(lost)
    out: dict[str, FaultRecovery] = {}
    for flt in data.faults.values():
        stale = _stale_summary(data, flt)
        caught: float | None = None
        lost_before = 0
        if flt.healed is not None:
            n = bisect_right(invokes, flt.healed)
            lost_before = prefix_lost[n - 1] if n else 0
            if lost_before == 0:
                last = prefix_recv[n - 1] if n else -math.inf
                caught = round(max(0.0, last - flt.healed), 6)
        recovery: float | None = caught
        if stale is not None:
            if stale["unrecovered"] or stale["max"] is None:
                recovery = None
            elif recovery is not None:
                recovery = max(recovery, stale["max"])
        out[flt.fault_id] = FaultRecovery(flt.fault_id, stale, caught, lost_before, recovery)
    return out
