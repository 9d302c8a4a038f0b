"""Time charts with axes: delivered messages per second, p99 latency.

Every column covers a fixed number of seconds of the run (1, 2, 5, 10, ... s: the smallest
that fits the run so far into the width, written in the title), column ``i`` the seconds
``[i * step, (i + 1) * step)`` since the run started, the time base of every other panel.
The y axis starts at 0 and ends at a round number above the largest value, labelled with its
unit; the x axis is labelled in run seconds. A column without a sample stays empty; a
measured zero is a dot on the axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual.widget import Widget

from ..series import nice_ceiling, seconds_per_column

__all__ = ["BLOCKS", "TimeChart", "fmt_axis", "render_columns"]

BLOCKS = " ▁▂▃▄▅▆▇█"
Binner = Callable[[float, int], list[float | None]]


def fmt_axis(value: float) -> str:
    if value >= 10000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k".replace(".0k", "k")
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def render_columns(columns: Sequence[float | None], scale: float, rows: int, style: str
                   ) -> list[Text]:
    """Bars of ``rows`` lines, 8 steps a line, ``scale`` at the top; top line first."""
    lines = [Text(style=style) for _ in range(rows)]
    for value in columns:
        if value is None:  # no sample in this column: nothing drawn
            for line in lines:
                line.append(" ")
            continue
        eighths = 0 if scale <= 0 else round(min(value, scale) / scale * rows * 8)
        if value > 0 and eighths == 0:
            eighths = 1  # a value above zero never looks like nothing
        for i, line in enumerate(lines):
            floor = (rows - 1 - i) * 8
            if eighths == 0 and i == rows - 1:
                line.append("·", style="dim")  # a measured zero, unlike a missing sample
            else:
                line.append(BLOCKS[max(0, min(8, eighths - floor))])
    return lines


def _x_axis(step: int, columns: int) -> Text:
    """└──0s────10s──: tick labels where a label's column is a round number of seconds."""
    axis = ["─"] * columns
    label_every = 10
    column = 0
    while column < columns:
        label = f"{column * step:g}s" if column * step < 3600 else f"{column * step / 60:g}m"
        if column + len(label) <= columns:
            axis[column:column + len(label)] = list(label)
        column += label_every
    return Text("".join(axis), style="dim")


class TimeChart(Widget):
    """A chart of one series: title line, ``rows`` plot lines, an x axis in run seconds."""

    DEFAULT_CSS = """
    TimeChart { height: auto; }
    """
    AXIS_WIDTH = 7  # "  500 ┤"

    def __init__(self, title: str, unit: str, style: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="chart")
        self.title = title
        self.unit = unit
        self.bar_style = style
        self.rows = 3
        self.span_s = 0.0
        self.binner: Binner = lambda step, n: []
        self.latest: float | None = None
        # What is drawn (tests read these): seconds per column, the columns, the axis top.
        self.seconds_per_column = 1
        self.columns: list[float | None] = []
        self.scale = 1.0

    def set_series(self, binner: Binner, span_s: float, latest: float | None) -> None:
        """``binner(step, n)`` gives n columns of ``step`` seconds from the run's start."""
        self.binner = binner
        self.span_s = span_s
        self.latest = latest
        self.refresh(layout=True)

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return self.rows + 2

    def _layout_columns(self, width: int) -> None:
        plot = max(1, width - self.AXIS_WIDTH)
        self.seconds_per_column = seconds_per_column(self.span_s, plot)
        self.columns = self.binner(self.seconds_per_column, plot)
        values = [v for v in self.columns if v is not None]
        self.scale = nice_ceiling(max(values)) if values else 1.0

    def render(self) -> Text:
        width = self.content_region.width or self.size.width
        self._layout_columns(width)
        values = [v for v in self.columns if v is not None]
        title = Text.assemble((self.title, "bold"), (f" ({self.unit})", "dim"))
        if self.latest is not None:
            title.append(f"  now {fmt_axis(self.latest)}")
        if values:
            title.append(f"  max {fmt_axis(max(values))}", style="dim")
        else:
            title.append("  no data yet", style="dim")
        tag = f"{self.seconds_per_column} s/col"
        pad = width - title.cell_len - len(tag)
        if pad >= 1:
            title.append(" " * pad + tag, style="dim")
        out = Text()
        out.append_text(title)
        plot = render_columns(self.columns, self.scale, self.rows, self.bar_style)
        for i, line in enumerate(plot):
            label = ""
            if i == 0:
                label = fmt_axis(self.scale)
            elif self.rows >= 3 and self.rows % 2 == 1 and i == self.rows // 2:
                label = fmt_axis(self.scale / 2)
            out.append("\n")
            out.append(f"{label:>5} ┤" if label else "      │", style="dim")
            out.append_text(line)
        out.append("\n")
        out.append("    0 └", style="dim")
        out.append_text(_x_axis(self.seconds_per_column, len(self.columns)))
        return out
