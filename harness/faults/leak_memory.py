"""leak_memory: make a node leak mb_per_s through its chaos endpoint for duration_s.

If the node's watchdog (cluster.max_rss_mb) drains it and it exits with code 3 meanwhile, the
heal restarts it, as a process supervisor would; otherwise the heal stops the leak.
"""

from __future__ import annotations

from typing import Any

from ..targets import NODE_FORMS
from .base import FaultContext, FaultError, FaultKind, on, param, parameters, register

EXIT_MAX_RSS = 3


@parameters
class LeakParams:
    mb_per_s: float = param(10.0, "MB/s", "leak rate", expect="a number of MB/s", gt=0,
                            phrase=r"{N}\s*mb")


@register
class LeakMemory(FaultKind):
    kind = "leak_memory"
    summary = ("Make a node allocate and hold mb_per_s of memory through its chaos endpoint "
               "(off by default; the harness enables it). With cluster.max_rss_mb the node must "
               "shed clients gracefully rather than be OOM-killed.")
    targets = NODE_FORMS
    default_target = "random"
    duration_s = 20.0
    heal_at = "the leaked memory is released"
    words = r"\bleak\b"
    Params = LeakParams
    needs = frozenset({"chaos_endpoint"})  # harness.servers.CHAOS_ENDPOINT (which imports trio)

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        return f"leak {p.mb_per_s:g} MB/s on {on(target)}"

    async def inject(self, ctx: FaultContext) -> None:
        import httpx  # here, not at import time: the TUI reads this module

        topology = ctx.require_topology(self.kind)
        self._nodes = ctx.nodes(self.kind, self.target)
        self.resolved = ",".join(n.name for n in self._nodes)
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            for node in self._nodes:
                response = await client.post(
                    f"{node.chaos_url}/chaos/leak", params={"mb_per_s": self.params.mb_per_s},
                    headers={"x-chaos-token": topology.chaos_token})
                if response.status_code != 200:
                    raise FaultError(f"{node.name} refused the leak: {response.status_code} "
                                     f"{response.text[:200]}")

    async def heal(self, ctx: FaultContext) -> None:
        import httpx
        import trio

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
