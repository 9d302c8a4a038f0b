"""The state of one run, folded from its event stream (harness/events.py), with no UI in it.

``RunState.apply(event)`` takes every event in order, whether it comes from a live tail, an
attach or a replay (the screen coalesces its repaints, never the data): every status event is
a sample of the charts, every other event a line of the event log. Times are the stream's
``t``, seconds since the run started, the one time base of the TUI and of report.json.
Counters are provisional (the fleet's ``live_duplicates``/``live_reorders`` in status events)
until the verdict event brings the checker's; the fleet cannot count losses live, so ``lost``
waits for the checker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .catalog import FAULT_KINDS, ClusterNames, describe_fault, topology_from_experiment

__all__ = ["COUNTERS", "FaultView", "LogLine", "NodeView", "PhaseView", "RunState", "WaitView"]

COUNTERS = ("lost", "duplicated", "reordered")
# Where a status event's fleet totals carry provisional counters.
_LIVE_KEYS = {"lost": ("live_lost", "live_gaps"), "duplicated": ("live_duplicates",),
              "reordered": ("live_reorders",)}
MAX_LOG = 20000  # event-log lines kept (status events are samples, not lines)
# What each phase waits for, for runs recorded before phase events said so themselves.
_PHASE_WAITS = {
    "setup": "the cluster and the client fleet to be ready",
    "steady": "publishing with every client subscribed",
    "faults": "the fault schedule and faults sent by hand; then running faults to heal",
    "heal": "every fault healed, every node up; then heal_s of publishing",
    "settle": "publishing stopped: deliveries in flight arrive",
    "drain": "every client's final read of what it is owed",
    "check": "the checker reading the merged history",
}


@dataclass
class NodeView:
    name: str
    state: str = "?"
    pid: int | None = None
    rss_bytes: float | None = None
    connections: float | None = None
    subscriptions: float | None = None
    redis_link_up: float | None = None
    rss: list[tuple[float, float | None]] = field(default_factory=list)  # (t, bytes)


@dataclass
class FaultView:
    fault_id: str
    kind: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str = "schedule"
    duration_s: float | None = None
    until_healed: bool = False
    planned_at: float | None = None  # seconds into the faults phase (scheduled faults)
    injected_t: float | None = None
    heal_due_t: float | None = None  # when its hold ends (from the fault event's hold_s)
    healed_t: float | None = None
    resolved: str | None = None
    error: str | None = None
    recovery_s: float | None = None
    lost_before_heal: int | None = None
    # planned, requested (sent, no event yet), injecting, active, healed, failed, pending
    # (never ran)
    status: str = "planned"

    @property
    def description(self) -> str:
        return describe_fault(self.kind, self.target, self.params,
                              None if self.until_healed else self.duration_s)


@dataclass(frozen=True)
class LogLine:
    t: float
    level: str  # info, warning, error, fault, heal, phase, verdict, tui
    text: str


@dataclass(frozen=True)
class PhaseView:
    name: str
    t: float
    duration_s: float | None = None  # how long it lasts, when a fixed time
    waits_for: str | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class WaitView:
    """The run waits for something within its phase (a ``wait`` event)."""

    t: float
    waits_for: str
    timeout_s: float | None = None
    expected_s: float | None = None


class RunState:
    def __init__(self) -> None:
        self.name = ""
        self.run_dir = ""
        self.experiment: dict[str, Any] = {}
        self.phase = "waiting"
        self.phase_t = 0.0
        self.phase_view: PhaseView | None = None
        self.wait: WaitView | None = None
        self.phases: list[tuple[str, float]] = []
        self.t = 0.0
        self.nodes: dict[str, NodeView] = {}
        self.redis_state: str | None = None
        self.links: dict[str, list[str]] = {}
        self.fleet: dict[str, Any] = {}
        self.publisher: dict[str, Any] = {}
        self.active: list[dict[str, Any]] = []
        self.faults: dict[str, FaultView] = {}
        # Every status event's fleet totals: (t, delivered so far), (t, p99 of the last second).
        self.delivered: list[tuple[float, float]] = []
        self.p99: list[tuple[float, float | None]] = []
        self.live: dict[str, int | None] | None = None
        # Every status event's CPU ledger: (t, CPU seconds per component since the start).
        self.cpu: list[tuple[float, dict[str, float]]] = []
        self.cores: int | None = None
        self.report: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self.stopped: str | None = None  # why the run ended without a verdict
        self.log: list[LogLine] = []
        self.log_total = 0  # lines ever added (the log keeps the last MAX_LOG)
        self.events = 0
        self.status_events = 0

    # ---------------------------------------------------------------------------------------
    # Reading.

    @property
    def finished(self) -> bool:
        return self.report is not None

    @property
    def ended(self) -> bool:
        """A verdict, or known to have stopped without one."""
        return self.report is not None or self.stopped is not None

    @property
    def verdict(self) -> str | None:
        return None if self.report is None else str(self.report.get("verdict"))

    @property
    def outcome(self) -> str | None:
        """pass / fail / error from the verdict, stopped, or None while the run goes on."""
        if self.report is not None:
            return self.verdict
        return "stopped" if self.stopped is not None else None

    @property
    def accepts_faults(self) -> bool:
        """Whether the run takes interactive faults now (harness/nemesis.py: steady, faults
        until its wait for running faults)."""
        return not self.ended and self.phase in ("steady", "faults") and self.wait is None

    @property
    def faults_phase_t(self) -> float | None:
        return next((t for name, t in self.phases if name == "faults"), None)

    def phase_duration(self) -> float | None:
        """How long the current phase lasts by the experiment (None: not a fixed time)."""
        if self.phase_view is not None and self.phase_view.duration_s is not None:
            return self.phase_view.duration_s
        value = (self.experiment.get("phases") or {}).get(f"{self.phase}_s")
        return float(value) if isinstance(value, int | float) else None

    def phase_waits_for(self) -> str | None:
        if self.phase_view is not None and self.phase_view.waits_for:
            return self.phase_view.waits_for
        return _PHASE_WAITS.get(self.phase)

    def topology(self) -> ClusterNames:
        if self.nodes or self.links:
            return ClusterNames(tuple(sorted(self.nodes, key=_node_order)), tuple(self.links))
        return topology_from_experiment(self.experiment)

    def counters(self) -> dict[str, int | None]:
        """lost/duplicated/reordered: the checker's once the verdict is in, else provisional."""
        if self.report is not None:
            totals = self.report.get("totals") or {}
            return {k: int(totals.get(k, 0) or 0) for k in COUNTERS}
        if self.live is None:
            return dict.fromkeys(COUNTERS)
        return {k: self.live.get(k) for k in COUNTERS}

    @property
    def counters_final(self) -> bool:
        return self.report is not None

    def active_faults(self) -> list[FaultView]:
        return [f for f in self.faults.values()
                if f.status in ("active", "requested", "injecting")]

    def invariants(self) -> list[dict[str, Any]]:
        """The report's invariant table (name, ok, actual, limit, message)."""
        rows = (self.report or {}).get("invariants") or []
        return [dict(row) for row in rows if isinstance(row, Mapping)]

    def violations(self) -> list[str]:
        return [str(v) for v in (self.report or {}).get("violations") or []]

    def max_rss(self) -> float:
        return max((v for node in self.nodes.values() for _, v in node.rss if v), default=0.0)

    # ---------------------------------------------------------------------------------------
    # Folding events.

    def apply(self, event: Mapping[str, Any]) -> LogLine | None:
        """Fold one event in; returns the line it adds to the event log, if any."""
        self.events += 1
        kind = event.get("type")
        t = float(event.get("t") or 0.0)
        self.t = max(self.t, t)
        handler = getattr(self, f"_on_{kind}", None)
        line = handler(t, event) if handler is not None else LogLine(t, "info", f"{kind}")
        if line is not None:
            self._add(line)
        return line

    def _add(self, line: LogLine) -> None:
        self.log.append(line)
        self.log_total += 1
        if len(self.log) > MAX_LOG:
            del self.log[: len(self.log) - MAX_LOG]

    def _on_run(self, t: float, event: Mapping[str, Any]) -> LogLine:
        self.name = str(event.get("name", ""))
        self.run_dir = str(event.get("run_dir", ""))
        self.experiment = dict(event.get("experiment") or {})
        for fault in self.experiment.get("faults") or []:
            fid = str(fault.get("fault_id"))
            self.faults[fid] = FaultView(
                fid, str(fault.get("kind")), str(fault.get("target")),
                dict(fault.get("params") or {}), "schedule", fault.get("duration_s"),
                planned_at=fault.get("at_s"))
        target = event.get("target")
        return LogLine(t, "phase", f"run {self.name} started"
                       + (f" against {target}" if target else " on a local cluster"))

    def _on_phase(self, t: float, event: Mapping[str, Any]) -> LogLine:
        self.phase = str(event.get("phase"))
        self.phase_t = t
        self.phase_view = PhaseView(self.phase, t, _num(event.get("duration_s")),
                                    event.get("waits_for"), _num(event.get("timeout_s")))
        self.wait = None
        self.phases.append((self.phase, t))
        duration = self.phase_duration()
        text = f"phase {self.phase}"
        if duration is not None:
            text += f" ({duration:g} s)"
        return LogLine(t, "phase", text)

    def _on_wait(self, t: float, event: Mapping[str, Any]) -> LogLine:
        self.wait = WaitView(t, str(event.get("waits_for") or "?"),
                             _num(event.get("timeout_s")), _num(event.get("expected_s")))
        limit = f" (up to {self.wait.timeout_s:g} s)" if self.wait.timeout_s else ""
        return LogLine(t, "phase", f"waiting for {self.wait.waits_for}{limit}")

    def _on_stopped(self, t: float, event: Mapping[str, Any]) -> LogLine:
        self.stopped = str(event.get("reason") or "the run was stopped")
        return LogLine(t, "error", f"stopped: {self.stopped}")

    def _on_status(self, t: float, event: Mapping[str, Any]) -> None:
        self.status_events += 1
        nodes = dict(event.get("nodes") or {})
        redis = nodes.pop("redis", None)
        if isinstance(redis, Mapping):
            self.redis_state = str(redis.get("state"))
        for name, data in nodes.items():
            node = self.nodes.get(name)
            if node is None:
                node = self.nodes[name] = NodeView(name)
            node.state = str(data.get("state", "?"))
            node.pid = data.get("pid")
            node.rss_bytes = data.get("rss_bytes")
            # Metrics come from the node's /metrics endpoint: absent while it is not up.
            node.connections = data.get("connections")
            node.subscriptions = data.get("subscriptions")
            node.redis_link_up = data.get("redis_link_up")
            node.rss.append((t, node.rss_bytes))
        self.nodes = dict(sorted(self.nodes.items(), key=lambda kv: _node_order(kv[0])))
        self.links = {name: list((data or {}).get("toxics") or [])
                      for name, data in (event.get("links") or {}).items()}
        self.fleet = dict(event.get("fleet") or {})
        self.publisher = dict(event.get("publisher") or {})
        self.active = list(event.get("faults") or [])
        delivered = self.fleet.get("delivered")
        if isinstance(delivered, int | float):
            self.delivered.append((t, float(delivered)))
        self.p99.append((t, _num(self.fleet.get("latency_p99_ms"))))
        cpu = event.get("cpu")
        if isinstance(cpu, Mapping) and isinstance(cpu.get("components"), Mapping):
            self.cpu.append((t, {str(k): float(v) for k, v in cpu["components"].items()
                                 if isinstance(v, int | float)}))
            if isinstance(cpu.get("cores"), int):
                self.cores = cpu["cores"]
        if any(key in self.fleet for keys in _LIVE_KEYS.values() for key in keys):
            self.live = {}
            for counter, keys in _LIVE_KEYS.items():
                found = [self.fleet[k] for k in keys if self.fleet.get(k) is not None]
                self.live[counter] = int(found[0]) if found else None
        return None

    def _fault(self, event: Mapping[str, Any]) -> FaultView:
        fid = str(event.get("fault_id"))
        view = self.faults.get(fid)
        if view is None:
            view = self.faults[fid] = FaultView(
                fid, str(event.get("kind") or event.get("fault")), str(event.get("target")),
                dict(event.get("params") or {}), str(event.get("source") or "interactive"))
        # The duration as asked, from the event (harness/nemesis.py); older recordings only
        # had hold_s in the fault event.
        if "duration_s" in event:
            view.duration_s = _num(event.get("duration_s"))
        if event.get("until_healed"):
            view.until_healed = True
        return view

    def _on_fault_start(self, t: float, event: Mapping[str, Any]) -> LogLine:
        view = self._fault(event)
        if view.status in ("planned", "requested"):
            view.status = "injecting"
        view.source = str(event.get("source") or view.source)
        return LogLine(t, "fault", f"injecting {view.fault_id} ({view.source}): "
                                   f"{view.description}")

    def _on_fault(self, t: float, event: Mapping[str, Any]) -> LogLine:
        view = self._fault(event)
        view.status = "active"
        view.injected_t = t
        view.source = str(event.get("source") or view.source)
        view.resolved = event.get("resolved")
        if event.get("params"):
            view.params = dict(event["params"])
        hold = _num(event.get("hold_s"))
        if hold is not None:
            view.heal_due_t = t + hold
            spec = FAULT_KINDS.get(view.kind)
            if ("duration_s" not in event and view.duration_s is None and hold > 0
                    and spec is not None and spec.duration_s is not None):
                view.duration_s = hold
        where = view.resolved if view.resolved and view.resolved != view.target else ""
        return LogLine(t, "fault", f"fault {view.fault_id} ({view.source}): {view.description}"
                       + (f" → {where}" if where else ""))

    def _on_heal(self, t: float, event: Mapping[str, Any]) -> LogLine:
        view = self._fault(event)
        if view.status != "failed":
            view.status = "healed"
        view.healed_t = t
        how = " (on request)" if event.get("by_request") else ""
        return LogLine(t, "heal", f"heal {view.fault_id}{how}: {view.kind} on {view.target}")

    def _on_fault_error(self, t: float, event: Mapping[str, Any]) -> LogLine:
        view = self._fault(event)
        view.status = "failed"
        view.error = str(event.get("error"))
        return LogLine(t, "error", f"fault {view.fault_id} failed: {view.error}")

    def _on_fault_skipped(self, t: float, event: Mapping[str, Any]) -> LogLine:
        view = self._fault(event)
        view.status = "skipped"
        view.error = str(event.get("reason"))
        return LogLine(t, "warning", f"fault {view.fault_id} skipped: {view.error}")

    def _on_log(self, t: float, event: Mapping[str, Any]) -> LogLine:
        return LogLine(t, str(event.get("level", "info")), str(event.get("message", "")))

    def _on_verdict(self, t: float, event: Mapping[str, Any]) -> LogLine:
        self.report = dict(event.get("report") or {})
        self.exit_code = event.get("exit_code")
        self.phase = "done"
        self.wait = None
        for result in self.report.get("faults") or []:
            view = self.faults.get(str(result.get("fault_id")))
            if view is None:
                continue
            view.recovery_s = result.get("recovery_s")
            view.lost_before_heal = result.get("lost_before_heal")
            if result.get("status") == "pending" and view.status in ("planned", "requested"):
                view.status = "pending"
        for view in self.faults.values():
            if view.status == "planned":
                view.status = "pending"
        verdict = str(self.report.get("verdict", "?")).upper()
        totals = self.report.get("totals") or {}
        counts = ", ".join(f"{k} {totals.get(k, 0)}" for k in COUNTERS)
        return LogLine(t, "verdict", f"verdict {verdict} (exit {self.exit_code}): {counts}")

    # ---------------------------------------------------------------------------------------
    # What the TUI itself saw or did (not from the stream).

    def note(self, level: str, text: str) -> LogLine:
        line = LogLine(self.t, level, text)
        self._add(line)
        return line

    def log_since(self, total: int) -> list[LogLine]:
        """The lines added after the ``total``-th (what a view that showed ``total`` lacks)."""
        new = self.log_total - total
        return self.log[-new:] if new > 0 else []

    def mark_stopped(self, reason: str) -> None:
        """The stream ended without a verdict (a replay's end, a tail that ran dry)."""
        if self.report is None and self.stopped is None:
            self.stopped = reason

    def requested(self, fault_id: str, kind: str, target: str, params: Mapping[str, Any],
                  duration_s: float | None) -> None:
        spec = FAULT_KINDS.get(kind)
        held = duration_s is None and spec is not None and spec.duration_s is not None
        view = self.faults.get(fault_id)
        if view is None:
            self.faults[fault_id] = FaultView(fault_id, kind, target, dict(params),
                                              "interactive", duration_s, until_healed=held,
                                              status="requested")
        else:
            view.duration_s = duration_s
            view.until_healed = held


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _node_order(name: str) -> tuple[int, str]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 0, name)
