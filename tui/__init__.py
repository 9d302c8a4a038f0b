"""turnout's terminal UI (Textual, asyncio only: no trio here), a client of the harness.

Public surface: ``run_tui`` / ``TurnoutApp`` to open a run folder or an experiment, and the
pieces that talk to a run without a screen: ``read_events`` / ``EventTail`` / ``Replay`` (its
event stream), ``RunState`` (the run folded from those events), ``ControlClient`` (its command
socket) and ``HarnessProcess`` (a run started as a child process).
"""

from .app import TurnoutApp as TurnoutApp
from .app import run_tui as run_tui
from .control_client import ControlClient as ControlClient
from .control_client import ControlError as ControlError
from .feed import EventTail as EventTail
from .feed import Replay as Replay
from .feed import read_events as read_events
from .launcher import HarnessProcess as HarnessProcess
from .model import RunState as RunState

__all__ = ["ControlClient", "ControlError", "EventTail", "HarnessProcess", "Replay", "RunState",
           "TurnoutApp", "read_events", "run_tui"]
