"""connection_storm: open ``clients`` extra connections at once, hold them for duration_s."""

from __future__ import annotations

from .base import Fault, FaultContext, FaultError, register


@register
class ConnectionStorm(Fault):
    kind = "connection_storm"
    needs_cluster = False

    async def inject(self, ctx: FaultContext) -> None:
        if ctx.storm is None:
            raise FaultError("connection_storm needs the client fleet")
        opened = await ctx.storm(int(self.params.get("clients", 10000)),
                                 float(self.duration_s or 10.0))
        self.resolved = f"{self.target} ({opened} connections)"
        self.observed["requested"] = int(self.params.get("clients", 10000))
        self.observed["opened"] = opened
