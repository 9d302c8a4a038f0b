"""The fault interface, the context faults act on, and the registry.

A fault is one small class per module (after Toxiproxy's one-toxic-per-file layout): it
registers itself under its kind, takes its target and parameters, and implements two awaitable
steps, ``inject`` and ``heal``. The nemesis (harness.nemesis) records both in the history.
Everything a fault may touch comes through :class:`FaultContext`, so a fault can be exercised
against a real topology in a test without the rest of the harness.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from harness.topology import NodeProcess, Topology
    from harness.toxiproxy import Proxy

__all__ = ["FAULTS", "Fault", "FaultContext", "FaultError", "make_fault", "register"]


class FaultError(RuntimeError):
    """A fault could not be injected or healed (bad target, or refused in this mode)."""


@dataclass
class FaultContext:
    """What faults act on. ``topology`` is None against an external ``--target``."""

    topology: Topology | None
    rng: random.Random
    # Client-fleet controls (the harness's fleet supervisor implements them).
    stall_clients: Callable[[float, float], Awaitable[int]] | None = None
    storm: Callable[[int, float], Awaitable[int]] | None = None

    def require_topology(self, kind: str) -> Topology:
        if self.topology is None:
            raise FaultError(
                f"{kind} needs control of the cluster's processes and proxies; it cannot run "
                "against an external --target (only client-side faults can)")
        return self.topology

    def nodes(self, kind: str, target: str) -> list[NodeProcess]:
        """Resolve node-<n> / random / all to the running node processes."""
        topology = self.require_topology(kind)
        if target == "all":
            return list(topology.nodes.values())
        if target == "random":
            up = [n for n in topology.nodes.values() if n.state.value == "up"]
            if not up:
                raise FaultError(f"{kind}: no node is up to pick at random")
            return [self.rng.choice(up)]
        if target not in topology.nodes:
            raise FaultError(f"{kind}: no node {target!r} (nodes: {sorted(topology.nodes)})")
        return [topology.nodes[target]]

    def links(self, kind: str, target: str) -> list[tuple[str, Proxy]]:
        """Resolve a link target to (name, proxy) pairs.

        clients, clients->lb: every lane's entry; clients->lb[i]: one lane; lb: every
        lb->node link; lb[i]->node-<n> / lb->node-<n> / lb->random / lb->all; redis: every
        node->redis link; node-<n>->redis, random->redis, all->redis.
        """
        topology = self.require_topology(kind)
        names = sorted(topology.proxies)

        def matching(predicate: Callable[[str], bool]) -> list[tuple[str, Proxy]]:
            found = [(n, topology.proxies[n]) for n in names if predicate(n)]
            if not found:
                raise FaultError(f"{kind}: no link matches {target!r} (links: {names})")
            return found

        if target in ("clients", "clients->lb"):
            return matching(lambda n: n.startswith("clients->lb"))
        if target.startswith("clients->lb["):
            return matching(lambda n: n == target)
        if target == "lb":
            return matching(lambda n: n.startswith("lb[") and "->node-" in n)
        if target == "redis":
            return matching(lambda n: n.endswith("->redis"))
        left, _, right = target.partition("->")
        if right == "redis":
            nodes = {n.name for n in self.nodes(kind, left)}
            return matching(lambda n: n.endswith("->redis") and n.split("->")[0] in nodes)
        if left.startswith("lb"):
            nodes = {n.name for n in self.nodes(kind, right)}
            lane = left[2:]  # "" or "[i]"
            return matching(lambda n: n.startswith(f"lb{lane}" if lane else "lb[")
                            and n.split("->")[1] in nodes)
        raise FaultError(f"{kind}: {target!r} is not a link target")


class Fault:
    """Base of every fault: ``inject`` then, ``hold_s`` later, ``heal``."""

    kind: ClassVar[str]
    #: False for faults that only act on the client side (allowed with --target).
    needs_cluster: ClassVar[bool] = True
    #: Server features (harness.servers) the fault needs; on a server without them the
    #: nemesis skips it and records why.
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, target: str, params: Mapping[str, Any], duration_s: float | None) -> None:
        self.target = target
        self.params = dict(params)
        self.duration_s = duration_s
        self.resolved = target
        #: What the fault saw happen (connections opened, watchdog exits...), recorded with
        #: its heal so a report shows the fault had the effect it is named for.
        self.observed: dict[str, Any] = {}

    @property
    def hold_s(self) -> float:
        """Seconds between the end of the injection and the heal."""
        return self.duration_s or 0.0

    async def inject(self, ctx: FaultContext) -> None:
        raise NotImplementedError

    async def heal(self, ctx: FaultContext) -> None:
        """Undo the fault; instantaneous faults have nothing to undo."""


FAULTS: dict[str, type[Fault]] = {}


def register(cls: type[Fault]) -> type[Fault]:
    FAULTS[cls.kind] = cls
    return cls


def make_fault(kind: str, target: str, params: Mapping[str, Any],
               duration_s: float | None) -> Fault:
    from harness import faults  # noqa: F401 - importing the package registers every kind

    try:
        cls = FAULTS[kind]
    except KeyError:
        raise FaultError(f"unknown fault kind {kind!r}; known: {sorted(FAULTS)}") from None
    return cls(target, params, duration_s)
