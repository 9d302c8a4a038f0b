"""The fault-kind interface, the context faults act on, and the registry.

A fault kind is one class in one module (after Toxiproxy's one-toxic-per-file layout). The
class declares everything about its kind: its name, a one-line summary, the target forms it
accepts (harness.targets), its default duration, its parameter schema (``Params``, a pydantic
dataclass whose fields carry default, unit, constraints and docs), how the palette recognises
it in a typed phrase, and the sentence reports and the TUI use for it. An instance is one
fault being run: ``inject``, then ``hold_s`` later, ``heal``; the nemesis (harness.nemesis)
records both in the history. Everything a fault may touch comes through :class:`FaultContext`,
so a fault can be exercised against a real topology in a test without the rest of the harness.
Pure Python at import time (no trio): the TUI reads the same classes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, dataclass_transform

from pydantic import ConfigDict, Field
from pydantic import dataclasses as pydantic_dataclasses

from server.schema import Key, keys, validate

from .. import targets as target_grammar

if TYPE_CHECKING:
    from harness.netdelay import DelayLink
    from harness.topology import NodeProcess, Topology
    from harness.toxiproxy import Proxy

__all__ = ["AFTER", "FAULTS", "FaultContext", "FaultError", "FaultKind", "NoParams",
           "make_fault", "on", "param", "parameters", "register"]

T = TypeVar("T")
_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
#: The palette phrase that sets a delay: "after 5 s".
AFTER = r"\bafter\s+{N}\s*(?:s|sec|secs|seconds?)?\b"


@dataclass_transform(frozen_default=True, field_specifiers=(Field,))
def parameters(cls: type[T]) -> type[T]:
    """Make ``cls`` a fault kind's parameter schema (a frozen pydantic dataclass)."""
    return pydantic_dataclasses.dataclass(frozen=True, config=_CONFIG)(cls)  # type: ignore[return-value]


def param(default: Any, unit: str, doc: str, *, expect: object = None,
          phrase: str | None = None, value: Any = None, scale: float = 1.0,
          strict: bool = True, **constraints: Any) -> Any:
    """One parameter (or experiment key): default, unit, doc, constraints (``ge=0``...).
    ``expect`` words what it accepts in errors and docs (an object may word it when asked);
    ``phrase`` is the regex that sets it in a palette phrase (``{N}`` a number, its first group
    the value times ``scale``; or ``value`` when given)."""
    extra: Any = {k: v for k, v in (("unit", unit), ("expect", expect), ("phrase", phrase),
                                    ("value", value), ("scale", scale)) if v is not None}
    if strict:  # a Literal takes no strict flag
        constraints["strict"] = True
    return Field(default, description=doc, json_schema_extra=extra, **constraints)


@parameters
class NoParams:
    """A kind without parameters."""


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

    def _link_names(self, kind: str, target: str) -> list[str]:
        """Resolve a link target to the names of the run's links (harness.targets.resolve)."""
        topology = self.require_topology(kind)
        known = topology.link_names
        names = target_grammar.ClusterNames(tuple(topology.nodes), known)
        found = [n for n in target_grammar.resolve(
            target, names, lambda part: [n.name for n in self.nodes(kind, part)])
            if n in known]
        if not found:
            raise FaultError(f"{kind}: no link matches {target!r} (links: {sorted(known)})")
        return found

    def links(self, kind: str, target: str) -> list[tuple[str, Proxy]]:
        """The Toxiproxy proxies a link target names (a link no Toxiproxy relays in this run
        is refused)."""
        topology = self.require_topology(kind)
        found = self._link_names(kind, target)
        unproxied = [n for n in found if n not in topology.proxies]
        if unproxied:
            raise FaultError(f"{kind}: {', '.join(unproxied)} has no Toxiproxy in this run "
                             "(cluster.client_link_faults = 'netfilter'): only latency can "
                             "be put on it")
        return [(n, topology.proxies[n]) for n in found]

    def toxic_links(self, kind: str, target: str) -> list[tuple[str, Proxy | DelayLink]]:
        """The links a target names, Toxiproxy proxies or netfilter delay links."""
        topology = self.require_topology(kind)
        return [(n, topology.proxies.get(n) or topology.delay_links[n])
                for n in self._link_names(kind, target)]


def on(target: str) -> str:
    """A target in a sentence: ``every node``, ``the clients' links``, ``node-2``."""
    return {"clients": "the clients' links", "redis": "every node's Redis link",
            "random": "a random node", "all": "every node"}.get(target, target)


class FaultKind:
    """Base of every fault kind. The class is the kind; an instance is one fault run."""

    kind: ClassVar[str]
    #: What the kind does (docs, TUI); its first sentence is the kind's one-line summary.
    summary: ClassVar[str]
    #: Target forms it accepts (harness.targets.FORMS) and the default.
    targets: ClassVar[tuple[str, ...]]
    default_target: ClassVar[str]
    #: When it heals, in words ("SIGCONT", "the restart, restart_after_s after the kill").
    heal_at: ClassVar[str]
    #: The regex that names the kind in a palette phrase ("kill node-2").
    words: ClassVar[str]
    Params: ClassVar[type] = NoParams
    #: The parameter that "for N s" sets in a phrase of a kind without a duration.
    for_param: ClassVar[str | None] = None
    #: Why the TUI asks before sending it (None: it need not).
    destructive: ClassVar[str | None] = None
    #: False for faults that only act on the client side (allowed with --target).
    needs_cluster: ClassVar[bool] = True
    #: Server features (harness.servers) the fault needs; on a server without them the
    #: nemesis skips it and records why.
    needs: ClassVar[frozenset[str]] = frozenset()
    #: The parameters as docs and forms show them (from ``Params``).
    keys: ClassVar[tuple[Key, ...]] = ()
    #: On the class: the default duration (None: the kind takes no duration_s); on a fault:
    #: the duration asked for (None: none, or held until healed).
    duration_s: float | None = None

    def __init__(self, target: str, params: Mapping[str, Any], duration_s: float | None) -> None:
        self.target = target
        self.params: Any = validate(self.Params, params)
        self.duration_s = duration_s
        self.resolved = target
        #: What the fault saw happen (connections opened, watchdog exits...), recorded with
        #: its heal so a report shows the fault had the effect it is named for.
        self.observed: dict[str, Any] = {}

    @classmethod
    def describe(cls, target: str, p: Any) -> str:
        """The fault in words, without its duration: ``kill node-2 (restart after 2 s)``."""
        return f"{cls.kind} on {target}"

    @classmethod
    def phrase_target(cls, text: str, tokens: list[str]) -> str | None:
        """The target a palette phrase names (checked later), or None for the default."""
        if "redis_link" in cls.targets and (m := re.search(
                r"\b(node-\d+|random|all)\s+(?:and|to|from)\s+redis\b", text)):
            return f"{m.group(1)}->redis"  # "between node-1 and redis": the node's Redis link
        return tokens[0] if tokens else None

    @property
    def hold_s(self) -> float:
        """Seconds between the end of the injection and the heal."""
        return self.duration_s or 0.0

    def inject_limit_s(self, ctx: FaultContext) -> float:
        """How long the inject may take before the nemesis records it as failed."""
        return 120.0

    async def inject(self, ctx: FaultContext) -> None:
        raise NotImplementedError

    async def heal(self, ctx: FaultContext) -> None:
        """Undo the fault; instantaneous faults have nothing to undo."""


FAULTS: dict[str, type[FaultKind]] = {}


def register(cls: type[FaultKind]) -> type[FaultKind]:
    cls.keys = keys(cls.Params)
    FAULTS[cls.kind] = cls
    return cls


def make_fault(kind: str, target: str, params: Mapping[str, Any],
               duration_s: float | None) -> FaultKind:
    try:
        cls = FAULTS[kind]
    except KeyError:
        raise FaultError(f"unknown fault kind {kind!r}; known: {sorted(FAULTS)}") from None
    return cls(target, params, duration_s)
