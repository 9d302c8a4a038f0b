"""Small text helpers shared by the widgets."""

from __future__ import annotations

from rich.text import Text

__all__ = ["STATE_STYLES", "VERDICT_STYLES", "fmt_bytes", "fmt_count", "fmt_t", "state_text",
           "verdict_text"]

STATE_STYLES = {
    "up": "bold green", "running": "bold green", "starting": "yellow", "draining": "yellow",
    "paused": "bold magenta", "killed": "bold red", "exited": "red", "stopped": "red",
    "?": "dim",
}
VERDICT_STYLES = {"pass": "bold black on green", "fail": "bold white on red",
                  "error": "bold black on yellow", "running": "bold black on cyan",
                  "stopped": "dim"}


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def fmt_count(value: float | None) -> str:
    return "—" if value is None else f"{int(value):,}"


def fmt_t(t: float | None) -> str:
    return "—" if t is None else f"{t:.1f}s"


def state_text(state: str | None) -> Text:
    state = state or "?"
    return Text(state, style=STATE_STYLES.get(state, "bold"))


def verdict_text(verdict: str | None) -> Text:
    verdict = verdict or "?"
    return Text(f" {verdict.upper()} ", style=VERDICT_STYLES.get(verdict, "bold reverse"))
