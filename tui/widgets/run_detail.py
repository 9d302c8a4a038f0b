"""A past run folder: verdict, totals, latency, faults with recovery times, violations and
where its CPU went (when report.json has the ledger)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..catalog import RunEntry
from ..format import verdict_text
from .cpu_split import render_cpu_split

__all__ = ["RunDetail", "render_run"]

BAD = ("lost", "duplicated", "reordered", "unexpected")


def _totals(report: dict[str, Any]) -> Table:
    totals = report.get("totals") or {}
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan")
    table.add_column(justify="right")
    for key in ("published", "indeterminate", "owed", "delivered", *BAD):
        if key in totals:
            value = totals[key]
            style = ("bold red" if value else "bold green") if key in BAD else ""
            table.add_row(key, Text(f"{value:,}", style=style))
    latency = report.get("latency_ms") or {}
    for key in ("p50", "p99", "max"):
        if latency.get(key) is not None:
            table.add_row(f"latency {key}", f"{latency[key]:,.1f} ms")
    reconnects = (report.get("reconnects") or {}).get("total")
    if reconnects is not None:
        table.add_row("reconnects", f"{reconnects:,}")
    return table


def render_run(run: RunEntry) -> RenderableType:
    title = Text.assemble(verdict_text(run.verdict), " ", (run.experiment, "bold"))
    parts: list[RenderableType] = [title, Text(f"{run.path.parent.name}/{run.path.name}",
                                               style="dim", no_wrap=True,
                                               overflow="ellipsis"), Text("")]
    if run.in_progress:
        parts.append(Text("In progress: press a to attach (watch it, inject faults).",
                          style="bold cyan"))
        return Group(*parts)
    if not run.finished:
        parts.append(Text("No verdict: the run stopped before its check (stopped, killed or "
                          "interrupted). Press o to replay what it recorded, l for its logs.",
                          style="yellow"))
        return Group(*parts)
    report = dict(run.report)
    parts += [Text.assemble(("duration ", "bold cyan"),
                            f"{float(report.get('duration_s') or 0):.1f} s",
                            ("   exit ", "bold cyan"), str(run.exit_code)),
              Text(""), _totals(report)]
    faults = report.get("faults") or []
    if faults:
        table = Table(box=None, header_style="bold", padding=(0, 1))
        table.add_column("fault", no_wrap=True, overflow="ellipsis")
        table.add_column("target", no_wrap=True, overflow="ellipsis")
        table.add_column("at", no_wrap=True)
        table.add_column("recovery", no_wrap=True)
        for fault in faults:
            rec = fault.get("recovery_s")
            at = fault.get("injected_at")
            table.add_row(f"{fault.get('fault_id')} {fault.get('fault')}",
                          str(fault.get("target")),
                          "—" if at is None else f"{float(at):.1f}s",
                          Text("never", style="red") if rec is None else f"{rec:.1f} s")
        parts += [Text(""), table]
    violations = report.get("violations") or []
    if violations:
        parts += [Text(""), Text("violations", style="bold red")]
        parts += [Text(f"• {v}", style="red") for v in violations]
    if report.get("error"):
        parts += [Text(""), Text(f"error: {report['error']}", style="yellow")]
    cpu = render_cpu_split(report.get("cpu"))
    if cpu is not None:
        parts += [Text(""), Text("where the CPU went", style="bold cyan"), cpu]
    return Group(*parts)


class RunDetail(Static):
    def show(self, run: RunEntry | None) -> None:
        self.update(render_run(run) if run is not None
                    else Text("no run folders yet: run an experiment (r on the Experiments tab)",
                              style="dim"))
