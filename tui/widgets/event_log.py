"""The event log: every event of the stream but the per-second status, and what the TUI did."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from ..model import LogLine

__all__ = ["EventLog"]

LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "fault": "red", "heal": "green",
                "phase": "cyan", "verdict": "bold", "tui": "magenta", "info": ""}


class EventLog(RichLog):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=2000, min_width=20, wrap=True, markup=False,
                         auto_scroll=True)

    def add(self, line: LogLine) -> None:
        self.write(Text.assemble((f"{line.t:7.1f}s ", "dim"),
                                 (line.text, LEVEL_STYLES.get(line.level, ""))))
