"""The nemesis: runs faults (scheduled or interactive) and records them in the history.

Each fault run is ``inject`` → record ``fault`` ok → hold (``hold_s``, or until an explicit
heal command for interactive faults) → ``heal`` → record ``heal`` ok, as Jepsen's nemesis
records ``:start``/``:stop`` ops. A fault whose injection fails is recorded as ``fault`` info
with the error (the checker then fails the run: a schedule that did not happen proves nothing).
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
from .faults import Fault, FaultContext, FaultError, make_fault
from .history import NEMESIS, HistoryWriter

log = logging.getLogger("turnout.nemesis")

__all__ = ["ActiveFault", "Nemesis"]


@dataclass
class ActiveFault:
    fault_id: str
    kind: str
    target: str
    params: dict[str, Any]
    source: str
    fault: Fault
    heal_now: trio.Event = field(default_factory=trio.Event)
    injected: bool = False


class Nemesis:
    def __init__(self, ctx: FaultContext, history: HistoryWriter, events: EventLog,
                 nursery: trio.Nursery) -> None:
        self.ctx = ctx
        self.history = history
        self.events = events
        self.nursery = nursery
        self.active: dict[str, ActiveFault] = {}
        self.failures: list[str] = []
        self._interactive = 0
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()

    def start(self, fault_id: str, kind: str, target: str, params: Mapping[str, Any],
              duration_s: float | None, *, source: str = "schedule",
              delay_s: float = 0.0) -> str:
        """Run one fault in the background (after ``delay_s``); returns its fault id."""
        if source == "interactive":
            self._interactive += 1
            fault_id = f"i{self._interactive}"
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
        entry = ActiveFault(fault_id, kind, target, dict(params), source, fault)
        self._running += 1
        self._idle = trio.Event()
        self.nursery.start_soon(self._run, entry, delay_s)
        return fault_id

    def skip_reason(self, fault: Fault) -> str | None:
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

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _run(self, entry: ActiveFault, delay_s: float) -> None:
        try:
            if delay_s > 0:
                await trio.sleep(delay_s)
            await self._run_fault(entry)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def _run_fault(self, entry: ActiveFault) -> None:
        fault = entry.fault
        value = {"fault_id": entry.fault_id, "fault": entry.kind, "target": entry.target,
                 "params": entry.params}
        self.history.record(NEMESIS, "invoke", "fault", value)
        self.events.emit("fault_start", **value, kind=entry.kind, source=entry.source)
        self.active[entry.fault_id] = entry
        try:
            with trio.fail_after(120):
                await fault.inject(self.ctx)
        except (FaultError, OSError, trio.TooSlowError, RuntimeError, ValueError) as exc:
            message = f"{entry.kind} on {entry.target} failed: {exc}"
            log.error(message)
            self.failures.append(message)
            self.history.record(NEMESIS, "info", "fault", {**value, "error": str(exc)[:300]})
            self.events.emit("fault_error", **value, kind=entry.kind, error=str(exc),
                             source=entry.source)
            self.active.pop(entry.fault_id, None)
            return
        entry.injected = True
        self.history.record(NEMESIS, "ok", "fault", {**value, "resolved": fault.resolved})
        self.events.emit("fault", **value, kind=entry.kind, resolved=fault.resolved,
                         source=entry.source, hold_s=fault.hold_s)
        hold = fault.hold_s
        if entry.source == "interactive" and not fault.duration_s and hold == 0:
            hold = math.inf  # an interactive fault with no duration waits for its heal
        with trio.move_on_after(hold):
            await entry.heal_now.wait()
        try:
            with trio.fail_after(120):
                await fault.heal(self.ctx)
        except (FaultError, OSError, trio.TooSlowError, RuntimeError, ValueError) as exc:
            message = f"healing {entry.kind} on {entry.target} failed: {exc}"
            log.error(message)
            self.failures.append(message)
            self.events.emit("fault_error", **value, kind=entry.kind, error=f"heal: {exc}",
                             source=entry.source)
        finally:
            self.active.pop(entry.fault_id, None)
            self.history.record(NEMESIS, "ok", "heal",
                                {"fault_id": entry.fault_id, "observed": fault.observed})
            self.events.emit("heal", fault_id=entry.fault_id, kind=entry.kind,
                             target=entry.target)
