"""reset_peer: TCP RST the connections of a link after timeout_ms, while the toxic stays."""

from __future__ import annotations

from typing import Any

from .base import register
from .link_toxic import LinkToxic


@register
class ResetPeer(LinkToxic):
    kind = "reset_peer"
    toxic_type = "reset_peer"

    def attributes(self) -> dict[str, Any]:
        return {"timeout": int(self.params.get("timeout_ms", 0))}
