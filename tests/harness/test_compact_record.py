"""The compact record judges exactly what a full recording judges.

Random histories (seeded): publishes with positions on a few channels, some indeterminate,
viewers that subscribe at various times and receive a random mess of those updates (gaps,
duplicates, older offsets, a second epoch, a foreign update at a known position). Each history
is judged twice: once with every delivery as a ``deliver`` op (what a hand-written or sampled
history has), once as the fleet records it (``record`` runs per subscription from
:class:`harness.pusher_client.Subscription`, the worker's ``positions`` table and ``latency``
book from :class:`harness.recording.Recorder`). The totals, the lost ids and the latency must be
the same.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from harness.checker import Invariants, check
from harness.history import Op
from harness.pusher_client import DUPLICATE, Subscription
from harness.recording import latency_bucket

CHANNELS = ("a", "b", "c")


def _history(seed: int) -> tuple[list[Op], list[Op]]:
    rng = random.Random(seed)
    common: list[Op] = []
    pubs: dict[str, list[tuple[str, int, str, float, str]]] = {ch: [] for ch in CHANNELS}
    t = 10.0
    n = 0
    for ch in CHANNELS:
        offset = 0
        epoch = "e1"
        for _ in range(rng.randint(5, 25)):
            n += 1
            t += rng.uniform(0.01, 0.5)
            pid = f"p{n}"
            if rng.random() < 0.08:  # the channel's history was lost: a new epoch from 1
                epoch, offset = f"e{int(epoch[1:]) + 1}", 0
            offset += 1
            status = rng.choices(["ok", "info", "fail"], [0.85, 0.1, 0.05])[0]
            common.append(Op(t, "publisher", "invoke", "publish",
                             {"id": pid, "channel": ch, "seq": n}))
            value: dict[str, Any] = {"id": pid, "channel": ch, "seq": n}
            if status == "ok":
                value.update(offset=offset, epoch=epoch)
            elif status == "fail":
                offset -= 1  # definitely not applied: no position taken
            common.append(Op(t + 0.01, "publisher", status, "publish", value))
            if status != "fail":
                pubs[ch].append((pid, offset, epoch, t, status))
    full: list[Op] = list(common)
    compact: list[Op] = list(common)
    # Two fleet workers, each with its own position table (first seen) and latency book.
    tables: list[dict[tuple[str, str, int], str]] = [{}, {}]
    books: list[dict[str, list[Any]]] = [{}, {}]
    end = t + 50.0
    for v in range(1, rng.randint(3, 8)):
        proc = f"client-{v}"
        table, book = tables[v % 2], books[v % 2]
        for ch in rng.sample(CHANNELS, rng.randint(1, 3)):
            sub_t = rng.uniform(5.0, t)
            for ops in (full, compact):
                ops.append(Op(sub_t - 0.01, proc, "invoke", "subscribe", {"channel": ch}))
                ops.append(Op(sub_t, proc, "ok", "subscribe", {"channel": ch}))
            sub = Subscription(ch)
            sub.first_ok = sub_t
            candidates = list(pubs[ch])
            deliveries = [c for c in candidates if rng.random() < 0.9]  # some lost
            if len(deliveries) > 3 and rng.random() < 0.5:  # an out-of-order pair
                i = rng.randrange(len(deliveries) - 1)
                deliveries[i], deliveries[i + 1] = deliveries[i + 1], deliveries[i]
            if deliveries and rng.random() < 0.3:  # a duplicate
                deliveries.insert(rng.randrange(len(deliveries)), rng.choice(deliveries))
            recv = max(sub_t, 10.0)
            for pid, offset, epoch, invoked, _status in deliveries:
                recv = max(recv, invoked) + rng.uniform(0.001, 0.2)
                if rng.random() < 0.02:
                    pid = "intruder"  # another update at a known position: unexpected
                full.append(Op(recv, proc, "ok", "deliver", {
                    "channel": ch, "id": pid, "seq": 0, "offset": offset, "epoch": epoch}))
                kind = sub.note(epoch, offset)
                known = table.setdefault((ch, epoch, offset), pid)
                if known != pid:  # as Recorder.position: recorded in full, still booked
                    compact.append(Op(recv, proc, "ok", "deliver", {
                        "channel": ch, "id": pid, "offset": offset, "epoch": epoch,
                        "conflict": known}))
                if kind != DUPLICATE:
                    entry = book.setdefault(pid, [recv, -1.0, {}])
                    entry[0] = min(entry[0], recv)
                    if invoked > sub.first_ok:
                        entry[1] = max(entry[1], recv)
                        bucket = latency_bucket(int((recv - invoked) * 1e6))
                        entry[2][bucket] = entry[2].get(bucket, 0) + 1
            compact.append(Op(end, proc, "ok", "record",
                              {"channel": ch, "first_ok": sub_t, "runs": sub.all_runs(),
                               "worker": f"fleet-w{v % 2}"}))
        for ops in (full, compact):
            ops.append(Op(end + 1, proc, "ok", "drain", {"channels": []}))
    for w, (table, book) in enumerate(zip(tables, books, strict=True)):
        by_pos: dict[str, dict[str, dict[int, str]]] = {}
        for (ch, epoch, offset), pid in table.items():
            by_pos.setdefault(ch, {}).setdefault(epoch, {})[offset] = pid
        packed = {ch: {e: [min(o), [o.get(i) for i in range(min(o), max(o) + 1)]]
                       for e, o in by_epoch.items()} for ch, by_epoch in by_pos.items()}
        compact.append(Op(end + 2, f"fleet-w{w}", "ok", "positions", {"positions": packed}))
        compact.append(Op(end + 2, f"fleet-w{w}", "ok", "latency", {"latency": {
            pid: [e[0], e[1], [x for kv in sorted(e[2].items()) for x in kv]]
            for pid, e in book.items()}}))
    return full, compact


@pytest.mark.parametrize("seed", range(40))
def test_compact_and_full_recordings_are_judged_alike(seed: int) -> None:
    full, compact = _history(seed)
    a = check(full, Invariants())
    b = check(compact, Invariants())
    assert b.recording["compact"] is True
    assert dict(a.totals) == dict(b.totals), (seed, a.totals, b.totals)
    assert {c.client: c.lost_ids for c in a.clients} == {c.client: c.lost_ids for c in b.clients}
    assert a.latency_ms == b.latency_ms
    assert a.verdict == b.verdict


def test_the_random_histories_do_contain_every_kind_of_problem() -> None:
    seen = {"lost": 0, "duplicated": 0, "reordered": 0, "unexpected": 0,
            "indeterminate_delivered": 0}
    for seed in range(40):
        totals = check(_history(seed)[1], Invariants()).totals
        for key in seen:
            seen[key] += totals[key] > 0
    assert all(seen.values()), seen


def test_an_intruder_seen_first_does_not_make_the_true_update_unexpected() -> None:
    """Worker 0's first delivery at offset 2 carried an update that was never published; its
    table says so, and the later true deliveries there are its conflicts. Only the intruding
    delivery is unexpected, and nobody lost offset 2."""
    ops = [Op(1.0, "publisher", "invoke", "publish", {"id": f"p{i}", "channel": "a", "seq": i})
           for i in (1, 2, 3)]
    ops += [Op(1.01, "publisher", "ok", "publish",
               {"id": f"p{i}", "channel": "a", "seq": i, "offset": i, "epoch": "e"})
            for i in (1, 2, 3)]
    for v, worker in ((1, 0), (2, 0), (3, 1)):
        proc = f"client-{v}"
        ops += [Op(0.5, proc, "invoke", "subscribe", {"channel": "a"}),
                Op(0.6, proc, "ok", "subscribe", {"channel": "a"}),
                Op(9.0, proc, "ok", "record", {"channel": "a", "first_ok": 0.6,
                                               "runs": [["e", 1, 3]],
                                               "worker": f"fleet-w{worker}"}),
                Op(9.1, proc, "ok", "drain", {"channels": ["a"]})]
    ops.append(Op(2.0, "client-2", "ok", "deliver", {"channel": "a", "id": "p2", "offset": 2,
                                                     "epoch": "e", "conflict": "evil"}))
    ops.append(Op(9.5, "fleet-w0", "ok", "positions",
                  {"positions": {"a": {"e": [1, ["p1", "evil", "p3"]]}}}))
    ops.append(Op(9.5, "fleet-w1", "ok", "positions",
                  {"positions": {"a": {"e": [1, ["p1", "p2", "p3"]]}}}))
    report = check(ops, Invariants())
    assert report.totals["unexpected"] == 1  # client-1's delivery at offset 2
    assert report.totals["lost"] == 1  # client-1 never got p2; client-2 and client-3 did
    problems = {c.client: c for c in report.clients}
    assert problems["client-1"].lost_ids == {"a": ("p2",)}
    assert problems["client-1"].unexpected_ids == ("a:evil (offset 2 carried p2)",)
    assert set(problems) == {"client-1"}


def test_the_live_p99_counts_every_delivery_of_a_burst(tmp_path: Any) -> None:
    """The status line's p99 comes from every owed delivery since the last snapshot: a burst's
    first deliveries are its fastest, so a first-N sample would report only those."""
    from harness.history import HistoryWriter
    from harness.recording import Recorder

    recorder = Recorder(HistoryWriter(tmp_path / "h.jsonl"))
    for i in range(10_000):  # 10 ms each for the first 9,800, then 400 ms
        recorder.received(f"p{i % 7}", 100.0 + i * 1e-4, 0.010 if i < 9_800 else 0.400)
    snapshot = recorder.stats.latency_snapshot()
    assert snapshot is not None
    assert snapshot["n"] == 10_000
    assert 9.8 <= snapshot["p50"] <= 10.0
    assert 394.0 <= snapshot["p99"] <= 400.0
    assert snapshot["max"] == snapshot["p99"]
    assert recorder.stats.latency_snapshot() is None  # each snapshot starts afresh
