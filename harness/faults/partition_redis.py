"""partition_redis: cut node->Redis links for ``duration_s``.

``mode = "blackhole"`` adds a timeout toxic with timeout 0 (bytes vanish, nothing closes; the
node must notice through its PINGs); ``mode = "cut"`` disables the proxy (every connection
closed at once, new ones refused). Healing removes the toxic or re-enables the proxy.
"""

from __future__ import annotations

from .base import Fault, FaultContext, register

TOXIC = "turnout-partition"


@register
class PartitionRedis(Fault):
    kind = "partition_redis"

    async def inject(self, ctx: FaultContext) -> None:
        target = "redis" if self.target == "redis" else self.target
        self._links = ctx.links(self.kind, target)
        self.resolved = ",".join(name for name, _ in self._links)
        for _, proxy in self._links:
            if self.params.get("mode", "blackhole") == "cut":
                await proxy.disable()
            else:
                for stream in ("upstream", "downstream"):
                    await proxy.add_toxic("timeout", stream=stream, name=f"{TOXIC}-{stream}",
                                          attributes={"timeout": 0})

    async def heal(self, ctx: FaultContext) -> None:
        for _, proxy in self._links:
            if self.params.get("mode", "blackhole") == "cut":
                await proxy.enable()
            else:
                for stream in ("upstream", "downstream"):
                    await proxy.remove_toxic(f"{TOXIC}-{stream}", missing_ok=True)
