"""The verdict banner above the dashboard: the outcome, why, and every invariant.

Line one: PASS, FAIL (with the checker's violations, e.g. ``p99_ms: 658 ms > 500 ms``: the
lost/duplicated/reordered counters can all be green on a run that failed on latency,
recovery or delivery), ERROR (with the harness's error) or STOPPED (the stream ended without
a verdict). Then the invariant table, one cell per invariant with its actual value against its
limit, flowing over as many lines as the width needs. Hidden while the run goes on.
"""

from __future__ import annotations

from typing import Any

from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.text import Text
from textual.widgets import Static

from ..format import verdict_text
from ..model import RunState

__all__ = ["VerdictBanner", "banner_renderable", "headline"]

MAX_VIOLATIONS = 3


def _actual(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def invariant_cells(state: RunState) -> list[Text]:
    cells = []
    # the broken ones first: they are why the run failed
    for row in sorted(state.invariants(), key=lambda r: bool(r.get("ok"))):
        ok = bool(row.get("ok"))
        cell = Text(no_wrap=True, overflow="ellipsis")
        cell.append("✓ " if ok else "✗ ", style="bold green" if ok else "bold red")
        cell.append(str(row.get("name")), style="" if ok else "bold red")
        cell.append(f" {_actual(row.get('actual'))}", style="bold" if ok else "bold red")
        if row.get("limit"):
            cell.append(f" {row.get('limit')}", style="dim")
        cells.append(cell)
    return cells


def headline(state: RunState) -> Text | None:
    outcome = state.outcome
    if outcome is None:
        return None
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append_text(verdict_text(outcome))
    text.append(" ")
    if outcome == "stopped":
        phase = next((name for name, _ in reversed(state.phases) if name != "check"), "setup")
        text.append(f"no verdict: the run stopped at {state.t:.1f}s during {phase}",
                    style="bold")
        text.append(f" ({state.stopped})", style="dim")
        return text
    report = state.report or {}
    exit_code = f" (exit {state.exit_code})" if state.exit_code is not None else ""
    if outcome == "error":
        text.append(f"the harness could not run{exit_code}: {report.get('error') or '?'}",
                    style="bold")
        return text
    violations = state.violations()
    if outcome == "pass" or not violations:
        text.append(f"every invariant held{exit_code}", style="bold green")
        return text
    count = len(violations)
    text.append(f"{count} violation{'s' if count != 1 else ''}{exit_code}: ", style="bold red")
    for i, violation in enumerate(violations[:MAX_VIOLATIONS]):
        text.append("\n  • " if i else "")
        text.append(violation, style="red")
    if count > MAX_VIOLATIONS:
        text.append(f"\n  … and {count - MAX_VIOLATIONS} more (report.md: m)", style="dim")
    return text


def banner_renderable(state: RunState) -> RenderableType | None:
    line = headline(state)
    if line is None:
        return None
    cells = invariant_cells(state)
    if not cells:
        return line
    return Group(line, Columns(cells, padding=(0, 3), expand=False))


class VerdictBanner(Static):
    def refresh_state(self, state: RunState) -> None:
        renderable = banner_renderable(state)
        self.display = renderable is not None
        if renderable is not None:
            outcome = state.outcome
            self.set_class(outcome == "pass", "-pass")
            self.set_class(outcome in ("fail", "error"), "-fail")
            self.set_class(outcome == "stopped", "-stopped")
            self.update(renderable)
