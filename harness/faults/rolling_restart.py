"""rolling_restart: a deploy. Each node in turn: drain (or kill), restart, wait until the load
balancer has it UP again, pause ``interval_s``, next. Healed when the last node is back."""

from __future__ import annotations

import trio

from .base import Fault, FaultContext, register


@register
class RollingRestart(Fault):
    kind = "rolling_restart"

    async def inject(self, ctx: FaultContext) -> None:
        topology = ctx.require_topology(self.kind)
        nodes = ctx.nodes(self.kind, "all")
        self.resolved = ",".join(n.name for n in nodes)
        for index, node in enumerate(nodes):
            if self.params.get("graceful", True):
                await node.drain()
            else:
                await node.kill()
            await node.restart()
            await topology.wait_lb_ready(timeout=30)
            if index < len(nodes) - 1:
                await trio.sleep(float(self.params.get("interval_s", 5.0)))
