"""reset_peer: reset connections on a link with a TCP RST after timeout_ms."""

from __future__ import annotations

from typing import Any

from .base import on, param, parameters, register
from .link_toxic import Direction, LinkToxic, direction


@parameters
class ResetPeerParams:
    timeout_ms: float = param(0.0, "ms", "delay before the reset",
                              expect="a number of milliseconds", ge=0, phrase=r"{N}\s*ms\b")
    direction: Direction = direction("both")


@register
class ResetPeer(LinkToxic):
    kind = "reset_peer"
    summary = ("Reset connections on a link with a TCP RST after timeout_ms (Toxiproxy "
               "reset_peer toxic), for as long as the toxic stays.")
    duration_s = 5.0
    words = r"\breset\b"
    Params = ResetPeerParams
    toxic_type = "reset_peer"

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"reset connections on {on(target)}"

    def attributes(self) -> dict[str, Any]:
        return {"timeout": int(self.params.timeout_ms)}
