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

from . import targets
from .experiment import FAULT_KEYS, FAULT_KINDS, ExperimentError, parse_fault
from .targets import ClusterNames as ClusterNames

__all__ = ["CheckedFault", "ClusterNames", "FaultRequestError", "check_fault", "valid_targets"]

_COMMON = {k.name for k in FAULT_KEYS}


class FaultRequestError(ValueError):
    """The request is refused; ``str()`` says why and what would be valid."""


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


def valid_targets(kind: str, cluster: ClusterNames) -> list[str]:
    """Every target ``kind`` accepts in ``cluster``, its default first."""
    spec = FAULT_KINDS[kind]
    return targets.choices(spec.targets, spec.default_target, cluster)


def _is_link_kind(kind: str) -> bool:
    return "client_link" in FAULT_KINDS[kind].targets


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
        fault = parse_fault(raw)
    except ExperimentError as exc:
        key = exc.key.removeprefix("faults[0].").removeprefix("faults[0]")
        message = f"{key}: {exc.problem}" if key else exc.problem
        if key == "target" and isinstance(target, str) and _is_link_kind(kind) \
                and re.fullmatch(r"node-\d+", target):
            message += _node_links_hint(kind, target, cluster)
        raise FaultRequestError(message) from None
    # "clients" of a fault that is not a link fault (slow_consumers) is the client fleet,
    # which every run has; as a link fault it is the clients' proxies, which a run may lack.
    fleet = fault.target == "clients" and not _is_link_kind(fault.kind)
    if cluster is not None and not fleet and not targets.resolve(fault.target, cluster):
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
            and _is_link_kind(kind):
        return (f"target: {target!r}: this run has no proxy on the clients' side (the "
                "experiment's faults need none; proxies = \"all\" in [cluster] adds them); "
                f"{kind} can target {_join(valid_targets(kind, cluster))}")
    return (f"target: {target!r} reaches nothing in this cluster; {kind} can target "
            f"{_join(valid_targets(kind, cluster))}")
