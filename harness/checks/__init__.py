"""The checker's parts, each a pure function of the recorded history (composed in
:mod:`harness.checker`, rendered by :mod:`harness.render`):

- :mod:`.model`: one pass over the ops into a :class:`~.model.RunData` (publishes, viewers,
  subscriptions with their runs of positions, the position table, per-update latencies, stale
  windows, faults, phases);
- :mod:`.delivery`: who owed which update and whether it arrived (lost, delivered, unexpected,
  Jepsen set-full semantics for indeterminate publishes);
- :mod:`.order`: duplicates and reorders, judged on server positions for every delivery;
- :mod:`.latency`: publish-to-receive percentiles, overall, per phase and per fault window;
- :mod:`.recovery`: per fault, the stale windows of the viewers it disconnected and how long
  after its heal everything published before it had arrived;
- :mod:`.groups`: the totals per client group (the Python fleet, each ``[[client_groups]]``).
"""

from .delivery import DeliveryResult as DeliveryResult
from .delivery import judge_delivery as judge_delivery
from .groups import judge_groups as judge_groups
from .latency import LatencyResult as LatencyResult
from .latency import judge_latency as judge_latency
from .model import FaultWindow as FaultWindow
from .model import RunData as RunData
from .model import accumulate as accumulate
from .order import OrderResult as OrderResult
from .order import judge_order as judge_order
from .presence import PresenceResult as PresenceResult
from .presence import judge_presence as judge_presence
from .recovery import FaultRecovery as FaultRecovery
from .recovery import fault_windows as fault_windows
from .recovery import judge_recovery as judge_recovery

__all__ = ["DeliveryResult", "FaultRecovery", "FaultWindow", "LatencyResult", "OrderResult",
           "PresenceResult", "RunData", "accumulate", "fault_windows", "judge_delivery",
           "judge_groups", "judge_latency", "judge_order", "judge_presence", "judge_recovery"]
