"""latency: delay every chunk on a link by latency_ms ± jitter_ms."""

from __future__ import annotations

from typing import Any

from .base import register
from .link_toxic import LinkToxic


@register
class Latency(LinkToxic):
    kind = "latency"
    toxic_type = "latency"

    def attributes(self) -> dict[str, Any]:
        return {"latency": int(self.params.get("latency_ms", 200)),
                "jitter": int(self.params.get("jitter_ms", 0))}
