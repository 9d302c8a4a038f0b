"""slow_consumers: a share of the measured clients stop reading for duration_s."""

from __future__ import annotations

from typing import Any

from .base import FaultContext, FaultError, FaultKind, param, parameters, register


@parameters
class SlowParams:
    share: float = param(0.1, "fraction", "share of the clients that stop reading "
                         "(0 < share <= 1)", expect="a fraction", gt=0, le=1,
                         phrase=r"{N}\s*%", scale=0.01)


@register
class SlowConsumers(FaultKind):
    kind = "slow_consumers"
    summary = ("A share of the measured clients stop reading their sockets. The server must "
               "disconnect them with a reconnect code once cluster.outbound_queue_bytes fill up "
               "(they then resume without loss) and must not slow the other clients down.")
    targets = ("clients",)
    default_target = "clients"
    duration_s = 15.0
    heal_at = "the clients read again"
    words = r"\bslow\b"
    Params = SlowParams
    needs_cluster = False

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"make {p.share * 100:g}% of the clients slow consumers"

    async def inject(self, ctx: FaultContext) -> None:
        if ctx.stall_clients is None:
            raise FaultError("slow_consumers needs the client fleet")
        stalled = await ctx.stall_clients(self.params.share, float(self.duration_s or 15.0))
        self.resolved = f"clients ({stalled} stalled)"
        self.observed["stalled"] = stalled
