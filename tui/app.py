"""``turnout tui``: the Textual front end of the harness (asyncio; no trio anywhere in tui/).

The app opens on the experiment browser (tui.screens.browser). A run is shown by the live run
screen (tui.screens.live), fed by the run folder's events.jsonl and driving its control.sock;
harness/events.py and harness/control_server.py define both, docs/tui.md explains them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App
from textual.binding import Binding

from .catalog import ExperimentEntry, default_experiments_dir, new_run_dir, read_run
from .launcher import HarnessProcess
from .screens.browser import BrowserScreen
from .screens.confirm import ConfirmScreen
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
        # A closed terminal (SIGHUP) must not leave a cluster running: stop the runs started
        # here and leave. (Each also gets SIGTERM from the kernel if this process dies
        # without a word: tui.launcher sets their parent-death signal.)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hang_up)
        if self.path is not None:
            self.open_path(self.path)

    def on_unmount(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def hang_up(self) -> None:
        """The terminal is gone: SIGTERM every run started here (each tears its cluster
        down by itself, in order) and exit at once; there is nobody left to ask."""
        for process in self.launched:
            process.terminate()
        self.exit(129, return_code=129)

    @property
    def running(self) -> list[HarnessProcess]:
        """The runs started here that are still running."""
        return [p for p in self.launched if p.running]

    def open_path(self, path: Path) -> None:
        """A run folder (replayed if finished, else attached) or an experiment file (run)."""
        if path.is_file() and path.suffix == ".toml":
            from harness.experiment import ExperimentError, load_experiment

            try:
                experiment = load_experiment(path)
            except ExperimentError as exc:
                self.notify(str(exc), title="Cannot run", severity="error")
                return
            # Through the browser: the same question before a second or a big run.
            browser = self.screen_stack[0]
            entry = ExperimentEntry(path, experiment.name, experiment)
            if isinstance(browser, BrowserScreen):
                browser.run_experiment(entry)
            else:
                self.push_screen(LiveRunScreen(new_run_dir(self.runs_dir, experiment.name),
                                               "run", experiment_file=path))
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
        running = self.running
        if not running:
            self.exit(0)
            return
        names = ", ".join(p.run_dir.name for p in running)
        body = Text.assemble(
            (f"{len(running)} run{'s' if len(running) > 1 else ''} started here "
             f"{'are' if len(running) > 1 else 'is'} still running: ", ""), (names, "bold"),
            "\n\nQuitting stops "
            f"{'them' if len(running) > 1 else 'it'} (the harness tears the cluster down; "
            "the run ends without a verdict).")
        self.push_screen(ConfirmScreen("Quit and stop the running experiment?", body,
                                       yes="Stop and quit"), callback=self._quit_answered)

    def _quit_answered(self, stop: bool | None) -> None:
        if stop:
            self._stop_and_exit()

    @work(group="quit", exclusive=True)
    async def _stop_and_exit(self) -> None:
        running = self.running
        self.notify(f"stopping {len(running)} run(s) started here…")
        await asyncio.gather(*(process.stop() for process in running))
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
