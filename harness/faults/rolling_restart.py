"""rolling_restart: restart every node in turn, as a deploy does."""

from __future__ import annotations

from typing import Any

from .base import FaultContext, FaultKind, param, parameters, register


@parameters
class RollingParams:
    interval_s: float = param(5.0, "s", "pause between one node being healthy and stopping the "
                              "next", expect="a number of seconds", ge=0,
                              phrase=r"{N}\s*(?:s|sec|secs|seconds?)\s+apart\b")
    graceful: bool = param(True, "—", "SIGTERM with drain (true) or SIGKILL")


@register
class RollingRestart(FaultKind):
    kind = "rolling_restart"
    summary = ("Restart every node in turn as a deploy does: stop one, start it, wait until the "
               "load balancer sees it healthy, wait interval_s, next.")
    targets = ("all",)
    default_target = "all"
    heal_at = "when the last node is healthy again"
    words = r"\brolling\b"
    Params = RollingParams
    destructive = "restarts every node in turn"

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"rolling restart of every node, {p.interval_s:g} s apart"

    def inject_limit_s(self, ctx: FaultContext) -> float:
        # Each node gets one fault's budget (drain grace, restart, the balancer's check) plus
        # the interval: 6 nodes with a 10 s drain and 10 s apart outlive a flat 120 s.
        return len(ctx.nodes(self.kind, "all")) * (120.0 + self.params.interval_s)

    async def inject(self, ctx: FaultContext) -> None:
        import trio  # not at import time: the TUI reads this module and never imports trio

        topology = ctx.require_topology(self.kind)
        nodes = ctx.nodes(self.kind, "all")
        self.resolved = ",".join(n.name for n in nodes)
        for index, node in enumerate(nodes):
            if self.params.graceful:
                await node.drain()
            else:
                await node.kill()
            await node.restart()
            await topology.wait_lb_ready(timeout=30)
            if index < len(nodes) - 1:
                await trio.sleep(self.params.interval_s)
