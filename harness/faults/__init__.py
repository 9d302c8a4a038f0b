"""The fault catalogue: one module per fault kind, each registering itself (see
harness.faults.base for the interface, docs/architecture.md for adding a kind).

``FAULTS`` maps each kind's name to its class, in the order docs and the TUI list them (and
the palette tries their words); ``make_fault(kind, target, params, duration_s)`` builds one.
"""

from . import (  # noqa: F401 - each import registers its fault kind
    bandwidth,
    connection_storm,
    kill_node,
    latency,
    leak_memory,
    partition_redis,
    pause_node,
    reset_peer,
    restart_redis,
    rolling_restart,
    slicer,
    slow_consumers,
    stop_node,
)
from .base import FAULTS as FAULTS
from .base import FaultContext as FaultContext
from .base import FaultError as FaultError
from .base import FaultKind as FaultKind
from .base import make_fault as make_fault

__all__ = ["FAULTS", "FaultContext", "FaultError", "FaultKind", "make_fault"]

_ORDER = ("kill_node", "stop_node", "pause_node", "rolling_restart", "restart_redis",
          "partition_redis", "latency", "bandwidth", "reset_peer", "slicer", "leak_memory",
          "slow_consumers", "connection_storm")
FAULTS.update({kind: FAULTS.pop(kind) for kind in (*_ORDER, *sorted(set(FAULTS) - set(_ORDER)))})
