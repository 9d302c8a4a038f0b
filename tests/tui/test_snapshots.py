"""Snapshot tests (pytest-textual-snapshot) of the main screens at 80x24, and the live run
screen at 200x50. Regenerate after a deliberate change of the UI with
``pytest tests/tui/test_snapshots.py --snapshot-update`` and review the SVGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from tui.app import TurnoutApp
from tui.catalog import topology_from_experiment
from tui.screens.fault_dialog import FaultDialog
from tui.screens.live import LiveRunScreen
from tui.widgets.nodes import NodeRow

from .support import wait_for

PASS_RUN = "20250601-120000-tiny"
FAIL_RUN = "20250601-121500-tiny-negative-control"


def make_app(fixtures: Path, runs_dir: Path, path: Path | None = None) -> TurnoutApp:
    return TurnoutApp(path, experiments_dir=fixtures / "experiments", runs_dir=runs_dir)


async def replay_done(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, LiveRunScreen)
                   and app.screen.feed_done, what="the replay")

    def laid_out() -> bool:
        rows = list(app.screen.query(NodeRow))
        return bool(rows) and all(row.region.height for row in rows)

    await wait_for(pilot, laid_out, what="the node rows laid out")
    await pilot.pause(0.3)


class TestBrowser:
    def test_experiments_80x24(self, snap_compare: Any, fixtures: Path, runs_dir: Path) -> None:
        assert snap_compare(make_app(fixtures, runs_dir), terminal_size=(80, 24))

    def test_experiment_with_faults_80x24(self, snap_compare: Any, fixtures: Path,
                                          runs_dir: Path) -> None:
        assert snap_compare(make_app(fixtures, runs_dir), press=["down"],
                            terminal_size=(80, 24))

    def test_runs_80x24(self, snap_compare: Any, fixtures: Path, runs_dir: Path) -> None:
        assert snap_compare(make_app(fixtures, runs_dir), press=["2", "down"],
                            terminal_size=(80, 24))

    def test_experiments_200x50(self, snap_compare: Any, fixtures: Path,
                                runs_dir: Path) -> None:
        assert snap_compare(make_app(fixtures, runs_dir), press=["down"],
                            terminal_size=(200, 50))


class TestLiveRun:
    def test_replayed_pass_80x24(self, snap_compare: Any, fixtures: Path,
                                 runs_dir: Path) -> None:
        app = make_app(fixtures, runs_dir, runs_dir / PASS_RUN)
        assert snap_compare(app, terminal_size=(80, 24), run_before=replay_done)

    def test_replayed_fail_200x50(self, snap_compare: Any, fixtures: Path,
                                  runs_dir: Path) -> None:
        app = make_app(fixtures, runs_dir, runs_dir / FAIL_RUN)
        assert snap_compare(app, terminal_size=(200, 50), run_before=replay_done)

    def test_replayed_pass_200x50(self, snap_compare: Any, fixtures: Path,
                                  runs_dir: Path) -> None:
        app = make_app(fixtures, runs_dir, runs_dir / PASS_RUN)
        assert snap_compare(app, terminal_size=(200, 50), run_before=replay_done)


class TestDialogs:
    def test_help_80x24(self, snap_compare: Any, fixtures: Path, runs_dir: Path) -> None:
        assert snap_compare(make_app(fixtures, runs_dir), press=["question_mark"],
                            terminal_size=(80, 24))

    def test_fault_dialog_80x24(self, snap_compare: Any, fixtures: Path,
                                runs_dir: Path) -> None:
        async def open_dialog(pilot: Pilot[Any]) -> None:
            topology = topology_from_experiment({"cluster": {"nodes": 3}})
            await pilot.app.push_screen(FaultDialog(topology, kind="latency"))
            await wait_for(pilot, lambda: pilot.app.screen.query("#param-latency_ms"),
                           what="the dialog's form")
            await pilot.pause(0.2)

        assert snap_compare(make_app(fixtures, runs_dir), terminal_size=(80, 24),
                            run_before=open_dialog)
