"""Topology panel: one row per node (state, connections, RSS with a sparkline, Redis link)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from ..format import STATE_STYLES, fmt_bytes, fmt_count, state_text
from ..model import NodeView, RunState

__all__ = ["NodeRow", "NodesPanel"]

HEADER = Text.assemble(("  node     state      conns      RSS  redis  ", "bold"),
                       ("RSS over time", "dim"))


def _redis_link(node: NodeView) -> Text:
    if node.redis_link_up is None:
        return Text("  —  ", style="dim")
    if node.redis_link_up >= 1:
        return Text("  ✓  ", style="bold green")
    return Text("  ✗  ", style="bold red")


class NodeRow(Horizontal):
    """One node on one line: the numbers, then its RSS sparkline."""

    def __init__(self, name: str) -> None:
        super().__init__(classes="node-row")
        self.node_name = name
        self.info = Static(classes="node-info")
        self.spark = Sparkline([], classes="node-rss")
        self.node: NodeView | None = None

    def compose(self) -> ComposeResult:
        yield self.info
        yield self.spark

    def on_mount(self) -> None:
        if self.node is not None:
            self.update_node(self.node)

    def update_node(self, node: NodeView) -> None:
        self.node = node
        dot = Text("● ", style=STATE_STYLES.get(node.state, "bold"))
        state = state_text(node.state)
        state.pad_right(9 - len(node.state))
        line = Text.assemble(
            dot, (f"{node.name:<8} ", "bold"), state, " ",
            (f"{fmt_count(node.connections):>6} ", ""),
            (f"{fmt_bytes(node.rss_bytes):>9}", ""), "  ", _redis_link(node))
        self.info.update(line)
        self.spark.data = list(node.rss_history)


class NodesPanel(Vertical):
    """Every node, then Redis. Rows are added as nodes appear in status events."""

    def compose(self) -> ComposeResult:
        yield Static(HEADER, classes="panel-header")
        yield Static("  waiting for the first status event…", id="nodes-waiting")
        yield Static(id="redis-row")

    def refresh_state(self, state: RunState) -> None:
        rows = {row.node_name: row for row in self.query(NodeRow)}
        if state.nodes:
            self.query_one("#nodes-waiting").display = False
        for name, node in state.nodes.items():
            row = rows.get(name)
            if row is None:
                row = NodeRow(name)
                self.mount(row, before=self.query_one("#redis-row"))
            row.update_node(node)
        if state.redis_state is not None:
            self.query_one("#redis-row", Static).update(Text.assemble(
                Text("● ", style=STATE_STYLES.get(state.redis_state, "bold")),
                ("redis    ", "bold"), state_text(state.redis_state)))
