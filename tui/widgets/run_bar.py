"""One line above the dashboard: run, mode, phase, time, control channel, verdict."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..format import verdict_text
from ..model import RunState

__all__ = ["RunBar"]

PHASE_STYLE = {"setup": "yellow", "steady": "green", "faults": "bold red", "heal": "yellow",
               "settle": "cyan", "drain": "cyan", "check": "magenta", "done": "bold"}


class RunBar(Static):
    def refresh_state(self, state: RunState, mode: str, control: str) -> None:
        text = Text()
        text.append(f" {state.name or 'run'} ", style="bold reverse")
        text.append(f" {mode} ", style="bold")
        text.append("phase ")
        text.append(state.phase, style=PHASE_STYLE.get(state.phase, "bold"))
        if state.phase not in ("done", "waiting"):
            text.append(f" +{max(0.0, state.t - state.phase_t):.0f}s", style="dim")
        text.append(f"  t {state.t:.1f}s")
        text.append("  control ")
        text.append(control, style={"ready": "green", "—": "dim"}.get(control, "yellow"))
        if state.verdict is not None:
            text.append("  ")
            text.append_text(verdict_text(state.verdict))
        self.update(text)
