"""leak_memory: make a node leak mb_per_s through its chaos endpoint for duration_s.

If the node's watchdog (cluster.max_rss_mb) drains it and it exits with code 3 meanwhile, the
heal restarts it, as a process supervisor would; otherwise the heal stops the leak.
"""

from __future__ import annotations

import httpx
import trio

from ..servers import CHAOS_ENDPOINT
from .base import Fault, FaultContext, FaultError, register

EXIT_MAX_RSS = 3


@register
class LeakMemory(Fault):
    kind = "leak_memory"
    needs = frozenset({CHAOS_ENDPOINT})

    async def inject(self, ctx: FaultContext) -> None:
        topology = ctx.require_topology(self.kind)
        self._nodes = ctx.nodes(self.kind, self.target)
        self.resolved = ",".join(n.name for n in self._nodes)
        rate = float(self.params.get("mb_per_s", 10.0))
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            for node in self._nodes:
                response = await client.post(
                    f"{node.chaos_url}/chaos/leak", params={"mb_per_s": rate},
                    headers={"x-chaos-token": topology.chaos_token})
                if response.status_code != 200:
                    raise FaultError(f"{node.name} refused the leak: {response.status_code} "
                                     f"{response.text[:200]}")

    async def heal(self, ctx: FaultContext) -> None:
        topology = ctx.require_topology(self.kind)
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            for node in self._nodes:
                if node.state.value in ("up", "draining"):
                    try:
                        await client.post(f"{node.chaos_url}/chaos/stop",
                                          headers={"x-chaos-token": topology.chaos_token})
                    except httpx.HTTPError:
                        pass
                if node.state.value == "draining":
                    with trio.move_on_after(topology.spec.drain_grace_s + 10):
                        await node.wait()
                if node.state.value in ("exited", "killed"):
                    if node.exit_code not in (EXIT_MAX_RSS, 0):
                        raise FaultError(f"{node.name} died with {node.exit_code} while "
                                         "leaking: the watchdog should have drained it")
                    self.observed.setdefault("watchdog_exits", []).append(node.name)
                    await node.restart()
