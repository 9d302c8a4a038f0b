"""A capacity search in full: its target, its answer, the bisection and every trial.

The bisection strip draws the viewer axis from 0 to the largest count searched: ``✓`` where a
trial held, ``✗`` where one failed, ``▶`` the trial running now; the answer is the largest count
that held below the smallest that failed.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from ..capacity import CapacityEntry, TrialEntry
from ..format import fmt_count

__all__ = ["CapacityDetail", "bisection_strip", "headline", "p99_text", "render_capacity",
           "result_text", "trial_table"]

RESULT_STYLE = {"holds": "bold green", "fails": "bold red", "running": "bold cyan",
                "stopped": "yellow"}
MARK = {"holds": "✓", "fails": "✗", "running": "▶", "stopped": "·"}


def result_text(result: str) -> Text:
    return Text(result, style=RESULT_STYLE.get(result, "bold"))


def p99_text(trial: TrialEntry, phase: str, target_ms: float | None = None) -> Text:
    """The trial's p99 in ``phase`` (ms), red above the search's target."""
    value = trial.p99_ms.get(phase)
    if not isinstance(value, int | float):
        return Text("—", style="dim")
    over = target_ms is not None and value > target_ms
    return Text(f"{value:,.0f}", style="bold red" if over else "")


def bisection_strip(entry: CapacityEntry, width: int = 40) -> Text:
    """``0 ·····✓·····✓··✗········✗ 40,000``: each trial at its place on the viewer axis."""
    top = max([entry.max_viewers or 0, *(t.viewers for t in entry.trials)])
    text = Text(no_wrap=True, overflow="ellipsis")
    if top <= 0:
        return text
    cells: list[tuple[str, str]] = [("·", "dim")] * width
    # Failures first so that a count that held wins a shared cell (it bounds the answer).
    for trial in sorted(entry.trials, key=lambda t: t.result == "holds"):
        cell = min(width - 1, round(trial.viewers / top * (width - 1)))
        cells[cell] = (MARK.get(trial.result, "?"), RESULT_STYLE.get(trial.result, "bold"))
    text.append("0 ", style="dim")
    for mark, style in cells:
        text.append(mark, style=style)
    text.append(f" {fmt_count(top)}", style="dim")
    return text


def trial_table(entry: CapacityEntry) -> Table:
    table = Table(box=None, header_style="bold", padding=(0, 1), pad_edge=False)
    table.add_column("viewers", justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("p99 steady", justify="right", no_wrap=True)
    table.add_column("p99 settle", justify="right", no_wrap=True)
    table.add_column("lost", justify="right", no_wrap=True)
    table.add_column("deliv./s", justify="right", no_wrap=True)
    table.add_column("cores", justify="right", no_wrap=True)
    for trial in entry.trials:
        cores = trial.cpu.get("run_cores")
        rate = trial.cpu.get("deliveries_per_s")
        table.add_row(fmt_count(trial.viewers), result_text(trial.result),
                      p99_text(trial, "steady", entry.p99_ms),
                      p99_text(trial, "settle", entry.p99_ms),
                      Text("—" if trial.lost is None else f"{trial.lost:,}",
                           style="bold red" if trial.lost else ""),
                      "—" if not isinstance(rate, int | float) else f"{rate:,.0f}",
                      "—" if not isinstance(cores, int | float) else f"{cores:.2f}")
    return table


def headline(entry: CapacityEntry) -> Text:
    text = Text()
    if entry.answer is not None:
        text.append(f"{fmt_count(entry.answer)} viewers", style="bold green")
        text.append(" held")
        if entry.smallest_failing is not None:
            text.append(f"; {fmt_count(entry.smallest_failing)} failed", style="red")
    elif entry.trials and not any(t.result == "holds" for t in entry.trials):
        text.append("no trial held yet", style="bold red")
    else:
        text.append("no answer yet", style="dim")
    text.append("  ")
    text.append(entry.status, style={"done": "bold", "searching": "bold cyan",
                                     "stopped": "yellow", "error": "bold red"}[entry.status])
    if entry.status == "stopped":
        text.append(" (turnout capacity with the same --out resumes it)", style="dim")
    return text


def render_capacity(entry: CapacityEntry) -> RenderableType:
    parts: list[RenderableType] = [
        Text.assemble(("capacity ", "bold"), (entry.experiment, "bold underline")),
        Text(f"{entry.path.parent.name}/{entry.path.name}", style="dim", no_wrap=True,
             overflow="ellipsis"), Text("")]
    if entry.error is not None:
        parts.append(Text(entry.error, style="bold red"))
    target = Text(style="")
    target.append("target ", style="bold cyan")
    target.append("zero loss through the file's faults, p99 ")
    target.append("≤ " + (f"{entry.p99_ms:g} ms" if entry.p99_ms is not None else "?"))
    target.append(" in steady and settle")
    if entry.max_viewers:
        target.append(f"; up to {fmt_count(entry.max_viewers)} viewers", style="dim")
    parts += [target, headline(entry), bisection_strip(entry), Text(""), trial_table(entry)]
    failed = [t for t in entry.trials if t.reasons]
    if failed:
        parts += [Text(""), Text("why trials failed", style="bold red")]
        parts += [Text(f"{fmt_count(t.viewers)}: {'; '.join(t.reasons)}", style="red")
                  for t in failed]
    return Group(*parts)


class CapacityDetail(Static):
    def show(self, entry: CapacityEntry | None) -> None:
        self.update(render_capacity(entry) if entry is not None else Text(
            "no capacity searches yet: turnout capacity FILE [--p99-ms 250] [--max-viewers N] "
            "writes one under runs/", style="dim"))
