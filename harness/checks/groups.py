"""Totals per client group (pure): the Python fleet next to each ``[[client_groups]]`` entry.

A viewer's group is its process name without the trailing ``-<n>``: ``client-17`` is the
fleet's, ``pusher-js-3`` the ``pusher-js`` group's. A run that mixes a resuming fleet with plain
pusher-js then says where the loss is (e.g. fleet 0 lost, pusher-js 40 lost in 12 of 60
viewers), which the overall totals cannot.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from .delivery import ViewerDelivery
from .model import RunData
from .order import ViewerOrder

__all__ = ["FLEET", "group_of", "judge_groups"]

FLEET: Final = "fleet"
_SUFFIX: Final = re.compile(r"-\d+$")


def group_of(process: str) -> str:
    """The group of a viewer's process name (``client-<n>`` is the Python fleet's)."""
    name = _SUFFIX.sub("", process)
    return FLEET if name == "client" else name


def judge_groups(data: RunData, delivery: Mapping[str, ViewerDelivery],
                 order: Mapping[str, ViewerOrder]) -> dict[str, dict[str, int]]:
    """Per group: clients, unfinished, lost (pairs) and clients_losing, duplicated, reordered,
    unexpected. Groups in first-seen order, the fleet first."""
    groups: dict[str, dict[str, int]] = {}
    for process in sorted(data.viewers, key=lambda p: group_of(p) != FLEET):
        entry = groups.setdefault(group_of(process), dict.fromkeys(
            ("clients", "unfinished", "lost", "clients_losing", "duplicated", "reordered",
             "unexpected"), 0))
        entry["clients"] += 1
        entry["unfinished"] += data.viewers[process].drain is None
        vd = delivery.get(process)
        if vd is not None:
            entry["lost"] += vd.lost
            entry["clients_losing"] += vd.lost > 0
            entry["unexpected"] += vd.unexpected
        vo = order.get(process)
        if vo is not None:
            entry["duplicated"] += vo.duplicated
            entry["reordered"] += vo.reordered
    return groups
