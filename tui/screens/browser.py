"""The experiment browser: every experiment file, and the history of run folders.

Experiments tab: the files of ``experiments/`` with their description, topology and fault
schedule; ``r`` runs the highlighted one from here. Runs tab: ``runs/*`` newest first with
their verdicts; ``o`` replays a finished run, ``p`` replays it at 1x speed, ``a`` attaches to
a run in progress.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, OptionList, TabbedContent, TabPane
from textual.widgets.option_list import Option

from ..catalog import ExperimentEntry, RunEntry, list_experiments, list_runs, new_run_dir
from ..commands import BrowserCommands
from ..format import verdict_text
from ..widgets.experiment_detail import ExperimentDetail
from ..widgets.run_detail import RunDetail
from .live import LiveRunScreen

__all__ = ["BrowserScreen"]


def _when(name: str) -> str:
    """``20250601-121500-x`` → ``06-01 12:15``."""
    if len(name) >= 15 and name[:8].isdigit() and name[9:15].isdigit():
        return f"{name[4:6]}-{name[6:8]} {name[9:11]}:{name[11:13]}"
    return "?"


class BrowserScreen(Screen[None]):
    COMMANDS = {BrowserCommands}
    BINDINGS = [
        Binding("1", "show_tab('experiments')", "Experiments"),
        Binding("2", "show_tab('runs')", "Runs"),
        Binding("r", "run", "Run"),
        Binding("o", "replay", "Replay"),
        Binding("p", "replay_1x", "Play 1x"),
        Binding("a", "attach", "Attach"),
    ]

    def __init__(self, experiments_dir: Path, runs_dir: Path) -> None:
        super().__init__()
        self.experiments_dir = experiments_dir
        self.runs_dir = runs_dir
        self.experiments: list[ExperimentEntry] = []
        self.runs: list[RunEntry] = []

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with TabbedContent(initial="experiments"):
            with TabPane("Experiments", id="experiments"):
                with Horizontal(classes="browser-pane"):
                    yield OptionList(id="experiment-list")
                    with VerticalScroll(classes="detail-pane"):
                        yield ExperimentDetail(id="experiment-detail")
            with TabPane("Runs", id="runs"):
                with Horizontal(classes="browser-pane"):
                    yield DataTable(id="run-list", cursor_type="row", zebra_stripes=True)
                    with VerticalScroll(classes="detail-pane"):
                        yield RunDetail(id="run-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = "turnout"
        self.sub_title = "experiments and runs"
        table = self.query_one("#run-list", DataTable)
        table.add_column("when", key="when")
        table.add_column("experiment", key="experiment")
        table.add_column("verdict", key="verdict")
        self.action_refresh()
        self.query_one("#experiment-list").focus()
        self.set_interval(5.0, self._refresh_runs)

    def on_screen_resume(self) -> None:
        self._refresh_runs()

    # ---------------------------------------------------------------------------------------

    def action_refresh(self) -> None:
        self.experiments = list_experiments(self.experiments_dir)
        options = self.query_one("#experiment-list", OptionList)
        highlighted = options.highlighted
        options.clear_options()
        for entry in self.experiments:
            label = Text(entry.name, style="bold" if entry.experiment else "red")
            options.add_option(Option(label, id=str(entry.path)))
        if self.experiments:
            options.highlighted = min(highlighted or 0, len(self.experiments) - 1)
        self._show_experiment()
        self._refresh_runs()

    def _refresh_runs(self) -> None:
        table = self.query_one("#run-list", DataTable)
        current = self.selected_run
        self.runs = list_runs(self.runs_dir)
        table.clear()
        for run in self.runs:
            exp = run.experiment if len(run.experiment) <= 22 else run.experiment[:21] + "…"
            table.add_row(_when(run.name), exp, verdict_text(run.verdict), key=str(run.path))
        if current is not None and str(current.path) in table.rows:
            table.move_cursor(row=table.get_row_index(str(current.path)))
        self._show_run()

    @property
    def selected_experiment(self) -> ExperimentEntry | None:
        index = self.query_one("#experiment-list", OptionList).highlighted
        if index is None or not self.experiments:
            return None
        return self.experiments[min(index, len(self.experiments) - 1)]

    @property
    def selected_run(self) -> RunEntry | None:
        table = self.query_one("#run-list", DataTable)
        if not table.row_count or not self.runs:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((r for r in self.runs if str(r.path) == key), None)

    @on(OptionList.OptionHighlighted, "#experiment-list")
    def _show_experiment(self) -> None:
        self.query_one(ExperimentDetail).show(self.selected_experiment)

    @on(DataTable.RowHighlighted, "#run-list")
    def _show_run(self) -> None:
        self.query_one(RunDetail).show(self.selected_run)
        # Replay / Attach depend on the highlighted run: re-check them for the footer.
        self.refresh_bindings()

    @on(OptionList.OptionSelected, "#experiment-list")
    def _experiment_chosen(self) -> None:
        self.action_run()

    @on(DataTable.RowSelected, "#run-list")
    def _run_chosen(self) -> None:
        run = self.selected_run
        if run is not None and run.in_progress:
            self.attach(run)
        elif run is not None:
            self.replay(run, None)

    @on(TabbedContent.TabActivated)
    def _tab_changed(self, event: TabbedContent.TabActivated) -> None:
        target = "#experiment-list" if event.pane.id == "experiments" else "#run-list"
        self.query_one(target).focus()
        self.refresh_bindings()

    @property
    def tab(self) -> str:
        return self.query_one(TabbedContent).active

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "run":
            return self.tab == "experiments"
        if action in ("replay", "replay_1x"):
            if self.tab != "runs":
                return False
            run = self.selected_run
            return True if run is not None and not run.in_progress else None
        if action == "attach":
            if self.tab != "runs":
                return False
            run = self.selected_run
            return True if run is not None and run.in_progress else None
        return True

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_run(self) -> None:
        entry = self.selected_experiment
        if entry is not None:
            self.run_experiment(entry)

    def action_replay(self) -> None:
        run = self.selected_run
        if run is not None:
            self.replay(run, None)

    def action_replay_1x(self) -> None:
        run = self.selected_run
        if run is not None:
            self.replay(run, 1.0)

    def action_attach(self) -> None:
        run = self.selected_run
        if run is not None:
            self.attach(run)

    # ---------------------------------------------------------------------------------------

    def run_experiment(self, entry: ExperimentEntry) -> None:
        if entry.experiment is None:
            self.notify(entry.error or "invalid experiment", title="Cannot run",
                        severity="error")
            return
        run_dir = new_run_dir(self.runs_dir, entry.experiment.name)
        self.app.push_screen(LiveRunScreen(run_dir, "run", experiment_file=entry.path))

    def replay(self, run: RunEntry, speed: float | None) -> None:
        if not (run.path / "events.jsonl").exists():
            self.notify("this run folder has no events.jsonl to replay", severity="error")
            return
        self.app.push_screen(LiveRunScreen(run.path, "replay", speed=speed))

    def attach(self, run: RunEntry) -> None:
        self.app.push_screen(LiveRunScreen(run.path, "attach"))
