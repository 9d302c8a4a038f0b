"""The fault-target grammar: the one place that parses, validates, enumerates and resolves
what a fault hits.

A target is written as in an experiment file (``node-2``, ``random``, ``clients->lb[0]``,
``lb->node-1``, ``all->redis`` ...). Its *form* (``node``, ``lb_link`` ...) is what a fault
kind lists as acceptable; :func:`parse` classifies a string, :func:`expected` words a list of
forms for an error message, :func:`choices` lists the targets a kind can take in one cluster
and :func:`resolve` maps a target to the nodes or links it reaches, over names only (the
running harness's FaultContext resolves to processes and proxies through it). Pure Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["FORMS", "LINK_FORMS", "NODE_FORMS", "TOKEN", "ClusterNames", "Target", "choices",
           "expected", "find_all", "parse", "resolve"]

_NODE: Final = r"node-[1-9][0-9]*"
_LB: Final = r"lb(?:\[[0-9]+\])?"  # lb or one load-balancer lane, lb[0]
#: form: (regex, how it is written in docs and errors, what it means)
FORMS: Final[dict[str, tuple[str, str, str]]] = {
    "node": (_NODE, "node-<n>", "one node, e.g. `node-2`"),
    "random": ("random", "random", "one node chosen with the experiment's seed"),
    "all": ("all", "all", "every node"),
    "redis": ("redis", "redis", "Redis itself, or every node->redis link"),
    "clients": ("clients", "clients", "every clients->lb link (all load-balancer lanes)"),
    "lb": (_LB, "lb", "the load balancer's entry point"),
    "client_link": (rf"clients->{_LB}", "clients->lb",
                    "`clients->lb` or one lane `clients->lb[0]`"),
    "lb_link": (rf"{_LB}->(?:{_NODE}|random|all)", "lb->node-<n>",
                "`lb->node-1` (also `lb->all`, `lb->random`, `lb[0]->node-1`)"),
    "redis_link": (rf"(?:{_NODE}|random|all)->redis", "node-<n>->redis",
                   "`node-1->redis` (also `all->redis`, `random->redis`)"),
}
_COMPILED: Final = {form: re.compile(regex) for form, (regex, _, _) in FORMS.items()}
#: What link faults (one Toxiproxy toxic per proxy) and node faults accept.
LINK_FORMS: Final = ("clients", "redis", "client_link", "lb_link", "redis_link")
NODE_FORMS: Final = ("node", "random", "all")


#: A target written in free text (a palette phrase), longest form first so that node-1->redis
#: is one target, not node-1; loose (``node-0``) so that a bad number is refused, not skipped.
TOKEN: Final = re.compile(
    r"(?<![\w\[>-])("
    r"clients->lb(?:\[\d+\])?"
    r"|lb(?:\[\d+\])?->(?:node-\d+|random|all)"
    r"|(?:node-\d+|random|all)->redis"
    r"|node-\d+|lb\[\d+\]|lb|clients|redis|random|all"
    r")(?![\w\]-])")


def find_all(text: str) -> list[str]:
    """The targets a phrase names, in order (checked later, against a kind and a cluster)."""
    return TOKEN.findall(text)


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed target: its text, its form, and the node it names, if any."""

    text: str
    cls: str
    node: int | None = None


def parse(text: str) -> Target | None:
    """Classify a target string; None if it matches no form (existence is not checked)."""
    for form, pattern in _COMPILED.items():
        if pattern.fullmatch(text):
            m = re.search(r"node-([0-9]+)", text)
            return Target(text, form, int(m.group(1)) if m else None)
    return None


def expected(forms: Sequence[str]) -> str:
    """``a target 'node-<n>', 'random' or 'all'``."""
    written = [f"'{FORMS[f][1]}'" for f in forms]
    return "a target " + (written[0] if len(written) == 1
                          else ", ".join(written[:-1]) + " or " + written[-1])


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


def choices(forms: Sequence[str], default: str, cluster: ClusterNames) -> list[str]:
    """Every target of ``forms`` that exists in ``cluster``, ``default`` first."""
    out: list[str] = []
    for form in forms:
        if form == "node":
            out += cluster.nodes
        elif form == "clients" and "client_link" in forms:
            # a link fault on "clients" needs the clients' proxies (a run has them only where
            # its schedule needs them, or with proxies = "all")
            if any(n.startswith("clients->") for n in cluster.links):
                out.append(form)
        elif form in ("random", "all", "redis", "clients"):
            out.append(form)
        elif form == "lb":
            out += ["lb", *cluster.lanes]
        elif form == "client_link":
            out += [n for n in cluster.links if n.startswith("clients->")]
        elif form == "lb_link":
            out += [n for n in cluster.links if n.startswith("lb")]
        elif form == "redis_link":
            out += [n for n in cluster.links if n.endswith("->redis")]
    unique = list(dict.fromkeys(out))
    if default in unique:
        unique.remove(default)
        unique.insert(0, default)
    return unique


def _first_node(part: str, cluster: ClusterNames) -> list[str]:
    if part == "all":
        return list(cluster.nodes)
    if part == "random":
        return list(cluster.nodes[:1])  # any one of them; the nemesis picks among the up ones
    return [part] if part in cluster.nodes else []


def resolve(target: str, cluster: ClusterNames,
            nodes_of: Callable[[str], list[str]] | None = None) -> list[str]:
    """The node or link names ``target`` reaches in ``cluster``; [] when it reaches nothing.

    ``nodes_of`` resolves ``node-<n>`` / ``random`` / ``all`` (the running harness picks a
    random node among those up); by default any node stands for ``random``. ``redis`` is every
    node->redis link (Redis itself when the cluster has none); ``clients`` every lane's
    clients->lb link; ``lb`` the load balancer's lanes.
    """
    pick = nodes_of or (lambda part: _first_node(part, cluster))
    links = sorted(cluster.links)
    if target in ("random", "all") or (target.startswith("node-") and "->" not in target):
        return pick(target)
    if target == "redis":
        return [n for n in links if n.endswith("->redis")] or ["redis"]
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
        nodes = set(pick(left))
        return [n for n in links if n.endswith("->redis") and n.split("->")[0] in nodes]
    if left.startswith("lb") and right:
        nodes = set(pick(right))
        lane = left[2:]  # "" or "[i]"
        return [n for n in links if n.startswith(f"lb{lane}" if lane else "lb[")
                and n.split("->")[1] in nodes]
    return []
