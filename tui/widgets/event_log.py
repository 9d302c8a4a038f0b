"""The event log: every event of the stream but the per-second status, and what the TUI did,
each stamped with its run time. ``/`` filters it (case-insensitive substring of the line)."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

from ..model import LogLine, RunState

__all__ = ["EventLog", "format_line"]

LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "fault": "red", "heal": "green",
                "phase": "cyan", "verdict": "bold", "tui": "magenta", "info": ""}


def format_line(line: LogLine) -> Text:
    return Text.assemble((f"{line.t:7.1f}s ", "dim"),
                         (line.text, LEVEL_STYLES.get(line.level, "")))


class EventLog(RichLog):
    """Shows the state's log lines; ``sync`` appends the new ones, ``rebuild`` starts over (a
    new filter, a replay sought back, a new width: RichLog wraps a line once, when written)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=5000, min_width=20, wrap=True, markup=False,
                         auto_scroll=True)
        self.filter = ""
        self.shown = 0  # lines shown since the last rebuild (those that pass the filter)
        self.written = 0  # the state's log_total already gone through
        self.source: Callable[[], RunState] | None = None
        self._width = 0

    def matches(self, line: LogLine) -> bool:
        return not self.filter or self.filter in f"{line.t:.1f}s {line.text}".lower()

    def _add(self, line: LogLine) -> None:
        if self.matches(line):
            self.write(format_line(line))
            self.shown += 1

    def sync(self, state: RunState) -> None:
        for line in state.log_since(self.written):
            self._add(line)
        self.written = state.log_total

    def rebuild(self, filter_text: str | None = None) -> None:
        if filter_text is not None:
            self.filter = filter_text.strip().lower()
        self.clear()
        self.shown = 0
        self.written = 0
        if self.source is not None:
            self.sync(self.source())

    def on_resize(self, event: Resize) -> None:
        if event.size.width != self._width:
            self._width = event.size.width
            # after RichLog's own resize handling (it writes what waited for a width)
            self.call_after_refresh(self.rebuild)
        elif self.auto_scroll:
            # a new height (the grid's rows follow their content): stay on the last line
            self.call_after_refresh(self.scroll_end, animate=False)
