"""pause_node: SIGSTOP a node, SIGCONT it after duration_s."""

from __future__ import annotations

from typing import Any

from ..targets import NODE_FORMS
from .base import FaultContext, FaultKind, on, register


@register
class PauseNode(FaultKind):
    kind = "pause_node"
    summary = ("SIGSTOP a node, SIGCONT after duration_s: its sockets stay open but silent. "
               "Clients must notice (activity timeout, ping) and move.")
    targets = NODE_FORMS
    default_target = "random"
    duration_s = 10.0
    heal_at = "SIGCONT"
    words = r"\b(?:pause|freeze|sigstop)\b"

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"pause {on(target)}"

    async def inject(self, ctx: FaultContext) -> None:
        self._nodes = ctx.nodes(self.kind, self.target)
        self.resolved = ",".join(n.name for n in self._nodes)
        for node in self._nodes:
            node.pause()

    async def heal(self, ctx: FaultContext) -> None:
        for node in self._nodes:
            node.resume()
