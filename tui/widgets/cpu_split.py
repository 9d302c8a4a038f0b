"""Where a run's CPU went: report.json's ``cpu`` section (harness.cpu's ledger), drawn.

One row per component (nodes, fleet workers, proxies, HAProxy, Redis, publisher, harness, and
what the machine spent outside the run): its CPU seconds ("x3": over 3 processes), its share
of the run's CPU as a bar, the cores it kept busy and its CPU per delivery. Above it, the
window the table covers, the deliveries per second and how busy the machine was. Shown in the
Runs tab's detail and on the run screen: there, while the run goes on (or a replay's play
head is before its verdict), the same table over the last few seconds, from the CPU seconds so
far that every status event carries (``live_split``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..model import RunState

__all__ = ["CpuSplit", "cpu_summary", "live_split", "render_cpu_split"]

BAR = 8
OUTSIDE = "outside the run"
LIVE_WINDOW_S = 5.0


def _delivered_at(state: RunState, t: float) -> float | None:
    return next((d for ts, d in reversed(state.delivered) if ts <= t), None)


def live_split(state: RunState, window_s: float = LIVE_WINDOW_S) -> dict[str, Any] | None:
    """The ledger's table over the last ``window_s`` seconds of status events (at least two
    of them), in report.json's ``cpu`` shape; None before there are two."""
    samples = state.cpu
    if len(samples) < 2:
        return None
    t1, end = samples[-1]
    t0, start = next(((t, c) for t, c in samples if t >= t1 - window_s and t < t1),
                     samples[-2])
    wall = t1 - t0
    if wall <= 0:
        return None
    used = {name: max(0.0, end.get(name, 0.0) - start.get(name, 0.0)) for name in end}
    total = sum(used.values())
    d0, d1 = _delivered_at(state, t0), _delivered_at(state, t1)
    deliveries = int(d1 - d0) if d0 is not None and d1 is not None else 0
    return {
        "window": f"live: {t0:.0f}s to {t1:.0f}s", "wall_s": wall, "deliveries": deliveries,
        "deliveries_per_s": deliveries / wall, "cpu_s": total, "cores": state.cores or "?",
        "run_cores": total / wall,
        "us_per_delivery": total / deliveries * 1e6 if deliveries else None,
        "components": {name: {
            "cpu_s": cpu_s, "share_pct": 100.0 * cpu_s / total if total else 0.0,
            "cores": cpu_s / wall,
            "us_per_delivery": cpu_s / deliveries * 1e6 if deliveries else None}
            for name, cpu_s in used.items()},
    }


def _bar(share_pct: float) -> Text:
    eighths = round(max(0.0, min(100.0, share_pct)) / 100 * BAR * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return Text(text.ljust(BAR), style="cyan")


def _num(value: Any, fmt: str, unit: str = "") -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value:{fmt}}{unit}"


def cpu_summary(cpu: Mapping[str, Any]) -> Text:
    """One line: the window, deliveries per second, the run's cores and the machine's load."""
    text = Text(no_wrap=False)
    text.append(f"{_num(cpu.get('deliveries_per_s'), ',.0f')} deliveries/s", style="bold")
    text.append(f" · run {_num(cpu.get('run_cores'), '.2f')} of {cpu.get('cores', '?')} cores")
    if isinstance(cpu.get("machine_busy_pct"), int | float):
        text.append(f" · machine {cpu['machine_busy_pct']:.0f} % busy")
    per = cpu.get("us_per_delivery")
    if isinstance(per, int | float):
        text.append(f" · {per:,.1f} µs CPU per delivery")
    text.append(f"\nover {_num(cpu.get('wall_s'), '.0f')} s, {cpu.get('window', 'the run')}",
                style="dim")
    if "machine_busy_pct" not in cpu:
        text.append(" (the whole run's table comes with the verdict)", style="dim")
    return text


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"


def _cores(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def render_cpu_split(cpu: Mapping[str, Any] | None) -> RenderableType | None:
    """The table, or None when the run has no CPU ledger (an older run, or an error)."""
    if not cpu or not isinstance(cpu.get("components"), Mapping):
        return None
    table = Table(box=None, header_style="bold", padding=(0, 1), pad_edge=False)
    # the numbers keep their width; the component's name gives way on a narrow pane
    table.add_column("component", no_wrap=True, overflow="ellipsis", ratio=1, min_width=9)
    table.add_column("CPU s", justify="right", no_wrap=True, min_width=5)
    table.add_column("share", no_wrap=True, min_width=BAR + 6)
    table.add_column("cores", justify="right", no_wrap=True, min_width=5)
    table.add_column("µs/deliv", justify="right", no_wrap=True, min_width=8)
    for name, row in cpu["components"].items():
        if not isinstance(row, Mapping):
            continue
        outside = str(name).startswith(OUTSIDE)
        share = float(row.get("share_pct") or 0.0)
        label = Text(OUTSIDE if outside else str(name), style="dim" if outside else "bold")
        processes = row.get("processes")
        if not outside and isinstance(processes, int) and processes > 1:
            label.append(f" x{processes}", style="dim")
        table.add_row(
            label, _seconds(row.get("cpu_s")),
            Text("") if outside else Text.assemble(_bar(share), f" {share:4.1f}%"),
            _cores(row.get("cores")), _num(row.get("us_per_delivery"), ",.1f"),
            style="dim" if outside else "")
    return Group(cpu_summary(cpu), table)


class CpuSplit(Static, can_focus=True):
    """The run screen's CPU pane: the report's ledger once there is one, before it the last
    seconds of the status events' ledger; hidden when the run records neither (older runs)."""

    def refresh_state(self, state: RunState) -> None:
        final = (state.report or {}).get("cpu")
        renderable = render_cpu_split(final if final else live_split(state))
        self.display = renderable is not None
        if renderable is not None:
            self.update(renderable)
