"""Messages from the run's feed worker to the live screen (toolong's messages.py pattern)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

__all__ = ["FeedEnded", "HarnessExited", "RunEvent", "StatusUpdate"]


@dataclass
class RunEvent(Message, bubble=False):
    """One event of events.jsonl other than ``status``: every one of them is shown."""

    event: dict[str, Any]


@dataclass
class StatusUpdate(Message, bubble=False):
    """A ``status`` event (one a second). When the screen falls behind, a newer one replaces
    a queued older one: the dashboard shows the latest numbers, not a backlog."""

    event: dict[str, Any]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatusUpdate)


@dataclass
class FeedEnded(Message, bubble=False):
    """The feed stopped: after the verdict, at the end of a replay, or without a verdict."""

    reason: str


@dataclass
class HarnessExited(Message, bubble=False):
    """The ``python -m harness run`` child started by this TUI exited."""

    returncode: int
