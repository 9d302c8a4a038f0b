"""The experiment browser: every experiment file, and the history of run folders.

Experiments tab: the files of ``experiments/`` with their description, topology and fault
schedule; ``r`` runs the highlighted one from here (after a question saying how big it is,
when another run is in progress or the experiment is large). Runs tab: ``runs/*`` newest
first with their verdicts; ``o`` replays a finished run, ``p`` replays it at 1x speed, ``a``
attaches to a run in progress, ``l`` its logs, ``m`` its report.md, ``c`` copies its path.
Capacity tab: the ``turnout capacity`` searches of ``runs/`` with their answers and trials;
``enter``/``t`` opens one trial by trial (tui.screens.capacity), ``m`` its capacity.md. ``/``
filters the list of the tab.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    Input,
    OptionList,
    TabbedContent,
    TabPane,
)
from textual.widgets.option_list import Option

from harness.experiment import Experiment

from ..capacity import CapacityEntry, list_capacity
from ..catalog import ExperimentEntry, RunEntry, list_experiments, list_runs, new_run_dir
from ..commands import BrowserCommands
from ..format import fmt_count, verdict_text
from ..widgets.capacity_detail import CapacityDetail
from ..widgets.experiment_detail import ExperimentDetail
from ..widgets.run_detail import RunDetail
from .capacity import CapacityScreen
from .confirm import ConfirmScreen
from .live import LiveRunScreen
from .logs import LogsScreen, list_logs
from .report import ReportScreen

__all__ = ["BrowserScreen"]


# An experiment this big asks before it starts, even alone (election-night-full: 40,000).
BIG_CLIENTS = 2000


def experiment_size(exp: Experiment) -> str:
    """How big a run of ``exp`` is, in one line: the cluster, the clients, the time."""
    c, ph = exp.clients, exp.phases
    faults = len(exp.faults)
    return (f"{exp.cluster.nodes} nodes · {fmt_count(c.count)} clients in {c.processes} "
            f"processes · {exp.workload.channels} channels · about {ph.total_s:g} s of "
            f"phases plus setup and drain · "
            + (f"{faults} scheduled faults" if faults else "no scheduled faults"))


def _when(name: str) -> str:
    """``20250601-121500-x`` → ``06-01 12:15``."""
    if len(name) >= 15 and name[:8].isdigit() and name[9:15].isdigit():
        return f"{name[4:6]}-{name[6:8]} {name[9:11]}:{name[11:13]}"
    return "?"


_TABS = Binding.Group("Tabs")
_LISTS = {"experiments": "#experiment-list", "runs": "#run-list", "capacity": "#capacity-list"}


class BrowserScreen(Screen[None]):
    COMMANDS = {BrowserCommands}
    BINDINGS = [
        Binding("1", "show_tab('experiments')", "Experiments", group=_TABS),
        Binding("2", "show_tab('runs')", "Runs", group=_TABS),
        Binding("3", "show_tab('capacity')", "Capacity", group=_TABS),
        Binding("r", "run", "Run"),
        Binding("o", "replay", "Replay"),
        Binding("p", "replay_1x", "Play", tooltip="Replay from the start at 1x"),
        Binding("a", "attach", "Attach"),
        Binding("t", "trials", "Trials"),
        Binding("l", "logs", "Logs"),
        Binding("m", "report", "Report"),
        Binding("c", "copy_path", "Copy path", show=False),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]

    def __init__(self, experiments_dir: Path, runs_dir: Path) -> None:
        super().__init__()
        self.experiments_dir = experiments_dir
        self.runs_dir = runs_dir
        self.experiments: list[ExperimentEntry] = []
        self.runs: list[RunEntry] = []
        self.searches: list[CapacityEntry] = []
        self.filter = ""

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
            with TabPane("Capacity", id="capacity"):
                with Horizontal(classes="browser-pane"):
                    yield DataTable(id="capacity-list", cursor_type="row", zebra_stripes=True)
                    with VerticalScroll(classes="detail-pane"):
                        yield CapacityDetail(id="capacity-detail")
        yield Input(id="browser-filter", compact=True,
                    placeholder="filter the list… (enter keeps it, esc clears it)")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = "turnout"
        self.sub_title = "experiments and runs"
        table = self.query_one("#run-list", DataTable)
        table.add_column("when", key="when")
        table.add_column("experiment", key="experiment")
        table.add_column("verdict", key="verdict")
        searches = self.query_one("#capacity-list", DataTable)
        searches.add_column("when", key="when")
        searches.add_column("experiment", key="experiment")
        searches.add_column("answer", key="answer")
        self.query_one("#browser-filter").display = False
        self.action_refresh()
        self.query_one("#experiment-list").focus()
        self.set_interval(5.0, self._refresh_runs)

    def on_screen_resume(self) -> None:
        self._refresh_runs()

    # ---------------------------------------------------------------------------------------

    def _matches(self, *fields: str) -> bool:
        return not self.filter or any(self.filter in f.lower() for f in fields)

    def action_refresh(self) -> None:
        self.experiments = [e for e in list_experiments(self.experiments_dir)
                            if self.tab != "experiments" or self._matches(e.name, e.summary)]
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
        self.runs = [r for r in list_runs(self.runs_dir)
                     if self.tab != "runs" or self._matches(r.name, r.experiment, r.verdict)]
        table.clear()
        for run in self.runs:
            exp = run.experiment if len(run.experiment) <= 22 else run.experiment[:21] + "…"
            table.add_row(_when(run.name), exp, verdict_text(run.verdict), key=str(run.path))
        if current is not None and str(current.path) in table.rows:
            table.move_cursor(row=table.get_row_index(str(current.path)))
        self._show_run()
        self._refresh_searches()

    def _refresh_searches(self) -> None:
        table = self.query_one("#capacity-list", DataTable)
        current = self.selected_search
        self.searches = [c for c in list_capacity(self.runs_dir)
                         if self.tab != "capacity" or self._matches(c.name, c.experiment,
                                                                    c.status)]
        table.clear()
        for search in self.searches:
            exp = search.experiment if len(search.experiment) <= 22 \
                else search.experiment[:21] + "…"
            answer = Text(fmt_count(search.answer), style="bold") if search.answer is not None \
                else Text(search.status, style="dim")
            if search.answer is not None and search.status != "done":
                answer.append(f" {search.status}", style="cyan")
            table.add_row(_when(search.name), exp, answer, key=str(search.path))
        if current is not None and str(current.path) in table.rows:
            table.move_cursor(row=table.get_row_index(str(current.path)))
        self._show_search()

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

    @property
    def selected_search(self) -> CapacityEntry | None:
        table = self.query_one("#capacity-list", DataTable)
        if not table.row_count or not self.searches:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((c for c in self.searches if str(c.path) == key), None)

    @on(DataTable.RowHighlighted, "#capacity-list")
    def _show_search(self) -> None:
        self.query_one(CapacityDetail).show(self.selected_search)
        self.refresh_bindings()

    @on(DataTable.RowSelected, "#capacity-list")
    def _search_chosen(self) -> None:
        self.action_trials()

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
        if self.filter:
            self._set_filter("")
        self.query_one(_LISTS.get(event.pane.id or "", "#run-list")).focus()
        self.refresh_bindings()

    @property
    def tab(self) -> str:
        return self.query_one(TabbedContent).active

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only the keys that do something for the highlighted entry are offered."""
        if action == "run":
            return self.tab == "experiments" and self.selected_experiment is not None
        if action == "clear_filter":
            return bool(self.filter) or self.query_one("#browser-filter").has_focus
        if action == "trials":
            return self.tab == "capacity" and self.selected_search is not None
        if self.tab == "capacity" and action in ("report", "copy_path"):
            search = self.selected_search
            if search is None:
                return False
            return action != "report" or (search.path / "capacity.md").exists()
        if action in ("replay", "replay_1x", "attach", "logs", "report", "copy_path"):
            run = self.selected_run if self.tab == "runs" else None
            if run is None:
                return False
            if action == "attach":
                return run.in_progress
            if action in ("replay", "replay_1x"):
                return not run.in_progress and (run.path / "events.jsonl").exists()
            if action == "logs":
                return bool(list_logs(run.path))
            if action == "report":
                return (run.path / "report.md").exists()
        return True

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        # Focus the tab's list now, not only on TabActivated (a message that can arrive after
        # the next key): "3" then "enter" opens the highlighted search, however fast it is typed.
        self.set_focus(self.query_one(_LISTS.get(tab, "#run-list")))

    def action_run(self) -> None:
        entry = self.selected_experiment
        if entry is not None:
            self.run_experiment(entry)

    def action_trials(self) -> None:
        search = self.selected_search
        if search is not None:
            self.app.push_screen(CapacityScreen(search.path))

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

    def action_logs(self) -> None:
        run = self.selected_run
        if run is not None:
            self.app.push_screen(LogsScreen(run.path))

    def action_report(self) -> None:
        if self.tab == "capacity":
            search = self.selected_search
            if search is not None:
                self.app.push_screen(ReportScreen(search.path, "capacity.md"))
            return
        run = self.selected_run
        if run is not None:
            self.app.push_screen(ReportScreen(run.path))

    def action_copy_path(self) -> None:
        run = self.selected_search if self.tab == "capacity" else self.selected_run
        if run is not None:
            path = str(run.path.resolve())
            self.app.copy_to_clipboard(path)
            self.notify(path, title="Run folder copied (terminal clipboard, OSC 52)")

    def action_filter(self) -> None:
        box = self.query_one("#browser-filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        self._set_filter("")
        self._focus_list()

    def _focus_list(self) -> None:
        self.query_one(_LISTS.get(self.tab, "#run-list")).focus()

    def _set_filter(self, text: str) -> None:
        box = self.query_one("#browser-filter", Input)
        if not text:
            box.display = False
            if box.value:
                box.value = ""
        self.filter = text.strip().lower()
        self.action_refresh()

    @on(Input.Changed, "#browser-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter = event.value.strip().lower()
        self.action_refresh()

    @on(Input.Submitted, "#browser-filter")
    def _filter_kept(self) -> None:
        self._focus_list()

    # ---------------------------------------------------------------------------------------

    def running_elsewhere(self) -> list[str]:
        """Runs in progress on this machine: started here, or any folder of runs/ whose
        control socket answers."""
        names = [p.run_dir.name for p in getattr(self.app, "launched", []) if p.running]
        names += [r.name for r in list_runs(self.runs_dir)
                  if r.in_progress and r.name not in names]
        return names

    def run_experiment(self, entry: ExperimentEntry, *, confirmed: bool = False) -> None:
        """Start ``entry``; asks first (saying how big it is) when another run is in progress
        or the experiment is large: a second cluster on a shared machine is a decision."""
        exp = entry.experiment
        if exp is None:
            self.notify(entry.error or "invalid experiment", title="Cannot run",
                        severity="error")
            return
        running = self.running_elsewhere()
        if not confirmed and (running or exp.clients.count >= BIG_CLIENTS):
            body = Text()
            if running:
                body.append(f"{len(running)} run{'s are' if len(running) > 1 else ' is'} in "
                            "progress: ", style="bold yellow")
                body.append(", ".join(running) + "\n", style="bold")
                body.append("Starting another runs a second cluster beside it on this "
                            "machine; both compete for its CPU.\n\n")
            body.append("Start ", style="")
            body.append(exp.name, style="bold")
            body.append("?\n")
            body.append(experiment_size(exp), style="cyan")
            self.app.push_screen(
                ConfirmScreen(f"Start {exp.name}?", body, yes="Start"),
                callback=lambda ok: self.run_experiment(entry, confirmed=True) if ok else None)
            return
        run_dir = new_run_dir(self.runs_dir, exp.name)
        self.app.push_screen(LiveRunScreen(run_dir, "run", experiment_file=entry.path))

    def replay(self, run: RunEntry, speed: float | None) -> None:
        if not (run.path / "events.jsonl").exists():
            self.notify("this run folder has no events.jsonl to replay", severity="error")
            return
        self.app.push_screen(LiveRunScreen(run.path, "replay", speed=speed))

    def attach(self, run: RunEntry) -> None:
        self.app.push_screen(LiveRunScreen(run.path, "attach"))
