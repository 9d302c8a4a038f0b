"""The replay's transport line: playing or paused, speed, the head's position in the run
and the keys that move it."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..feed import Replay

__all__ = ["ReplayBar"]


class ReplayBar(Static):
    def refresh_replay(self, replay: Replay) -> None:
        hint = "  ←→ ±5s ⇧←→ ±30s home/end -+ speed"
        room = self.size.width - 44
        if room < 20 + len(hint):
            hint = "  ←→ seek -+ speed" if room >= 20 + 18 else ""
        width = max(10, room - len(hint))
        done = 0.0 if replay.duration <= 0 else replay.position / replay.duration
        head = min(width - 1, int(done * width))
        state = "▶ playing" if replay.playing else (
            "■ end" if replay.at_end else "❚❚ paused")
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {state:<9} ", style="bold")
        text.append(f"{replay.speed:g}x ".rjust(6), style="bold cyan")
        text.append("━" * head, style="bold cyan")
        text.append("●", style="bold")
        text.append("─" * (width - head - 1), style="dim")
        text.append(f" {replay.position:6.1f} / {replay.duration:.1f} s")
        text.append(f"  {replay.cursor}/{len(replay.events)} ev", style="dim")
        text.append(hint, style="dim")
        self.update(text)
