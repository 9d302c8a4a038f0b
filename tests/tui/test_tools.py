"""The phase bar, and the tools around a run: ``/`` filters (events, runs), the log viewer,
report.md, copying the run's path, and reaching every pane from the keyboard at 80x24."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, Log

from tui.app import TurnoutApp
from tui.screens.browser import BrowserScreen
from tui.screens.live import LiveRunScreen
from tui.screens.logs import LogsScreen, list_logs
from tui.screens.report import ReportScreen
from tui.widgets.event_log import EventLog
from tui.widgets.run_bar import RunBar

from .support import FakeHarness, screen_text, unfinished_copy, wait_for

pytestmark = pytest.mark.asyncio

INTERACTIVE = "20250601-140000-tiny-interactive"


def make_app(fixtures: Path, runs_dir: Path, path: Path | None = None) -> TurnoutApp:
    return TurnoutApp(path, experiments_dir=fixtures / "experiments", runs_dir=runs_dir)


async def attached(pilot: Any, app: TurnoutApp) -> LiveRunScreen:
    live = app.screen
    assert isinstance(live, LiveRunScreen)
    await wait_for(pilot, lambda: live.state.nodes, what="a status event")
    await pilot.pause(0.4)
    return live


def bar(live: LiveRunScreen) -> str:
    return str(live.query_one(RunBar).render())


@pytest.mark.parametrize(("until", "shown"), [
    (1.0, "setup 0 s so far · Redis, Toxiproxy, HAProxy and 2 nodes to be ready"),
    (2.0, "waiting for 10 clients to connect and make 20 subscriptions · 0 s so far, "
          "up to 120 s"),
    (7.4, "faults ━━━━━━━━━━━━ 1 of 8 s · 1 scheduled faults and faults sent by hand; then "
          "running faults to heal"),
    (13.27, "waiting for running faults to heal: i2 (partition_redis on node-1->redis, "
            "healing now) · 0 s so far, up to 180 s"),
    (19.0, "drain 1 s so far, up to 180 s · every client's final read of what it is owed"),
])
async def test_the_phase_bar_says_what_the_phase_waits_for_and_how_long(
        fixtures: Path, runs_dir: Path, tmp_path: Path, until: float, shown: str) -> None:
    run = unfinished_copy(runs_dir / INTERACTIVE, tmp_path / "live", until_t=until)
    async with FakeHarness(run / "control.sock"):
        app = make_app(fixtures, runs_dir, run)
        async with app.run_test(size=(200, 40)) as pilot:
            live = app.screen
            assert isinstance(live, LiveRunScreen)
            try:
                await wait_for(pilot, lambda: shown in bar(live), timeout=10, what="the bar")
            except AssertionError:
                raise AssertionError(f"the bar reads {bar(live)!r}") from None


async def test_slash_filters_the_event_log(fixtures: Path, runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir, runs_dir / INTERACTIVE)
    async with app.run_test(size=(120, 36)) as pilot:
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        await wait_for(pilot, lambda: live.feed_done, what="the replay")
        log = live.query_one(EventLog)
        everything = log.shown
        await pilot.press("slash", *"node-9")
        await pilot.pause(0.3)
        assert log.shown == 1
        assert "no node-9 in this cluster" in screen_text(app)
        await pilot.press("enter", "escape")  # keep it, then clear it
        await pilot.pause(0.3)
        assert log.shown == everything
        assert not live.query_one("#event-filter", Input).display


async def test_slash_filters_the_run_list(fixtures: Path, runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir)
    async with app.run_test(size=(120, 36)) as pilot:
        browser = app.screen
        assert isinstance(browser, BrowserScreen)
        # waits rather than fixed pauses: on a loaded machine a keystroke can take a while
        await pilot.press("2", "slash", *"stopped")
        await wait_for(pilot, lambda: browser.filter == "stopped", what="the filter typed")
        assert [r.name for r in browser.runs] == ["20250601-123000-tiny-stopped"]
        await pilot.press("enter", "escape")
        await wait_for(pilot, lambda: not browser.filter, what="the filter cleared")
        assert len(browser.runs) == 4
        await pilot.press("1", "slash", *"kill")
        await wait_for(pilot, lambda: browser.filter == "kill", what="the filter typed")
        assert [e.name for e in browser.experiments] == ["node-kill", "tiny"]


async def test_the_log_viewer_shows_each_nodes_log(fixtures: Path, runs_dir: Path) -> None:
    run = runs_dir / INTERACTIVE
    assert [p.name for p in list_logs(run)] == ["node-1.log", "node-2.log"]
    app = make_app(fixtures, runs_dir, run)
    async with app.run_test(size=(120, 36)) as pilot:
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        await wait_for(pilot, lambda: live.feed_done, what="the replay")
        await pilot.press("l")
        logs = app.screen
        assert isinstance(logs, LogsScreen)
        # the timeline's first row is f1, the kill of node-2: its log comes first
        assert logs.current == run / "logs" / "node-2.log"
        text = logs.query_one(Log)
        assert text.line_count == len((run / "logs" / "node-2.log").read_text().splitlines())
        await pilot.press("up")
        await pilot.pause(0.2)
        assert logs.current == run / "logs" / "node-1.log"
        await pilot.press("slash", *"redis link up")
        await pilot.pause(0.3)
        wanted = [line for line in (run / "logs" / "node-1.log").read_text().splitlines()
                  if "redis link up" in line]
        assert wanted
        assert text.lines == wanted
        # the file grows (a run in progress): new lines are followed
        with open(run / "logs" / "node-1.log", "a") as f:
            f.write("2026-11-30 08:40:00,000 INFO turnout.broker [node-1] redis link up again\n")
        await wait_for(pilot, lambda: text.line_count == len(wanted) + 1, what="the new line")
        await pilot.press("escape", "escape")
        assert app.screen is live


async def test_report_md_and_the_run_path(fixtures: Path, runs_dir: Path) -> None:
    run = runs_dir / INTERACTIVE
    app = make_app(fixtures, runs_dir, run)
    async with app.run_test(size=(120, 36)) as pilot:
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        await wait_for(pilot, lambda: live.feed_done, what="the replay")
        await pilot.press("c")
        assert app.clipboard == str(run.resolve())
        await pilot.press("m")
        assert isinstance(app.screen, ReportScreen)
        await pilot.pause(0.3)
        assert "tiny-interactive: FAIL" in screen_text(app)
        await pilot.press("escape")
        assert app.screen is live


async def test_tab_reaches_every_pane_at_80x24(fixtures: Path, runs_dir: Path,
                                               tmp_path: Path) -> None:
    run = unfinished_copy(runs_dir / INTERACTIVE, tmp_path / "live", until_t=8.0)
    async with FakeHarness(run / "control.sock"):
        app = make_app(fixtures, runs_dir, run)
        async with app.run_test(size=(80, 24)) as pilot:
            live = await attached(pilot, app)
            panes = {"counters", "nodes", "links", "timeline", "log"}
            seen: set[str] = set()
            for _ in range(12):
                await pilot.press("tab")
                await pilot.pause(0.2)
                focused = app.focused
                if focused is not None and focused.id in panes:
                    seen.add(focused.id)
                    # scrolled into view: the pane's top is on the screen
                    region = focused.region
                    assert region.height > 0
                    assert 0 <= region.y < 24, (focused.id, region)
            assert seen == panes
            assert live.query_one("#dashboard").scroll_y > 0
