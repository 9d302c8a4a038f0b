"""The checker must fail when it should: each test builds a small history by hand."""

from __future__ import annotations

import random
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.checker import (
    Invariants,
    Report,
    check,
    check_files,
    error_report,
)
from harness.history import HistoryWriter, Op, OpType, merge_histories
from harness.recording import LATENCY_BITS
from harness.render import render_junit, render_markdown


class H:
    """A tiny history builder; times are plain seconds."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def op(self, t: float, process: str, typ: OpType, f: str, **value: Any) -> H:
        self.ops.append(Op(t, process, typ, f, value))
        return self

    def pub(
        self, t: float, pid: str, ch: str, seq: int, result: OpType = "ok", done: float = 0.01
    ) -> H:
        self.op(t, "publisher", "invoke", "publish", id=pid, channel=ch, seq=seq)
        extra = {"offset": seq} if result == "ok" else {"error": "boom"}
        return self.op(t + done, "publisher", result, "publish", id=pid, channel=ch, seq=seq,
                       **extra)

    def sub(self, t: float, client: str, ch: str, recovered: bool | None = None) -> H:
        self.op(t - 0.001, client, "invoke", "subscribe", channel=ch)
        return self.op(t, client, "ok", "subscribe", channel=ch, recovered=recovered)

    def deliver(self, t: float, client: str, ch: str, pid: str, seq: int) -> H:
        return self.op(t, client, "ok", "deliver", channel=ch, id=pid, seq=seq)

    def disconnect(self, t: float, client: str) -> H:
        return self.op(t, client, "info", "disconnect", code=4200, reason="restart")

    def drain(self, t: float, client: str, *channels: str) -> H:
        return self.op(t, client, "ok", "drain", channels=list(channels))

    def fault(self, t: float, fid: str, kind: str, target: str, heal: float | None) -> H:
        self.op(t, "nemesis", "invoke", "fault", fault=kind, target=target, params={},
                fault_id=fid)
        self.op(t + 0.01, "nemesis", "ok", "fault", fault=kind, target=target, params={},
                fault_id=fid)
        if heal is not None:
            self.op(heal, "nemesis", "ok", "heal", fault_id=fid)
        return self


def clean(clients: int = 2, channels: int = 2, updates: int = 5) -> H:
    """Every client subscribed at t=1 and got every update 50 ms after its publish."""
    h = H()
    chans = [f"results-{c}" for c in range(channels)]
    for n in range(1, clients + 1):
        for ch in chans:
            h.sub(1.0, f"client-{n}", ch)
    for i in range(1, updates + 1):
        for c, ch in enumerate(chans):
            h.pub(1.0 + i, f"p{c}-{i}", ch, i)
            for n in range(1, clients + 1):
                h.deliver(1.0 + i + 0.05, f"client-{n}", ch, f"p{c}-{i}", i)
    for n in range(1, clients + 1):
        h.drain(100.0, f"client-{n}", *chans)
    return h


def run(h: H, **inv: Any) -> Report:
    return check(h.ops, Invariants(**inv))


def test_clean_history_passes() -> None:
    report = run(clean())
    assert report.verdict == "pass", report.violations
    t = report.totals
    assert (t["published"], t["owed"], t["delivered"], t["lost"]) == (10, 20, 20, 0)
    assert t["duplicated"] == t["reordered"] == t["unexpected"] == t["extra_ok"] == 0
    assert report.violations == ()
    assert report.clients == ()
    assert report.latency_ms["p50"] == pytest.approx(50.0, rel=1e-3)


def test_lost_update_fails_and_names_client_channel_and_id() -> None:
    h = clean()
    h.ops = [o for o in h.ops if not (o.process == "client-2" and o.value.get("id") == "p0-3")]
    report = run(h)
    assert report.verdict == "fail"
    assert report.totals["lost"] == 1
    assert report.totals["owed"] == report.totals["delivered"] + report.totals["lost"]
    assert report.violations == ("lost = 1 > 0 (client-2 results-0: p0-3)",)
    (problem,) = report.clients
    assert problem.client == "client-2"
    assert dict(problem.lost_ids) == {"results-0": ("p0-3",)}


def test_lost_examples_are_capped() -> None:
    h = clean(clients=5, updates=10)
    h.ops = [o for o in h.ops if o.f != "deliver" or o.value["seq"] < 3]
    report = run(h)
    assert report.totals["lost"] == 5 * 2 * 8
    (msg,) = report.violations
    assert msg.startswith("lost = 80 > 0 (client-1 results-0: p0-3, p0-4, p0-5, p0-6, p0-7, …")
    assert "and 7 more" in msg
    assert len(msg) < 400


def test_duplicate_delivery_counts_extras() -> None:
    h = clean()
    h.deliver(50.0, "client-1", "results-1", "p1-2", 2)
    h.deliver(50.1, "client-1", "results-1", "p1-2", 2)
    report = run(h)
    assert report.verdict == "fail"
    assert report.totals["duplicated"] == 2
    assert report.totals["reordered"] == 0  # a duplicate is not also a reorder
    assert report.violations[0].startswith("duplicated = 2 > 0 (client-1 results-1: p1-2, p1-2")
    assert run(h, max_duplicated=2).verdict == "pass"


def test_reordered_delivery_fails() -> None:
    h = H().sub(1.0, "client-1", "results-0")
    for i in (1, 2, 3):
        h.pub(1.0 + i, f"p{i}", "results-0", i)
    h.deliver(4.1, "client-1", "results-0", "p1", 1)
    h.deliver(4.2, "client-1", "results-0", "p3", 3)
    h.deliver(4.3, "client-1", "results-0", "p2", 2)
    h.drain(10.0, "client-1", "results-0")
    report = run(h)
    assert report.verdict == "fail"
    assert report.totals["reordered"] == 1
    assert report.totals["lost"] == 0
    assert "p2 (seq 2 after 3)" in report.violations[0]


def test_unexpected_deliveries_fail() -> None:
    h = clean()
    h.pub(3.5, "pfail", "results-0", 99, result="fail")
    h.deliver(4.0, "client-1", "results-0", "never", 100)  # never published
    h.deliver(4.0, "client-1", "results-0", "pfail", 99)  # its publish failed
    h.deliver(4.0, "client-1", "results-0", "p1-4", 4)  # published on results-1
    report = run(h)
    assert report.verdict == "fail"
    assert report.totals["unexpected"] == 3
    assert report.totals["failed"] == 1
    (problem,) = report.clients
    assert set(problem.unexpected_ids) == {
        "results-0:never (never published)",
        "results-0:pfail (publish failed)",
        "results-0:p1-4 (published on results-1)",
    }


def test_unobserved_indeterminate_publish_is_neither_required_nor_an_error() -> None:
    h = clean()
    h.pub(3.5, "pinfo", "results-0", 99, result="info")
    h.pub(3.6, "ppending", "results-0", 100)
    h.ops.pop()  # the publisher died before its completion: indeterminate as well
    report = run(h)
    assert report.verdict == "pass", report.violations
    assert report.totals["indeterminate"] == 2
    assert report.totals["indeterminate_delivered"] == 0
    assert report.totals["lost"] == 0


def test_observed_indeterminate_publish_is_owed_by_every_subscriber_set_full() -> None:
    """Jepsen set-full: an indeterminate add that any reader saw is owed by every reader that
    began before it."""
    h = clean()
    h.pub(3.5, "pinfo", "results-0", 99, result="info")
    h.deliver(3.7, "client-1", "results-0", "pinfo", 99)  # client-2 never got it: lost
    h.sub(3.6, "client-3", "results-0")  # subscribed after the invoke: does not owe it
    for i in (3, 4, 5):
        h.deliver(1.0 + i + 0.05, "client-3", "results-0", f"p0-{i}", i)
    h.drain(100.0, "client-3", "results-0")
    report = run(h)
    assert report.verdict == "fail"
    assert report.totals["indeterminate_delivered"] == 1
    assert report.totals["lost"] == 1
    assert report.violations == ("lost = 1 > 0 (client-2 results-0: pinfo)",)

    h.deliver(3.8, "client-2", "results-0", "pinfo", 99)
    assert run(h).verdict == "pass"


def test_never_finished_client_fails() -> None:
    h = clean()
    h.sub(1.0, "client-7", "results-0")
    h.deliver(2.05, "client-7", "results-0", "p0-1", 1)  # then it died: no drain op
    report = run(h)
    assert report.verdict == "fail"
    assert report.incomplete_clients == ("client-7",)
    assert report.violations == ("clients_finished: client-7 never finished (no drain op)",)
    # Its owed updates are not double-reported as lost.
    assert report.totals["lost"] == 0
    assert any(c.client == "client-7" and not c.finished for c in report.clients)


def test_nothing_delivered_fails() -> None:
    empty = check([], Invariants())
    assert empty.verdict == "fail"
    assert any(v.startswith("min_delivered: delivered = 0 < 1") for v in empty.violations)

    # Clients subscribed and drained, nothing was published: nothing proven either.
    h = H().sub(1.0, "client-1", "results-0").drain(5.0, "client-1", "results-0")
    assert run(h).verdict == "fail"


def test_min_delivered_threshold() -> None:
    assert run(clean(), min_delivered=20).verdict == "pass"
    report = run(clean(), min_delivered=21)
    assert report.verdict == "fail"
    assert "delivered = 20 < 21" in report.violations[0]


def test_updates_published_before_subscribe_are_not_owed() -> None:
    h = H()
    h.pub(1.0, "early1", "results-0", 1)
    h.pub(2.0, "early2", "results-0", 2)
    h.sub(3.0, "client-1", "results-0")
    h.pub(4.0, "late", "results-0", 3)
    h.deliver(3.01, "client-1", "results-0", "early2", 2)  # replayed history: fine
    h.deliver(4.05, "client-1", "results-0", "late", 3)
    h.drain(10.0, "client-1", "results-0")
    report = run(h)
    assert report.verdict == "pass", report.violations
    assert report.totals["owed"] == 1
    assert report.totals["extra_ok"] == 1
    assert report.totals["lost"] == 0


def test_publish_completed_after_drain_is_not_owed() -> None:
    h = clean()
    h.pub(99.0, "late", "results-0", 6, done=5.0)  # ok at 104 > drain at 100
    assert run(h).totals["owed"] == 20
    assert run(h).verdict == "pass"


def test_unrecovered_resubscribe_gap_counts_lost() -> None:
    h = H().sub(1.0, "client-1", "results-0")
    for i in range(1, 6):
        h.pub(1.0 + i, f"p{i}", "results-0", i)
    h.deliver(2.05, "client-1", "results-0", "p1", 1)
    h.disconnect(2.5, "client-1")
    h.sub(4.5, "client-1", "results-0", recovered=False)  # the server admits a gap
    h.deliver(5.05, "client-1", "results-0", "p4", 4)
    h.deliver(6.05, "client-1", "results-0", "p5", 5)
    h.drain(10.0, "client-1", "results-0")
    report = run(h)
    assert report.verdict == "fail"
    assert report.totals["lost"] == 2
    assert report.violations[0] == "lost = 2 > 0 (client-1 results-0: p2, p3)"
    assert report.reconnects == {
        "total": 1,
        "max_per_client": 1,
        "resubscribes": 1,
        "unrecovered": 1,
    }


def test_unsubscribed_channel_fails() -> None:
    h = clean()
    h.op(1.0, "client-1", "invoke", "subscribe", channel="results-9")
    h.op(1.1, "client-1", "fail", "subscribe", channel="results-9", error="over capacity")
    report = run(h)
    assert report.verdict == "fail"
    assert report.totals["unsubscribed"] == 1
    assert "client-1 results-9" in report.violations[0]


def test_latency_percentiles_on_a_known_distribution() -> None:
    h = H().sub(0.5, "client-1", "results-0")
    for i in range(1, 1001):  # latencies 1, 2, ..., 1000 ms
        h.pub(float(i), f"p{i}", "results-0", i)
        h.deliver(i + i / 1000.0, "client-1", "results-0", f"p{i}", i)
    h.drain(5000.0, "client-1", "results-0")
    lat = run(h).latency_ms
    # Log-linear buckets of LATENCY_BITS significant bits, counted at their upper bound, then
    # HdrHistogram with 3 significant digits: never below the true value, at most one bucket
    # (plus 0.1 %) above it.
    slack = 1 + 2.0 ** (1 - LATENCY_BITS) + 1e-3
    for key, true in (("p50", 500.0), ("p90", 900.0), ("p99", 990.0), ("p999", 999.0)):
        assert true <= lat[key] <= true * slack, (key, lat[key])
    assert lat["max"] == pytest.approx(1000.0, abs=1e-6)
    assert lat["count"] == 1000


def test_p99_invariant() -> None:
    assert run(clean(), p99_ms=60.0).verdict == "pass"
    report = run(clean(), p99_ms=40.0)
    assert report.verdict == "fail"
    assert report.violations[0].startswith("p99 latency = 50")


def test_recovery_s_by_hand() -> None:
    h = H()
    h.sub(1.0, "client-1", "results-0").sub(1.0, "client-2", "results-0")
    h.fault(2.0, "f1", "pause_node", "node-1", heal=4.0)
    h.fault(5.0, "f2", "kill_node", "node-2", heal=10.0)
    h.pub(3.0, "p1", "results-0", 1)  # before both heals
    h.pub(7.0, "p2", "results-0", 2)  # before f2's heal only
    h.pub(11.0, "p3", "results-0", 3)  # after both: irrelevant to recovery
    h.deliver(3.1, "client-1", "results-0", "p1", 1)
    h.deliver(3.2, "client-2", "results-0", "p1", 1)
    h.deliver(7.1, "client-1", "results-0", "p2", 2)
    h.deliver(12.5, "client-2", "results-0", "p2", 2)  # client-2 caught up 2.5 s after heal
    h.deliver(11.1, "client-1", "results-0", "p3", 3)
    h.deliver(20.0, "client-2", "results-0", "p3", 3)  # late, but published after the heal
    h.drain(30.0, "client-1", "results-0").drain(30.0, "client-2", "results-0")
    report = run(h)
    f1, f2 = report.faults
    # f1: latest receive of an owed update invoked <= 4.0 is 3.2: 3.2 - 4.0 < 0, clipped to 0.
    assert (f1.fault_id, f1.recovery_s) == ("f1", 0.0)
    # f2: updates invoked <= 10.0 are p1, p2; latest receive 12.5: 12.5 - 10.0 = 2.5.
    assert (f2.fault_id, f2.recovery_s) == ("f2", pytest.approx(2.5))
    # Times are relative to the first op of the history (the subscribe invoke at 0.999).
    assert f2.injected_at == pytest.approx(5.0 - 0.999)
    assert f2.healed_at == pytest.approx(10.0 - 0.999)
    assert report.verdict == "pass"
    assert run(h, max_recovery_s=3.0).verdict == "pass"
    failing = run(h, max_recovery_s=2.0)
    assert failing.verdict == "fail"
    assert failing.violations == ("recovery_s: f2 (kill_node node-2) recovered in 2.5 s > 2 s",)


def test_fault_evidence_recorded_with_the_heal_reaches_the_report() -> None:
    h = clean()
    h.fault(1.5, "f1", "connection_storm", "clients", heal=None)
    h.op(3.0, "nemesis", "ok", "heal", fault_id="f1",
         observed={"requested": 10000, "opened": 9990})
    report = run(h)
    (fault,) = report.faults
    assert fault.observed == {"requested": 10000, "opened": 9990}
    assert fault.to_dict()["observed"] == {"requested": 10000, "opened": 9990}
    assert "requested: 10000, opened: 9990" in render_markdown(report)


def test_fault_never_recovered() -> None:
    h = clean()
    h.fault(1.5, "f1", "partition_redis", "redis", heal=3.5)
    h.ops = [o for o in h.ops if not (o.process == "client-1" and o.value.get("id") == "p1-2")]
    report = run(h, max_recovery_s=10.0)
    (f1,) = report.faults
    assert f1.recovery_s is None
    assert f1.lost_before_heal == 1
    assert report.verdict == "fail"
    assert (
        "recovery_s: f1 (partition_redis redis) never recovered: 1 owed updates published "
        "before the heal were lost"
    ) in report.violations


def test_fault_never_healed_or_failed_injection() -> None:
    h = clean().fault(1.5, "f1", "latency", "clients", heal=None)
    report = run(h, max_recovery_s=10.0)
    assert report.faults[0].healed_at is None
    assert report.violations == ("recovery_s: f1 (latency clients) was never healed",)

    h = clean()
    h.op(1.5, "nemesis", "invoke", "fault", fault="kill_node", target="node-1", fault_id="f1")
    h.op(1.6, "nemesis", "fail", "fault", fault="kill_node", target="node-1", fault_id="f1",
         error="no such process")
    report = run(h)
    assert report.verdict == "fail"
    assert report.violations == (
        "faults_injected: f1 (kill_node node-1) injection fail: no such process",
    )


def test_interleaving_of_processes_does_not_matter() -> None:
    h = clean(clients=3, updates=8)
    h.ops = [o for o in h.ops if not (o.process == "client-3" and o.value.get("seq") == 4)]
    h.deliver(60.0, "client-2", "results-0", "p0-1", 1)
    expected = run(h).to_dict()
    by_process: dict[str, list[Op]] = {}
    for o in h.ops:
        by_process.setdefault(o.process, []).append(o)
    rng = random.Random(7)
    for _ in range(5):
        queues = [list(v) for v in by_process.values()]
        shuffled: list[Op] = []
        while queues:
            q = rng.choice(queues)
            shuffled.append(q.pop(0))
            if not q:
                queues.remove(q)
        assert check(shuffled, Invariants()).to_dict() == expected


def test_check_files_matches_check(tmp_path: Path) -> None:
    h = clean(clients=4)
    h.fault(1.5, "f1", "kill_node", "node-1", heal=2.0)
    paths = []
    for i, group in enumerate((("publisher", "nemesis", "client-1"), ("client-2", "client-3"),
                               ("client-4",))):
        path = tmp_path / f"history-{i}.jsonl"
        with HistoryWriter(path) as w:
            for o in h.ops:
                if o.process in group:
                    w.append(o)
        paths.append(path)
    with open(paths[-1], "ab") as fh:
        fh.write(b'{"time": 1.0, "process": "cli')  # a torn final write
    expected = run(h).to_dict()
    assert check_files(paths, Invariants()).to_dict() == expected
    merged = merge_histories([paths[2], paths[0], paths[1]])
    assert check(merged, Invariants()).to_dict() == expected


def test_renderers() -> None:
    h = clean()
    h.ops = [o for o in h.ops if not (o.process == "client-2" and o.value.get("id") == "p0-3")]
    report = run(h, p99_ms=1000.0)
    md = render_markdown(report, "node-kill")
    assert md.startswith("# node-kill: FAIL")
    assert "lost = 1 > 0 (client-2 results-0: p0-3)" in md
    root = ET.fromstring(render_junit(report, "node-kill"))
    suite = root.find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert {"lost", "duplicated", "reordered", "unexpected", "min_delivered", "p99_ms"} <= set(
        cases
    )
    assert suite.get("failures") == "1"
    assert cases["lost"].find("failure") is not None
    assert cases["duplicated"].find("failure") is None
    assert "recovery_s" not in cases  # not an invariant of this run

    err = error_report("redis-server did not start")
    assert err.verdict == "error"
    root = ET.fromstring(render_junit(err, "x"))
    assert root.find("testsuite/testcase/error") is not None
    assert "could not run" in render_markdown(err)


def test_checks_a_large_history_quickly() -> None:
    # 200 clients x 4 channels x 200 updates = 160,000 deliveries; the full 1.6M-delivery
    # target scales linearly from here.
    clients, channels, updates = 200, 4, 200
    ops: list[Op] = []
    for n in range(clients):
        for c in range(channels):
            ops.append(Op(0.5, f"client-{n}", "ok", "subscribe", {"channel": f"results-{c}"}))
    for i in range(updates):
        for c in range(channels):
            pid = f"p{c}-{i}"
            value = {"id": pid, "channel": f"results-{c}", "seq": i}
            ops.append(Op(1.0 + i, "publisher", "invoke", "publish", value))
            ops.append(Op(1.01 + i, "publisher", "ok", "publish", value))
            for n in range(clients):
                ops.append(Op(1.02 + i + n * 1e-5, f"client-{n}", "ok", "deliver", value))
    for n in range(clients):
        ops.append(Op(1000.0, f"client-{n}", "ok", "drain", {"channels": []}))
    start = time.perf_counter()
    report = check(ops, Invariants())
    elapsed = time.perf_counter() - start
    assert report.verdict == "pass", report.violations
    assert report.totals["delivered"] == clients * channels * updates
    assert elapsed < 10.0


# ------------------------------------------------------------------ presence


def with_presence(h: H, ghost: bool = False) -> H:
    """Clients 1 and 2 join presence-room-1; client 2's first user (u2.1) was on a killed node
    and is reaped (member_removed) unless ``ghost``; it came back as u2.2."""
    room = "presence-room-1"
    ops = [
        (1.0, "client-1", "invoke", {"channel": room, "user": "u1"}),
        (1.0, "client-1", "ok", {"channel": room, "user": "u1", "members": ["u1"]}),
        (1.1, "client-2", "invoke", {"channel": room, "user": "u2.1"}),
        (1.1, "client-2", "ok", {"channel": room, "user": "u2.1", "members": ["u1", "u2.1"]}),
        (5.0, "client-2", "invoke", {"channel": room, "user": "u2.2"}),
        (5.0, "client-2", "ok", {"channel": room, "user": "u2.2",
                                 "members": ["u1", "u2.1", "u2.2"]}),
    ]
    for t, process, typ, value in ops:
        h.op(t, process, typ, "members", **value)  # type: ignore[arg-type]
    h.op(1.1, "client-1", "ok", "member", channel=room, change="added", user="u2.1")
    h.op(5.0, "client-1", "ok", "member", channel=room, change="added", user="u2.2")
    if not ghost:
        for client in ("client-1", "client-2"):
            h.op(9.0, client, "ok", "member", channel=room, change="removed", user="u2.1")
    return h


def test_presence_is_judged_when_the_experiment_has_it() -> None:
    report = run(with_presence(clean()), presence=True)
    assert report.verdict == "pass", report.violations
    assert report.presence is not None
    assert (report.presence["connected_users"], report.presence["member_events"]) == (2, 4)
    (invariant,) = [i for i in report.invariants if i.name == "presence"]
    assert invariant.ok
    assert "member lists equal the 2 connected users" in invariant.message


def test_a_ghost_member_fails_the_presence_invariant() -> None:
    report = run(with_presence(clean(), ghost=True), presence=True)
    assert report.verdict == "fail"
    (violation,) = report.violations
    assert violation.startswith("presence = 2 > 0 (2 ghosts"), violation
    assert "u2.1" in violation
    assert "## Presence" in render_markdown(report)
    # Without presence in the experiment the same history is judged on deliveries only.
    assert run(with_presence(clean(), ghost=True)).verdict == "pass"


def test_presence_expected_but_never_joined_fails() -> None:
    report = run(clean(), presence=True)
    assert report.verdict == "fail"
    assert any("no client joined a presence channel" in v for v in report.violations)
