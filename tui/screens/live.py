"""The live run screen: one run's dashboard, fed by its events.jsonl, driving its control.sock.

Three ways in, one screen:

- ``run``: this TUI starts ``python -m harness run FILE --out DIR`` (tui.launcher) and tails
  the folder it writes, exactly as it would tail a headless run;
- ``attach``: tail a folder whose run is in progress (no verdict yet), from its first event;
- ``replay``: read a finished folder's events.jsonl, as fast as possible or at 1x speed.

In ``run`` and ``attach`` the fault keys talk to the run's control.sock (tui.control).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from ..catalog import FaultRequest
from ..commands import FaultCommands
from ..control import ControlClient, ControlError
from ..feed import EventTail, replay_events
from ..launcher import HarnessProcess
from ..messages import FeedEnded, HarnessExited, RunEvent, StatusUpdate
from ..model import RunState
from ..widgets.charts import MetricChart
from ..widgets.counters import CountersPanel
from ..widgets.event_log import EventLog
from ..widgets.links import LinksPanel
from ..widgets.nodes import NodesPanel
from ..widgets.run_bar import RunBar
from ..widgets.timeline import FaultTimeline
from .fault_dialog import FaultDialog

__all__ = ["LiveRunScreen", "Mode"]

Mode = Literal["run", "attach", "replay"]


class LiveRunScreen(Screen[None]):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]
    COMMANDS = {FaultCommands}
    BINDINGS = [
        Binding("f", "fault", "Fault…", tooltip="Inject a fault: pick kind, target, params"),
        Binding("h", "heal", "Heal", tooltip="Heal the fault selected in the timeline"),
        Binding("H", "heal_all", "Heal all", key_display="H"),
        Binding("s", "stop", "Stop run", tooltip="Stop the run this TUI started"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, run_dir: Path, mode: Mode, *, experiment_file: Path | None = None,
                 speed: float | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.mode: Mode = mode
        self.experiment_file = experiment_file
        self.speed = speed
        self.state = RunState()
        self.state.name = run_dir.name  # until the run event names the experiment
        self.control = ControlClient(run_dir / "control.sock")
        self.process: HarnessProcess | None = None
        self.tail: EventTail | None = None
        self.feed_done = False
        self._dirty = False

    # ---------------------------------------------------------------------------------------
    # Layout.

    def compose(self) -> ComposeResult:
        yield RunBar(id="run-bar")
        with ScrollableContainer(id="dashboard"):
            yield NodesPanel(id="nodes")
            yield CountersPanel(id="counters")
            with Vertical(id="charts"):
                yield MetricChart("delivered", "msg/s", id="chart-delivered")
                yield MetricChart("p99 latency", "ms", id="chart-p99")
            yield LinksPanel(id="links")
            yield FaultTimeline(id="timeline")
            yield EventLog(id="log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        titles = {"nodes": "Topology", "counters": "Delivery (checker)", "charts": "Charts",
                  "links": "Toxiproxy links", "timeline": "Fault timeline", "log": "Events"}
        for widget_id, title in titles.items():
            self.query_one(f"#{widget_id}").border_title = title
        self._refresh_all()
        self.set_interval(0.25, self._flush)
        if self.mode == "run":
            self._launch()
            return
        # Attaching to a run this TUI started (and left): it can still be stopped from here.
        for process in getattr(self.app, "launched", []):
            if process.running and process.run_dir == self.run_dir.resolve():
                self.process = process
                self._watch_process()
        self._follow()

    @property
    def mode_label(self) -> str:
        if self.mode == "replay":
            return "replay 1x" if self.speed else "replay"
        return {"run": "live", "attach": "attached"}[self.mode]

    @property
    def control_label(self) -> str:
        if self.mode == "replay":
            return "—"
        if self.state.finished:
            return "closed"
        return "ready" if self.control.available else "waiting"

    # ---------------------------------------------------------------------------------------
    # The feed.

    @work(group="run", exclusive=True)
    async def _launch(self) -> None:
        assert self.experiment_file is not None
        try:
            self.process = await HarnessProcess.start(self.experiment_file, self.run_dir)
        except OSError as exc:
            self._note("error", f"could not start the harness: {exc}")
            return
        self.app_launched(self.process)
        self._note("tui", f"started python -m harness run {self.experiment_file} "
                          f"--out {self.run_dir} (pid {self.process.pid})")
        self._follow()
        self._watch_process()

    @work(group="process", exclusive=True)
    async def _watch_process(self) -> None:
        if self.process is not None:
            self.post_message(HarnessExited(await self.process.wait()))

    def app_launched(self, process: HarnessProcess) -> None:
        launched = getattr(self.app, "launched", None)
        if launched is not None:
            launched.append(process)

    @work(group="feed", exclusive=True)
    async def _follow(self) -> None:
        if self.mode == "replay":
            source = replay_events(self.run_dir / "events.jsonl", self.speed)
            reason = "end of the recording"
        else:
            self.tail = EventTail(self.run_dir / "events.jsonl",
                                  gone=lambda: not self.control.available)
            source = self.tail.events()
            reason = ""
        async for event in source:
            if event.get("type") == "status":
                self.post_message(StatusUpdate(event))
            else:
                self.post_message(RunEvent(event))
        if self.tail is not None:
            reason = self.tail.ended_by or "stopped"
        self.post_message(FeedEnded(reason))

    def on_run_event(self, message: RunEvent) -> None:
        line = self.state.apply(message.event)
        if line is not None:
            self.query_one(EventLog).add(line)
        self._dirty = True
        if message.event.get("type") in ("fault", "heal", "fault_error", "verdict", "phase"):
            self._flush()

    def on_status_update(self, message: StatusUpdate) -> None:
        self.state.apply(message.event)
        self._dirty = True

    def on_feed_ended(self, message: FeedEnded) -> None:
        if message.reason not in ("verdict", "end of the recording"):
            self._note("warning", f"feed ended: {message.reason}")
        self.feed_done = True
        self._dirty = True
        self._flush()

    def on_harness_exited(self, message: HarnessExited) -> None:
        if message.returncode in (0, 1):
            self._note("tui", f"harness exited with code {message.returncode}")
        else:
            self._note("warning", f"harness exited with code {message.returncode}: its output "
                                  f"is in {self.run_dir / 'logs' / 'turnout-run.log'}")
        tail = self.tail
        if tail is not None and not self.state.finished:
            # Anything it wrote before exiting is still read; then the tail ends.
            self.set_timer(1.0, lambda: tail.stop("the harness exited"))
        self.refresh_bindings()

    def _note(self, level: str, text: str) -> None:
        self.query_one(EventLog).add(self.state.note(level, text))

    def _flush(self) -> None:
        if self._dirty:
            self._dirty = False
            self._refresh_all()

    def _refresh_all(self) -> None:
        state = self.state
        self.query_one(RunBar).refresh_state(state, self.mode_label, self.control_label)
        self.query_one(NodesPanel).refresh_state(state)
        self.query_one(CountersPanel).refresh_state(state)
        self.query_one("#chart-delivered", MetricChart).set_data(state.delivered_rate)
        self.query_one("#chart-p99", MetricChart).set_data(state.p99)
        self.query_one(LinksPanel).refresh_state(state)
        self.query_one(FaultTimeline).refresh_state(state)
        self.refresh_bindings()

    # ---------------------------------------------------------------------------------------
    # Keys.

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("fault", "heal", "heal_all"):
            if self.mode == "replay":
                return False
            return None if self.state.finished else True
        if action == "stop":
            if self.mode != "run" and self.process is None:
                return False
            return True if self.process is not None and self.process.running else None
        return True

    def action_fault(self, kind: str | None = None) -> None:
        self.open_fault_dialog(kind=kind)

    def open_fault_dialog(self, preset: FaultRequest | None = None,
                          kind: str | None = None) -> None:
        """The fault dialog, empty, on one kind, or filled in (from the command palette)."""
        dialog = FaultDialog(self.state.topology(), preset=preset, kind=kind)
        self.app.push_screen(dialog, callback=self._dialog_done)

    def _dialog_done(self, request: FaultRequest | None) -> None:
        if request is not None:
            self.inject(request)

    @work(group="control")
    async def inject(self, request: FaultRequest) -> None:
        """Send one fault to the run (the dialog, the palette and tests come here)."""
        try:
            fault_id = await self.control.inject(request)
        except ControlError as exc:
            self._note("error", f"inject {request.describe()}: {exc}")
            self.notify(str(exc), title="Fault not injected", severity="error")
            return
        self.state.requested(fault_id, request.kind, request.target, request.params,
                             request.duration_s)
        self._note("tui", f"injected {fault_id}: {request.describe()}")
        self.notify(request.describe(), title=f"Injected {fault_id}")
        self._dirty = True
        self._flush()

    @work(group="control")
    async def heal(self, fault_id: str | None) -> None:
        """Heal one fault by id, or every active fault (None)."""
        try:
            if fault_id is None:
                await self.control.heal_all()
            else:
                await self.control.heal(fault_id)
        except ControlError as exc:
            self.notify(str(exc), title="Heal refused", severity="error")
            return
        what = fault_id or "every active fault"
        self._note("tui", f"heal requested for {what}")
        self.notify(f"heal requested for {what}")

    def action_heal(self) -> None:
        active = [f.fault_id for f in self.state.active_faults()]
        active += [str(f.get("fault_id")) for f in self.state.active]
        selected = self.query_one(FaultTimeline).selected_fault
        if selected in active:
            self.heal(selected)
        elif active:
            self.heal(active[-1])
        else:
            self.notify("no active fault to heal", severity="warning")

    def action_heal_all(self) -> None:
        self.heal(None)

    async def action_stop(self) -> None:
        if self.process is None or not self.process.running:
            return
        self._note("tui", "stopping the run (SIGTERM to the harness)")
        self.notify("stopping the run: the harness tears the cluster down")
        await self.process.stop()
        self.refresh_bindings()

    def action_back(self) -> None:
        if self.process is not None and self.process.running:
            self.notify("the run goes on; attach to it again from the Runs tab",
                        title="Run continues")
        if self.tail is not None:
            self.tail.stop("left the screen")
        self.app.pop_screen()
