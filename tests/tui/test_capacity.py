"""The capacity view and the CPU split, from a capacity search recorded with ``turnout capacity``
(fixtures/recorded-capacity: capacity.json, capacity.md and each trial's run folder; each
trial's report.json carries the run's CPU ledger)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.widgets import DataTable

from tui.app import TurnoutApp
from tui.capacity import list_capacity, read_capacity
from tui.catalog import read_run
from tui.screens.browser import BrowserScreen
from tui.screens.capacity import CapacityScreen
from tui.screens.live import LiveRunScreen
from tui.screens.report import ReportScreen
from tui.widgets.capacity_detail import bisection_strip
from tui.widgets.cpu_split import CpuSplit, render_cpu_split
from tui.widgets.run_detail import render_run

from .conftest import FIXTURES
from .support import screen_text, unfinished_copy, wait_for

SEARCH = "20250601-150000-baseline-capacity"


@pytest.fixture
def capacity_runs(tmp_path: Path) -> Path:
    """runs/ holding the recorded capacity search."""
    target = tmp_path / "runs"
    shutil.copytree(FIXTURES / "recorded-capacity", target)
    return target


def recorded(runs: Path) -> dict[str, Any]:
    doc = json.loads((runs / SEARCH / "capacity.json").read_text())
    assert isinstance(doc, dict)
    return doc


def make_app(runs: Path, path: Path | None = None) -> TurnoutApp:
    return TurnoutApp(path, experiments_dir=FIXTURES / "experiments", runs_dir=runs)


def plain(renderable: Any, width: int = 120) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


# --------------------------------------------------------------------------------------------
# Reading a search.


def test_a_search_reads_as_capacity_json_says(capacity_runs: Path) -> None:
    doc = recorded(capacity_runs)
    [entry] = list_capacity(capacity_runs)
    assert entry.answer == doc["answer"]
    assert entry.smallest_failing == doc["smallest_failing"]
    assert entry.p99_ms == doc["p99_ms"]
    assert entry.status == ("done" if doc["done"] else "stopped")
    assert [t.viewers for t in entry.trials] == sorted(t["viewers"] for t in doc["trials"])
    for trial, raw in zip(entry.trials, sorted(doc["trials"], key=lambda t: t["viewers"]),
                          strict=True):
        assert trial.result == ("holds" if raw["holds"] else "fails")
        assert trial.lost == raw["lost"]
        assert trial.run_dir == capacity_runs / SEARCH / "trials" / str(raw["viewers"])
        assert (trial.run_dir / "events.jsonl").exists()


def test_a_trial_running_now_is_listed_as_running() -> None:
    # a short path: a control socket's path must fit in 108 bytes
    with tempfile.TemporaryDirectory(prefix="cap", dir="/tmp") as short:
        search = Path(short) / "s"
        shutil.copytree(FIXTURES / "recorded-capacity" / SEARCH, search)
        first = read_capacity(search).trials[0]
        # a trial capacity.json does not list yet, whose run answers on its control socket
        running = unfinished_copy(first.run_dir, search / "trials" / "999", until_t=5.0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(running / "control.sock"))
            sock.listen(1)
            entry = read_capacity(search)
            assert entry.running is not None
            assert entry.running.viewers == 999
            assert entry.status == "searching"
        # its run gone without a verdict: stopped, not running
        entry = read_capacity(search)
        assert entry.running is None
        assert {t.viewers: t.result for t in entry.trials}[999] == "stopped"
        assert entry.status == "done"


def test_a_folder_without_capacity_json_says_so(tmp_path: Path) -> None:
    (tmp_path / "runs" / "x-capacity" / "trials").mkdir(parents=True)
    [entry] = list_capacity(tmp_path / "runs")
    assert entry.status == "error"
    assert entry.error is not None
    assert "capacity.json" in entry.error


def test_the_bisection_strip_marks_every_trial(capacity_runs: Path) -> None:
    entry = read_capacity(capacity_runs / SEARCH)
    strip = bisection_strip(entry, width=60).plain
    held = sum(t.result == "holds" for t in entry.trials)
    failed = sum(t.result == "fails" for t in entry.trials)
    assert strip.count("✓") == held
    assert strip.count("✗") == failed
    assert strip.startswith("0 ")
    assert strip.endswith(f"{max(t.viewers for t in entry.trials):,}")


# --------------------------------------------------------------------------------------------
# The CPU split.


def test_the_cpu_split_shows_every_component_of_the_ledger(capacity_runs: Path) -> None:
    trial = read_capacity(capacity_runs / SEARCH).trials[0]
    cpu = json.loads((trial.run_dir / "report.json").read_text())["cpu"]
    text = plain(render_cpu_split(cpu))
    lines = text.splitlines()
    for name, row in cpu["components"].items():
        [line] = [line for line in lines if line.startswith(name.split(" (")[0])]
        assert f"{row['cpu_s']:.2f}" in line or f"{row['cpu_s']:,.1f}" in line
        if not name.startswith("outside"):
            assert f"{row['share_pct']:.1f}%" in line
            if row["processes"] > 1:
                assert f"x{row['processes']}" in line
    assert f"{cpu['deliveries_per_s']:,.0f} deliveries/s" in text
    assert f"run {cpu['run_cores']:.2f} of {cpu['cores']} cores" in text
    # the run's detail in the Runs tab carries it too
    assert "where the CPU went" in plain(render_run(read_run(trial.run_dir)))


def test_a_run_without_a_ledger_shows_no_cpu_split() -> None:
    assert render_cpu_split(None) is None
    assert render_cpu_split({}) is None
    run = read_run(FIXTURES / "recorded-runs" / "20250601-120000-tiny")
    assert "where the CPU went" not in plain(render_run(run))


# --------------------------------------------------------------------------------------------
# On screen.

@pytest.mark.asyncio
async def test_capacity_tab_lists_the_search_and_opens_its_trials(capacity_runs: Path) -> None:
    doc = recorded(capacity_runs)
    app = make_app(capacity_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        browser = app.screen
        assert isinstance(browser, BrowserScreen)
        await pilot.press("3")
        await pilot.pause(0.2)
        assert browser.tab == "capacity"
        assert browser.selected_search is not None
        text = screen_text(app)
        assert "baseline" in text
        if doc["answer"] is not None:
            assert f"{doc['answer']:,} viewers held" in text
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CapacityScreen),
                       what="the capacity screen")
        screen = app.screen
        assert isinstance(screen, CapacityScreen)
        table = screen.query_one("#trial-list", DataTable)
        assert table.row_count == len(doc["trials"])
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "Trial run" in text
        # the highlighted trial's run, with where its CPU went
        assert "where the CPU went" in text
        # capacity.md
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen), what="capacity.md")
        assert "Capacity of" in screen_text(app)
        await pilot.press("escape")
        # enter replays the highlighted trial's run folder
        trial = screen.selected
        assert trial is not None
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, LiveRunScreen), what="replay")
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        assert live.mode == "replay"
        assert live.run_dir == trial.run_dir
        await wait_for(pilot, lambda: live.replay is not None and live.state.finished,
                       what="the recording read")
        await pilot.pause(0.4)
        cpu = live.query_one(CpuSplit)
        assert cpu.display
        assert "Where the CPU went" in screen_text(app)


@pytest.mark.asyncio
async def test_the_run_screen_shows_no_cpu_pane_without_a_ledger(fixtures: Path,
                                                                 runs_dir: Path) -> None:
    app = TurnoutApp(runs_dir / "20250601-120000-tiny", experiments_dir=fixtures / "experiments",
                     runs_dir=runs_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        await wait_for(pilot, lambda: live.replay is not None and live.state.finished,
                       what="the recording read")
        await pilot.pause(0.3)
        assert not live.query_one(CpuSplit).display


@pytest.mark.asyncio
async def test_tab_reaches_the_cpu_pane_at_80x24(capacity_runs: Path) -> None:
    trial = read_capacity(capacity_runs / SEARCH).trials[0]
    app = make_app(capacity_runs, trial.run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        await wait_for(pilot, lambda: live.replay is not None and live.state.finished,
                       what="the recording read")
        await pilot.pause(0.3)
        for _ in range(12):
            await pilot.press("tab")
            await pilot.pause(0.1)
            if app.focused is not None and app.focused.id == "cpu":
                break
        focused = app.focused
        assert focused is not None
        assert focused.id == "cpu"
        await pilot.pause(0.3)
        assert focused.region.height > 0
        assert 0 <= focused.region.y < 24
        assert "nodes x3" in screen_text(app)


# --------------------------------------------------------------------------------------------
# The live CPU split: status events carry the CPU seconds so far; the pane shows the last 5 s.


def status(t: float, delivered: int, cpu: dict[str, float]) -> dict[str, Any]:
    return {"t": t, "type": "status", "nodes": {}, "links": {},
            "fleet": {"delivered": delivered}, "publisher": {},
            "faults": [], "cpu": {"cores": 2, "components": cpu}}


def test_the_live_split_is_the_difference_over_the_last_seconds() -> None:
    from tui.model import RunState
    from tui.widgets.cpu_split import live_split

    state = RunState()
    assert live_split(state) is None
    state.apply(status(1.0, 0, {"nodes": 0.5, "fleet workers": 0.2}))
    assert live_split(state) is None  # one sample is no rate
    for t in range(2, 11):
        # nodes burn 0.3 s of CPU a second, the fleet 0.1 s; 200 deliveries a second
        state.apply(status(float(t), 200 * (t - 1),
                           {"nodes": 0.5 + 0.3 * (t - 1), "fleet workers": 0.2 + 0.1 * (t - 1)}))
    split = live_split(state)
    assert split is not None
    assert split["wall_s"] == pytest.approx(5.0)
    assert split["deliveries_per_s"] == pytest.approx(200.0)
    assert split["run_cores"] == pytest.approx(0.4)
    nodes = split["components"]["nodes"]
    assert nodes["cores"] == pytest.approx(0.3)
    assert nodes["share_pct"] == pytest.approx(75.0)
    assert nodes["us_per_delivery"] == pytest.approx(1500.0)
    text = plain(render_cpu_split(split))
    assert "200 deliveries/s" in text
    assert "run 0.40 of 2 cores" in text
    assert "live: 5s to 10s" in text
