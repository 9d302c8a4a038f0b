"""Reading a run's ``events.jsonl``: tail it while the run writes it, or replay a finished one.

``EventTail`` is an async generator of event dicts; the live screen runs it in a worker and
folds every event into the run's state as it comes (tui.model). The harness writes one JSON
object per line and flushes every event, so a tail only has to keep an incomplete last line
for the next read. ``Replay`` holds a whole recording under a play head.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from .model import RunState

__all__ = ["EventTail", "Replay", "read_events"]

CHUNK = 1 << 20


def _parse(line: bytes) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "type" in event else None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete event of a file (an unfinished last line is left out)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):
        lines = lines[:-1]
    return [e for e in map(_parse, lines) if e is not None]


class EventTail:
    """Follow ``events.jsonl`` from its first line until the verdict event.

    ``stop()`` ends it from outside (the run's process exited without a verdict, or the user
    left). ``idle_s`` counts the seconds since the file last grew, for a staleness hint.
    """

    def __init__(self, path: Path, *, poll_s: float = 0.2,
                 gone: Callable[[], bool] | None = None, gone_after_s: float = 30.0) -> None:
        self.path = path
        self.poll_s = poll_s
        self.idle_s = 0.0
        self._gone = gone
        self._gone_after_s = gone_after_s
        self._stopped = False
        self.ended_by: str | None = None

    def stop(self, reason: str = "stopped") -> None:
        self._stopped = True
        self.ended_by = self.ended_by or reason

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while not self.path.exists():
            if self._stopped:
                return
            await asyncio.sleep(self.poll_s)
        buffer = b""
        with open(self.path, "rb") as f:
            while True:
                chunk = await asyncio.to_thread(f.read, CHUNK)
                if chunk:
                    self.idle_s = 0.0
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        event = _parse(line)
                        if event is None:
                            continue
                        yield event
                        if event["type"] == "verdict":
                            self.ended_by = "verdict"
                            return
                    continue
                if self._stopped:
                    return
                await asyncio.sleep(self.poll_s)
                self.idle_s += self.poll_s
                if (self._gone is not None and self.idle_s >= self._gone_after_s
                        and self._gone()):
                    self.ended_by = "the run stopped writing events and has no verdict"
                    return


class Replay:
    """A recorded run with a play head: every event up to ``position`` is folded into
    ``state``; play, pause, seek and speed move the head (the live screen's replay controls).

    Seeking forward folds the events in between; seeking back folds again from the first
    event (folding is cheap: a long run has a few thousand events). ``max_gap_s``: while
    playing, a quiet stretch longer than this (the cluster's setup) is skipped over.
    """

    SPEEDS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0)

    def __init__(self, events: list[dict[str, Any]], *, speed: float = 1.0,
                 max_gap_s: float = 2.0) -> None:
        self.events = events
        self.speed = speed
        self.max_gap_s = max_gap_s
        self.playing = False
        self.cursor = 0  # events[:cursor] are folded into state
        self.position = 0.0
        self.state = RunState()
        self.generation = 0  # bumped whenever state is rebuilt from scratch

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> Replay:
        return cls(read_events(path), **kwargs)

    @property
    def duration(self) -> float:
        return _t(self.events[-1]) if self.events else 0.0

    @property
    def at_end(self) -> bool:
        return self.cursor >= len(self.events)

    @property
    def outcome(self) -> str:
        """How the recorded run ended: pass / fail / error, or stopped (no verdict)."""
        for event in reversed(self.events):
            if event.get("type") == "verdict":
                return str((event.get("report") or {}).get("verdict") or "error")
        return "stopped"

    def fold_to(self, position: float) -> list[dict[str, Any]]:
        """Move the head to ``position`` (clamped to the recording); the events folded in.
        Going back rebuilds ``state`` (``generation`` changes: redraw, not append)."""
        position = min(max(position, 0.0), self.duration)
        applied: list[dict[str, Any]] = []
        if position < self.position or (self.cursor and position < _t(
                self.events[self.cursor - 1])):
            self.state = RunState()
            self.cursor = 0
            self.generation += 1
        while self.cursor < len(self.events) and _t(self.events[self.cursor]) <= position:
            event = self.events[self.cursor]
            self.state.apply(event)
            applied.append(event)
            self.cursor += 1
        self.position = position
        if self.at_end:
            self.position = self.duration
            self.playing = False
            if self.outcome == "stopped":
                self.state.mark_stopped("the recording ends without a verdict: the run was "
                                        "stopped or killed before its check")
        return applied

    def seek(self, delta_s: float) -> list[dict[str, Any]]:
        return self.fold_to(self.position + delta_s)

    def to_end(self) -> list[dict[str, Any]]:
        return self.fold_to(self.duration)

    def advance(self, wall_s: float) -> list[dict[str, Any]]:
        """Play ``wall_s`` seconds of wall time at ``speed``; a quiet stretch longer than
        ``max_gap_s`` ahead is skipped (played as ``max_gap_s``)."""
        if self.at_end:
            return []
        target = self.position + wall_s * self.speed
        upcoming = _t(self.events[self.cursor])
        if upcoming - self.position > self.max_gap_s * self.speed:
            target = max(target, upcoming - self.max_gap_s * self.speed)
        return self.fold_to(target)

    def faster(self) -> float:
        bigger = [s for s in self.SPEEDS if s > self.speed]
        self.speed = bigger[0] if bigger else self.speed
        return self.speed

    def slower(self) -> float:
        smaller = [s for s in self.SPEEDS if s < self.speed]
        self.speed = smaller[-1] if smaller else self.speed
        return self.speed


def _t(event: dict[str, Any]) -> float:
    return float(event.get("t") or 0.0)
