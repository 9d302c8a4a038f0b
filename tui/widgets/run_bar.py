"""Two lines above the dashboard.

1. The run, the mode (live, attached, replay), the phase, the run time (seconds since the
   run started), the control channel and the outcome (the verdict, or STOPPED).
2. What the phase is doing and for how long: a fixed-length phase shows its progress ("faults
   12 of 30 s"), a phase or a step that waits for something says what and for at most how
   long ("waiting for running faults to heal: f2 (kill_node on node-2, heals in 2 s) · 3 s
   so far, up to 180 s").
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..format import verdict_text
from ..model import RunState

__all__ = ["RunBar", "phase_line"]

PHASE_STYLE = {"setup": "yellow", "steady": "green", "faults": "bold red", "heal": "yellow",
               "settle": "cyan", "drain": "cyan", "check": "magenta", "done": "bold"}
BAR = 12


def _progress(done: float, total: float) -> Text:
    filled = 0 if total <= 0 else round(min(1.0, done / total) * BAR)
    return Text.assemble(("━" * filled, "bold"), ("━" * (BAR - filled), "dim"))


def phase_line(state: RunState) -> Text:
    """What the current phase waits for, and for how long (the bar's second line)."""
    line = Text(no_wrap=True, overflow="ellipsis")
    if state.phase == "waiting":
        line.append("waiting for the run's first events…", style="dim")
        return line
    if state.ended:
        if state.report is not None:
            duration = state.report.get("duration_s")
            line.append("finished" + (f" after {float(duration):.1f} s" if duration else ""),
                        style="dim")
            line.append(" · t: seconds since the run started, as in report.json", style="dim")
        else:
            line.append(f"stopped during {state.phase} at {state.t:.1f}s, before its check",
                        style="yellow")
        return line
    elapsed = max(0.0, state.t - state.phase_t)
    if state.wait is not None:
        waited = max(0.0, state.t - state.wait.t)
        line.append("waiting for ", style="bold")
        line.append(state.wait.waits_for)
        line.append(f" · {waited:.0f} s so far", style="dim")
        if state.wait.timeout_s:
            line.append(f", up to {state.wait.timeout_s:g} s", style="dim")
        return line
    duration = state.phase_duration()
    waits_for = state.phase_waits_for()
    line.append(f"{state.phase} ", style=PHASE_STYLE.get(state.phase, "bold"))
    if duration is not None and duration > 0:
        line.append_text(_progress(elapsed, duration))
        line.append(f" {min(elapsed, duration):.0f} of {duration:g} s")
    else:
        line.append(f"{elapsed:.0f} s so far")
        timeout = state.phase_view.timeout_s if state.phase_view is not None else None
        if timeout:
            line.append(f", up to {timeout:g} s", style="dim")
    if waits_for:
        line.append(f" · {waits_for}", style="dim")
    return line


class RunBar(Static):
    def refresh_state(self, state: RunState, mode: str, control: str,
                      outcome: str | None = None) -> None:
        """``outcome``: how a replayed recording ends, known before the head gets there."""
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {state.name or 'run'} ", style="bold reverse")
        text.append(f" {mode} ", style="bold")
        text.append("phase ")
        text.append(state.phase, style=PHASE_STYLE.get(state.phase, "bold"))
        text.append(f"  t {state.t:.1f}s")
        text.append("  control ")
        text.append(control, style={"ready": "green", "—": "dim"}.get(control, "yellow"))
        shown = state.outcome or outcome
        if shown is not None:
            text.append("  ")
            if state.outcome is None:
                text.append("ends ", style="dim")
            text.append_text(verdict_text(shown))
        text.append("\n")
        text.append_text(phase_line(state))
        self.update(text)
