"""Guard rails: a second run asks first and says how big it is; quitting or stopping a running
experiment asks; a closed terminal stops the runs started here (SIGHUP, and the kernel's
parent-death signal if the TUI dies without a word). Runs "started here" are stand-in
``sleep`` processes: what is tested is who gets which signal when; the real harness's
teardown on SIGHUP is in test_real_cluster.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tui.app import TurnoutApp
from tui.launcher import HarnessProcess
from tui.screens.browser import BrowserScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.live import LiveRunScreen

from .support import FakeHarness, screen_text, unfinished_copy, wait_for

PASS_RUN = "20250601-120000-tiny"

BIG = """\
description = "a big one"
[cluster]
nodes = 3
[clients]
count = 40000
processes = 8
channels_per_client = 2
[workload]
channels = 4
[phases]
steady_s = 60
faults_s = 0
heal_s = 5
settle_s = 10
"""


async def stand_in(run_dir: Path) -> HarnessProcess:
    """A run 'started here': a real child process that a SIGTERM ends."""
    process = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    return HarnessProcess(Path("x.toml"), run_dir.resolve(), process)


@pytest.mark.asyncio
async def test_starting_a_run_while_one_is_in_progress_asks_and_says_how_big(
        fixtures: Path, runs_dir: Path, tmp_path: Path) -> None:
    running = unfinished_copy(runs_dir / PASS_RUN, runs_dir / "20250601-130000-tiny")
    async with FakeHarness(running / "control.sock"):
        app = TurnoutApp(experiments_dir=fixtures / "experiments", runs_dir=runs_dir)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("r")  # baseline, the first experiment
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                           what="the question")
            text = screen_text(app)
            assert "1 run is in progress: 20250601-130000-tiny" in text
            assert "3 nodes · 200 clients in 2 processes" in text
            await pilot.press("n")
            await pilot.pause(0.2)
            assert isinstance(app.screen, BrowserScreen)
            assert app.launched == []
            assert len(list(runs_dir.iterdir())) == 5  # no new run folder


@pytest.mark.asyncio
async def test_a_big_experiment_asks_even_alone(tmp_path: Path) -> None:
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "big.toml").write_text(BIG)
    app = TurnoutApp(experiments_dir=experiments, runs_dir=tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                       what="the question")
        assert "3 nodes · 40,000 clients in 8 processes" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert isinstance(app.screen, BrowserScreen)
        assert not (tmp_path / "runs").exists()


@pytest.mark.asyncio
async def test_a_big_experiment_given_on_the_command_line_asks_too(tmp_path: Path) -> None:
    (tmp_path / "big.toml").write_text(BIG)
    app = TurnoutApp(tmp_path / "big.toml", experiments_dir=tmp_path,
                     runs_dir=tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                       what="the question")
        assert "40,000 clients" in screen_text(app)
        await pilot.press("n")
        await pilot.pause(0.2)
        assert isinstance(app.screen, BrowserScreen)
        assert app.launched == []


@pytest.mark.asyncio
async def test_quitting_with_a_run_in_progress_asks_then_stops_it(
        fixtures: Path, runs_dir: Path, tmp_path: Path) -> None:
    app = TurnoutApp(experiments_dir=fixtures / "experiments", runs_dir=runs_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        process = await stand_in(tmp_path / "20250601-130000-tiny")
        app.launched.append(process)
        try:
            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                           what="the question")
            assert "20250601-130000-tiny" in screen_text(app)
            await pilot.press("n")
            await pilot.pause(0.3)
            assert process.running
            assert app.is_running
            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                           what="the question")
            await pilot.press("y")
            await asyncio.wait_for(process.wait(), 10)
            assert process.returncode == -signal.SIGTERM
        finally:
            await process.stop(grace_s=1)


@pytest.mark.asyncio
async def test_the_stop_key_asks_before_it_stops_the_run(fixtures: Path, runs_dir: Path,
                                                         tmp_path: Path) -> None:
    run = unfinished_copy(runs_dir / PASS_RUN, tmp_path / "20250601-130000-tiny",
                          until_t=9.5)
    async with FakeHarness(run / "control.sock"):
        app = TurnoutApp(experiments_dir=fixtures / "experiments", runs_dir=runs_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            process = await stand_in(run)
            app.launched.append(process)
            try:
                app.open_path(run)  # attach: a run started here can be stopped from here
                await pilot.pause()
                live = app.screen
                assert isinstance(live, LiveRunScreen)
                await wait_for(pilot, lambda: live.process is process, what="the process")
                await wait_for(pilot, lambda: "s Stop" in screen_text(app).splitlines()[-1],
                               what="the stop key")
                # every key of a live run with active faults fits 80 columns
                for key in ("f Fault", "h Heal", "H Heal all", "s Stop", "esc Back", "? Help",
                            "q Quit"):
                    assert key in screen_text(app).splitlines()[-1], key
                await pilot.press("s")
                await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                               what="the question")
                await pilot.press("n")
                await pilot.pause(0.3)
                assert process.running
                await pilot.press("s")
                await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                               what="the question")
                await pilot.press("y")
                await asyncio.wait_for(process.wait(), 10)
                await pilot.pause(0.3)
                assert "s Stop" not in screen_text(app).splitlines()[-1]
            finally:
                await process.stop(grace_s=1)


@pytest.mark.asyncio
async def test_a_hang_up_stops_the_runs_started_here(fixtures: Path, runs_dir: Path,
                                                    tmp_path: Path) -> None:
    app = TurnoutApp(experiments_dir=fixtures / "experiments", runs_dir=runs_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        process = await stand_in(tmp_path / "run")
        app.launched.append(process)
        try:
            os.kill(os.getpid(), signal.SIGHUP)  # what a closing terminal sends
            await asyncio.wait_for(process.wait(), 10)
            assert process.returncode == -signal.SIGTERM
            await pilot.pause(0.2)
        finally:
            await process.stop(grace_s=1)
    assert app.return_code == 129


def test_a_run_gets_sigterm_when_the_tui_dies_without_a_word(tmp_path: Path) -> None:
    """The launcher's parent-death signal: a TUI killed outright (SIGKILL) still stops the
    runs it started."""
    code = textwrap.dedent("""
        import os, signal, subprocess, sys, time
        from harness.spawn import die_with_parent
        child = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent(signal.SIGTERM))
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        assert child.is_running()
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the run outlived the TUI"
            time.sleep(0.05)
    finally:
        if child.is_running():
            child.kill()
