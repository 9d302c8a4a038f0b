"""Duplicates and reorders, judged on server positions for every delivery (pure).

duplicated
    Every delivery of a position the subscription already held (the extra copies).
reordered
    A first delivery of a position below the highest position already held in its epoch, or
    of a position in an epoch older than one already received (epochs are ranked by the first
    invoke of an update seen in them). Every delivery counts, acknowledged or not: positions
    are what the server promised to deliver in order.

Deliveries without a position (foreign events) are judged by id: a repeated id is a
duplicate, and among acknowledged updates a ``seq`` below the highest already delivered is a
reorder (an indeterminate publish may have been applied at any moment, so it is left out).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from .model import Pub, RunData, Sub

__all__ = ["OrderResult", "ViewerOrder", "judge_order"]

DETAIL_IDS: Final = 20


@dataclass
class ViewerOrder:
    duplicated: int = 0
    duplicated_ids: list[str] = field(default_factory=list)
    reordered: int = 0
    reordered_ids: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return bool(self.duplicated or self.reordered)


@dataclass
class OrderResult:
    totals: Counter[str]
    viewers: dict[str, ViewerOrder]


class _Held:
    """Disjoint sorted intervals of held offsets in one epoch."""

    __slots__ = ("spans", "top")

    def __init__(self) -> None:
        self.spans: list[list[int]] = []
        self.top = -1

    def overlap(self, lo: int, hi: int) -> int:
        n = 0
        k = max(0, bisect_right(self.spans, [lo, math.inf]) - 1)  # type: ignore[list-item]
        while k < len(self.spans) and self.spans[k][0] <= hi:
            a, b = self.spans[k]
            n += max(0, min(b, hi) - max(a, lo) + 1)
            k += 1
        return n

    def add(self, lo: int, hi: int) -> None:
        spans = self.spans
        k = bisect_left(spans, [lo, -1])
        if k > 0 and spans[k - 1][1] >= lo - 1:
            k -= 1
        j = k
        while j < len(spans) and spans[j][0] <= hi + 1:
            lo = min(lo, spans[j][0])
            hi = max(hi, spans[j][1])
            j += 1
        spans[k:j] = [[lo, hi]]
        self.top = max(self.top, hi)


def _epoch_ranks(data: RunData) -> dict[tuple[str, str], float]:
    ranks: dict[tuple[str, str], float] = {}
    for key, offsets in data.table.items():
        first = math.inf
        for pid in offsets.values():
            pub = data.pubs.get(pid)
            if pub is not None and pub.invoke < first:
                first = pub.invoke
        ranks[key] = first
    return ranks


def judge_order(data: RunData) -> OrderResult:
    totals: Counter[str] = Counter()
    viewers: dict[str, ViewerOrder] = {}
    ranks = _epoch_ranks(data)
    for process, viewer in data.viewers.items():
        vo = ViewerOrder()
        for sub in viewer.subs.values():
            if sub.runs:
                _runs(sub, ranks, data.table, vo)
            if sub.id_delivers:
                _ids(sub, data.pubs, vo)
        totals["duplicated"] += vo.duplicated
        totals["reordered"] += vo.reordered
        viewers[process] = vo
    return OrderResult(totals, viewers)


def _label(table: Mapping[tuple[str, str], Mapping[int, str]], ch: str, epoch: str,
           offset: int) -> str:
    pid = table.get((ch, epoch), {}).get(offset, "?")
    return f"{ch}:{pid} (offset {offset})"


def _runs(sub: Sub, ranks: Mapping[tuple[str, str], float],
          table: Mapping[tuple[str, str], Mapping[int, str]], vo: ViewerOrder) -> None:
    ch = sub.channel
    held: dict[str, _Held] = {}
    newest = -math.inf  # rank of the newest epoch received so far
    for epoch, lo, hi in sub.runs:
        h = held.get(epoch)
        if h is None:
            h = held[epoch] = _Held()
        rank = ranks.get((ch, epoch), math.inf)
        dup = h.overlap(lo, hi)
        if dup:
            vo.duplicated += dup
            if len(vo.duplicated_ids) < DETAIL_IDS:
                vo.duplicated_ids.append(_label(table, ch, epoch, lo) + f" x{dup}")
        fresh = hi - lo + 1 - dup
        if fresh:
            if rank < newest:
                late = fresh  # the whole run arrived after a newer epoch
            else:
                below = min(hi, h.top - 1)
                late = (below - lo + 1 - h.overlap(lo, below)) if below >= lo else 0
            if late:
                vo.reordered += late
                if len(vo.reordered_ids) < DETAIL_IDS:
                    vo.reordered_ids.append(
                        _label(table, ch, epoch, lo) + f" after offset {h.top}")
        newest = max(newest, rank) if rank != math.inf else newest
        h.add(lo, hi)


def _ids(sub: Sub, pubs: Mapping[str, Pub], vo: ViewerOrder) -> None:
    ch = sub.channel
    seen: set[str] = set()
    max_seq = -math.inf
    for _t, pid in sub.id_delivers:
        pub = pubs.get(pid)
        if pub is None or pub.status == "fail" or pub.channel != ch:
            continue  # unexpected, counted by the delivery check
        if pid in seen:
            vo.duplicated += 1
            if len(vo.duplicated_ids) < DETAIL_IDS:
                vo.duplicated_ids.append(f"{ch}:{pid}")
            continue
        seen.add(pid)
        if pub.seq is not None and pub.status == "ok":
            if pub.seq < max_seq:
                vo.reordered += 1
                if len(vo.reordered_ids) < DETAIL_IDS:
                    vo.reordered_ids.append(f"{ch}:{pid} (seq {pub.seq} after {int(max_seq)})")
            else:
                max_seq = pub.seq
