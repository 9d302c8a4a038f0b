"""connection_storm: open many extra websocket connections at once, hold, close them."""

from __future__ import annotations

from typing import Any

from .base import FaultContext, FaultError, FaultKind, param, parameters, register


@parameters
class StormParams:
    clients: int = param(10000, "connections", "storm connections (scaled by --scale)",
                         expect="an integer number of connections", ge=1,
                         phrase=r"\bstorm\D*?{N}|{N}\s*(?:connections|clients)")


@register
class ConnectionStorm(FaultKind):
    kind = "connection_storm"
    summary = ("Open `clients` extra websocket connections at once against the target, each "
               "subscribing to a channel, hold them for duration_s, then close them. The "
               "measured clients must not lose updates meanwhile. Needs ulimit -n above "
               "clients.")
    targets = ("lb", "node")
    default_target = "lb"
    duration_s = 10.0
    heal_at = "the storm connections are closed"
    words = r"\bstorm\b"
    Params = StormParams
    needs_cluster = False

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"storm {p.clients} connections on {target}"

    async def inject(self, ctx: FaultContext) -> None:
        if ctx.storm is None:
            raise FaultError("connection_storm needs the client fleet")
        opened = await ctx.storm(self.params.clients, float(self.duration_s or 10.0))
        self.resolved = f"{self.target} ({opened} connections)"
        self.observed["requested"] = self.params.clients
        self.observed["opened"] = opened
