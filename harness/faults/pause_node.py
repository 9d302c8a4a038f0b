"""pause_node: SIGSTOP a node for ``duration_s``, then SIGCONT (the heal)."""

from __future__ import annotations

from .base import Fault, FaultContext, register


@register
class PauseNode(Fault):
    kind = "pause_node"

    async def inject(self, ctx: FaultContext) -> None:
        self._nodes = ctx.nodes(self.kind, self.target)
        self.resolved = ",".join(n.name for n in self._nodes)
        for node in self._nodes:
            node.pause()

    async def heal(self, ctx: FaultContext) -> None:
        for node in self._nodes:
            node.resume()
