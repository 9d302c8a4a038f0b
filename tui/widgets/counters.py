"""Lost, duplicated, reordered: green while zero, red when not; then the checker's numbers."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from ..format import fmt_count, verdict_text
from ..model import COUNTERS, RunState

__all__ = ["CountersPanel"]


class Counter(Static):
    def __init__(self, name: str) -> None:
        super().__init__(classes="counter -unknown", id=f"counter-{name}")
        self.counter_name = name

    def set_value(self, value: int | None) -> None:
        self.set_class(value is None, "-unknown")
        self.set_class(value == 0, "-ok")
        self.set_class(bool(value), "-bad")
        shown = "—" if value is None else f"{value:,}"
        self.update(Text.assemble((shown, "bold"), "\n", self.counter_name))


class CountersPanel(Vertical, can_focus=True):
    def compose(self) -> ComposeResult:
        with Horizontal(classes="counter-row"):
            for name in COUNTERS:
                yield Counter(name)
        yield Static(classes="counter-source")
        yield Static(classes="counter-summary")

    def refresh_state(self, state: RunState) -> None:
        for name, value in state.counters().items():
            self.query_one(f"#counter-{name}", Counter).set_value(value)
        if state.counters_final:
            source = Text.assemble("checker ", verdict_text(state.verdict),
                                   f"  exit {state.exit_code}")
        elif state.stopped is not None:
            source = Text("no verdict: the run stopped before the checker ran; these are the "
                          "clients' provisional counts", style="yellow")
        elif state.live is not None:
            source = Text("provisional: the clients' own counts; the checker decides at the "
                          "end (only it can tell a loss)", style="italic")
        else:
            source = Text("counted by the checker at the end of the run", style="dim italic")
        self.query_one(".counter-source", Static).update(source)
        fleet, pub = state.fleet, state.publisher
        totals = (state.report or {}).get("totals") or {}
        line = Text()
        if totals:
            line.append(f"published {fmt_count(totals.get('published'))}"
                        f" · owed {fmt_count(totals.get('owed'))}"
                        f" · delivered {fmt_count(totals.get('delivered'))}")
            latency = (state.report or {}).get("latency_ms") or {}
            if latency.get("p99") is not None:
                line.append(f" · p99 {latency['p99']:,.0f} ms")
        else:
            line.append(f"published {fmt_count(pub.get('ok'))} ok"
                        f" / {fmt_count(pub.get('failed'))} failed"
                        f" / {fmt_count(pub.get('indeterminate'))} unknown"
                        f" · clients {fmt_count(fleet.get('connected'))}"
                        f"/{fmt_count(fleet.get('clients'))}"
                        f" · reconnects {fmt_count(fleet.get('reconnects'))}")
        self.query_one(".counter-summary", Static).update(line)
