"""stop_node: SIGTERM a node (a graceful drain); restart it ``restart_after_s`` later."""

from __future__ import annotations

from typing import Any

from ..targets import NODE_FORMS
from .base import AFTER, FaultContext, FaultKind, on, param, parameters, register
from .kill_node import restart_note


@parameters
class StopParams:
    restart: bool = param(True, "—", "start the node again (false: it stays dead; the heal is "
                          "logged at once)", phrase=r"\bno restart\b|\bfor good\b", value=False)
    restart_after_s: float = param(2.0, "s", "delay between the node exiting and its restart",
                                   expect="a number of seconds", ge=0, phrase=AFTER)


@register
class StopNode(FaultKind):
    kind = "stop_node"
    summary = ("SIGTERM a node: a graceful drain. It closes its clients with a reconnect code "
               "within cluster.drain_grace_s and exits; they resume elsewhere.")
    targets = NODE_FORMS
    default_target = "random"
    heal_at = "the restart, restart_after_s after the stop"
    words = r"\b(?:stop|drain|sigterm)\b"
    Params = StopParams
    for_param = "restart_after_s"
    destructive = "drains and stops a server process"

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"stop {on(target)} gracefully{restart_note(p)}"

    @property
    def hold_s(self) -> float:
        return self.params.restart_after_s if self.params.restart else 0.0

    async def inject(self, ctx: FaultContext) -> None:
        self._nodes = ctx.nodes(self.kind, self.target)
        self.resolved = ",".join(n.name for n in self._nodes)
        for node in self._nodes:
            await node.drain()

    async def heal(self, ctx: FaultContext) -> None:
        if self.params.restart:
            for node in self._nodes:
                await node.restart()
