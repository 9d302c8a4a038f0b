"""Every Toxiproxy link of the cluster with the toxics active on it."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..model import RunState

__all__ = ["LinksPanel"]


class LinksPanel(Static, can_focus=True):
    def refresh_state(self, state: RunState) -> None:
        if not state.links:
            self.update(Text("waiting for the first status event…", style="dim"))
            return
        # Which fault put which toxic there: the active faults of the status event.
        owners: dict[str, list[str]] = {}
        for fault in state.active:
            view = state.faults.get(str(fault.get("fault_id")))
            resolved = (view.resolved if view is not None else None) or fault.get("target", "")
            for link in str(resolved).split(","):
                owners.setdefault(link, []).append(str(fault.get("fault_id")))
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column("link", no_wrap=True, ratio=1)
        table.add_column("toxics", ratio=1)
        for link, toxics in state.links.items():
            if toxics:
                ids = owners.get(link, [])
                label = ", ".join(toxics) + (f" ({', '.join(ids)})" if ids else "")
                table.add_row(Text(link, style="bold"), Text(label, style="bold red"))
            else:
                table.add_row(Text(link), Text("clean", style="green"))
        self.update(table)
