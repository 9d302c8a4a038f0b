"""bench.peers: which experiments it runs and how a report becomes a table row (pure parts;
the runs themselves are `turnout run`, tested elsewhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.peers import HEADER, losses, lost_updates, row, shipped
from harness.history import HistoryWriter

REPORT: dict[str, Any] = {
    "verdict": "fail",
    "totals": {"lost": 73, "owed": 13350, "duplicated": 0, "reordered": 0},
    "latency_ms": {"p50": 6.46, "p99": 16.4},
    "reconnects": {"total": 251},
    "recording": {"positions": "unavailable"},
    "cpu": {"components": {"nodes": {"share_pct": 35.3, "us_per_delivery": 83.9}}},
    "faults": [
        {"fault_id": "f1", "fault": "kill_node", "status": "ok",
         "stale": {"windows": 100, "unrecovered": 0, "max": 2.5}},
        {"fault_id": "f2", "fault": "leak_memory", "status": "skipped", "stale": None},
    ],
    "clients_with_problems": 2,
    "clients": [{"client": "client-2", "lost_ids": {"results-2": ["p46", "p47"]}}],
}


def test_shipped_is_the_ci_set_plus_the_10k_scale_test() -> None:
    names = [p.stem for p in shipped(None)]
    assert "baseline" in names
    assert "node-kill" in names
    assert "election-night-10k" in names
    assert "election-night-full" not in names  # ci = false
    assert [p.stem for p in shipped(["node-kill"])] == ["node-kill"]


def test_a_report_becomes_one_row_with_every_column() -> None:
    line = row("node-kill", "sockudo", REPORT)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == HEADER.splitlines()[0].count("|") - 1
    assert cells[:6] == ["node-kill", "sockudo", "fail", "73 / 13350", "0", "0"]
    assert cells[6] == "6 / 16"
    assert cells[7] == "100, max 2.5 s"
    assert cells[8] == "251"
    assert cells[9] == "35 % / 84 µs"
    assert cells[10] == "unavailable"
    assert cells[11] == "f2 leak_memory"


def test_losses_name_viewers_and_updates() -> None:
    lines = losses("node-kill", "sockudo", REPORT)
    assert "73 (viewer, update) pairs lost by 2 viewers" in lines[0]
    assert lines[1].strip() == "- client-2 results-2: p46, p47"
    assert losses("baseline", "turnout", {"totals": {"lost": 0}}) == []


def test_lost_updates_counts_every_viewer_that_missed_each_update(tmp_path: Path) -> None:
    """Judged from the history, so it sees past the report's 200 listed viewers."""
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path) as history:
        for n in range(4):
            client = f"client-{n}"
            history.record(client, "invoke", "subscribe", {"channel": "results-1"}, time=0.9)
            history.record(client, "ok", "subscribe", {"channel": "results-1", "recovered": None,
                                                       "offset": None, "epoch": None}, time=1.0)
        for seq in (1, 2, 3):
            value = {"id": f"p{seq}", "channel": "results-1", "seq": seq}
            history.record("publisher", "invoke", "publish", value, time=1.0 + seq)
            history.record("publisher", "ok", "publish", value, time=1.01 + seq)
        # p2 reaches only client-0; p3 reaches everyone but client-3.
        received = {0: (1, 2, 3), 1: (1, 3), 2: (1, 3), 3: (1,)}
        for n, seqs in received.items():
            for seq in seqs:
                delivery = {"channel": "results-1", "id": f"p{seq}", "seq": seq}
                history.record(f"client-{n}", "ok", "deliver", delivery, time=6.0 + seq)
            history.record(f"client-{n}", "ok", "drain", {"channels": ["results-1"]}, time=20.0)
    updates = lost_updates(path)
    assert [(ch, pid, viewers) for ch, pid, viewers, _ in updates] == [
        ("results-1", "p2", 3), ("results-1", "p3", 1)]
    # Published at 3.0 and 4.0 on the history's clock; the run starts at its first op.
    assert [at for *_, at in updates] == [2.1, 3.1]
    lines = losses("x", "sockudo", {"totals": {"lost": 4}, "clients_with_problems": 3,
                                    "clients": []}, updates)
    assert lines[-1] == ("  - 2 distinct updates lost: p2 on results-1 (3 viewers, t=2.1 s), "
                         "p3 on results-1 (1 viewer, t=3.1 s)")


def test_losses_count_only_the_viewers_that_lost_something() -> None:
    report = {**REPORT, "clients_with_problems": 100,
              "groups": {"fleet": {"clients_losing": 60}, "pusher-js": {"clients_losing": 6}}}
    assert "lost by 66 viewers" in losses("node-pause", "sockudo", report)[0]
