"""One capacity search, trial by trial.

Above: the target, the answer so far and the bisection strip. Left: every trial (viewers,
holds/fails/running, p99 in steady and settle, lost). Right: the highlighted trial's run (its
verdict, totals, faults and where its CPU went). ``enter``/``o`` replays the trial's run folder
(``a`` attaches to the one running), ``l`` its logs, ``m`` capacity.md, ``c`` copies the search's
path. Re-read every 5 s, so a search in progress grows on screen.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from ..capacity import CapacityEntry, TrialEntry, read_capacity
from ..catalog import read_run
from ..format import fmt_count
from ..widgets.capacity_detail import bisection_strip, headline, p99_text, result_text
from ..widgets.run_detail import render_run
from .live import LiveRunScreen
from .logs import LogsScreen, list_logs
from .report import ReportScreen

__all__ = ["CapacityScreen"]


class CapacityScreen(Screen[None]):
    BINDINGS = [
        Binding("o", "replay", "Replay trial"),
        Binding("a", "attach", "Attach"),
        Binding("l", "logs", "Logs"),
        Binding("m", "report", "capacity.md"),
        Binding("c", "copy_path", "Copy path", show=False),
        Binding("escape", "back", "Back"),
    ]
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.entry: CapacityEntry = read_capacity(folder)

    def compose(self) -> ComposeResult:
        yield Static(id="capacity-head")
        with Horizontal(id="capacity-pane"):
            yield DataTable(id="trial-list", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(classes="detail-pane", id="trial-pane"):
                yield Static(id="trial-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = "turnout"
        self.sub_title = f"capacity · {self.folder.name}"
        table = self.query_one("#trial-list", DataTable)
        table.border_title = "Trials"
        self.query_one("#trial-pane").border_title = "Trial run"
        for label, key in (("viewers", "viewers"), ("result", "result"),
                           ("p99 steady", "steady"), ("p99 settle", "settle"),
                           ("lost", "lost")):
            table.add_column(label, key=key)
        self.refresh_entry()
        table.focus()
        self.set_interval(5.0, self.refresh_entry)

    def on_screen_resume(self) -> None:
        self.refresh_entry()

    def refresh_entry(self) -> None:
        self.entry = read_capacity(self.folder)
        entry = self.entry
        head = Text.assemble(("capacity ", "bold"), (entry.experiment, "bold underline"),
                             ("  p99 ≤ " + (f"{entry.p99_ms:g} ms" if entry.p99_ms else "?")
                              + "  ", "dim"), no_wrap=True, overflow="ellipsis")
        head.append_text(headline(entry))
        head.append("\n")
        head.append_text(bisection_strip(entry, width=max(10, min(60, self.size.width - 20))))
        self.query_one("#capacity-head", Static).update(head)
        table = self.query_one("#trial-list", DataTable)
        current = self.selected
        table.clear()
        for trial in entry.trials:
            cells = [Text(fmt_count(trial.viewers)), result_text(trial.result),
                     p99_text(trial, "steady", entry.p99_ms),
                     p99_text(trial, "settle", entry.p99_ms),
                     Text("—" if trial.lost is None else f"{trial.lost:,}",
                          style="bold red" if trial.lost else "")]
            for i in (0, 2, 3, 4):  # numbers line up on the right
                cells[i].justify = "right"
            table.add_row(*cells, key=str(trial.viewers))
        if current is not None and str(current.viewers) in table.rows:
            table.move_cursor(row=table.get_row_index(str(current.viewers)))
        self._show_trial()

    @property
    def selected(self) -> TrialEntry | None:
        table = self.query_one("#trial-list", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((t for t in self.entry.trials if str(t.viewers) == key), None)

    @on(DataTable.RowHighlighted, "#trial-list")
    def _show_trial(self) -> None:
        trial = self.selected
        detail = self.query_one("#trial-detail", Static)
        if trial is None:
            detail.update(Text("no trials yet", style="dim"))
        elif not (trial.run_dir / "events.jsonl").exists() and \
                not (trial.run_dir / "report.json").exists():
            detail.update(Text(f"no run folder at {trial.run_dir}", style="yellow"))
        else:
            detail.update(render_run(read_run(trial.run_dir)))
        self.refresh_bindings()

    @on(DataTable.RowSelected, "#trial-list")
    def _trial_chosen(self) -> None:
        trial = self.selected
        if trial is not None and trial.result == "running":
            self.action_attach()
        else:
            self.action_replay()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        trial = self.selected
        if action == "replay":
            return trial is not None and trial.result != "running" and \
                (trial.run_dir / "events.jsonl").exists()
        if action == "attach":
            return trial is not None and trial.result == "running"
        if action == "logs":
            return trial is not None and bool(list_logs(trial.run_dir))
        if action == "report":
            return (self.folder / "capacity.md").exists()
        return True

    def action_replay(self) -> None:
        trial = self.selected
        if trial is not None and (trial.run_dir / "events.jsonl").exists():
            self.app.push_screen(LiveRunScreen(trial.run_dir, "replay"))

    def action_attach(self) -> None:
        trial = self.selected
        if trial is not None and trial.result == "running":
            self.app.push_screen(LiveRunScreen(trial.run_dir, "attach"))

    def action_logs(self) -> None:
        trial = self.selected
        if trial is not None:
            self.app.push_screen(LogsScreen(trial.run_dir))

    def action_report(self) -> None:
        self.app.push_screen(ReportScreen(self.folder, "capacity.md"))

    def action_copy_path(self) -> None:
        path = str(self.folder.resolve())
        self.app.copy_to_clipboard(path)
        self.notify(path, title="Capacity folder copied (terminal clipboard, OSC 52)")

    def action_back(self) -> None:
        self.app.pop_screen()
