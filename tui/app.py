"""``turnout tui``: the Textual front end of the harness (asyncio; no trio anywhere in tui/).

The app opens on the experiment browser (tui.screens.browser). A run is shown by the live run
screen (tui.screens.live), fed by the run folder's events.jsonl and driving its control.sock;
harness/events.py and harness/control.py define both, docs/tui.md explains them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from .catalog import default_experiments_dir, new_run_dir, read_run
from .launcher import HarnessProcess
from .screens.browser import BrowserScreen
from .screens.help import HelpScreen
from .screens.live import LiveRunScreen

__all__ = ["TurnoutApp", "main", "run_tui"]


class TurnoutApp(App[int]):
    CSS_PATH = "turnout.tcss"
    TITLE = "turnout"
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, path: Path | None = None, *, experiments_dir: Path | None = None,
                 runs_dir: Path | None = None, replay_speed: float | None = None) -> None:
        super().__init__()
        self.path = path
        self.experiments_dir = experiments_dir or default_experiments_dir()
        self.runs_dir = runs_dir or Path("runs")
        self.replay_speed = replay_speed
        self.launched: list[HarnessProcess] = []

    def get_default_screen(self) -> BrowserScreen:
        return BrowserScreen(self.experiments_dir, self.runs_dir)

    def on_mount(self) -> None:
        if self.path is not None:
            self.open_path(self.path)

    def open_path(self, path: Path) -> None:
        """A run folder (replayed if finished, else attached) or an experiment file (run)."""
        if path.is_file() and path.suffix == ".toml":
            from harness.experiment import ExperimentError, load_experiment

            try:
                name = load_experiment(path).name
            except ExperimentError as exc:
                self.notify(str(exc), title="Cannot run", severity="error")
                return
            self.push_screen(LiveRunScreen(new_run_dir(self.runs_dir, name), "run",
                                           experiment_file=path))
            return
        run = read_run(path)
        if run.finished or run.verdict == "stopped":
            self.push_screen(LiveRunScreen(path, "replay", speed=self.replay_speed))
        else:
            self.push_screen(LiveRunScreen(path, "attach"))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        running = [p for p in self.launched if p.running]
        if running:
            self.notify(f"stopping {len(running)} run(s) started here…")
            for process in running:
                await process.stop()
        self.exit(0)


def run_tui(path: Path | None = None) -> int:
    """``turnout tui [PATH]``: PATH a run folder (replay or attach) or an experiment file."""
    if path is not None and not path.exists():
        print(f"turnout tui: no such run folder or experiment file: {path}", file=sys.stderr)
        return 2
    if path is not None and path.is_dir() and not (path / "events.jsonl").exists() \
            and not (path / "report.json").exists():
        print(f"turnout tui: {path} is not a run folder (no events.jsonl)", file=sys.stderr)
        return 2
    app = TurnoutApp(path)
    code = app.run()
    return int(code or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tui", description=run_tui.__doc__)
    parser.add_argument("path", nargs="?", type=Path)
    return run_tui(parser.parse_args(argv).path)
