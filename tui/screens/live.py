"""The live run screen: one run's dashboard, fed by its events.jsonl, driving its control.sock.

Three ways in, one screen:

- ``run``: this TUI starts ``python -m harness run FILE --out DIR`` (tui.launcher) and tails
  the folder it writes, exactly as it would tail a headless run;
- ``attach``: tail a folder whose run is in progress (no verdict yet), from its first event;
- ``replay``: a finished (or stopped) folder's events.jsonl under a play head (tui.feed.Replay):
  opened at its end (``o``) or playing from its start (``p``); pause, seek and speed keys.

Every event is folded into the run's state as it is read (tui.model.RunState); only the
repaint is coalesced, four times a second. In ``run`` and ``attach`` the fault keys talk to
the run's control.sock (tui.control_client), after the same checks the harness makes
(harness.fault_request) and, for destructive faults and faults on every or a random node, a
confirmation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer, Input

from harness.fault_request import FaultRequestError

from ..catalog import FaultRequest, confirmation
from ..commands import FaultCommands
from ..control_client import ControlClient, ControlError
from ..feed import EventTail, Replay, read_events
from ..launcher import HarnessProcess
from ..messages import FeedEnded, HarnessExited
from ..model import RunState
from ..series import bin_max, bin_rate
from ..widgets.charts import TimeChart
from ..widgets.counters import CountersPanel
from ..widgets.cpu_split import CpuSplit
from ..widgets.event_log import EventLog
from ..widgets.links import LinksPanel
from ..widgets.nodes import NodesPanel
from ..widgets.replay_bar import ReplayBar
from ..widgets.run_bar import RunBar
from ..widgets.timeline import FaultTimeline
from ..widgets.verdict import VerdictBanner
from .confirm import ConfirmScreen
from .fault_dialog import FaultDialog
from .logs import LogsScreen, list_logs
from .report import ReportScreen

__all__ = ["LiveRunScreen", "Mode"]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

Mode = Literal["run", "attach", "replay"]
REPAINT_S = 0.25
TICK_S = 0.1
_FAULT_ACTIONS = ("fault", "heal", "heal_all")
_REPLAY_ACTIONS = ("play_pause", "seek", "seek_to", "speed")


class LiveRunScreen(Screen[None]):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]
    COMMANDS = {FaultCommands}
    BINDINGS = [
        Binding("f", "fault", "Fault", tooltip="Inject a fault: pick kind, target, params"),
        Binding("h", "heal", "Heal", tooltip="Heal the fault selected in the timeline"),
        Binding("H", "heal_all", "Heal all", key_display="H"),
        Binding("s", "stop", "Stop", tooltip="Stop the run this TUI started"),
        # The replay's transport (the replay bar shows the keys). Priority: the focused table
        # or log would take the arrows; refused (and passed on) while the filter has focus.
        Binding("space", "play_pause", "Play/Pause", priority=True),
        Binding("left", "seek(-5)", "-5 s", priority=True, show=False),
        Binding("right", "seek(5)", "+5 s", priority=True, show=False),
        Binding("shift+left", "seek(-30)", "-30 s", priority=True, show=False),
        Binding("shift+right", "seek(30)", "+30 s", priority=True, show=False),
        Binding("home", "seek_to(0)", "Start", priority=True, show=False),
        Binding("end", "seek_to(-1)", "End", priority=True, show=False),
        Binding("minus", "speed(-1)", "Slower", show=False),
        Binding("plus", "speed(1)", "Faster", show=False),
        Binding("l", "logs", "Logs", tooltip="The nodes' and the harness's log files"),
        Binding("m", "report", "Report", tooltip="report.md of this run"),
        # Listed in help (?), not in the footer: at 80 columns the fault keys need the room.
        Binding("slash", "filter", "Filter", key_display="/", show=False),
        Binding("c", "copy_path", "Copy path", show=False),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, run_dir: Path, mode: Mode, *, experiment_file: Path | None = None,
                 speed: float | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.mode: Mode = mode
        self.experiment_file = experiment_file
        self.speed = speed
        self._state = RunState()
        self._state.name = run_dir.name  # until the run event names the experiment
        self.replay: Replay | None = None
        self.control = ControlClient(run_dir / "control.sock")
        self.process: HarnessProcess | None = None
        self.tail: EventTail | None = None
        self.feed_done = False
        self.stopping = False
        self._dirty = False
        self._generation = 0

    @property
    def state(self) -> RunState:
        return self.replay.state if self.replay is not None else self._state

    # ---------------------------------------------------------------------------------------
    # Layout.

    def compose(self) -> ComposeResult:
        yield RunBar(id="run-bar")
        yield VerdictBanner(id="verdict")
        with ScrollableContainer(id="dashboard"):
            yield NodesPanel(id="nodes")
            yield CountersPanel(id="counters")
            with Vertical(id="charts", classes="charts"):
                yield TimeChart("delivered", "msg/s", "green", id="chart-delivered")
                yield TimeChart("p99 latency", "ms", "yellow", id="chart-p99")
            yield LinksPanel(id="links")
            yield FaultTimeline(id="timeline")
            yield EventLog(id="log")
            yield CpuSplit(id="cpu")
        yield ReplayBar(id="replay-bar")
        yield Input(id="event-filter", compact=True,
                    placeholder="show events containing… (enter keeps it, esc clears it)")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        titles = {"nodes": "Topology", "counters": "Delivery (checker)", "charts": "Charts",
                  "links": "Toxiproxy links", "timeline": "Fault timeline", "log": "Events",
                  "cpu": "Where the CPU went"}
        for widget_id, title in titles.items():
            self.query_one(f"#{widget_id}").border_title = title
        self.query_one("#verdict").border_title = "Verdict"
        self.query_one(EventLog).source = lambda: self.state
        self.query_one("#event-filter").display = False
        self.query_one("#replay-bar").display = self.mode == "replay"
        self._arrange()
        self._refresh_all()
        self.set_interval(REPAINT_S, self._flush)
        if self.mode == "run":
            self._launch()
            return
        if self.mode == "replay":
            self._start_replay()
            return
        # Attaching to a run this TUI started (and left): it can still be stopped from here.
        for process in getattr(self.app, "launched", []):
            if process.running and process.run_dir == self.run_dir.resolve():
                self.process = process
                self._watch_process()
        self._follow()

    @property
    def wide(self) -> bool:
        return self.has_class("-wide") and self.has_class("-tall")

    def on_resize(self, event: Resize) -> None:
        self.call_after_refresh(self._arrange)

    def _arrange(self) -> None:
        """The narrow column reads the delivery counters first; the wide grid puts the
        topology first (two columns wide) with the counters beside it."""
        dashboard = self.query_one("#dashboard")
        nodes, counters = self.query_one("#nodes"), self.query_one("#counters")
        first = dashboard.children[0] if dashboard.children else None
        if self.wide and first is counters:
            dashboard.move_child(nodes, before=counters)
        elif not self.wide and first is nodes:
            dashboard.move_child(counters, before=nodes)
        for chart in self.query(TimeChart):
            chart.rows = 4 if self.wide else 3
            chart.refresh(layout=True)

    @property
    def mode_label(self) -> str:
        return {"run": "live", "attach": "attached", "replay": "replay"}[self.mode]

    @property
    def control_label(self) -> str:
        if self.mode == "replay":
            return "—"
        if self.state.ended:
            return "closed"
        if self.stopping:
            return "stopping"
        return "ready" if self.control.available else "waiting"

    # ---------------------------------------------------------------------------------------
    # The feed: every event folded into the state as it is read.

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
        self.tail = EventTail(self.run_dir / "events.jsonl",
                              gone=lambda: not self.control.available)
        count = 0
        async for event in self.tail.events():
            self._apply(event)
            count += 1
            if count % 200 == 0:
                await asyncio.sleep(0)  # let the screen repaint during a long backlog
        self.post_message(FeedEnded(self.tail.ended_by or "stopped"))

    def _apply(self, event: dict[str, Any]) -> None:
        self.state.apply(event)
        self._dirty = True

    @work(group="feed", exclusive=True)
    async def _start_replay(self) -> None:
        try:
            events = await asyncio.to_thread(read_events, self.run_dir / "events.jsonl")
        except OSError as exc:
            # A folder with only its report (events.jsonl removed or never copied): its
            # verdict is still worth showing.
            events = []
            report = _read_json(self.run_dir / "report.json")
            if report is not None:
                events = [{"t": float(report.get("duration_s") or 0.0), "type": "verdict",
                           "report": report, "exit_code": report.get("exit_code")}]
            self._state.note("warning", f"no events to replay ({exc.strerror or exc})"
                             + ("; the verdict is report.json's" if events else ""))
        self.replay = Replay(events, speed=self.speed or 1.0)
        self.replay.state.name = self.run_dir.name
        for line in self._state.log:  # what the screen noted before the recording was read
            self.replay.state.note(line.level, line.text)
        if self.speed:
            self.replay.playing = True
        else:
            self.replay.to_end()
        self._replayed()
        self.set_interval(TICK_S, self._tick)

    def _tick(self) -> None:
        replay = self.replay
        if replay is not None and replay.playing:
            replay.advance(TICK_S)
            self._replayed()

    def _replayed(self) -> None:
        """The play head moved: redraw (from scratch if the state was rebuilt)."""
        replay = self.replay
        if replay is None:
            return
        if replay.generation != self._generation:
            self._generation = replay.generation
            self.query_one(EventLog).rebuild()
        if replay.at_end and not self.feed_done:
            self.feed_done = True
        self._dirty = True
        self._flush()

    def on_feed_ended(self, message: FeedEnded) -> None:
        if message.reason != "verdict":
            self.state.mark_stopped(message.reason)
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
            self.set_timer(1.0, lambda: tail.stop(
                f"the harness exited with code {message.returncode} without a verdict"))
        self.refresh_bindings()

    def _note(self, level: str, text: str) -> None:
        self.state.note(level, text)
        self._dirty = True

    def _flush(self) -> None:
        if self._dirty:
            self._dirty = False
            self._refresh_all()

    def _refresh_all(self) -> None:
        state = self.state
        outcome = self.replay.outcome if self.replay is not None else None
        self.query_one(RunBar).refresh_state(state, self.mode_label, self.control_label,
                                             outcome)
        self.query_one(VerdictBanner).refresh_state(state)
        self.query_one(NodesPanel).refresh_state(state)
        self.query_one(CountersPanel).refresh_state(state)
        span = state.t
        delivered, p99 = state.delivered, state.p99
        last_rate = None
        if len(delivered) >= 2 and delivered[-1][0] > delivered[-2][0]:
            (t0, d0), (t1, d1) = delivered[-2], delivered[-1]
            last_rate = max(0.0, (d1 - d0) / (t1 - t0))
        self.query_one("#chart-delivered", TimeChart).set_series(
            lambda step, n: bin_rate(delivered, step, n), span, last_rate)
        self.query_one("#chart-p99", TimeChart).set_series(
            lambda step, n: bin_max(p99, step, n), span, p99[-1][1] if p99 else None)
        self.query_one(LinksPanel).refresh_state(state)
        self.query_one(FaultTimeline).refresh_state(state)
        self.query_one(EventLog).sync(state)
        cpu = self.query_one(CpuSplit)
        cpu.refresh_state(state)
        self.query_one("#dashboard").set_class(cpu.display, "-cpu")
        if self.replay is not None:
            self.query_one(ReplayBar).refresh_replay(self.replay)
        self.refresh_bindings()

    # ---------------------------------------------------------------------------------------
    # Keys: only those that work now are offered (False hides them from the footer).

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        state = self.state
        if action in _FAULT_ACTIONS:
            if self.mode == "replay" or self.stopping or not state.accepts_faults:
                return False
            if action in ("heal", "heal_all"):
                return bool(state.active_faults() or state.active)
            return True
        if action == "stop":
            return (self.process is not None and self.process.running and not self.stopping
                    and not state.finished)
        if action in _REPLAY_ACTIONS:
            return self.replay is not None and not self.query_one("#event-filter").has_focus
        if action == "logs":
            return bool(list_logs(self.run_dir))
        if action == "report":
            return (self.run_dir / "report.md").exists()
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

    def inject(self, request: FaultRequest, *, confirmed: bool = False) -> None:
        """Send one fault to the run (the dialog, the palette and tests come here): checked as
        the harness will check it, and confirmed first when it is destructive or hits every
        node or a random one."""
        try:
            request = request.checked(self.state.topology())
        except FaultRequestError as exc:
            self._note("error", f"not injected: {request.describe()}: {exc}")
            self.notify(str(exc), title="Fault refused", severity="error")
            return
        why = confirmation(request)
        if why is not None and not confirmed:
            text = request.describe()
            body = Text.assemble((text[0].upper() + text[1:], "bold"), "\n\n",
                                 (why[0].upper() + why[1:] + ".", ""))

            def answered(ok: bool | None) -> None:
                if ok:
                    self._send(request)

            self.app.push_screen(ConfirmScreen("Inject this fault?", body, yes="Inject"),
                                 callback=answered)
            return
        self._send(request)

    @work(group="control")
    async def _send(self, request: FaultRequest) -> None:
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

    def action_stop(self) -> None:
        if self.process is None or not self.process.running:
            return
        body = Text.assemble(
            ("Stop ", ""), (self.state.name, "bold"), (" now?", ""), "\n\n",
            "The harness tears the cluster down and the run ends without a verdict "
            "(it is listed as STOPPED).")

        def answered(ok: bool | None) -> None:
            if ok:
                self._stop()

        self.app.push_screen(ConfirmScreen("Stop the run?", body, yes="Stop"),
                             callback=answered)

    @work(group="stop", exclusive=True)
    async def _stop(self) -> None:
        if self.process is None or not self.process.running:
            return
        self.stopping = True
        self._note("tui", "stopping the run (SIGTERM to the harness)")
        self.notify("stopping the run: the harness tears the cluster down")
        self.refresh_bindings()
        await self.process.stop()
        self.refresh_bindings()

    # Replay transport -----------------------------------------------------------------------

    def action_play_pause(self) -> None:
        replay = self.replay
        if replay is None:
            return
        if replay.at_end and not replay.playing:
            replay.fold_to(0.0)
            self.feed_done = False
        replay.playing = not replay.playing
        self._replayed()

    def action_seek(self, delta_s: float) -> None:
        if self.replay is not None:
            self.replay.seek(delta_s)
            self._replayed()

    def action_seek_to(self, position: float) -> None:
        replay = self.replay
        if replay is not None:
            replay.fold_to(replay.duration if position < 0 else position)
            self._replayed()

    def action_speed(self, step: int) -> None:
        replay = self.replay
        if replay is not None:
            speed = replay.faster() if step > 0 else replay.slower()
            self.notify(f"replay speed {speed:g}x", timeout=1.5)
            self._replayed()

    # Everywhere ----------------------------------------------------------------------------

    def action_logs(self) -> None:
        node = None
        selected = self.query_one(FaultTimeline).selected_fault
        view = self.state.faults.get(selected or "")
        if view is not None:
            node = (view.resolved or view.target).split(",")[0].split("->")[-1]
        self.app.push_screen(LogsScreen(self.run_dir, initial=node or "node-1"))

    def action_report(self) -> None:
        self.app.push_screen(ReportScreen(self.run_dir))

    def action_copy_path(self) -> None:
        path = str(self.run_dir.resolve())
        self.app.copy_to_clipboard(path)
        self.notify(path, title="Run folder copied (terminal clipboard, OSC 52)")

    def action_filter(self) -> None:
        box = self.query_one("#event-filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#event-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        log = self.query_one(EventLog)
        log.rebuild(event.value)
        log.border_title = f"Events · /{event.value}" if event.value.strip() else "Events"

    @on(Input.Submitted, "#event-filter")
    def _filter_kept(self) -> None:
        self.query_one(EventLog).focus()

    def action_back(self) -> None:
        box = self.query_one("#event-filter", Input)
        if box.has_focus or (box.display and box.value):
            box.value = ""
            box.display = False
            self.query_one(EventLog).focus()
            return
        if self.process is not None and self.process.running:
            self.notify("the run goes on; attach to it again from the Runs tab",
                        title="Run continues")
        if self.tail is not None:
            self.tail.stop("left the screen")
        self.app.pop_screen()
