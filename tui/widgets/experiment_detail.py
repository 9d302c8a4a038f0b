"""An experiment file in full: description, topology, clients, workload, phases, invariants
and its fault schedule."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from harness.experiment import FAULT_KINDS, Experiment

from ..catalog import ExperimentEntry, describe_fault

# Fault kinds that act on a Toxiproxy link.
LINK_FAULT_KINDS = frozenset(k for k, spec in FAULT_KINDS.items()
                             if any(t.endswith("_link") for t in spec.targets))

__all__ = ["ExperimentDetail", "render_experiment"]


def _rel(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _proxies(exp: Experiment) -> str:
    """Which links go through Toxiproxy (harness.runner.proxied_links decides it the same
    way): every link with ``proxies = "all"``, else node->redis and what the schedule needs."""
    if getattr(exp.cluster, "proxies", "all") == "all":
        return "Toxiproxy on every link"
    client_side = sorted({f.target for f in exp.faults if f.kind in LINK_FAULT_KINDS
                          and (f.target.startswith("clients") or f.target.startswith("lb"))})
    return "Toxiproxy on node->redis" + (f" and {', '.join(client_side)}" if client_side
                                         else " only (proxies = \"all\": every link)")


def render_experiment(entry: ExperimentEntry) -> RenderableType:
    title = Text.assemble((entry.name, "bold underline"), "  ", (_rel(entry.path), "dim"))
    exp = entry.experiment
    if exp is None:
        return Group(title, Text(""), Text(entry.error or "invalid", style="bold red"))
    cl, c, w, ph, inv = exp.cluster, exp.clients, exp.workload, exp.phases, exp.invariants
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold cyan", no_wrap=True)
    facts.add_column()
    history = f"history {cl.history_size}" if cl.recovery else "recovery OFF (history 0)"
    memory = f" · max RSS {cl.max_rss_mb} MB" if cl.max_rss_mb else ""
    facts.add_row("topology", f"{cl.nodes} nodes ({history}{memory}) · Redis · HAProxy · "
                              + _proxies(exp))
    facts.add_row("clients", f"{c.count} clients in {c.processes} processes · "
                             f"{c.channels_per_client} channels each · "
                             f"resume {'on' if c.resume else 'off'}")
    facts.add_row("workload", f"{w.channels} channels · one update every "
                              f"{w.publish_interval_s:g} ± {w.interval_jitter_s:g} s · "
                              f"{w.payload_bytes} B")
    facts.add_row("phases", f"steady {ph.steady_s:g} s → faults {ph.faults_s:g} s → heal "
                            f"{ph.heal_s:g} s → settle {ph.settle_s:g} s "
                            f"({ph.total_s:g} s + setup and drain)")
    limits = [f"lost ≤ {inv.max_lost}", f"duplicated ≤ {inv.max_duplicated}",
              f"reordered ≤ {inv.max_reordered}", f"delivered ≥ {inv.min_delivered}"]
    if inv.p99_ms is not None:
        limits.append(f"p99 ≤ {inv.p99_ms:g} ms")
    if inv.max_recovery_s is not None:
        limits.append(f"recovery ≤ {inv.max_recovery_s:g} s")
    facts.add_row("invariants", " · ".join(limits))
    facts.add_row("CI", "yes" if exp.ci else "no (manual)")
    if exp.faults:
        schedule: RenderableType = Table("id", "at", "fault", "kind", box=None,
                                         header_style="bold", padding=(0, 1), expand=True)
        assert isinstance(schedule, Table)
        schedule.columns[2].ratio = 1
        for fault in exp.faults:
            schedule.add_row(fault.fault_id, f"+{fault.at_s:g}s",
                             describe_fault(fault.kind, fault.target, fault.params,
                                            fault.duration_s),
                             Text(fault.kind, style="dim"))
    else:
        schedule = Text("no scheduled faults (inject them by hand from the live screen)",
                        style="dim italic")
    return Group(
        title, Text(""), Text(" ".join(exp.description.split())), Text(""), facts, Text(""),
        Text("fault schedule (seconds into the faults phase)", style="bold"),
        Padding(schedule, (0, 0, 0, 1)),
    )


class ExperimentDetail(Static):
    def show(self, entry: ExperimentEntry | None) -> None:
        self.update(render_experiment(entry) if entry is not None
                    else Text("no experiment files found", style="dim"))
