"""stop_node: SIGTERM a node (it drains its clients with 4200), restart it after it exits."""

from __future__ import annotations

from .base import Fault, FaultContext, register


@register
class StopNode(Fault):
    kind = "stop_node"

    @property
    def hold_s(self) -> float:
        return float(self.params.get("restart_after_s", 2.0)) if self.params.get(
            "restart", True) else 0.0

    async def inject(self, ctx: FaultContext) -> None:
        self._nodes = ctx.nodes(self.kind, self.target)
        self.resolved = ",".join(n.name for n in self._nodes)
        for node in self._nodes:
            await node.drain()

    async def heal(self, ctx: FaultContext) -> None:
        if self.params.get("restart", True):
            for node in self._nodes:
                await node.restart()
