"""partition_redis: cut node->Redis links for ``duration_s``.

``mode = "blackhole"`` adds a timeout toxic with timeout 0 (bytes vanish, nothing closes; the
node must notice through its PINGs); ``mode = "cut"`` disables the proxy (every connection
closed at once, new ones refused). Healing removes the toxic or re-enables the proxy.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from .base import FaultContext, FaultKind, on, param, parameters, register

TOXIC = "turnout-partition"


@parameters
class PartitionParams:
    mode: Literal["blackhole", "cut"] = param(
        "blackhole", "—", "blackhole: timeout toxic with timeout 0, bytes silently dropped and "
        "connections closed on heal; cut: proxy disabled, every connection closed at once and "
        "new ones refused", strict=False, phrase=r"\bcut\b", value="cut")


@register
class PartitionRedis(FaultKind):
    kind = "partition_redis"
    summary = "Cut nodes off from Redis through Toxiproxy for duration_s."
    targets = ("redis", "redis_link")
    default_target = "redis"
    duration_s = 5.0
    heal_at = "toxic removed / proxy enabled"
    words = r"\bpartition\b|\bcut\b.*\bfrom\s+redis\b"
    Params = PartitionParams

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        who = on(target.removesuffix("->redis")) if target.endswith("->redis") else "every node"
        return f"partition {who} from Redis" + (" (cut)" if p.mode == "cut" else "")

    @classmethod
    def phrase_target(cls, text: str, tokens: list[str]) -> str | None:
        for token in tokens:  # "partition node-1": that node's Redis link
            if token.endswith("->redis") or (token == "redis" and len(tokens) == 1):
                return token
            if re.fullmatch(r"node-\d+|random|all", token):
                return f"{token}->redis"
        return None

    async def inject(self, ctx: FaultContext) -> None:
        self._links = ctx.links(self.kind, self.target)
        self.resolved = ",".join(name for name, _ in self._links)
        for _, proxy in self._links:
            if self.params.mode == "cut":
                await proxy.disable()
            else:
                for stream in ("upstream", "downstream"):
                    await proxy.add_toxic("timeout", stream=stream, name=f"{TOXIC}-{stream}",
                                          attributes={"timeout": 0})

    async def heal(self, ctx: FaultContext) -> None:
        for _, proxy in self._links:
            if self.params.mode == "cut":
                await proxy.enable()
            else:
                for stream in ("upstream", "downstream"):
                    await proxy.remove_toxic(f"{TOXIC}-{stream}", missing_ok=True)
