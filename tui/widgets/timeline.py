"""The fault timeline: scheduled faults (planned, then active, healed) and interactive ones.

Every time is in seconds since the run started. A scheduled fault not yet injected shows when
it is due (``≈18.9s``) once the faults phase has begun (before, its offset into that phase,
``faults+5s``); an active fault shows when its hold ends. The description comes last so a
narrow pane cuts it, not the state or the recovery time.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from ..format import fmt_t
from ..model import FaultView, RunState

__all__ = ["FaultTimeline"]

STATUS_STYLES = {"planned": "dim", "requested": "yellow", "injecting": "yellow",
                 "active": "bold red",
                 "healed": "green", "failed": "bold red reverse", "pending": "yellow"}
COLUMNS = ("id", "state", "start", "heal", "recovery", "source", "fault")


def _row(view: FaultView, faults_t: float | None) -> list[Text | str]:
    start: Text | str
    heal: Text | str
    recovery: Text | str
    if view.injected_t is not None:
        start = fmt_t(view.injected_t)
    elif view.planned_at is not None and faults_t is not None:
        start = Text(f"≈{faults_t + view.planned_at:.1f}s", style="dim")
    elif view.planned_at is not None:
        start = Text(f"faults+{view.planned_at:g}s", style="dim")
    else:
        start = "—"
    if view.healed_t is not None:
        heal = fmt_t(view.healed_t)
    elif view.status == "active" and view.heal_due_t is not None:
        heal = Text(f"≈{view.heal_due_t:.1f}s", style="dim")
    elif view.status == "active" and view.until_healed:
        heal = Text("on h", style="dim")
    else:
        heal = "—"
    recovery = "—"
    if view.recovery_s is not None:
        recovery = f"{view.recovery_s:.1f}s"
    elif view.status in ("healed", "failed") and view.lost_before_heal is not None:
        recovery = Text("never", style="red")
    return [Text(view.fault_id, style="bold"),
            Text(view.status, style=STATUS_STYLES.get(view.status, "")),
            start, heal, recovery,
            Text(view.source, style="cyan" if view.source == "interactive" else "dim"),
            view.description]


class FaultTimeline(DataTable[Text | str]):
    """Rows keyed by fault id; ``selected_fault`` is the id under the cursor."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for name in COLUMNS:
            self.add_column(name, key=name)

    @property
    def selected_fault(self) -> str | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return None if key.value is None else str(key.value)

    def refresh_state(self, state: RunState) -> None:
        faults_t = state.faults_phase_t
        for fault_id in [str(k.value) for k in self.rows if str(k.value) not in state.faults]:
            self.remove_row(fault_id)  # a replay sought back before this fault was sent
        for fault_id, view in state.faults.items():
            cells = _row(view, faults_t)
            if fault_id not in self.rows:
                self.add_row(*cells, key=fault_id)
                continue
            for column, value in zip(COLUMNS, cells, strict=True):
                if self.get_cell(fault_id, column) != value:
                    self.update_cell(fault_id, column, value, update_width=True)
