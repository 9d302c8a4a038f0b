"""Messages to the live screen from its workers (toolong's messages.py pattern).

The events themselves are not messages: the feed worker folds each one into the run's state
as it reads it (every event kept), and the screen repaints on a timer (tui.screens.live)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

__all__ = ["FeedEnded", "HarnessExited"]


@dataclass
class FeedEnded(Message, bubble=False):
    """The feed stopped: after the verdict, at the end of a replay, or without a verdict."""

    reason: str


@dataclass
class HarnessExited(Message, bubble=False):
    """The ``python -m harness run`` child started by this TUI exited."""

    returncode: int
