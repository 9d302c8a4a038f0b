"""slow_consumers: a share of the measured clients stop reading for duration_s."""

from __future__ import annotations

from .base import Fault, FaultContext, FaultError, register


@register
class SlowConsumers(Fault):
    kind = "slow_consumers"
    needs_cluster = False

    async def inject(self, ctx: FaultContext) -> None:
        if ctx.stall_clients is None:
            raise FaultError("slow_consumers needs the client fleet")
        stalled = await ctx.stall_clients(float(self.params.get("share", 0.1)),
                                          float(self.duration_s or 15.0))
        self.resolved = f"clients ({stalled} stalled)"
        self.observed["stalled"] = stalled
