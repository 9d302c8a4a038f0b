"""Folding a recorded event stream into the dashboard's state."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui.feed import read_events
from tui.model import RunState

PASS = "recorded-runs/20250601-120000-tiny/events.jsonl"
FAIL = "recorded-runs/20250601-121500-tiny-negative-control/events.jsonl"
INTERACTIVE = "recorded-runs/20250601-140000-tiny-interactive/events.jsonl"


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
    statuses = [e for e in read_events(fixtures / PASS) if e["type"] == "status"]
    # every status event is a sample: nothing coalesced away
    assert len(state.delivered) == len(state.p99) == len(statuses) == state.status_events
    assert max(d for _, d in state.delivered) > 0
    assert max(p for _, p in state.p99 if p is not None) > 0
    assert len(state.nodes["node-1"].rss) == len(statuses)


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


def test_durations_come_from_the_events(fixtures: Path) -> None:
    """A fault sent "for 4 s" shows for 4 s; one sent without a duration, until healed."""
    state = fold(fixtures / INTERACTIVE)
    latency, partition = state.faults["i1"], state.faults["i2"]
    assert latency.duration_s == 4.0
    assert latency.description == "add 300 ms latency to clients->lb[0] for 4 s"
    assert latency.heal_due_t == pytest.approx(latency.injected_t + 4.0)
    assert partition.until_healed
    assert partition.description == "partition node-1 from Redis until healed"
    assert state.faults["f1"].description == "kill node-2 (restart after 2 s)"
    assert {f.fault_id: f.status for f in state.faults.values()} == {
        "f1": "healed", "i1": "healed", "i2": "healed"}
    assert any("held until healed" in line.text for line in state.log)
    assert any("no node-9" in line.text and line.level == "warning" for line in state.log)


def test_an_old_recording_takes_an_interactive_duration_from_hold_s() -> None:
    state = RunState()
    state.apply({"t": 1.0, "type": "fault", "fault_id": "i1", "kind": "latency",
                 "target": "clients", "params": {"latency_ms": 300.0}, "source": "interactive",
                 "hold_s": 10.0})
    assert state.faults["i1"].description == "add 300 ms latency to the clients' links for 10 s"


def test_phases_say_what_they_wait_for_and_how_long(fixtures: Path) -> None:
    events = read_events(fixtures / INTERACTIVE)
    state = RunState()
    for event in events:
        state.apply(event)
        if event["type"] == "phase" and event["phase"] == "faults":
            assert state.phase_duration() == 8.0
            assert state.accepts_faults
        if event["type"] == "wait" and "faults" in event:
            assert state.wait is not None
            assert "i2 (partition_redis on node-1->redis" in state.wait.waits_for
            assert state.wait.timeout_s == 180
            assert not state.accepts_faults  # the nemesis takes no more faults now
            break
    else:
        raise AssertionError("no wait event at the end of the faults phase")


def test_an_old_recording_takes_phase_durations_from_the_experiment(fixtures: Path) -> None:
    state = RunState()
    for event in read_events(fixtures / PASS):
        state.apply(event)
        if event["type"] == "phase" and event["phase"] == "steady":
            break
    assert state.phase_duration() == 4.0
    assert state.phase_waits_for() == "publishing with every client subscribed"


def test_a_stopped_run_is_known_as_stopped() -> None:
    state = RunState()
    state.apply({"t": 0.0, "type": "phase", "phase": "steady"})
    assert state.outcome is None
    state.apply({"t": 3.0, "type": "stopped", "reason": "the run was cancelled"})
    assert state.outcome == "stopped"
    assert state.ended
    assert not state.accepts_faults
    other = RunState()
    other.mark_stopped("the recording ends without a verdict")
    assert other.outcome == "stopped"
