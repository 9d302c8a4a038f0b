"""A labelled sparkline: delivered messages per second, p99 latency."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

__all__ = ["MetricChart"]


class MetricChart(Vertical):
    def __init__(self, title: str, unit: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="chart")
        self.title = title
        self.unit = unit

    def compose(self) -> ComposeResult:
        yield Static(Text(self.title, style="bold"), classes="chart-label")
        yield Sparkline([], classes="chart-spark")

    def set_data(self, data: Sequence[float]) -> None:
        values = list(data)
        label = Text(self.title, style="bold")
        if values:
            label.append(f"  now {values[-1]:,.0f} {self.unit}", style="")
            label.append(f"  max {max(values):,.0f}", style="dim")
        else:
            label.append("  no data yet", style="dim")
        self.query_one(".chart-label", Static).update(label)
        self.query_one(".chart-spark", Sparkline).data = values
