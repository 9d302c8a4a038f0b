"""The presence check (harness.checks.presence) on synthetic histories: a clean run passes,
and each kind of problem is found and counted exactly."""

from __future__ import annotations

from typing import Any

from harness.checks.presence import judge_presence as judge_raw
from harness.history import Op

CH = "presence-room"


def judge_presence(ops: list[Op]):  # type: ignore[no-untyped-def]
    return judge_raw((op.time, op.process, op.type, op.f, op.value) for op in ops)


class History:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.t = 0.0

    def op(self, process: str, f: str, value: dict[str, Any], kind: str = "ok") -> History:
        self.t += 0.01
        self.ops.append(Op(self.t, process, kind, f, value))  # type: ignore[arg-type]
        return self

    def join(self, viewer: int, user: str, members: list[str]) -> History:
        process = f"client-{viewer}"
        self.op(process, "members", {"channel": CH, "user": user}, "invoke")
        return self.op(process, "members", {"channel": CH, "user": user, "members": members})

    def change(self, viewer: int, change: str, user: str) -> History:
        return self.op(f"client-{viewer}", "member", {"channel": CH, "change": change,
                                                     "user": user})

    def drain(self, *viewers: int) -> History:
        self.t += 5.0  # the final read comes well after the last join
        for viewer in viewers:
            self.op(f"client-{viewer}", "drain", {})
        return self


def clean() -> History:
    """Three viewers; viewer 2 reconnects as a new user (u2 -> u2b) after a node died."""
    h = History()
    h.join(0, "u0", ["u0"])
    h.join(1, "u1", ["u0", "u1"]).change(0, "added", "u1")
    h.join(2, "u2", ["u0", "u1", "u2"]).change(0, "added", "u2").change(1, "added", "u2")
    h.join(2, "u2b", ["u0", "u1", "u2", "u2b"])  # its old user not reaped yet
    h.change(0, "added", "u2b").change(1, "added", "u2b")
    for viewer in (0, 1, 2):
        h.change(viewer, "removed", "u2")  # the reaper's member_removed, once per viewer
    return h.drain(0, 1, 2)


def test_a_clean_history_passes():
    result = judge_presence(clean().ops)
    assert result.problems == 0, result
    assert (result.viewers, result.finished, result.connected_users) == (3, 3, 3)
    assert result.member_events == 8


def test_a_ghost_is_found_in_every_list_that_holds_it():
    h = clean()
    h.ops = [op for op in h.ops if not (op.f == "member" and op.value.get("user") == "u2"
                                        and op.value.get("change") == "removed")]
    result = judge_presence(h.ops)
    assert (result.ghosts, result.missing, result.inconsistent) == (3, 0, 0)
    assert "u2" in result.examples["ghosts"][0]


def test_a_join_that_never_arrived_is_missing():
    h = clean()
    h.ops = [op for op in h.ops if not (op.process == "client-0" and op.f == "member"
                                        and op.value.get("user") == "u2b")]
    result = judge_presence(h.ops)
    assert (result.missing, result.ghosts) == (1, 0)


def test_member_events_twice_or_for_strangers_are_inconsistent():
    h = clean()
    h.ops.insert(len(h.ops) - 3, Op(h.t, "client-1", "ok", "member",
                                    {"channel": CH, "change": "added", "user": "u0"}))
    h.ops.insert(len(h.ops) - 3, Op(h.t, "client-1", "ok", "member",
                                    {"channel": CH, "change": "removed", "user": "nobody"}))
    result = judge_presence(h.ops)
    assert (result.inconsistent, result.ghosts, result.missing) == (2, 0, 0)


def test_snapshot_without_self_and_viewer_without_snapshot():
    h = History()
    h.join(0, "u0", ["u0", "u1"])
    h.join(1, "u1", ["u0"])  # its own user missing from its snapshot
    h.op("client-2", "members", {"channel": CH, "user": "u2"}, "invoke")  # never answered
    h.drain(0, 1, 2)
    result = judge_presence(h.ops)
    assert (result.self_missing, result.no_snapshot) == (1, 1)
    # u2 never joined: it is not a connected user, so nobody misses it; u1 misses itself.
    assert result.missing == 1


def test_viewers_that_did_not_finish_are_not_judged():
    h = History()
    h.join(0, "u0", ["u0"])
    h.join(1, "u1", ["u0", "u1"])
    h.drain(0)  # viewer 1 never finished: the delivery checker fails the run for it
    result = judge_presence(h.ops)
    assert (result.viewers, result.finished) == (2, 1)
    assert result.ghosts == 0  # u1 in no judged list; viewer 0 never heard of it
    assert result.problems == 0


def test_departures_during_the_final_read_are_not_missing_members():
    """Viewer 0 finishes first and closes; viewer 1, still reading, hears u0 leave. u0 still
    counts as connected for viewer 1, and nothing is reported."""
    h = History()
    h.join(0, "u0", ["u0"])
    h.join(1, "u1", ["u0", "u1"]).change(0, "added", "u1")
    h.drain(0)
    h.change(1, "removed", "u0")  # after viewer 0's drain: a departure
    h.drain(1)
    result = judge_presence(h.ops)
    assert (result.problems, result.departures) == (0, 1)
    # The same removal before viewer 0's drain is a real leave: u0 goes missing.
    h = History()
    h.join(0, "u0", ["u0"])
    h.join(1, "u1", ["u0", "u1"]).change(0, "added", "u1")
    h.change(1, "removed", "u0")
    h.drain(0, 1)
    assert judge_presence(h.ops).missing == 1


def test_a_join_just_before_a_viewers_drain_is_not_required_in_its_list():
    h = History()
    h.join(0, "u0", ["u0"])
    h.drain()
    h.join(1, "u1", ["u0", "u1"])  # reconnected during the final read
    h.op("client-0", "drain", {})  # 0.01 s later: u1's member_added may not have arrived
    h.op("client-1", "drain", {})
    result = judge_presence(h.ops)
    assert result.problems == 0
