"""Where the CPU went: per-process CPU time of a run, summed per component.

The runner samples every process of the run once a second (psutil ``cpu_times``: user +
system) and marks the phases; :meth:`CpuLedger.table` then gives, for a window between two
marks, each component's CPU seconds, its share of the run's CPU, the cores it kept busy and
its CPU per delivery, next to the machine's own busy time (which includes everything else on
the machine, other runs and kernel work not charged to a process).

A process that dies between two samples loses at most one interval of CPU (a killed node);
a restarted process (new pid) is counted from its start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import psutil

__all__ = ["COMPONENTS", "CpuLedger", "component_of"]

#: Components in the order reports list them.
COMPONENTS: Final = ("nodes", "fleet workers", "real clients", "proxies (Toxiproxy)", "HAProxy",
                     "Redis", "publisher", "harness")


def component_of(name: str) -> str:
    """The component of a supervised process name (node-3, fleet-w0, haproxy-lane1, ...)."""
    if re.fullmatch(r"node-\d+", name):
        return "nodes"
    if name.startswith("fleet-w"):
        return "fleet workers"
    if name.startswith("rc-"):  # [[client_groups]] tools (a Chromium's own children not counted)
        return "real clients"
    if name.startswith("toxiproxy"):
        return "proxies (Toxiproxy)"
    if name.startswith("haproxy"):
        return "HAProxy"
    if name == "redis":
        return "Redis"
    if name == "publisher":
        return "publisher"
    return "harness"


@dataclass
class _Mark:
    label: str
    per_component: dict[str, float]
    machine_busy: float
    machine_total: float
    wall: float
    deliveries: int


@dataclass
class CpuLedger:
    """Accumulates CPU seconds per component from periodic samples."""

    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    totals: dict[str, float] = field(default_factory=dict)
    processes: dict[str, set[str]] = field(default_factory=dict)
    marks: list[_Mark] = field(default_factory=list)
    _last: dict[tuple[int, float], float] = field(default_factory=dict)
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _machine: tuple[float, float] | None = None
    _busy: float = 0.0
    _total: float = 0.0
    #: The deliveries counted at the latest sample (the status loop notes them): a run that
    #: ends in error still gets an ``end`` mark, and its table, from them.
    deliveries: int = 0

    def sample(self, pids: Mapping[str, int | None]) -> None:
        """Add every named process's CPU since its previous sample."""
        for name, pid in pids.items():
            if pid is None:
                continue
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                times = proc.cpu_times()
                key = (pid, proc.create_time())
            except psutil.Error:
                self._procs.pop(pid, None)
                continue
            used = times.user + times.system
            before = self._last.get(key, 0.0)
            self._last[key] = used
            comp = component_of(name)
            self.totals[comp] = self.totals.get(comp, 0.0) + max(0.0, used - before)
            self.processes.setdefault(comp, set()).add(name)
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)
        total = busy + t.idle + getattr(t, "iowait", 0.0)
        if self._machine is not None:
            self._busy += busy - self._machine[0]
            self._total += total - self._machine[1]
        self._machine = (busy, total)

    def so_far(self) -> dict[str, Any]:
        """CPU seconds per component since the run started, and the machine's cores (the
        status events carry it: a live view takes differences between two of them)."""
        return {"cores": self.cores,
                "components": {c: round(self.totals[c], 3) for c in COMPONENTS
                               if c in self.totals}}

    def mark(self, label: str, wall: float, deliveries: int) -> None:
        """Remember the totals at a phase boundary (after a fresh sample)."""
        self.deliveries = max(self.deliveries, deliveries)
        self.marks.append(_Mark(label, dict(self.totals), self._busy, self._total, wall,
                                deliveries))

    def finish(self, wall: float) -> None:
        """Mark ``end`` from the latest sample if the run did not get to mark it (it ended
        in error or was cancelled): its CPU up to the last sample is still reported."""
        if self.marks and all(m.label != "end" for m in self.marks):
            self.mark("end", wall, self.deliveries)

    def report_table(self) -> dict[str, Any]:
        """The report's window: steady to drain when the run got there, else the longest
        window it did reach (setup to drain, steady to end, setup to end)."""
        for start, end in (("steady", "drain"), ("setup", "drain"), ("steady", "end"),
                           ("setup", "end")):
            table = self.table(start, end)
            if table:
                return table
        return {}

    def table(self, start: str, end: str) -> dict[str, Any]:
        """Per component between two marks: CPU s, share of the run's CPU, cores, µs per
        delivery; plus the window, its deliveries per second and how busy the machine was."""
        by_label = {m.label: m for m in self.marks}
        a, b = by_label.get(start), by_label.get(end)
        if a is None or b is None or b.wall <= a.wall:
            return {}
        wall = b.wall - a.wall
        deliveries = b.deliveries - a.deliveries
        used = {c: b.per_component.get(c, 0.0) - a.per_component.get(c, 0.0)
                for c in set(a.per_component) | set(b.per_component)}
        total = sum(used.values())
        components: dict[str, Any] = {}
        for comp in COMPONENTS:
            if comp not in used and comp not in self.processes:
                continue
            cpu_s = used.get(comp, 0.0)
            components[comp] = {
                "processes": len(self.processes.get(comp, ())),
                "cpu_s": round(cpu_s, 2),
                "share_pct": round(100.0 * cpu_s / total, 1) if total else 0.0,
                "cores": round(cpu_s / wall, 3),
                "us_per_delivery": round(cpu_s / deliveries * 1e6, 2) if deliveries else None,
            }
        machine_busy = b.machine_busy - a.machine_busy
        machine_total = b.machine_total - a.machine_total
        busy_cores = machine_busy / machine_total * self.cores if machine_total else 0.0
        components["outside the run (other processes, kernel)"] = {
            "processes": 0,
            "cpu_s": round(max(0.0, busy_cores * wall - total), 2),
            "share_pct": 0.0,
            "cores": round(max(0.0, busy_cores - total / wall), 3),
            "us_per_delivery": None,
        }
        return {
            "window": f"{start} to {end}",
            "wall_s": round(wall, 1),
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / wall, 1),
            "cpu_s": round(total, 2),
            "cores": self.cores,
            "run_cores": round(total / wall, 3),
            "machine_busy_pct": round(100.0 * machine_busy / machine_total, 1)
            if machine_total else 0.0,
            "us_per_delivery": round(total / deliveries * 1e6, 2) if deliveries else None,
            "components": components,
        }
