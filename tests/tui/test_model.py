"""Folding a recorded event stream into the dashboard's state."""

from __future__ import annotations

from pathlib import Path

from tui.feed import read_events
from tui.model import RunState

PASS = "recorded-runs/20250601-120000-tiny/events.jsonl"
FAIL = "recorded-runs/20250601-121500-tiny-negative-control/events.jsonl"


def fold(path: Path) -> RunState:
    state = RunState()
    for event in read_events(path):
        state.apply(event)
    return state


def test_a_passing_run_ends_green(fixtures: Path) -> None:
    state = fold(fixtures / PASS)
    assert state.name == "tiny"
    assert state.phase == "done"
    assert state.verdict == "pass"
    assert state.counters() == {"lost": 0, "duplicated": 0, "reordered": 0}
    assert state.counters_final
    assert sorted(state.nodes) == ["node-1", "node-2"]
    assert state.redis_state == "running"
    assert "node-1->redis" in state.links
    assert {f.fault_id: f.status for f in state.faults.values()} == {"f1": "healed",
                                                                       "f2": "healed"}
    assert state.faults["f1"].recovery_s is not None
    assert max(state.delivered_rate) > 0
    assert max(state.p99) > 0
    assert len(state.nodes["node-1"].rss_history) > 5


def test_a_failing_run_reports_the_checkers_losses(fixtures: Path) -> None:
    state = fold(fixtures / FAIL)
    assert state.verdict == "fail"
    assert state.exit_code == 1
    assert state.counters()["lost"] > 0


def test_counters_are_provisional_from_status_then_final_from_the_verdict(
        fixtures: Path) -> None:
    state = RunState()
    events = read_events(fixtures / PASS)
    for event in events[:-1]:
        state.apply(event)
    assert not state.counters_final
    # the fleet counts duplicates and reorders live; losses only the checker can tell
    assert state.counters() == {"lost": None, "duplicated": 0, "reordered": 0}
    status = next(e for e in reversed(events) if e["type"] == "status")
    status = {**status, "fleet": {**status["fleet"], "live_duplicates": 3}}
    state.apply(status)
    assert state.counters()["duplicated"] == 3
    state.apply(events[-1])
    assert state.counters() == {"lost": 0, "duplicated": 0, "reordered": 0}


def test_interactive_faults_go_requested_injecting_active_healed() -> None:
    state = RunState()
    state.requested("i1", "kill_node", "node-2", {"restart": True, "restart_after_s": 2.0}, None)
    assert [f.fault_id for f in state.active_faults()] == ["i1"]
    base = {"fault_id": "i1", "fault": "kill_node", "kind": "kill_node", "target": "node-2",
            "params": {"restart": True, "restart_after_s": 2.0}, "source": "interactive"}
    state.apply({"t": 1.0, "type": "fault_start", **base})
    assert state.faults["i1"].status == "injecting"
    line = state.apply({"t": 1.2, "type": "fault", **base, "resolved": "node-2", "hold_s": 2.0})
    assert state.faults["i1"].status == "active"
    assert line is not None
    assert "kill node-2" in line.text
    state.apply({"t": 3.5, "type": "heal", "fault_id": "i1", "kind": "kill_node",
                 "target": "node-2"})
    assert state.faults["i1"].status == "healed"
    assert state.active_faults() == []


def test_a_failed_injection_stays_failed() -> None:
    state = RunState()
    state.apply({"t": 1.0, "type": "fault_error", "fault_id": "i1", "kind": "kill_node",
                 "target": "node-9", "error": "no node node-9", "source": "interactive"})
    state.apply({"t": 1.0, "type": "heal", "fault_id": "i1", "kind": "kill_node",
                 "target": "node-9"})
    assert state.faults["i1"].status == "failed"
    assert state.log[-2].level == "error"
