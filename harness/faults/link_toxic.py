"""Shared by the link faults (latency, bandwidth, reset_peer, slicer): one Toxiproxy toxic on
every proxy the target names, in the chosen direction(s), removed on heal."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ..targets import LINK_FORMS
from .base import FaultContext, FaultKind, param

Direction = Literal["upstream", "downstream", "both"]


def direction(default: str) -> Any:
    return param(default, "—", "which stream of the link: upstream (towards the server side), "
                 "downstream, both", strict=False, phrase=r"\b(upstream|downstream)\b")


class LinkToxic(FaultKind):
    toxic_type: ClassVar[str]
    targets = LINK_FORMS
    default_target = "clients"
    heal_at = "toxic removed"

    def attributes(self) -> dict[str, Any]:
        raise NotImplementedError

    def streams(self) -> list[str]:
        chosen = self.params.direction
        return ["upstream", "downstream"] if chosen == "both" else [chosen]

    #: Whether a netfilter delay link (harness.netdelay) can carry this kind.
    kernel_link_ok: ClassVar[bool] = False

    async def inject(self, ctx: FaultContext) -> None:
        self._links: list[tuple[str, Any]] = (
            ctx.toxic_links(self.kind, self.target) if self.kernel_link_ok
            else ctx.links(self.kind, self.target))
        self.resolved = ",".join(name for name, _ in self._links)
        for _, proxy in self._links:
            for stream in self.streams():
                await proxy.add_toxic(self.toxic_type, stream=stream,  # type: ignore[arg-type]
                                      name=f"turnout-{self.kind}-{stream}",
                                      attributes=self.attributes())

    async def heal(self, ctx: FaultContext) -> None:
        for _, proxy in self._links:
            for stream in self.streams():
                name = f"turnout-{self.kind}-{stream}"
                await proxy.remove_toxic(name, missing_ok=True)
                held = getattr(proxy, "held", None)  # a netfilter delay link counts packets
                if held is not None:
                    key = f"packets_held_{stream}"
                    self.observed[key] = self.observed.get(key, 0) + held[name]
