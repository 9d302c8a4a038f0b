"""Interactive fault requests (control.sock, the TUI's fault dialog and command palette),
checked exactly as an experiment file's ``[[faults]]`` entry is checked, then against the
names of the cluster that is to run them.

A typed fault must never change meaning on its way in: ``node-9`` in a three-node cluster,
``-5`` ms or a latency "on node-2" (latency acts on links) are refused with a message naming
what is valid, never replaced by a default. The schema is ``harness.experiment``'s (the same
words as for a bad experiment file); this module only adds what a file cannot know: which
nodes and links exist. Pure Python (no trio): the TUI imports it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .experiment import FAULT_KEYS, FAULT_KINDS, ExperimentError, Phases, _Loader

__all__ = ["CheckedFault", "ClusterNames", "FaultRequestError", "check_fault",
           "resolve_target", "valid_targets"]

_LINK_KINDS = ("latency", "bandwidth", "reset_peer", "slicer")
_COMMON = {k.name for k in FAULT_KEYS}


class FaultRequestError(ValueError):
    """The request is refused; ``str()`` says why and what would be valid."""


@dataclass(frozen=True)
class ClusterNames:
    """The names a fault can reach in one cluster: its nodes and its Toxiproxy links."""

    nodes: tuple[str, ...]
    links: tuple[str, ...] = ()

    @property
    def lanes(self) -> tuple[str, ...]:
        found = {m.group(1) for link in self.links
                 if (m := re.match(r"(?:clients->)?(lb\[\d+\])", link))}
        return tuple(sorted(found))


@dataclass(frozen=True)
class CheckedFault:
    """A request the schema and the cluster accept. ``params`` has every key of the kind;
    ``duration_s`` is None for kinds without a duration and for "until healed"."""

    kind: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None


def _join(names: Sequence[str], limit: int = 8) -> str:
    shown = list(names[:limit])
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _nodes_of(part: str, cluster: ClusterNames) -> list[str]:
    if part == "all":
        return list(cluster.nodes)
    if part == "random":
        return list(cluster.nodes[:1])  # any one of them; the nemesis picks among the up ones
    return [part] if part in cluster.nodes else []


def resolve_target(target: str, cluster: ClusterNames) -> list[str]:
    """The nodes or links ``target`` reaches in ``cluster`` (the rules of
    harness.faults.base.FaultContext, over names only); [] when it reaches nothing."""
    links = sorted(cluster.links)
    if target in ("random", "all") or (target.startswith("node-") and "->" not in target):
        return _nodes_of(target, cluster)
    if target == "redis":
        return ["redis"]
    if target in ("clients", "clients->lb"):
        return [n for n in links if n.startswith("clients->lb")]
    if target.startswith("clients->lb["):
        return [n for n in links if n == target]
    if target == "lb":
        return list(cluster.lanes) or ["lb"]
    if re.fullmatch(r"lb\[\d+\]", target):
        return [target] if target in cluster.lanes else []
    left, _, right = target.partition("->")
    if right == "redis":
        nodes = set(_nodes_of(left, cluster))
        return [n for n in links if n.endswith("->redis") and n.split("->")[0] in nodes]
    if left.startswith("lb") and right:
        nodes = set(_nodes_of(right, cluster))
        lane = left[2:]
        return [n for n in links if n.startswith(f"lb{lane}" if lane else "lb[")
                and n.split("->")[1] in nodes]
    return []


def valid_targets(kind: str, cluster: ClusterNames) -> list[str]:
    """Every target ``kind`` accepts in ``cluster``, its default first."""
    spec = FAULT_KINDS[kind]
    out: list[str] = []
    for cls in spec.targets:
        if cls == "node":
            out += cluster.nodes
        elif cls == "clients" and "client_link" in spec.targets:
            # a link fault on "clients" needs the clients' proxies (the run has them only
            # where its schedule needs them, or with proxies = "all")
            if any(n.startswith("clients->") for n in cluster.links):
                out.append(cls)
        elif cls in ("random", "all", "redis", "clients"):
            out.append(cls)
        elif cls == "lb":
            out += ["lb", *cluster.lanes]
        elif cls == "client_link":
            out += [n for n in cluster.links if n.startswith("clients->")]
        elif cls == "lb_link":
            out += [n for n in cluster.links if n.startswith("lb")]
        elif cls == "redis_link":
            out += [n for n in cluster.links if n.endswith("->redis")]
    unique = list(dict.fromkeys(out))
    if spec.default_target in unique:
        unique.remove(spec.default_target)
        unique.insert(0, spec.default_target)
    return unique


def _node_links_hint(kind: str, node: str, cluster: ClusterNames | None) -> str:
    if cluster is None:
        return f"; {kind} acts on links, e.g. lb[0]->{node} or {node}->redis"
    links = [n for n in cluster.links if n.endswith(f"->{node}") or n.startswith(f"{node}->")]
    if not links:
        return f"; {kind} acts on links, not on a node"
    return f"; {kind} acts on links: {node}'s are {' and '.join(links)}"


def check_fault(kind: object, target: object, params: object, duration_s: object,
                cluster: ClusterNames | None = None, *,
                until_healed: bool = True) -> CheckedFault:
    """Check one interactive fault; FaultRequestError saying why it is refused.

    ``target`` None or "" means the kind's default target; ``params`` may leave keys out
    (defaults); ``duration_s`` None means "until healed" (allowed when ``until_healed``) for
    kinds with a duration. ``cluster`` None skips the existence checks (an external
    ``--target``, or a cluster whose names are not known yet).
    """
    if not isinstance(kind, str) or kind not in FAULT_KINDS:
        close = difflib.get_close_matches(str(kind), list(FAULT_KINDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FaultRequestError(f"unknown fault kind {kind!r}{hint}; known: "
                                + ", ".join(FAULT_KINDS))
    spec = FAULT_KINDS[kind]
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise FaultRequestError(f"params: expected an object of {kind}'s parameters, "
                                f"got {params!r}")
    clash = sorted(set(params) & _COMMON)
    if clash:
        raise FaultRequestError(f"params: {clash[0]!r} is not a parameter of {kind} (give "
                                "target and duration_s beside params)")
    raw: dict[str, Any] = {"at_s": 0.0, "kind": kind, **params}
    if target not in (None, ""):
        raw["target"] = target
    if duration_s is not None:
        raw["duration_s"] = duration_s
    elif spec.duration_s is not None and not until_healed:
        raw["duration_s"] = spec.duration_s
    try:
        fault = _Loader("fault").fault(0, raw, Phases())
    except ExperimentError as exc:
        key = exc.key.removeprefix("faults[0].").removeprefix("faults[0]")
        message = f"{key}: {exc.problem}" if key else exc.problem
        if key == "target" and isinstance(target, str) and kind in _LINK_KINDS \
                and re.fullmatch(r"node-\d+", target):
            message += _node_links_hint(kind, target, cluster)
        raise FaultRequestError(message) from None
    # "clients" of a fault that is not a link fault (slow_consumers) is the client fleet,
    # which every run has; as a link fault it is the clients' proxies, which a run may lack.
    fleet = fault.target == "clients" and "client_link" not in FAULT_KINDS[fault.kind].targets
    if cluster is not None and not fleet and not resolve_target(fault.target, cluster):
        raise FaultRequestError(_missing(kind, fault.target, cluster))
    duration = fault.duration_s if "duration_s" in raw else None
    return CheckedFault(fault.kind, fault.target, dict(fault.params), duration)


def _missing(kind: str, target: str, cluster: ClusterNames) -> str:
    names = re.findall(r"node-\d+", target)
    absent = [n for n in names if n not in cluster.nodes]
    if absent:
        return (f"target: no {absent[0]} in this cluster; its nodes are "
                f"{_join(cluster.nodes)} (or random, all)")
    lanes = re.findall(r"lb\[\d+\]", target)
    absent = [lane for lane in lanes if lane not in cluster.lanes]
    if absent and cluster.lanes:
        return (f"target: no load-balancer lane {absent[0]} in this cluster; its lanes are "
                f"{_join(cluster.lanes)}")
    client_side = bool(lanes) or target.startswith("clients")
    if client_side and not any(n.startswith("clients->") for n in cluster.links) \
            and "client_link" in FAULT_KINDS[kind].targets:
        return (f"target: {target!r}: this run has no proxy on the clients' side (the "
                "experiment's faults need none; proxies = \"all\" in [cluster] adds them); "
                f"{kind} can target {_join(valid_targets(kind, cluster))}")
    return (f"target: {target!r} reaches nothing in this cluster; {kind} can target "
            f"{_join(valid_targets(kind, cluster))}")
