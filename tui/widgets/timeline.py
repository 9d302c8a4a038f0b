"""The fault timeline: scheduled faults (planned, then active, healed) and interactive ones."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from ..format import fmt_t
from ..model import FaultView, RunState

__all__ = ["FaultTimeline"]

STATUS_STYLES = {"planned": "dim", "requested": "yellow", "injecting": "yellow",
                 "active": "bold red",
                 "healed": "green", "failed": "bold red reverse", "pending": "yellow"}
COLUMNS = ("id", "fault", "source", "start", "heal", "state", "recovery")


def _row(view: FaultView) -> list[Text | str]:
    start: Text | str
    recovery: Text | str
    if view.injected_t is not None:
        start = fmt_t(view.injected_t)
    elif view.planned_at is not None:
        start = Text(f"+{view.planned_at:g}s", style="dim")
    else:
        start = "—"
    recovery = "—"
    if view.recovery_s is not None:
        recovery = f"{view.recovery_s:.1f}s"
    elif view.status in ("healed", "failed") and view.lost_before_heal is not None:
        recovery = Text("never", style="red")
    return [Text(view.fault_id, style="bold"), view.description,
            Text(view.source, style="cyan" if view.source == "interactive" else "dim"),
            start, fmt_t(view.healed_t),
            Text(view.status, style=STATUS_STYLES.get(view.status, "")), recovery]


class FaultTimeline(DataTable):
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
        for fault_id, view in state.faults.items():
            cells = _row(view)
            if fault_id not in self.rows:
                self.add_row(*cells, key=fault_id)
                continue
            for column, value in zip(COLUMNS, cells, strict=True):
                if self.get_cell(fault_id, column) != value:
                    self.update_cell(fault_id, column, value)
