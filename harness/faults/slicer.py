"""slicer: fragment a link's stream into small pieces (frames split over many segments)."""

from __future__ import annotations

from typing import Any

from .base import register
from .link_toxic import LinkToxic


@register
class Slicer(LinkToxic):
    kind = "slicer"
    toxic_type = "slicer"
    default_direction = "downstream"

    def attributes(self) -> dict[str, Any]:
        return {"average_size": int(self.params.get("average_size", 64)),
                "size_variation": int(self.params.get("size_variation", 32)),
                "delay": int(self.params.get("delay_us", 10))}
