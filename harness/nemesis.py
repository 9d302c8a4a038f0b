"""The nemesis: runs faults (scheduled or interactive) and records them in the history.

Each fault run is ``inject`` → record ``fault`` ok → hold (``hold_s``, or until an explicit
heal command for interactive faults) → ``heal`` → record ``heal`` ok, as Jepsen's nemesis
records ``:start``/``:stop`` ops. A fault whose injection fails is recorded as ``fault`` info
with the error (the checker then fails the run: a schedule that did not happen proves nothing).

The faults phase ends with :meth:`Nemesis.end_faults_phase`: interactive faults stop being
accepted, faults held "until healed" are healed, and the run waits only for what still has a
known end (a scheduled fault's duration, an interactive fault's own ``duration_s``), saying in
a ``wait`` event what it waits for and for how long.

A scheduled fault that needs a feature the cluster's server lacks (the chaos endpoint of
turnout's nodes, see harness.servers) is not run: it is recorded as ``fault_skipped`` with the
reason, which the report shows; an interactive one is refused with the reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from .events import EventLog
from .experiment import FAULT_KINDS
from .faults import FaultContext, FaultError, FaultKind, make_fault
from .history import NEMESIS, HistoryWriter

log = logging.getLogger("turnout.nemesis")

#: How long one fault's heal may take before it is recorded as failed (the inject's limit is
#: the kind's: FaultKind.inject_limit_s).
HEAL_LIMIT_S = 120.0


def _describe(exc: Exception, limit_s: float, step: str) -> str:
    """An error's text that says what happened (trio's TooSlowError has none)."""
    if isinstance(exc, trio.TooSlowError):
        return f"its {step} did not finish within {limit_s:g} s"
    return str(exc) or type(exc).__name__

__all__ = ["ActiveFault", "Nemesis"]


@dataclass
class ActiveFault:
    fault_id: str
    kind: str
    target: str
    params: dict[str, Any]
    source: str
    fault: FaultKind
    heal_now: trio.Event = field(default_factory=trio.Event)
    injected: bool = False
    #: trio time at which the fault is due to start (after its delay) and to heal (set when
    #: its hold begins; inf while held until healed).
    starts_at: float = 0.0
    heal_due: float | None = None

    @property
    def until_healed(self) -> bool:
        """An interactive fault of a kind with a duration, sent without one."""
        spec = FAULT_KINDS.get(self.kind)
        return (self.source == "interactive" and spec is not None
                and spec.duration_s is not None and not self.fault.duration_s)


class Nemesis:
    def __init__(self, ctx: FaultContext, history: HistoryWriter, events: EventLog,
                 nursery: trio.Nursery) -> None:
        self.ctx = ctx
        self.history = history
        self.events = events
        self.nursery = nursery
        self.active: dict[str, ActiveFault] = {}
        #: Why interactive faults are refused now (None: they are accepted).
        self.closed: str | None = None
        self._interactive = 0
        self._running: dict[str, ActiveFault] = {}
        self._idle = trio.Event()
        self._idle.set()

    def start(self, fault_id: str, kind: str, target: str, params: Mapping[str, Any],
              duration_s: float | None, *, source: str = "schedule",
              delay_s: float = 0.0) -> str:
        """Run one fault in the background (after ``delay_s``); returns its fault id."""
        if source == "interactive" and self.closed is not None:
            raise FaultError(self.closed)
        fault = make_fault(kind, target, params, duration_s)
        if fault.needs_cluster and self.ctx.topology is None:
            raise FaultError(f"{kind} needs the local cluster's processes and proxies: it is "
                             "refused against an external --target")
        reason = self.skip_reason(fault)
        if reason is not None:
            if source == "interactive":
                raise FaultError(reason)
            value = {"fault_id": fault_id, "fault": kind, "target": target,
                     "params": dict(params), "reason": reason}
            log.warning("skipping %s %s: %s", fault_id, kind, reason)
            self.history.record(NEMESIS, "info", "fault_skipped", value)
            self.events.emit("fault_skipped", **value, kind=kind, source=source)
            return fault_id
        if source == "interactive":
            self._interactive += 1
            fault_id = f"i{self._interactive}"
        entry = ActiveFault(fault_id, kind, target, dict(params), source, fault,
                            starts_at=trio.current_time() + delay_s)
        # A new idle event only when going from idle to busy: a waiter holds the current
        # one, and replacing it while faults run would leave that waiter asleep forever.
        if not self._running:
            self._idle = trio.Event()
        self._running[fault_id] = entry
        self.nursery.start_soon(self._run, entry, delay_s)
        return fault_id

    def skip_reason(self, fault: FaultKind) -> str | None:
        """Why ``fault`` cannot run on this cluster's server; None when it can."""
        topology = self.ctx.topology
        if topology is None or not fault.needs:
            return None
        return topology.spec.adapter.skip_reason(fault.kind, fault.needs)

    def heal(self, fault_id: str) -> bool:
        entry = self.active.get(fault_id)
        if entry is None:
            return False
        entry.heal_now.set()
        return True

    def heal_all(self) -> None:
        for entry in self.active.values():
            entry.heal_now.set()

    @property
    def running(self) -> int:
        """Faults started and not finished (waiting for their start, injected or healing)."""
        return len(self._running)

    async def wait_idle(self) -> None:
        """Return once no fault is running (faults started meanwhile are waited for too)."""
        while self._running:
            await self._idle.wait()

    async def end_faults_phase(self, *, timeout_s: float = 180.0) -> bool:
        """The end of the faults phase: refuse further interactive faults, heal those held
        until healed, then wait (at most ``timeout_s``) for the rest to heal on their own,
        announcing what is waited for in a ``wait`` event. True if every fault finished."""
        self.closed = ("the faults phase is over: this run takes no more faults (inject them "
                       "during the steady or faults phase)")
        for entry in list(self.active.values()):
            if entry.until_healed:
                self.events.log(f"faults phase over: healing {entry.fault_id} "
                                f"({entry.kind} on {entry.target}, held until healed)")
                entry.heal_now.set()
        if not self._running:
            return True
        now = trio.current_time()
        waiting = []
        for entry in sorted(self._running.values(), key=lambda e: e.fault_id):
            due = entry.heal_due if entry.heal_due is not None else (
                max(entry.starts_at, now) + entry.fault.hold_s)
            if entry.until_healed and entry.heal_now.is_set():
                due = now
            waiting.append({"fault_id": entry.fault_id, "kind": entry.kind,
                            "target": entry.target,
                            "due_in_s": round(max(0.0, due - now), 1) if math.isfinite(due)
                            else None})
        longest = max((w["due_in_s"] or 0.0 for w in waiting), default=0.0)

        def when(w: dict[str, Any]) -> str:
            due = w["due_in_s"]
            return "healing now" if due == 0 else f"heals in {due:g} s" if due else "held"

        names = ", ".join(f"{w['fault_id']} ({w['kind']} on {w['target']}, {when(w)})"
                          for w in waiting)
        self.events.wait(f"running faults to heal: {names}", timeout_s=timeout_s,
                         expected_s=longest, faults=waiting)
        with trio.move_on_after(timeout_s):
            await self.wait_idle()
            return True
        left = ", ".join(sorted(self._running))
        self.events.log(f"faults {left} did not finish within {timeout_s:g} s after the "
                        "faults phase; healing them now", level="warning")
        return False

    async def _run(self, entry: ActiveFault, delay_s: float) -> None:
        try:
            if delay_s > 0:
                await trio.sleep(delay_s)
            await self._run_fault(entry)
        finally:
            self._running.pop(entry.fault_id, None)
            if not self._running:
                self._idle.set()

    async def _run_fault(self, entry: ActiveFault) -> None:
        fault = entry.fault
        value = {"fault_id": entry.fault_id, "fault": entry.kind, "target": entry.target,
                 "params": entry.params}
        # The duration as asked (None: the kind has none, or held until healed), so a replay
        # or an attached TUI shows what was asked rather than a guess.
        shown = {"kind": entry.kind, "source": entry.source, "duration_s": fault.duration_s,
                 "until_healed": entry.until_healed}
        self.history.record(NEMESIS, "invoke", "fault", value)
        self.events.emit("fault_start", **value, **shown)
        self.active[entry.fault_id] = entry
        inject_limit_s = 120.0  # until the kind says (it may need the cluster to say)
        try:
            inject_limit_s = fault.inject_limit_s(self.ctx)
            with trio.fail_after(inject_limit_s):
                await fault.inject(self.ctx)
        except (FaultError, OSError, trio.TooSlowError, RuntimeError, ValueError) as exc:
            error = _describe(exc, inject_limit_s, "inject")
            log.error("%s on %s failed: %s", entry.kind, entry.target, error)
            self.history.record(NEMESIS, "info", "fault", {**value, "error": error[:300]})
            self.events.emit("fault_error", **value, **shown, error=error)
            self.active.pop(entry.fault_id, None)
            return
        entry.injected = True
        hold = math.inf if entry.until_healed else fault.hold_s
        entry.heal_due = trio.current_time() + hold
        self.history.record(NEMESIS, "ok", "fault", {**value, "resolved": fault.resolved})
        self.events.emit("fault", **value, **shown, resolved=fault.resolved,
                         hold_s=None if math.isinf(hold) else hold)
        with trio.move_on_after(hold):
            await entry.heal_now.wait()
        healed = {"fault_id": entry.fault_id, "observed": fault.observed}
        try:
            with trio.fail_after(HEAL_LIMIT_S):
                await fault.heal(self.ctx)
        except (FaultError, OSError, trio.TooSlowError, RuntimeError, ValueError) as exc:
            error = _describe(exc, HEAL_LIMIT_S, "heal")
            log.error("healing %s on %s failed: %s", entry.kind, entry.target, error)
            # A failed heal is a failed op: the checker judges it (faults_healed).
            self.history.record(NEMESIS, "fail", "heal", {**healed, "error": error[:300]})
            self.events.emit("fault_error", **value, **shown, error=f"heal: {error}")
        else:
            self.history.record(NEMESIS, "ok", "heal", healed)
        finally:
            self.active.pop(entry.fault_id, None)
            self.events.emit("heal", fault_id=entry.fault_id, kind=entry.kind,
                             target=entry.target, by_request=entry.heal_now.is_set())
