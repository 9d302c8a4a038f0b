"""report.md of a run (or capacity.md of a capacity search), rendered (Textual's Markdown
viewer)."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Markdown

__all__ = ["ReportScreen"]


class ReportScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("m", "close", "Close", show=False),
    ]

    def __init__(self, run_dir: Path, name: str = "report.md") -> None:
        super().__init__()
        self.path = run_dir / name

    def compose(self) -> ComposeResult:
        try:
            text = self.path.read_text()
        except OSError as exc:
            text = f"# No report\n\n`{self.path}`: {exc.strerror or exc}. A run writes it " \
                   "after its check; a capacity search after each trial."
        with VerticalScroll(id="report") as scroll:
            scroll.border_title = f"{self.path.parent.name}/{self.path.name}"
            yield Markdown(text)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#report").focus()

    def action_close(self) -> None:
        self.dismiss(None)
