"""Pilot tests: the browser, replaying recorded runs, help, and the fault keys and palette
against a fake harness control socket (the real cluster is in test_real_cluster.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, OptionList, Select

from tui.app import TurnoutApp
from tui.screens.browser import BrowserScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.fault_dialog import FaultDialog
from tui.screens.help import HelpScreen
from tui.screens.live import LiveRunScreen
from tui.widgets.counters import Counter
from tui.widgets.timeline import FaultTimeline

from .support import FakeHarness, screen_text, unfinished_copy, wait_for

pytestmark = pytest.mark.asyncio

PASS_RUN = "20250601-120000-tiny"
FAIL_RUN = "20250601-121500-tiny-negative-control"
# t of the PASS run's events when f1 and f2 are both active (faults phase)
DURING_FAULTS = 9.5


def make_app(fixtures: Path, runs_dir: Path, path: Path | None = None) -> TurnoutApp:
    return TurnoutApp(path, experiments_dir=fixtures / "experiments", runs_dir=runs_dir)


async def test_browser_shows_each_experiment_with_its_fault_schedule(
        fixtures: Path, runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        browser = app.screen
        assert isinstance(browser, BrowserScreen)
        assert browser.query_one("#experiment-list", OptionList).option_count == 4
        text = screen_text(app)
        assert "baseline" in text
        assert "no scheduled faults" in text
        await pilot.press("down")
        assert browser.selected_experiment is not None
        assert browser.selected_experiment.name == "node-kill"
        text = screen_text(app)
        assert "kill node-2 (restart after 3 s)" in text
        assert "kill a random node (restart after 3 s)" in text
        assert "3 nodes" in text
        assert "300 clients in 2 processes" in text


async def test_runs_tab_lists_verdicts_and_replays_a_recorded_run(
        fixtures: Path, runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        browser = app.screen
        assert isinstance(browser, BrowserScreen)
        text = screen_text(app)
        for verdict in ("STOPPED", "FAIL", "PASS"):
            assert verdict in text
        await pilot.press("down", "down", "down")
        assert browser.selected_run is not None
        assert browser.selected_run.name == PASS_RUN
        assert "delivered" in screen_text(app)
        await pilot.press("o")
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        assert live.mode == "replay"
        await wait_for(pilot, lambda: live.feed_done, what="the replay")
        await pilot.pause(0.3)
        assert live.state.verdict == "pass"
        for name in ("lost", "duplicated", "reordered"):
            counter = live.query_one(f"#counter-{name}", Counter)
            assert counter.has_class("-ok")
            assert not counter.has_class("-bad")
        text = screen_text(app)
        assert "PASS" in text
        assert "kill node-2 (restart after 2 s)" in text  # the fault timeline
        assert "verdict PASS" in text  # the event log
        await pilot.press("escape")
        assert isinstance(app.screen, BrowserScreen)


async def test_a_failing_run_opened_from_the_command_line_shows_red_counters(
        fixtures: Path, runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir, runs_dir / FAIL_RUN)
    async with app.run_test(size=(80, 24)) as pilot:
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        await wait_for(pilot, lambda: live.feed_done, what="the replay")
        await pilot.pause(0.3)
        assert live.state.verdict == "fail"
        assert live.query_one("#counter-lost", Counter).has_class("-bad")
        assert live.query_one("#counter-duplicated", Counter).has_class("-ok")
        # A finished run takes no faults: the keys are not offered.
        await footer_shows(pilot, app, "esc Back")
        assert "Fault" not in footer(app)


async def test_replay_at_1x_speed_plays_in_time(fixtures: Path, runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2", "down", "down", "down", "p")
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        assert live.speed == 1.0
        await pilot.pause(0.5)
        assert not live.feed_done
        assert "▶ playing" in screen_text(app)
        assert "1x" in screen_text(app)


async def test_help_opens_and_closes(fixtures: Path, runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "Live run" in screen_text(app) or "Browser" in screen_text(app)
        await pilot.press("escape")
        assert isinstance(app.screen, BrowserScreen)


def footer(app: TurnoutApp) -> str:
    return screen_text(app).splitlines()[-1]


async def footer_shows(pilot: Pilot[Any], app: TurnoutApp, *keys: str) -> None:
    try:
        await wait_for(pilot, lambda: all(key in footer(app) for key in keys), timeout=10,
                       what=f"{keys} in the footer")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the footer reads {footer(app)!r} on {app.screen!r} "
                             f"focused on {app.focused!r}") from None


async def test_the_footer_offers_the_keys_that_work_now_at_80x24(
        fixtures: Path, runs_dir: Path, tmp_path: Path) -> None:
    run = unfinished_copy(runs_dir / PASS_RUN, tmp_path / "live", until_t=DURING_FAULTS)
    async with FakeHarness(run / "control.sock"):
        app = make_app(fixtures, runs_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await footer_shows(pilot, app, "1 2 3 Tabs", "r Run", "/ Filter",
                               "? Help", "q Quit", "^p")
            assert "Replay" not in footer(app)  # nothing to replay on the Experiments tab
            await pilot.press("2", "down")
            await footer_shows(pilot, app, "o Replay", "p Play", "? Help", "q Quit")
            assert "Attach" not in footer(app)  # a finished run cannot be attached to
            app.open_path(run)
            await pilot.pause()
            live = app.screen
            assert isinstance(live, LiveRunScreen)
            await wait_for(pilot, lambda: live.state.nodes, what="a status event")
            # in the faults phase with two active faults: every fault key works
            await footer_shows(pilot, app, "f Fault", "h Heal", "H Heal all", "esc Back",
                               "? Help", "q Quit")
            assert "Play" not in footer(app)  # not a replay
            # the run moves on to its heal phase: it takes no more faults, the keys go
            with open(run / "events.jsonl", "a") as f:
                f.write(json.dumps({"t": 14.9, "type": "phase", "phase": "heal"}) + "\n")
            await wait_for(pilot, lambda: live.state.phase == "heal", what="the heal phase")
            await pilot.pause(0.4)
            assert "Fault" not in footer(app)
            assert "Heal" not in footer(app)
            await footer_shows(pilot, app, "esc Back", "? Help", "q Quit")


async def test_a_replay_offers_no_fault_keys_and_its_transport(fixtures: Path,
                                                               runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir, runs_dir / PASS_RUN)
    async with app.run_test(size=(80, 24)) as pilot:
        await footer_shows(pilot, app, "space Play/Pause", "m Report", "esc Back")
        assert "Fault" not in footer(app)
        assert "Heal" not in footer(app)
        assert "Stop" not in footer(app)


async def test_fault_dialog_injects_and_heal_key_heals(fixtures: Path, runs_dir: Path,
                                                       tmp_path: Path) -> None:
    run = unfinished_copy(runs_dir / PASS_RUN, tmp_path / "live", until_t=DURING_FAULTS)
    async with FakeHarness(run / "control.sock") as harness:
        app = make_app(fixtures, runs_dir, run)
        async with app.run_test(size=(80, 24)) as pilot:
            live = app.screen
            assert isinstance(live, LiveRunScreen)
            assert live.mode == "attach"
            await wait_for(pilot, lambda: live.state.nodes, what="a status event")
            await pilot.press("f")
            dialog = app.screen
            assert isinstance(dialog, FaultDialog)
            # the targets are the live cluster's
            targets = [value for _, value in dialog.query_one("#target", Select)._options]
            assert "node-1" in targets
            assert "node-2" in targets
            dialog.query_one("#target", Select).value = "node-2"
            await pilot.pause()
            assert "kill node-2 (restart after 2 s)" in screen_text(app)
            await pilot.press("ctrl+s")
            # a kill takes a process down: the TUI asks first, and sends nothing until yes
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                           what="the confirmation")
            assert "SIGKILLs a server process" in screen_text(app)
            assert harness.injected() == []
            await pilot.press("y")
            await wait_for(pilot, harness.injected, what="the inject command")
            assert harness.injected() == [{
                "cmd": "inject", "kind": "kill_node", "target": "node-2",
                "params": {"restart": True, "restart_after_s": 2.0}, "duration_s": None}]
            await wait_for(pilot, lambda: "i1" in live.state.faults, what="i1 in the state")
            assert live.state.faults["i1"].status == "requested"
            await pilot.pause(0.3)
            assert "i1" in live.query_one(FaultTimeline).rows
            # the harness reports the injection in the stream
            event = {"t": 9.6, "type": "fault", "fault_id": "i1", "fault": "kill_node",
                     "kind": "kill_node", "target": "node-2", "resolved": "node-2",
                     "params": {"restart": True, "restart_after_s": 2.0},
                     "source": "interactive", "hold_s": 2.0}
            with open(run / "events.jsonl", "a") as f:
                f.write(json.dumps(event) + "\n")
            await wait_for(pilot, lambda: live.state.faults["i1"].status == "active",
                           what="i1 active")
            timeline = live.query_one(FaultTimeline)
            assert timeline.selected_fault == "f1"  # the first row: h heals what is selected
            timeline.move_cursor(row=timeline.get_row_index("i1"))
            await pilot.press("h")
            await wait_for(pilot, lambda: any(c["cmd"] == "heal" for c in harness.commands),
                           what="the heal command")
            assert harness.commands[-1] == {"cmd": "heal", "fault_id": "i1"}
            await pilot.press("H")
            await wait_for(pilot, lambda: harness.commands[-1]["cmd"] == "heal_all",
                           what="heal_all")


async def test_dialog_refuses_what_the_schema_refuses(fixtures: Path, runs_dir: Path,
                                                      tmp_path: Path) -> None:
    run = unfinished_copy(runs_dir / PASS_RUN, tmp_path / "live", until_t=DURING_FAULTS)
    async with FakeHarness(run / "control.sock") as harness:
        app = make_app(fixtures, runs_dir, run)
        async with app.run_test(size=(100, 40)) as pilot:
            live = app.screen
            assert isinstance(live, LiveRunScreen)
            await wait_for(pilot, lambda: live.state.nodes, what="a status event")
            await pilot.press("f")
            dialog = app.screen
            assert isinstance(dialog, FaultDialog)
            dialog.query_one("#kind", Select).value = "latency"
            await wait_for(pilot, lambda: dialog.query("#param-latency_ms"),
                           what="the latency parameters")
            dialog.query_one("#param-latency_ms", Input).value = "-5"
            await wait_for(pilot, lambda: "latency_ms: expected a number of milliseconds"
                           in screen_text(app), what="the error under the form")
            await pilot.press("ctrl+s")
            assert isinstance(app.screen, FaultDialog)
            await pilot.press("escape")
            assert isinstance(app.screen, LiveRunScreen)
            assert harness.injected() == []


async def test_command_palette_injects_a_typed_fault(fixtures: Path, runs_dir: Path,
                                                     tmp_path: Path) -> None:
    run = unfinished_copy(runs_dir / PASS_RUN, tmp_path / "live", until_t=DURING_FAULTS)
    async with FakeHarness(run / "control.sock") as harness:
        app = make_app(fixtures, runs_dir, run)
        async with app.run_test(size=(100, 30)) as pilot:
            live = app.screen
            assert isinstance(live, LiveRunScreen)
            await wait_for(pilot, lambda: live.state.nodes, what="a status event")
            await pilot.press("ctrl+p")
            await pilot.press(*"leak 50 MB/s on node-1")
            await pilot.pause(0.5)
            assert "Inject: leak 50 MB/s on node-1 for 20 s" in screen_text(app)
            await pilot.press("enter")
            await wait_for(pilot, harness.injected, what="the inject command")
            [command] = harness.injected()
            assert command["kind"] == "leak_memory"
            assert command["target"] == "node-1"
            assert command["params"] == {"mb_per_s": 50.0}
            assert command["duration_s"] == 20.0


def palette_hits(app: TurnoutApp) -> list[str]:
    """The command palette's hits, top first."""
    from textual.command import CommandList

    hits = app.screen.query_one(CommandList)
    return [str(hits.get_option_at_index(i).prompt).splitlines()[0]
            for i in range(hits.option_count)]


async def typed(pilot: Pilot[Any], app: TurnoutApp, phrase: str) -> list[str]:
    await pilot.press("ctrl+p")
    await pilot.press(*phrase)
    await wait_for(pilot, lambda: palette_hits(app), what=f"hits for {phrase!r}")
    await pilot.pause(0.4)
    return palette_hits(app)


@pytest.mark.parametrize(("phrase", "first"), [
    ("kill node-9", "Refused: target: no node-9 in this cluster; its nodes are node-1, "
                    "node-2 (or random, all)"),
    ("add 300ms latency to node-2 for 5s", "Refused: target: expected a target"),
    ("-5 ms latency on clients", "Refused: latency_ms: expected a number of milliseconds >= 0"),
])
async def test_the_palette_refuses_a_phrase_and_sends_nothing(
        fixtures: Path, runs_dir: Path, tmp_path: Path, phrase: str, first: str) -> None:
    run = unfinished_copy(runs_dir / PASS_RUN, tmp_path / "live", until_t=DURING_FAULTS)
    async with FakeHarness(run / "control.sock") as harness:
        app = make_app(fixtures, runs_dir, run)
        async with app.run_test(size=(120, 30)) as pilot:
            live = app.screen
            assert isinstance(live, LiveRunScreen)
            await wait_for(pilot, lambda: live.state.nodes, what="a status event")
            hits = await typed(pilot, app, phrase)
            assert hits[0].startswith(first), hits[:3]
            if "node-2" in phrase:  # a link fault on a node: its links are offered next
                assert hits[1] == "Did you mean: add 300 ms latency to lb[0]->node-2 for 5 s"
                assert hits[2] == "Did you mean: add 300 ms latency to node-2->redis for 5 s"
            await pilot.press("enter")
            await pilot.pause(0.5)
            assert harness.injected() == []
            assert isinstance(app.screen, LiveRunScreen)


async def test_the_palette_ranks_the_literal_reading_first_and_confirms_a_kill(
        fixtures: Path, runs_dir: Path, tmp_path: Path) -> None:
    run = unfinished_copy(runs_dir / PASS_RUN, tmp_path / "live", until_t=DURING_FAULTS)
    async with FakeHarness(run / "control.sock") as harness:
        app = make_app(fixtures, runs_dir, run)
        async with app.run_test(size=(120, 30)) as pilot:
            live = app.screen
            assert isinstance(live, LiveRunScreen)
            await wait_for(pilot, lambda: live.state.nodes, what="a status event")
            hits = await typed(pilot, app, "kill node 2")
            assert hits[0] == "Inject: kill node-2 (restart after 2 s)"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                           what="the confirmation")
            await pilot.press("n")
            await pilot.pause(0.3)
            assert harness.injected() == []
            hits = await typed(pilot, app, "kill node 2")
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                           what="the confirmation")
            await pilot.press("y")
            await wait_for(pilot, harness.injected, what="the inject command")
            [command] = harness.injected()
            assert (command["kind"], command["target"]) == ("kill_node", "node-2")


async def test_a_fault_on_every_node_asks_first(fixtures: Path, runs_dir: Path,
                                               tmp_path: Path) -> None:
    run = unfinished_copy(runs_dir / PASS_RUN, tmp_path / "live", until_t=DURING_FAULTS)
    async with FakeHarness(run / "control.sock") as harness:
        app = make_app(fixtures, runs_dir, run)
        async with app.run_test(size=(120, 30)) as pilot:
            live = app.screen
            assert isinstance(live, LiveRunScreen)
            await wait_for(pilot, lambda: live.state.nodes, what="a status event")
            hits = await typed(pilot, app, "pause every node for 2 s")
            assert hits[0] == "Inject: pause every node for 2 s"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                           what="the confirmation")
            assert "every node at once" in screen_text(app)
            await pilot.press("escape")
            await pilot.pause(0.3)
            assert harness.injected() == []


async def test_a_harness_that_fails_to_start_is_reported(fixtures: Path, runs_dir: Path,
                                                        tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('description = "x"\n[cluster]\nnodes = "three"\n')
    run = tmp_path / "runs" / "20250601-140000-bad"
    app = make_app(fixtures, runs_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        live = LiveRunScreen(run, "run", experiment_file=bad)
        await app.push_screen(live)
        await wait_for(pilot, lambda: live.feed_done, timeout=60, what="the feed to end")
        assert live.process is not None
        assert live.process.returncode == 2
        messages = [line.text for line in live.state.log]
        assert any("harness exited with code 2" in m and "turnout-run.log" in m
                   for m in messages)
        assert "cluster.nodes" in (run / "logs" / "turnout-run.log").read_text()
