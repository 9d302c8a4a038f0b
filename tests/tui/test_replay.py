"""Faithful replay and attach: every event of events.jsonl reaches the state (the repaint is
coalesced, the data never), the charts are those of the recording, durations come from the
events, and the replay can be paused, sought and sped up."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tui.app import TurnoutApp
from tui.feed import Replay, read_events
from tui.model import RunState
from tui.screens.live import LiveRunScreen
from tui.series import seconds_per_column
from tui.widgets.charts import TimeChart
from tui.widgets.counters import Counter
from tui.widgets.event_log import EventLog
from tui.widgets.timeline import FaultTimeline
from tui.widgets.verdict import VerdictBanner

from .support import FakeHarness, screen_text, wait_for

INTERACTIVE = "20250601-140000-tiny-interactive"
STOPPED = "20250601-123000-tiny-stopped"


def make_app(fixtures: Path, runs_dir: Path, path: Path | None = None,
             speed: float | None = None) -> TurnoutApp:
    return TurnoutApp(path, experiments_dir=fixtures / "experiments", runs_dir=runs_dir,
                      replay_speed=speed)


def per_second_rates(events: list[dict[str, Any]], step: int, columns: int
                     ) -> list[float | None]:
    """The delivered rate per chart column, straight from the recording's status events."""
    statuses = [(e["t"], e["fleet"]["delivered"]) for e in events if e["type"] == "status"]
    increase: dict[int, float] = {}
    seconds: dict[int, float] = {}
    for (t0, d0), (t1, d1) in itertools.pairwise(statuses):
        column = math.floor(t1 / step)
        increase[column] = increase.get(column, 0.0) + (d1 - d0)
        seconds[column] = seconds.get(column, 0.0) + (t1 - t0)
    return [increase[c] / seconds[c] if c in seconds else None for c in range(columns)]


def per_second_p99(events: list[dict[str, Any]], step: int, columns: int
                   ) -> list[float | None]:
    out: list[float | None] = [None] * columns
    for e in events:
        if e["type"] != "status" or e["fleet"].get("latency_p99_ms") is None:
            continue
        column = math.floor(e["t"] / step)
        if column < columns:
            value = e["fleet"]["latency_p99_ms"]
            out[column] = value if out[column] is None else max(out[column], value)
    return out


async def replayed(app: TurnoutApp, pilot: Any) -> LiveRunScreen:
    live = app.screen
    assert isinstance(live, LiveRunScreen)
    await wait_for(pilot, lambda: live.feed_done, what="the replay")
    await pilot.pause(0.4)
    return live


@pytest.mark.parametrize("run", [INTERACTIVE, "20250601-121500-tiny-negative-control"])
@pytest.mark.asyncio
async def test_a_replay_keeps_every_event_and_charts_what_was_recorded(
        fixtures: Path, runs_dir: Path, run: str) -> None:
    events = read_events(runs_dir / run / "events.jsonl")
    statuses = [e for e in events if e["type"] == "status"]
    app = make_app(fixtures, runs_dir, runs_dir / run)
    async with app.run_test(size=(120, 36)) as pilot:
        live = await replayed(app, pilot)
        state = live.state
        assert state.events == len(events)
        assert state.status_events == len(statuses)
        assert state.delivered == [(e["t"], float(e["fleet"]["delivered"])) for e in statuses]
        last = statuses[-1]
        assert state.fleet == last["fleet"]
        assert state.publisher == last["publisher"]
        totals = events[-1]["report"]["totals"]
        assert state.counters() == {k: totals[k] for k in ("lost", "duplicated", "reordered")}
        for name in ("lost", "duplicated", "reordered"):
            shown = live.query_one(f"#counter-{name}", Counter).render()
            assert str(totals[name]) in str(shown)
        # every other event is a line of the event log
        assert live.query_one(EventLog).shown == len(events) - len(statuses)
        delivered = live.query_one("#chart-delivered", TimeChart)
        step, columns = delivered.seconds_per_column, len(delivered.columns)
        assert step == 1  # a 24 s run fits a chart of this width at one second a column
        expected = per_second_rates(events, step, columns)
        assert delivered.columns == [pytest.approx(v) if v is not None else None
                                     for v in expected]
        assert sum(v is not None for v in delivered.columns) >= len(statuses) - 3
        p99 = live.query_one("#chart-p99", TimeChart)
        assert p99.columns == per_second_p99(events, p99.seconds_per_column, len(p99.columns))


@pytest.mark.asyncio
async def test_attach_keeps_every_status_of_a_fast_growing_stream(
        fixtures: Path, runs_dir: Path, tmp_path: Path) -> None:
    """2,000 status events at once: a feed that let a newer status replace a queued one
    charted a fraction of them; folding each as it is read keeps all."""
    recorded = read_events(runs_dir / INTERACTIVE / "events.jsonl")
    head = [e for e in recorded if e["type"] in ("run", "phase")][:3]
    status = next(e for e in recorded if e["type"] == "status")
    lines = [json.dumps(e) for e in head]
    for i in range(2000):
        fleet = {**status["fleet"], "delivered": 10 * i}
        lines.append(json.dumps({**status, "t": 3.0 + 0.5 * i, "fleet": fleet}))
    run = tmp_path / "20250601-150000-big"
    run.mkdir()
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    async with FakeHarness(run / "control.sock"):
        app = make_app(fixtures, runs_dir, run)
        async with app.run_test(size=(120, 36)) as pilot:
            live = app.screen
            assert isinstance(live, LiveRunScreen)
            assert live.mode == "attach"
            await wait_for(pilot, lambda: live.state.status_events == 2000, timeout=20,
                           what="every status event")
            assert [d for _, d in live.state.delivered] == [10.0 * i for i in range(2000)]
            await pilot.pause(0.4)
            chart = live.query_one("#chart-delivered", TimeChart)
            # 1,002.5 s of run: the smallest fixed step that fits the chart's width, and
            # 20 msg/s in every column that has a sample (10 every 0.5 s)
            step = chart.seconds_per_column
            assert step == seconds_per_column(1002.5, len(chart.columns))
            assert step * len(chart.columns) >= 1002.5 > (step / 2) * len(chart.columns)
            full = [v for v in chart.columns if v is not None]
            assert full == [pytest.approx(20.0)] * len(full)
            assert len(full) == math.floor(1002.5 / step) + 1


def test_seeking_back_folds_the_same_state_as_a_fresh_fold(fixtures: Path) -> None:
    events = read_events(fixtures / "recorded-runs" / INTERACTIVE / "events.jsonl")
    replay = Replay(events)
    replay.to_end()
    assert replay.state.outcome == "fail"
    replay.fold_to(10.0)
    fresh = RunState()
    for event in events:
        if event["t"] <= 10.0:
            fresh.apply(event)
    assert replay.state.delivered == fresh.delivered
    assert replay.state.log == fresh.log
    assert {k: v.status for k, v in replay.state.faults.items()} == {
        k: v.status for k, v in fresh.faults.items()}
    assert replay.state.outcome is None
    assert replay.generation == 1


def test_playing_skips_long_quiet_stretches() -> None:
    events = [{"t": 0.0, "type": "run"}, {"t": 60.0, "type": "phase", "phase": "steady"}]
    replay = Replay(events, max_gap_s=2.0)
    replay.fold_to(0.0)
    replay.advance(0.1)
    assert replay.position == pytest.approx(58.0)
    replay.advance(2.0)
    assert replay.at_end


@pytest.mark.asyncio
async def test_replay_controls_pause_seek_and_speed(fixtures: Path, runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir, runs_dir / INTERACTIVE, speed=1.0)
    async with app.run_test(size=(120, 36)) as pilot:
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        await wait_for(pilot, lambda: live.replay is not None, what="the recording")
        replay = live.replay
        assert replay is not None
        assert replay.playing
        assert "playing" in screen_text(app)
        await pilot.press("space")
        assert not replay.playing
        assert "paused" in screen_text(app)
        await pilot.press("home", "right", "right")
        assert replay.position == pytest.approx(10)
        await pilot.press("left")
        assert replay.position == pytest.approx(5)
        await pilot.press("shift+left")
        assert replay.position == 0
        await pilot.press("shift+right")  # 30 s on: past the end of a 23 s recording
        assert replay.at_end
        await pilot.press("home", "end")
        assert replay.at_end
        await pilot.pause(0.3)
        assert live.query_one(VerdictBanner).display
        await pilot.press("home")
        assert replay.position == 0
        await pilot.pause(0.3)
        assert live.state.outcome is None
        assert not live.query_one(VerdictBanner).display
        assert live.query_one(EventLog).shown <= 2
        await pilot.press("plus", "plus")
        assert replay.speed == 5.0
        await pilot.press("minus")
        assert replay.speed == 2.0
        await pilot.press("space")
        assert replay.playing
        await wait_for(pilot, lambda: replay.position > 3, what="the head to move")


@pytest.mark.asyncio
async def test_a_verdict_failed_on_latency_is_explained_on_the_live_screen(
        fixtures: Path, runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir, runs_dir / INTERACTIVE)
    async with app.run_test(size=(120, 36)) as pilot:
        live = await replayed(app, pilot)
        # lost, duplicated, reordered all green ...
        for name in ("lost", "duplicated", "reordered"):
            assert live.query_one(f"#counter-{name}", Counter).has_class("-ok")
        # ... and the banner says why the run failed, with every invariant against its limit
        text = screen_text(app)
        assert "FAIL" in text
        assert "1 violation (exit 1): p99 latency = 3496.48 ms > 50 ms" in text
        assert "✗ p99_ms 3,496 <= 50" in text
        assert "✓ lost 0 <= 0" in text
        assert "✓ min_delivered 340 >= 10" in text
        timeline = live.query_one(FaultTimeline)
        assert str(timeline.get_cell("i1", "fault")) == \
            "add 300 ms latency to clients->lb[0] for 4 s"
        assert str(timeline.get_cell("i2", "fault")) == \
            "partition node-1 from Redis until healed"


@pytest.mark.asyncio
async def test_a_stopped_run_replays_as_stopped(fixtures: Path, runs_dir: Path) -> None:
    app = make_app(fixtures, runs_dir, runs_dir / STOPPED)
    async with app.run_test(size=(120, 36)) as pilot:
        live = await replayed(app, pilot)
        assert live.state.outcome == "stopped"
        text = screen_text(app)
        assert "STOPPED" in text
        assert "no verdict: the run stopped at 14.1s during faults" in text
        assert "Fault" not in text.splitlines()[-1]  # no fault keys in the footer


@pytest.mark.asyncio
async def test_a_folder_without_events_opens_without_a_crash(fixtures: Path, runs_dir: Path,
                                                             tmp_path: Path) -> None:
    run = tmp_path / "20250601-120000-tiny"
    run.mkdir()
    (run / "report.json").write_text((runs_dir / "20250601-120000-tiny" / "report.json")
                                     .read_text())
    app = make_app(fixtures, runs_dir, run)
    async with app.run_test(size=(100, 30)) as pilot:
        live = await replayed(app, pilot)
        assert live.replay is not None
        assert [e["type"] for e in live.replay.events] == ["verdict"]
        assert live.state.verdict == "pass"
        assert "PASS" in screen_text(app)
        assert any("no events to replay" in line.text for line in live.state.log)
