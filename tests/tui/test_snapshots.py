"""Snapshot tests (pytest-textual-snapshot): the browser, a live (attached) run, a replay
paused mid-run, the verdict and the fault dialog, each at 80x24, 120x36 and 200x50; the runs
tab, help and the log viewer at 80x24; the capacity tab, a capacity search's trials and a
trial's verdict with its CPU split at each size (``fixtures/recorded-capacity``). Every
screen is driven from recorded runs (``fixtures/recorded-runs``, ``fixtures/recorded-capacity``)
whose times are the events' own, so nothing depends on the clock.

After a deliberate change of the UI: ``pytest tests/tui/test_snapshots.py --snapshot-update``,
then look at the SVGs in ``tests/tui/__snapshots__/``."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from tui.app import TurnoutApp
from tui.feed import read_events
from tui.screens.capacity import CapacityScreen
from tui.screens.fault_dialog import FaultDialog
from tui.screens.live import LiveRunScreen
from tui.widgets.event_log import EventLog
from tui.widgets.nodes import NodeRow

from .conftest import FIXTURES
from .support import unfinished_copy, wait_for

PASS_RUN = "20250601-120000-tiny"
INTERACTIVE = "20250601-140000-tiny-interactive"
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 36), id="120x36"),
         pytest.param((200, 50), id="200x50")]
# The attached run is cut in its faults phase, while i1 (latency) and i2 (partition) hold.
LIVE_AT = 8.0
REPLAY_AT = 10.0


def make_app(fixtures: Path, runs_dir: Path, path: Path | None = None,
             speed: float | None = None) -> TurnoutApp:
    return TurnoutApp(path, experiments_dir=fixtures / "experiments", runs_dir=runs_dir,
                      replay_speed=speed)


@pytest.fixture
def attached_run(runs_dir: Path, tmp_path: Path) -> Iterator[Path]:
    """A run in progress: the recording up to LIVE_AT, and a control socket that listens
    (no command is sent in a snapshot, so nothing has to answer)."""
    run = unfinished_copy(runs_dir / INTERACTIVE, tmp_path / INTERACTIVE, until_t=LIVE_AT)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(run / "control.sock"))
        sock.listen(8)
        yield run


async def settled(pilot: Pilot[Any]) -> None:
    """The live screen has read what there is to read and laid its rows out."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, LiveRunScreen), what="the screen")
    live = app.screen
    assert isinstance(live, LiveRunScreen)
    if live.mode == "replay":
        await wait_for(pilot, lambda: live.replay is not None, what="the recording")
    else:
        assert live.mode == "attach"
        recorded = len(read_events(live.run_dir / "events.jsonl"))
        await wait_for(pilot, lambda: live.state.events == recorded, what="the events")

    def laid_out() -> bool:
        rows = list(live.query(NodeRow))
        return bool(rows) and all(row.region.height for row in rows)

    await wait_for(pilot, laid_out, what="the node rows laid out")
    log = live.query_one(EventLog)
    await wait_for(pilot, lambda: log.written == live.state.log_total, what="the event log")
    await pilot.pause(0.4)


class TestBrowser:
    @pytest.mark.parametrize("size", SIZES)
    def test_experiments(self, snap_compare: Any, fixtures: Path, runs_dir: Path,
                         size: tuple[int, int]) -> None:
        assert snap_compare(make_app(fixtures, runs_dir), press=["down"], terminal_size=size)

    def test_runs_80x24(self, snap_compare: Any, fixtures: Path, runs_dir: Path) -> None:
        assert snap_compare(make_app(fixtures, runs_dir), press=["2"], terminal_size=(80, 24))


class TestLiveRun:
    @pytest.mark.parametrize("size", SIZES)
    def test_live(self, snap_compare: Any, fixtures: Path, runs_dir: Path, attached_run: Path,
                  size: tuple[int, int]) -> None:
        app = make_app(fixtures, runs_dir, attached_run)
        assert snap_compare(app, terminal_size=size, run_before=settled)

    @pytest.mark.parametrize("size", SIZES)
    def test_replay_paused(self, snap_compare: Any, fixtures: Path, runs_dir: Path,
                           size: tuple[int, int]) -> None:
        async def paused(pilot: Pilot[Any]) -> None:
            await settled(pilot)
            live = pilot.app.screen
            assert isinstance(live, LiveRunScreen)
            assert live.replay is not None
            await pilot.press("space")
            live.replay.fold_to(REPLAY_AT)
            live._replayed()
            await pilot.pause(0.4)

        app = make_app(fixtures, runs_dir, runs_dir / INTERACTIVE, speed=1.0)
        assert snap_compare(app, terminal_size=size, run_before=paused)

    @pytest.mark.parametrize("size", SIZES)
    def test_verdict(self, snap_compare: Any, fixtures: Path, runs_dir: Path,
                     size: tuple[int, int]) -> None:
        """A run that failed on p99 alone: the banner says so, with every invariant."""
        app = make_app(fixtures, runs_dir, runs_dir / INTERACTIVE)
        assert snap_compare(app, terminal_size=size, run_before=settled)

    def test_passed_run_80x24(self, snap_compare: Any, fixtures: Path, runs_dir: Path) -> None:
        app = make_app(fixtures, runs_dir, runs_dir / PASS_RUN)
        assert snap_compare(app, terminal_size=(80, 24), run_before=settled)


class TestDialogs:
    @pytest.mark.parametrize("size", SIZES)
    def test_fault_dialog(self, snap_compare: Any, fixtures: Path, runs_dir: Path,
                          attached_run: Path, size: tuple[int, int]) -> None:
        async def open_dialog(pilot: Pilot[Any]) -> None:
            await settled(pilot)
            live = pilot.app.screen
            assert isinstance(live, LiveRunScreen)
            live.action_fault("latency")
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, FaultDialog)
                           and pilot.app.screen.query("#param-latency_ms"),
                           what="the dialog's form")
            await pilot.pause(0.3)

        app = make_app(fixtures, runs_dir, attached_run)
        assert snap_compare(app, terminal_size=size, run_before=open_dialog)

    def test_help_80x24(self, snap_compare: Any, fixtures: Path, runs_dir: Path) -> None:
        assert snap_compare(make_app(fixtures, runs_dir), press=["question_mark"],
                            terminal_size=(80, 24))

    def test_logs_80x24(self, snap_compare: Any, fixtures: Path, runs_dir: Path) -> None:
        async def logs(pilot: Pilot[Any]) -> None:
            await settled(pilot)
            await pilot.press("l")
            await pilot.pause(0.4)

        app = make_app(fixtures, runs_dir, runs_dir / INTERACTIVE)
        assert snap_compare(app, terminal_size=(80, 24), run_before=logs)


SEARCH = "20250601-150000-baseline-capacity"


@pytest.fixture
def capacity_runs(tmp_path: Path) -> Path:
    target = tmp_path / "capacity-runs"
    shutil.copytree(FIXTURES / "recorded-capacity", target)
    return target


class TestCapacity:
    @pytest.mark.parametrize("size", SIZES)
    def test_capacity_tab(self, snap_compare: Any, fixtures: Path, capacity_runs: Path,
                          size: tuple[int, int]) -> None:
        assert snap_compare(make_app(fixtures, capacity_runs), press=["3"], terminal_size=size)

    @pytest.mark.parametrize("size", SIZES)
    def test_trials(self, snap_compare: Any, fixtures: Path, capacity_runs: Path,
                    size: tuple[int, int]) -> None:
        async def trials(pilot: Pilot[Any]) -> None:
            await pilot.press("3")
            await wait_for(pilot, lambda: pilot.app.focused is not None
                           and pilot.app.focused.id == "capacity-list", what="the search list")
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, CapacityScreen),
                           what="the capacity screen")
            await pilot.press("down")  # the first trial that failed
            await pilot.pause(0.3)

        assert snap_compare(make_app(fixtures, capacity_runs), terminal_size=size,
                            run_before=trials)

    @pytest.mark.parametrize("size", SIZES)
    def test_cpu_split(self, snap_compare: Any, fixtures: Path, capacity_runs: Path,
                       size: tuple[int, int]) -> None:
        """A trial's verdict (failed on p99) with where its CPU went, focused (scrolled into
        view where the dashboard does not fit)."""
        async def cpu_pane(pilot: Pilot[Any]) -> None:
            await settled(pilot)
            pane = pilot.app.screen.query_one("#cpu")
            pane.focus()
            await pilot.pause(0.4)

        app = make_app(fixtures, capacity_runs, capacity_runs / SEARCH / "trials" / "300")
        assert snap_compare(app, terminal_size=size, run_before=cpu_pane)
