"""restart_redis: stop Redis (SIGTERM: it saves its data on shutdown), start it again after
``restart_after_s``. With ``flush = true`` it comes back empty (new epochs everywhere)."""

from __future__ import annotations

from .base import Fault, FaultContext, register


@register
class RestartRedis(Fault):
    kind = "restart_redis"

    @property
    def hold_s(self) -> float:
        return float(self.params.get("restart_after_s", 1.0))

    async def inject(self, ctx: FaultContext) -> None:
        topology = ctx.require_topology(self.kind)
        self.resolved = "redis"
        await topology.stop_redis(flush=bool(self.params.get("flush", False)))

    async def heal(self, ctx: FaultContext) -> None:
        topology = ctx.require_topology(self.kind)
        await topology.start_redis()
