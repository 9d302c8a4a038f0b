"""bandwidth: throttle a link to rate_kbps."""

from __future__ import annotations

from typing import Any

from .base import on, param, parameters, register
from .link_toxic import Direction, LinkToxic, direction


@parameters
class BandwidthParams:
    rate_kbps: float = param(64.0, "KB/s", "throughput limit (0 stalls the link)",
                             expect="a number of KB/s", ge=0, phrase=r"{N}\s*kb")
    direction: Direction = direction("downstream")


@register
class Bandwidth(LinkToxic):
    kind = "bandwidth"
    summary = "Throttle a link to rate_kbps (Toxiproxy bandwidth toxic)."
    duration_s = 10.0
    words = r"\b(?:throttle|bandwidth)\b"
    Params = BandwidthParams
    toxic_type = "bandwidth"

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"throttle {on(target)} to {p.rate_kbps:g} KB/s"

    def attributes(self) -> dict[str, Any]:
        return {"rate": int(self.params.rate_kbps)}
