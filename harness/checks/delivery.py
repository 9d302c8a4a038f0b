"""Who owed which update, and whether it arrived (pure).

owed
    Viewer *v* owes update *u* on channel *c* when *v* finished (it has a ``drain`` op), its
    **first** ``subscribe`` ``ok`` on *c* precedes *u*'s publish **invoke**, and *u* was known
    to exist before *v*'s drain: an ``ok`` publish completed before it, or, for a publish whose
    outcome is unknown (``info`` or never completed), any viewer received it before it (Jepsen
    ``set-full``: an indeterminate add that anyone read is owed by every reader that began
    before it). A later resubscribe, recovered or not, does not restart the obligation:
    ``recovered: false`` is the server admitting a gap, and that gap counts as lost.
delivered / lost
    Owed and received at least once / never received; ``owed = delivered + lost``. Every
    (viewer, update) pair is judged: an update with a server position is held when a run of the
    viewer's record covers that position, an update without one when its id was delivered.
unexpected
    Deliveries (every copy) of a position whose update was never published, whose publish
    failed, that belongs to another channel or that the server acknowledged at another
    position, plus deliveries of another update at a position already known, and id-only
    deliveries of unknown or failed ids.
extra_ok / indeterminate_delivered
    Distinct acknowledged updates a viewer received without owing them (history replayed from
    before its subscription) / distinct updates of unknown outcome it received.
unsubscribed
    A finished viewer's channel whose subscribe was invoked but never succeeded.

The counting is linear in the history: per channel the owed updates are ordered by invoke
time and indexed per epoch by offset, so a subscription's owed slice and the part of it its
runs cover are found by binary search; ids are listed only for subscriptions that lost
something.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from .model import Pub, RunData, Sub

__all__ = ["DETAIL_IDS", "DeliveryResult", "ViewerDelivery", "judge_delivery",
           "merged_intervals"]

DETAIL_IDS: Final = 20
OK, IND = 0, 1


@dataclass
class ViewerDelivery:
    lost: int = 0
    lost_ids: dict[str, list[str]] = field(default_factory=dict)
    unexpected: int = 0
    unexpected_ids: list[str] = field(default_factory=list)
    unsubscribed: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return bool(self.lost or self.unexpected or self.unsubscribed)


@dataclass
class DeliveryResult:
    totals: Counter[str]
    viewers: dict[str, ViewerDelivery]
    #: update id -> viewers that owed it and never got it (only when something was lost)
    lost_by_update: Counter[str]
    #: ids of the updates that can be owed (acknowledged, or indeterminate and observed)
    owable: dict[str, Pub]
    #: (channel, epoch) -> offset -> id of every position whose content is good
    known: dict[tuple[str, str], dict[int, str]]
    #: (channel, epoch) -> offset -> why the update there is not acceptable
    bad: dict[tuple[str, str], dict[int, str]]


def merged_intervals(runs: list[tuple[str, int, int]]) -> dict[str, list[tuple[int, int]]]:
    """The positions a subscription holds, per epoch, as sorted disjoint intervals."""
    per: dict[str, list[tuple[int, int]]] = {}
    for epoch, lo, hi in runs:
        per.setdefault(epoch, []).append((lo, hi))
    out: dict[str, list[tuple[int, int]]] = {}
    for epoch, spans in per.items():
        spans.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        out[epoch] = merged
    return out


class _Classes:
    """Positions of one (channel, epoch) whose update is good (ok or indeterminate), with prefix
    counts, so the good positions inside any interval are counted by binary search."""

    __slots__ = ("ind_prefix", "offsets", "ok_prefix")

    def __init__(self, entries: Mapping[int, int]) -> None:
        self.offsets = sorted(entries)
        ok = ind = 0
        self.ok_prefix = [0]
        self.ind_prefix = [0]
        for off in self.offsets:
            if entries[off] == OK:
                ok += 1
            else:
                ind += 1
            self.ok_prefix.append(ok)
            self.ind_prefix.append(ind)

    def count(self, lo: int, hi: int) -> tuple[int, int]:
        a = bisect_left(self.offsets, lo)
        b = bisect_right(self.offsets, hi)
        return self.ok_prefix[b] - self.ok_prefix[a], self.ind_prefix[b] - self.ind_prefix[a]


class _Channel:
    """The owable updates of one channel, in invoke order, indexed per epoch by offset."""

    __slots__ = ("by_epoch", "ends", "ids", "invokes", "late", "monotonic", "positions")

    def __init__(self, items: list[tuple[float, float, str, str | None, int]]) -> None:
        items.sort(key=lambda it: (it[0], it[4]))
        self.invokes = [it[0] for it in items]
        self.ends = [it[1] for it in items]
        self.ids = [it[2] for it in items]
        self.positions: list[tuple[str, int] | None] = [
            (it[3], it[4]) if it[3] is not None else None for it in items]
        self.by_epoch: dict[str, tuple[list[int], list[int]]] = {}
        for index, pos in enumerate(self.positions):
            if pos is not None:
                idx, offs = self.by_epoch.setdefault(pos[0], ([], []))
                idx.append(index)
                offs.append(pos[1])
        self.monotonic = all(all(a < b for a, b in itertools.pairwise(offs))
                             for _idx, offs in self.by_epoch.values())
        # Updates known only late (a completion or first sighting after some viewer's drain
        # is possible only at the very end): checked one by one against each drain.
        self.late = sorted(((end, i) for i, end in enumerate(self.ends)), reverse=True)

    def covered(self, start: int, spans: Mapping[str, list[tuple[int, int]]]) -> int:
        """How many owable updates from index ``start`` on lie inside ``spans``."""
        total = 0
        for epoch, intervals in spans.items():
            entry = self.by_epoch.get(epoch)
            if entry is None:
                continue
            idx, offs = entry
            if self.monotonic:
                b = bisect_left(idx, start)
                for lo, hi in intervals:
                    k1 = max(bisect_left(offs, lo), b)
                    k2 = bisect_right(offs, hi)
                    if k2 > k1:
                        total += k2 - k1
            else:
                for i, off in zip(idx, offs, strict=True):
                    if i >= start and _inside(intervals, off):
                        total += 1
        return total


def _inside(intervals: list[tuple[int, int]], offset: int) -> bool:
    k = bisect_right(intervals, (offset, math.inf)) - 1
    return k >= 0 and intervals[k][0] <= offset <= intervals[k][1]


def _holds(spans: Mapping[str, list[tuple[int, int]]], ids: set[str],
           pos: tuple[str, int] | None, pid: str) -> bool:
    if pos is not None:
        intervals = spans.get(pos[0])
        if intervals is not None and _inside(intervals, pos[1]):
            return True
    return pid in ids


def _first_seen(data: RunData) -> dict[str, float]:
    seen = {pid: entry[0] for pid, entry in data.latency.items()}
    return seen


def judge_delivery(data: RunData) -> DeliveryResult:
    totals: Counter[str] = Counter()
    pubs = data.pubs
    for pub in pubs.values():
        totals["published" if pub.status == "ok" else
               "failed" if pub.status == "fail" else "indeterminate"] += 1

    # What each position carried. The truth at a position is the update the server
    # acknowledged there; where no publish was acknowledged there, the one update of unknown
    # outcome (or acknowledged without a position) seen there. A position nothing good can
    # explain is bad: every delivery there is unexpected.
    assigned: dict[tuple[str, str, int], str] = {
        (p.channel, p.epoch, p.offset): p.id for p in pubs.values()
        if p.status == "ok" and p.offset >= 0}
    seen_at: dict[str, tuple[str, str, int]] = {}
    bad: dict[tuple[str, str], dict[int, str]] = {}
    known: dict[tuple[str, str], dict[int, str]] = {}
    classes_raw: dict[tuple[str, str], dict[int, int]] = {}
    positions = {(ch, e, off) for (ch, e), offsets in data.table.items() for off in offsets}
    for (channel, epoch, offset) in sorted(positions | set(assigned)):
        truth = assigned.get((channel, epoch, offset))
        why = ""
        if truth is None:
            candidates = data.observed.get((channel, epoch, offset)) or {
                data.table[(channel, epoch)][offset]}
            valid = []
            for pid in sorted(candidates):
                entry_pub = pubs.get(pid)
                if entry_pub is None:
                    why = f"{pid} (never published)"
                elif entry_pub.status == "fail":
                    why = f"{pid} (publish failed)"
                elif entry_pub.channel != channel:
                    why = f"{pid} (published on {entry_pub.channel})"
                elif entry_pub.offset >= 0:
                    why = (f"{pid} (acknowledged at offset {entry_pub.offset} epoch "
                           f"{entry_pub.epoch})")
                elif pid in seen_at:
                    why = f"{pid} (also seen at offset {seen_at[pid][2]})"
                else:
                    valid.append(entry_pub)
            if valid:
                truth = min(valid, key=lambda p: (p.invoke, p.id)).id
        if truth is None:
            bad.setdefault((channel, epoch), {})[offset] = why or "unknown update"
            continue
        seen_at[truth] = (channel, epoch, offset)
        known.setdefault((channel, epoch), {})[offset] = truth
        classes_raw.setdefault((channel, epoch), {})[offset] = \
            OK if pubs[truth].status == "ok" else IND
    classes = {key: _Classes(entries) for key, entries in classes_raw.items()}

    # The owable updates per channel: acknowledged ones, and indeterminate ones someone saw.
    first_seen = _first_seen(data)
    for viewer in data.viewers.values():
        for sub in viewer.subs.values():
            for t, pid in sub.id_delivers:
                if t < first_seen.get(pid, math.inf):
                    first_seen[pid] = t
    owable: dict[str, Pub] = {}
    per_channel: dict[str, list[tuple[float, float, str, str | None, int]]] = {}
    for pub in pubs.values():
        if pub.status == "ok":
            end = pub.done
            if pub.offset >= 0:
                pos: tuple[str, int] | None = (pub.epoch, pub.offset)
            else:
                where = seen_at.get(pub.id)
                pos = (where[1], where[2]) if where is not None else None
        elif pub.status != "fail" and pub.id in first_seen:
            end = first_seen[pub.id]
            where = seen_at.get(pub.id)
            pos = (where[1], where[2]) if where is not None else None
        else:
            continue
        if pos is not None and pos[1] in bad.get((pub.channel, pos[0]), {}):
            pos = None
        owable[pub.id] = pub
        per_channel.setdefault(pub.channel, []).append(
            (pub.invoke, end, pub.id, None if pos is None else pos[0],
             -1 if pos is None else pos[1]))
    channels = {ch: _Channel(items) for ch, items in per_channel.items()}

    # Positions whose table entry is not the truth, per worker (None: the merged table).
    mismatch: dict[str | None, set[tuple[str, str, int]]] = {}
    for worker, tables in [*data.worker_tables.items(), (None, data.table)]:
        wrong_here: set[tuple[str, str, int]] = set()
        for (channel, epoch), offsets in tables.items():
            truths = known.get((channel, epoch), {})
            for offset, pid in offsets.items():
                truth = truths.get(offset)
                if truth is not None and pid != truth:
                    wrong_here.add((channel, epoch, offset))
        mismatch[worker] = wrong_here
    lost_by_update: Counter[str] = Counter()
    ctx = _Context(channels, classes, bad, known, pubs, mismatch, data.worker_tables,
                   data.table, totals, lost_by_update)
    viewers: dict[str, ViewerDelivery] = {}
    for process, viewer in data.viewers.items():
        vd = ViewerDelivery()
        finished = viewer.drain is not None
        drain = viewer.drain if viewer.drain is not None else math.inf
        for sub in viewer.subs.values():
            _judge_sub(sub, finished, drain, ctx, vd)
            if finished and sub.invoked and sub.first_ok == math.inf:
                vd.unsubscribed.append(sub.channel)
        vd.unsubscribed.sort()
        totals["unsubscribed"] += len(vd.unsubscribed)
        viewers[process] = vd
    totals["clients"] = len(data.viewers)
    return DeliveryResult(totals, viewers, lost_by_update, owable, known, bad)


@dataclass
class _Context:
    channels: Mapping[str, _Channel]
    classes: Mapping[tuple[str, str], _Classes]
    bad: Mapping[tuple[str, str], Mapping[int, str]]
    known: Mapping[tuple[str, str], Mapping[int, str]]
    pubs: Mapping[str, Pub]
    #: per fleet worker (None: the merged table), the positions whose entry is not the truth
    mismatch: Mapping[str | None, set[tuple[str, str, int]]]
    worker_tables: Mapping[str, Mapping[tuple[str, str], Mapping[int, str]]]
    table: Mapping[tuple[str, str], Mapping[int, str]]
    totals: Counter[str]
    lost_by_update: Counter[str]


def _occurrences(runs: list[tuple[str, int, int]], epoch: str, offset: int) -> int:
    return sum(1 for e, lo, hi in runs if e == epoch and lo <= offset <= hi)


def _carried(sub: Sub, ctx: _Context) -> tuple[set[tuple[str, int]], list[tuple[str, int, str]]]:
    """Where the subscription's runs did not carry the truth: (positions in its runs where it
    never received the true update, [(epoch, offset, id) of every delivery of a wrong id]).
    Only positions that can differ are looked at: those where the viewer's worker table (or,
    for plain deliver ops, the delivery itself) disagrees with the truth, and conflicts."""
    ch = sub.channel
    carried: dict[tuple[str, int], Counter[str]] = {}
    if sub.delivers and not sub.has_record:
        for _t, pid, off, epoch in sub.delivers:
            truth = ctx.known.get((ch, epoch), {}).get(off)
            if (truth is not None and pid != truth) or (epoch, off) in carried:
                carried.setdefault((epoch, off), Counter())
        for _t, pid, off, epoch in sub.delivers:
            if (epoch, off) in carried:
                carried[(epoch, off)][pid] += 1
    else:
        suspects = {(e, off) for c, e, off in ctx.mismatch.get(sub.worker, ()) if c == ch}
        suspects |= {(e, off) for e, off, _pid in sub.conflicts}
        if not suspects:
            return set(), []
        table = (ctx.worker_tables.get(sub.worker, {}) if sub.worker is not None
                 else ctx.table)
        for epoch, off in suspects:
            n = _occurrences(sub.runs, epoch, off)
            if not n:
                continue
            wrong = Counter(pid for e, o, pid in sub.conflicts if (e, o) == (epoch, off))
            first = table.get((ch, epoch), {}).get(off) or ctx.table.get((ch, epoch), {}).get(
                off, "?")
            counts = Counter({first: n - sum(wrong.values())})
            counts.update(wrong)
            carried[(epoch, off)] = counts
    not_held: set[tuple[str, int]] = set()
    wrong_deliveries: list[tuple[str, int, str]] = []
    for (epoch, off), counts in carried.items():
        truth = ctx.known.get((ch, epoch), {}).get(off)
        if truth is None:
            continue  # a bad position: every delivery there is already unexpected
        if counts.get(truth, 0) <= 0:
            not_held.add((epoch, off))
        for pid, n in counts.items():
            if pid != truth and n > 0:
                wrong_deliveries += [(epoch, off, pid)] * n
    return not_held, wrong_deliveries


def _judge_sub(sub: Sub, finished: bool, drain: float, ctx: _Context,
               vd: ViewerDelivery) -> None:
    ch = sub.channel
    runs = sub.runs
    totals = ctx.totals
    spans = merged_intervals(runs) if runs else {}
    not_held, wrong = _carried(sub, ctx) if runs else (set(), [])
    # Deliveries, and what they carried.
    deliveries = sum(hi - lo + 1 for _e, lo, hi in runs) + len(sub.id_delivers)
    totals["deliveries"] += deliveries
    distinct_ok = distinct_ind = 0
    for epoch, intervals in spans.items():
        cls = ctx.classes.get((ch, epoch))
        for lo, hi in intervals:
            ok, ind = cls.count(lo, hi) if cls is not None else (0, 0)
            distinct_ok += ok
            distinct_ind += ind
    for epoch, off in not_held:
        if ctx.pubs[ctx.known[(ch, epoch)][off]].status == "ok":
            distinct_ok -= 1
        else:
            distinct_ind -= 1
    for epoch, lo, hi in runs:  # every copy of a bad position is an unexpected delivery
        cls = ctx.classes.get((ch, epoch))
        ok, ind = cls.count(lo, hi) if cls is not None else (0, 0)
        n_bad = hi - lo + 1 - ok - ind
        if n_bad:
            vd.unexpected += n_bad
            totals["unexpected"] += n_bad
            if len(vd.unexpected_ids) < DETAIL_IDS:
                why = ctx.bad.get((ch, epoch), {})
                for off in range(lo, hi + 1):
                    if len(vd.unexpected_ids) >= DETAIL_IDS:
                        break
                    if off not in ctx.known.get((ch, epoch), {}):
                        vd.unexpected_ids.append(
                            f"{ch}:{why.get(off, '?')} (offset {off})"
                            if off in why else f"{ch}:offset {off} (unknown update)")
    for epoch, off, pid in wrong:  # another update than the one acknowledged or seen there
        vd.unexpected += 1
        totals["unexpected"] += 1
        if len(vd.unexpected_ids) < DETAIL_IDS:
            vd.unexpected_ids.append(
                f"{ch}:{pid} (offset {off} carried {ctx.known[(ch, epoch)][off]})")
    id_set: set[str] = set()
    for _t, pid in sub.id_delivers:
        pub = ctx.pubs.get(pid)
        if pub is None or pub.status == "fail" or pub.channel != ch:
            vd.unexpected += 1
            totals["unexpected"] += 1
            if len(vd.unexpected_ids) < DETAIL_IDS:
                reason = ("never published" if pub is None else
                          "publish failed" if pub.status == "fail" else
                          f"published on {pub.channel}")
                vd.unexpected_ids.append(f"{ch}:{pid} ({reason})")
            continue
        if pid in id_set:
            continue
        id_set.add(pid)
        if pub.status == "ok":
            distinct_ok += 1
        else:
            distinct_ind += 1
    totals["indeterminate_delivered"] += distinct_ind

    # What was owed, and what of it arrived.
    channel = ctx.channels.get(ch)
    if not finished or sub.first_ok == math.inf or channel is None:
        totals["extra_ok"] += distinct_ok
        return

    def holds(i: int) -> bool:
        pos = channel.positions[i]
        if pos is not None and pos in not_held:
            return channel.ids[i] in id_set
        return _holds(spans, id_set, pos, channel.ids[i])

    start = bisect_right(channel.invokes, sub.first_ok)
    excluded = [i for end, i in _late(channel, drain) if i >= start]
    owed = len(channel.invokes) - start - len(excluded)
    if id_set or not_held:
        covered = sum(1 for i in range(start, len(channel.invokes)) if holds(i))
    else:
        covered = channel.covered(start, spans)
    for i in excluded:
        if holds(i):
            covered -= 1
    lost = owed - covered
    totals["owed"] += owed
    totals["delivered"] += covered
    covered_ok = covered - sum(
        1 for i in range(start, len(channel.invokes))
        if ctx.pubs[channel.ids[i]].status != "ok" and i not in excluded and holds(i)) \
        if distinct_ind else covered
    totals["extra_ok"] += max(0, distinct_ok - covered_ok)
    if lost:
        skip = set(excluded)
        ids = [channel.ids[i] for i in range(start, len(channel.invokes))
               if i not in skip and not holds(i)]
        for pid in ids:
            ctx.lost_by_update[pid] += 1
        vd.lost += lost
        totals["lost"] += lost
        vd.lost_ids[ch] = ids[:DETAIL_IDS]


def _late(channel: _Channel, drain: float) -> list[tuple[float, int]]:
    out = []
    for end, i in channel.late:
        if end < drain:
            break
        out.append((end, i))
    return out
