"""The TUI against a real local cluster (Redis, Toxiproxy, HAProxy, 2 nodes, 10 clients).

1. A headless ``python -m harness run`` is in progress; the TUI attaches to its folder, opens
   the fault dialog, injects kill_node on node-2 (with restart, confirmed) over control.sock,
   sees it in the fault timeline, and the finished run's history.jsonl and report.json hold
   fault i1.
2. A run started from the TUI writes the same run folder as a headless run.
3. ``python -m tui FILE`` in a pseudo-terminal starts a run; closing the terminal (SIGHUP)
   stops it: the harness tears its cluster down (no node process outlives it) and writes a
   ``stopped`` event.

Each is bounded (about 45 s, 25 s and 40 s) and kills what it started on teardown. Heavy:
run them under the shared lock (``flock /work/team/heavy.lock``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import Select

from tui.app import TurnoutApp
from tui.screens.confirm import ConfirmScreen
from tui.screens.fault_dialog import FaultDialog
from tui.screens.live import LiveRunScreen
from tui.widgets.timeline import FaultTimeline

from .support import screen_text, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]

TINY = """\
description = "TUI test: 2 nodes, 10 clients in 1 process, no scheduled faults."

[cluster]
nodes = 2

[clients]
count = 10
processes = 1
channels_per_client = 2

[workload]
channels = 2
publish_interval_s = 0.5
interval_jitter_s = 0.1

[phases]
steady_s = {steady}
faults_s = 0
heal_s = 2
settle_s = 3

[invariants]
min_delivered = 10
"""


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with_group = os.getpgid(process.pid) == process.pid
    try:
        if with_group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    except (TimeoutError, ProcessLookupError):
        process.kill()
        await process.wait()


@pytest.mark.asyncio
async def test_attach_and_kill_node_2_in_a_real_cluster(tmp_path: Path,
                                                       fixtures: Path) -> None:
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(TINY.format(steady=20))
    run = tmp_path / "run"
    log = open(tmp_path / "harness.log", "wb")  # closed in finally
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harness", "run", str(experiment), "--out", str(run),
        cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for _ in range(300):
            if (run / "events.jsonl").exists() and (run / "events.jsonl").stat().st_size:
                break
            await asyncio.sleep(0.1)
        app = TurnoutApp(run, experiments_dir=fixtures / "experiments", runs_dir=tmp_path)
        async with app.run_test(size=(100, 40)) as pilot:
            live = app.screen
            assert isinstance(live, LiveRunScreen)
            assert live.mode == "attach"

            def node_2_up() -> bool:
                node = live.state.nodes.get("node-2")
                return (live.state.phase == "steady" and live.control.available
                        and node is not None and node.state == "up")

            await wait_for(pilot, node_2_up, timeout=90, what="the cluster in steady phase")
            await pilot.press("f")
            dialog = app.screen
            assert isinstance(dialog, FaultDialog)
            assert dialog.query_one("#kind", Select).value == "kill_node"
            dialog.query_one("#target", Select).value = "node-2"
            await pilot.pause(0.2)
            assert dialog.query_one("#param-restart").value is True  # type: ignore[attr-defined]
            await pilot.press("ctrl+s")
            # a kill takes a process down: the TUI asks first
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen),
                           what="the confirmation")
            await pilot.press("y")
            assert app.screen is live
            await wait_for(pilot, lambda: "i1" in live.state.faults
                           and live.state.faults["i1"].status in ("active", "healed"),
                           timeout=30, what="fault i1 injected")
            await pilot.pause(0.5)
            assert "i1" in live.query_one(FaultTimeline).rows
            assert live.state.faults["i1"].source == "interactive"
            await wait_for(pilot, lambda: live.state.finished, timeout=120,
                           what="the verdict")
            assert live.state.faults["i1"].status == "healed"
            assert str(live.query_one(FaultTimeline).get_cell("i1", "fault")) == \
                "kill node-2 (restart after 2 s)"
            assert "PASS" in screen_text(app)
        assert await asyncio.wait_for(process.wait(), 60) in (0, 1)
    finally:
        await _stop(process)
        log.close()
    ops = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    i1 = [op for op in ops if isinstance(op.get("value"), dict)
          and op["value"].get("fault_id") == "i1"]
    assert {(op.get("type"), op.get("f")) for op in i1} >= {("invoke", "fault"), ("ok", "fault"),
                                                           ("ok", "heal")}
    report = json.loads((run / "report.json").read_text())
    [fault] = [f for f in report["faults"] if f["fault_id"] == "i1"]
    assert (fault["fault"], fault["target"], fault["status"]) == ("kill_node", "node-2", "ok")
    assert report["verdict"] == "pass", report["violations"]


@pytest.mark.asyncio
async def test_a_run_started_from_the_tui_writes_a_headless_run_folder(tmp_path: Path) -> None:
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "tiny.toml").write_text(TINY.format(steady=3))
    runs = tmp_path / "runs"
    app = TurnoutApp(experiments_dir=experiments, runs_dir=runs)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("r")
        live = app.screen
        assert isinstance(live, LiveRunScreen)
        assert live.mode == "run"
        try:
            await wait_for(pilot, lambda: live.state.finished, timeout=150, what="the verdict")
            await wait_for(pilot, lambda: live.process is not None
                           and not live.process.running, timeout=60, what="the harness exit")
        finally:
            if live.process is not None:
                await live.process.stop()
        assert live.process is not None
        assert live.process.returncode == 0
        assert live.state.verdict == "pass"
    [run] = runs.iterdir()
    assert run == live.run_dir.resolve() or run == live.run_dir
    assert run.name.endswith("-tiny")
    for name in ("experiment.toml", "experiment.json", "events.jsonl", "history.jsonl",
                 "report.json", "report.md", "junit.xml", "logs"):
        assert (run / name).exists(), name
    assert (run / "experiment.toml").read_text() == (experiments / "tiny.toml").read_text()
    assert json.loads((run / "report.json").read_text())["exit_code"] == 0


def _drain(fd: int) -> None:
    """Read the terminal's output until it closes (a full pty would block the TUI)."""
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def _run_events(runs: Path) -> list[dict[str, object]]:
    found = list(runs.glob("*/events.jsonl")) if runs.exists() else []
    if not found:
        return []
    lines = found[0].read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def test_closing_the_terminal_stops_the_run_cleanly(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios
    import threading
    import time

    import psutil

    experiment = tmp_path / "tiny.toml"
    experiment.write_text(TINY.format(steady=60))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))

    def controlling_tty() -> None:  # in the child, after setsid: the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color",
           "PATH": f"{REPO / '.tools' / 'bin'}:{os.environ.get('PATH', '')}"}
    tui = subprocess.Popen([sys.executable, "-m", "tui", str(experiment)], cwd=tmp_path,
                           stdin=slave, stdout=slave, stderr=slave, env=env,
                           start_new_session=True, preexec_fn=controlling_tty)
    os.close(slave)
    reader = threading.Thread(target=_drain, args=(master,), daemon=True)
    reader.start()
    runs = tmp_path / "runs"
    harness: psutil.Process | None = None
    try:
        deadline = time.monotonic() + 120
        nodes: list[int] = []
        while time.monotonic() < deadline:
            assert tui.poll() is None, "the TUI exited early"
            events = _run_events(runs)
            statuses = [e for e in events if e.get("type") == "status"]
            if statuses and any(e.get("phase") == "steady" for e in events):
                nodes = [int(n["pid"]) for name, n in statuses[-1]["nodes"].items()
                         if name.startswith("node-") and n.get("pid")]
                break
            time.sleep(0.2)
        assert nodes, "the run never reached its steady phase"
        [harness] = [p for p in psutil.Process(tui.pid).children()
                     if "harness" in " ".join(p.cmdline())]
        os.close(master)  # the terminal goes away: the kernel hangs up the TUI
        master = -1
        assert tui.wait(timeout=30) is not None
        harness.wait(timeout=60)
        for pid in nodes:
            assert not psutil.pid_exists(pid) or \
                psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"node {pid} outlived"
        events = _run_events(runs)
        assert events[-1]["type"] == "stopped", events[-3:]
        assert not any(e["type"] == "verdict" for e in events)
    finally:
        if master != -1:
            os.close(master)
        if tui.poll() is None:
            tui.kill()
            tui.wait()
        if harness is not None and harness.is_running():
            harness.terminate()
            harness.wait(30)
