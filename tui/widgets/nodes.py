"""Topology panel: one row per node (state, connections, RSS with its history, Redis link).

The RSS history of every node is drawn on one absolute scale, from 0 to a round number above
the largest RSS any node reached (or the cluster's max_rss_mb, if higher), with the same
seconds per column as the charts: a 0.2 MB wobble stays a flat line, a leak climbs.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Static

from ..format import STATE_STYLES, fmt_bytes, fmt_count, state_text
from ..model import NodeView, RunState
from ..series import bin_max, nice_ceiling, seconds_per_column
from .charts import BLOCKS

__all__ = ["NodeRow", "NodesPanel", "RssSpark"]

INFO_WIDTH = 46


def _redis_link(node: NodeView) -> Text:
    if node.redis_link_up is None:
        return Text("  —  ", style="dim")
    if node.redis_link_up >= 1:
        return Text("  ✓  ", style="bold green")
    return Text("  ✗  ", style="bold red")


class RssSpark(Widget):
    """One line: a node's RSS per column on the panel's shared, absolute scale."""

    DEFAULT_CSS = "RssSpark { height: 1; }"

    def __init__(self) -> None:
        super().__init__(classes="node-rss")
        self.samples: list[tuple[float, float | None]] = []
        self.span_s = 0.0
        self.scale = 1.0
        self.columns: list[float | None] = []

    def set_data(self, samples: list[tuple[float, float | None]], span_s: float,
                 scale: float) -> None:
        self.samples, self.span_s, self.scale = samples, span_s, scale
        self.refresh()

    def render(self) -> Text:
        width = max(1, self.size.width)
        step = seconds_per_column(self.span_s, width)
        self.columns = bin_max(self.samples, step, width)
        out = Text(style="cyan")
        for value in self.columns:
            if value is None:
                out.append(" ")
            else:
                out.append(BLOCKS[max(1, min(8, round(value / self.scale * 8)))])
        return out


class NodeRow(Horizontal):
    """One node on one line: the numbers, then its RSS history."""

    def __init__(self, name: str) -> None:
        super().__init__(classes="node-row")
        self.node_name = name
        self.info = Static(classes="node-info")
        self.spark = RssSpark()
        self.node: NodeView | None = None
        self._span = (0.0, 1.0)

    def compose(self) -> ComposeResult:
        yield self.info
        yield self.spark

    def on_mount(self) -> None:
        if self.node is not None:
            self.update_node(self.node, *self._span)

    def update_node(self, node: NodeView, span_s: float, scale: float) -> None:
        self.node = node
        self._span = (span_s, scale)
        dot = Text("● ", style=STATE_STYLES.get(node.state, "bold"))
        state = state_text(node.state)
        state.pad_right(9 - len(node.state))
        line = Text.assemble(
            dot, (f"{node.name:<8} ", "bold"), state, " ",
            (f"{fmt_count(node.connections):>6} ", ""),
            (f"{fmt_bytes(node.rss_bytes):>9}", ""), "  ", _redis_link(node))
        self.info.update(line)
        self.spark.set_data(node.rss, span_s, scale)


class NodesPanel(Vertical, can_focus=True):
    """Every node, then Redis. Rows are added as nodes appear in status events."""

    def compose(self) -> ComposeResult:
        yield Static(classes="panel-header", id="nodes-header")
        yield Static("  waiting for the first status event…", id="nodes-waiting")
        yield Static(id="redis-row")

    def rss_scale(self, state: RunState) -> float:
        limit_mb = float((state.experiment.get("cluster") or {}).get("max_rss_mb") or 0)
        return nice_ceiling(max(state.max_rss(), limit_mb * 1e6, 1e6))

    def refresh_state(self, state: RunState) -> None:
        scale = self.rss_scale(state)
        rows = {row.node_name: row for row in self.query(NodeRow)}
        width = max(1, self.size.width - INFO_WIDTH - 2)
        step = seconds_per_column(state.t, width)
        self.query_one("#nodes-header", Static).update(Text.assemble(
            ("  node     state      conns      RSS  redis  ", "bold"),
            (f"RSS 0 to {fmt_bytes(scale)}, {step} s/col", "dim")))
        if state.nodes:
            self.query_one("#nodes-waiting").display = False
        for name, node in state.nodes.items():
            row = rows.pop(name, None)
            if row is None:
                row = NodeRow(name)
                self.mount(row, before=self.query_one("#redis-row"))
            row.update_node(node, state.t, scale)
        for row in rows.values():  # a replay sought back before this node's first status
            row.remove()
        if not state.nodes:
            self.query_one("#nodes-waiting").display = True
        if state.redis_state is not None:
            self.query_one("#redis-row", Static).update(Text.assemble(
                Text("● ", style=STATE_STYLES.get(state.redis_state, "bold")),
                ("redis    ", "bold"), state_text(state.redis_state)))
        else:
            self.query_one("#redis-row", Static).update("")
