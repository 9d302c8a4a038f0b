"""The run's process logs (``logs/*.log`` in the run folder): every node's first, then Redis,
HAProxy, Toxiproxy, the fleet workers and the harness's own output. The selected file is
shown from its last ``TAIL_BYTES`` and followed while it grows (a run in progress); ``/``
keeps only the lines holding a text."""

from __future__ import annotations

import re
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Log, OptionList, Static
from textual.widgets.option_list import Option

__all__ = ["LogsScreen", "list_logs"]

TAIL_BYTES = 512 * 1024


def _order(path: Path) -> tuple[int, int, str]:
    m = re.fullmatch(r"node-(\d+)", path.stem)
    if m:
        return (0, int(m.group(1)), path.stem)
    return (1, 0, path.stem)


def list_logs(run_dir: Path) -> list[Path]:
    """The run's log files, nodes first (node-1, node-2, ..., node-10), then by name."""
    folder = run_dir / "logs"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.log") if p.is_file()), key=_order)


class LogsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("tab", "app.focus_next", "Next pane", show=False),
    ]

    def __init__(self, run_dir: Path, initial: str | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.initial = initial
        self.files = list_logs(run_dir)
        self.current: Path | None = None
        self.filter = ""
        self._offset = 0
        self._partial = b""

    def compose(self) -> ComposeResult:
        with Horizontal(id="logs-pane"):
            yield OptionList(*[Option(p.stem, id=str(p)) for p in self.files], id="log-files")
            with Vertical(id="log-view"):
                yield Static(id="log-title")
                yield Log(id="log-text", max_lines=20000, auto_scroll=True)
        yield Input(id="log-filter", placeholder="show lines containing… (enter keeps, esc "
                                                 "clears)", compact=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#log-filter").display = False
        files = self.query_one("#log-files", OptionList)
        if not self.files:
            self.query_one("#log-title", Static).update(
                f"no log files in {self.run_dir / 'logs'} (yet)")
            return
        index = next((i for i, p in enumerate(self.files) if p.stem == self.initial), 0)
        files.highlighted = index
        files.focus()
        self.show(self.files[index])
        self.set_interval(0.5, self._follow)

    @on(OptionList.OptionHighlighted, "#log-files")
    def _chosen(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is not None and Path(event.option.id) != self.current:
            self.show(Path(event.option.id))

    def _keep(self, line: str) -> bool:
        return not self.filter or self.filter in line.lower()

    def show(self, path: Path) -> None:
        """Load the tail of ``path`` (again, with the current filter)."""
        self.current = path
        log = self.query_one("#log-text", Log)
        log.clear()
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                f.seek(max(0, size - TAIL_BYTES))
                data = f.read()
        except OSError as exc:
            self.query_one("#log-title", Static).update(f"{path}: {exc.strerror or exc}")
            return
        self._offset = size
        skipped = size > TAIL_BYTES
        lines = data.split(b"\n")
        if skipped:
            lines = lines[1:]  # the first line was cut in the middle
        self._partial = lines.pop() if lines else b""
        log.write_lines([t for t in (raw.decode(errors="replace") for raw in lines)
                         if self._keep(t)])
        self._title(skipped)

    def _title(self, skipped: bool = False) -> None:
        if self.current is None:
            return
        title = f"{self.current.relative_to(self.run_dir)}  {self._offset:,} bytes"
        if skipped:
            title += f" (last {TAIL_BYTES // 1024} KB)"
        if self.filter:
            title += f"  · lines with {self.filter!r}"
        self.query_one("#log-title", Static).update(title)

    def _follow(self) -> None:
        if self.current is None:
            return
        try:
            size = self.current.stat().st_size
            if size <= self._offset:
                return
            with open(self.current, "rb") as f:
                f.seek(self._offset)
                data = f.read(size - self._offset)
        except OSError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        self.query_one("#log-text", Log).write_lines(
            [t for t in (raw.decode(errors="replace") for raw in lines) if self._keep(t)])
        self._title()

    def action_filter(self) -> None:
        box = self.query_one("#log-filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#log-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter = event.value.strip().lower()
        if self.current is not None:
            self.show(self.current)

    @on(Input.Submitted, "#log-filter")
    def _filter_kept(self) -> None:
        self.query_one("#log-text").focus()

    def action_back(self) -> None:
        box = self.query_one("#log-filter", Input)
        if box.has_focus:
            box.value = ""
            box.display = False
            self.query_one("#log-text").focus()
            return
        self.app.pop_screen()
