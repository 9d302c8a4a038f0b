"""turnout's terminal UI (Textual, asyncio only: no trio here), a client of the harness.

Public surface: ``run_tui`` / ``TurnoutApp`` to open a run folder or an experiment, and the
pieces that talk to a run without a screen: ``read_events`` / ``EventTail`` / ``Replay`` (its
event stream), ``RunState`` (the run folded from those events), ``ControlClient`` (its command
socket) and ``HarnessProcess`` (a run started as a child process).

The names are imported on first use: importing one module of the package (a screen, the
catalogue) does not load the whole app, and the import order the app itself relies on stays
its own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import TurnoutApp as TurnoutApp
    from .app import run_tui as run_tui
    from .control_client import ControlClient as ControlClient
    from .control_client import ControlError as ControlError
    from .feed import EventTail as EventTail
    from .feed import Replay as Replay
    from .feed import read_events as read_events
    from .launcher import HarnessProcess as HarnessProcess
    from .model import RunState as RunState

_HOME = {"TurnoutApp": "app", "run_tui": "app", "ControlClient": "control_client",
         "ControlError": "control_client", "EventTail": "feed", "Replay": "feed",
         "read_events": "feed", "HarnessProcess": "launcher", "RunState": "model"}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'tui' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
