"""stop_node: SIGTERM a node (a graceful drain); restart it ``restart_after_s`` later."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import AFTER, on, param, parameters, register
from .kill_node import KillNode, RestartParams, restart_note

if TYPE_CHECKING:
    from ..topology import NodeProcess


@parameters
class StopParams(RestartParams):
    restart_after_s: float = param(2.0, "s", "delay between the node exiting and its restart",
                                   expect="a number of seconds", ge=0, phrase=AFTER)


@register
class StopNode(KillNode):
    """A kill_node whose take-down is a drain (SIGTERM) rather than SIGKILL."""

    kind = "stop_node"
    summary = ("SIGTERM a node: a graceful drain. It closes its clients with a reconnect code "
               "within cluster.drain_grace_s and exits; they resume elsewhere.")
    heal_at = "the restart, restart_after_s after the stop"
    words = r"\b(?:stop|drain|sigterm)\b"
    Params = StopParams
    destructive = "drains and stops a server process"

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"stop {on(target)} gracefully{restart_note(p)}"

    async def _take_down(self, node: NodeProcess) -> None:
        await node.drain()
