"""The fault catalogue: one module per fault kind, each registering itself.

``make_fault(kind, target, params, duration_s)`` builds one; see harness.faults.base for the
interface and harness.nemesis for how scheduled and interactive faults are run and recorded.
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
from .base import Fault as Fault
from .base import FaultContext as FaultContext
from .base import FaultError as FaultError
from .base import make_fault as make_fault

__all__ = ["FAULTS", "Fault", "FaultContext", "FaultError", "make_fault"]
