"""The state of one run, folded from its event stream (harness/events.py), with no UI in it.

``RunState.apply(event)`` takes the events in order, whether they come from a live tail, an
attach or a replay; the widgets render from the state. Counters are provisional (the fleet's
``live_duplicates``/``live_reorders`` in status events) until the verdict event brings the
checker's; the fleet cannot count losses live, so ``lost`` waits for the checker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .catalog import Topology, describe_fault, topology_from_experiment

__all__ = ["COUNTERS", "FaultView", "LogLine", "NodeView", "RunState"]

HISTORY = 240  # points kept for every sparkline (one per status event: about 4 minutes)
COUNTERS = ("lost", "duplicated", "reordered")
# Where a status event's fleet totals carry provisional counters.
_LIVE_KEYS = {"lost": ("live_lost", "live_gaps"), "duplicated": ("live_duplicates",),
              "reordered": ("live_reorders",)}


@dataclass
class NodeView:
    name: str
    state: str = "?"
    pid: int | None = None
    rss_bytes: float | None = None
    connections: float | None = None
    subscriptions: float | None = None
    redis_link_up: float | None = None
    rss_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))


@dataclass
class FaultView:
    fault_id: str
    kind: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str = "schedule"
    duration_s: float | None = None
    planned_at: float | None = None  # seconds into the faults phase (scheduled faults)
    injected_t: float | None = None
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
        return describe_fault(self.kind, self.target, self.params, self.duration_s)


@dataclass(frozen=True)
class LogLine:
    t: float
    level: str  # info, warning, error, fault, heal, phase, verdict
    text: str


class RunState:
    def __init__(self) -> None:
        self.name = ""
        self.run_dir = ""
        self.experiment: dict[str, Any] = {}
        self.phase = "waiting"
        self.phase_t = 0.0
        self.phases: list[tuple[str, float]] = []
        self.t = 0.0
        self.nodes: dict[str, NodeView] = {}
        self.redis_state: str | None = None
        self.links: dict[str, list[str]] = {}
        self.fleet: dict[str, Any] = {}
        self.publisher: dict[str, Any] = {}
        self.active: list[dict[str, Any]] = []
        self.faults: dict[str, FaultView] = {}
        self.delivered_rate: deque[float] = deque(maxlen=HISTORY)
        self.p99: deque[float] = deque(maxlen=HISTORY)
        self.live: dict[str, int | None] | None = None
        self.report: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self.log: deque[LogLine] = deque(maxlen=2000)
        self.events = 0
        self._last_delivered: tuple[float, float] | None = None

    # ---------------------------------------------------------------------------------------
    # Reading.

    @property
    def finished(self) -> bool:
        return self.report is not None

    @property
    def verdict(self) -> str | None:
        return None if self.report is None else str(self.report.get("verdict"))

    def topology(self) -> Topology:
        if self.nodes or self.links:
            return Topology(tuple(sorted(self.nodes, key=_node_order)), tuple(self.links))
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
            self.log.append(line)
        return line

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
        self.phases.append((self.phase, t))
        return LogLine(t, "phase", f"phase {self.phase}")

    def _on_status(self, t: float, event: Mapping[str, Any]) -> None:
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
            node.rss_history.append(float(node.rss_bytes or 0.0))
        self.nodes = dict(sorted(self.nodes.items(), key=lambda kv: _node_order(kv[0])))
        self.links = {name: list((data or {}).get("toxics") or [])
                      for name, data in (event.get("links") or {}).items()}
        self.fleet = dict(event.get("fleet") or {})
        self.publisher = dict(event.get("publisher") or {})
        self.active = list(event.get("faults") or [])
        delivered = float(self.fleet.get("delivered") or 0)
        if self._last_delivered is not None:
            t0, d0 = self._last_delivered
            if t > t0:
                self.delivered_rate.append(max(0.0, (delivered - d0) / (t - t0)))
        self._last_delivered = (t, delivered)
        p99 = self.fleet.get("latency_p99_ms")
        self.p99.append(float(p99) if p99 is not None else 0.0)
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
        where = view.resolved if view.resolved and view.resolved != view.target else ""
        return LogLine(t, "fault", f"fault {view.fault_id} ({view.source}): {view.description}"
                       + (f" → {where}" if where else ""))

    def _on_heal(self, t: float, event: Mapping[str, Any]) -> LogLine:
        view = self._fault(event)
        if view.status != "failed":
            view.status = "healed"
        view.healed_t = t
        return LogLine(t, "heal", f"heal {view.fault_id}: {view.kind} on {view.target}")

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
    # What the TUI itself did (not from the stream).

    def note(self, level: str, text: str) -> LogLine:
        line = LogLine(self.t, level, text)
        self.log.append(line)
        return line

    def requested(self, fault_id: str, kind: str, target: str, params: Mapping[str, Any],
                  duration_s: float | None) -> None:
        if fault_id not in self.faults:
            self.faults[fault_id] = FaultView(fault_id, kind, target, dict(params),
                                              "interactive", duration_s, status="requested")
        else:
            self.faults[fault_id].duration_s = duration_s


def _node_order(name: str) -> tuple[int, str]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 0, name)
