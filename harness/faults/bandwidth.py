"""bandwidth: throttle a link to rate_kbps."""

from __future__ import annotations

from typing import Any

from .base import register
from .link_toxic import LinkToxic


@register
class Bandwidth(LinkToxic):
    kind = "bandwidth"
    toxic_type = "bandwidth"
    default_direction = "downstream"

    def attributes(self) -> dict[str, Any]:
        return {"rate": int(self.params.get("rate_kbps", 64))}
