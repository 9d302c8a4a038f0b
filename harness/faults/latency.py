"""latency: delay every chunk on a link by latency_ms ± jitter_ms."""

from __future__ import annotations

from typing import Any

from .base import on, param, parameters, register
from .link_toxic import Direction, LinkToxic, direction

MS = "a number of milliseconds"


@parameters
class LatencyParams:
    latency_ms: float = param(200.0, "ms", "added delay", expect=MS, ge=0,
                              phrase=r"{N}\s*ms\b")
    jitter_ms: float = param(0.0, "ms", "random ± variation of the delay", expect=MS, ge=0,
                             phrase=r"(?:±|\+-|\+/-|jitter)\s*{N}\s*(?:ms)?")
    direction: Direction = direction("both")


@register
class Latency(LinkToxic):
    kind = "latency"
    summary = "Delay each chunk on a link by latency_ms ± jitter_ms (Toxiproxy latency toxic)."
    duration_s = 10.0
    words = r"\b(?:latency|delay|lag)\b"
    Params = LatencyParams
    toxic_type = "latency"
    kernel_link_ok = True

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"add {p.latency_ms:g} ms latency to {on(target)}" + (
            f" (± {p.jitter_ms:g} ms)" if p.jitter_ms else "")

    def attributes(self) -> dict[str, Any]:
        return {"latency": int(self.params.latency_ms), "jitter": int(self.params.jitter_ms)}
