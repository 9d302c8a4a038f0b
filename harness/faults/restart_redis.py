"""restart_redis: stop Redis, start it again ``restart_after_s`` later (the heal)."""

from __future__ import annotations

from typing import Any

from .base import AFTER, FaultContext, FaultKind, param, parameters, register


@parameters
class RestartRedisParams:
    restart_after_s: float = param(1.0, "s", "downtime", expect="a number of seconds", ge=0,
                                   phrase=AFTER)
    flush: bool = param(False, "—", "restart with an empty dataset: epochs change, clients must "
                        "be told recovered:false and the gap counts as lost (relax "
                        "invariants.lost)", phrase=r"\bflush", value=True)


@register
class RestartRedis(FaultKind):
    kind = "restart_redis"
    summary = ("Stop Redis and start it again after restart_after_s, with its data (saved on "
               "shutdown) unless flush = true. Every node loses its connection and "
               "subscriptions and must catch up from the streams.")
    targets = ("redis",)
    default_target = "redis"
    heal_at = "Redis accepting commands again"
    words = r"\brestart\s+redis\b|\bredis\s+restart\b"
    Params = RestartRedisParams
    for_param = "restart_after_s"
    destructive = "stops Redis: every node loses its link and catches up after"

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"restart Redis after {p.restart_after_s:g} s down" + (", flushed" if p.flush
                                                                       else "")

    @property
    def hold_s(self) -> float:
        return self.params.restart_after_s

    async def inject(self, ctx: FaultContext) -> None:
        topology = ctx.require_topology(self.kind)
        self.resolved = "redis"
        await topology.stop_redis(flush=self.params.flush)

    async def heal(self, ctx: FaultContext) -> None:
        topology = ctx.require_topology(self.kind)
        await topology.start_redis()
