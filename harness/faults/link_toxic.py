"""Shared by the link faults (latency, bandwidth, reset_peer, slicer): one Toxiproxy toxic on
every proxy the target names, in the chosen direction(s), removed on heal."""

from __future__ import annotations

from typing import Any, ClassVar

from .base import Fault, FaultContext


class LinkToxic(Fault):
    toxic_type: ClassVar[str]
    default_direction: ClassVar[str] = "both"

    def attributes(self) -> dict[str, Any]:
        raise NotImplementedError

    def streams(self) -> list[str]:
        direction = self.params.get("direction", self.default_direction)
        return ["upstream", "downstream"] if direction == "both" else [direction]

    async def inject(self, ctx: FaultContext) -> None:
        self._links = ctx.links(self.kind, self.target)
        self.resolved = ",".join(name for name, _ in self._links)
        for _, proxy in self._links:
            for stream in self.streams():
                await proxy.add_toxic(self.toxic_type, stream=stream,  # type: ignore[arg-type]
                                      name=f"turnout-{self.kind}-{stream}",
                                      attributes=self.attributes())

    async def heal(self, ctx: FaultContext) -> None:
        for _, proxy in self._links:
            for stream in self.streams():
                await proxy.remove_toxic(f"turnout-{self.kind}-{stream}", missing_ok=True)
