"""kill_node: SIGKILL a node; restart it ``restart_after_s`` later (the heal)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..targets import NODE_FORMS
from .base import AFTER, FaultContext, FaultKind, on, param, parameters, register

if TYPE_CHECKING:
    from ..topology import NodeProcess


@parameters
class RestartParams:
    restart: bool = param(True, "—", "start the node again (false: it stays dead; the heal is "
                          "logged at once)", phrase=r"\bno restart\b|\bfor good\b", value=False)
    restart_after_s: float = param(2.0, "s", "delay between the kill and the restart",
                                   expect="a number of seconds", ge=0, phrase=AFTER)


def restart_note(p: Any) -> str:
    return f" (restart after {p.restart_after_s:g} s)" if p.restart else " (no restart)"


@register
class KillNode(FaultKind):
    kind = "kill_node"
    summary = ("SIGKILL a node. Its clients lose their sockets, reconnect through the load "
               "balancer to another node and resume from their last position.")
    targets = NODE_FORMS
    default_target = "random"
    heal_at = "the restart, restart_after_s after the kill"
    words = r"\bkill\b|\bsigkill\b"
    Params = RestartParams
    for_param = "restart_after_s"
    destructive = "SIGKILLs a server process: its clients reconnect elsewhere and resume"

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"kill {on(target)}{restart_note(p)}"

    @property
    def hold_s(self) -> float:
        return self.params.restart_after_s if self.params.restart else 0.0

    async def inject(self, ctx: FaultContext) -> None:
        self._nodes = ctx.nodes(self.kind, self.target)
        self.resolved = ",".join(n.name for n in self._nodes)
        for node in self._nodes:
            await self._take_down(node)

    async def _take_down(self, node: NodeProcess) -> None:
        await node.kill()

    async def heal(self, ctx: FaultContext) -> None:
        if self.params.restart:
            for node in self._nodes:
                await node.restart()
