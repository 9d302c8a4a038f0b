"""bench.peers: which experiments it runs and how a report becomes a table row (pure parts;
the runs themselves are `turnout run`, tested elsewhere)."""

from __future__ import annotations

from typing import Any

from bench.peers import HEADER, losses, row, shipped

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
