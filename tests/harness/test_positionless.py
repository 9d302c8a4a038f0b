"""A server that sends no positions (offset/epoch), as Sockudo and every plain Pusher server:
the fleet still records every delivery and closes stale windows, and the checker judges lost,
duplicated and reordered by update ids and says that positions were not available."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from harness.checker import check, positions_note
from harness.history import HistoryWriter, Op, OpType, iter_history
from harness.pusher_client import Viewer
from harness.recording import Recorder
from harness.render import render_markdown

CH = "results-1"


class H:
    """Ops as a plain Pusher server produces them: publishes acknowledged without a position,
    deliveries with an update id only."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def op(self, t: float, process: str, typ: OpType, f: str, **value: Any) -> H:
        self.ops.append(Op(t, process, typ, f, value))
        return self

    def pub(self, t: float, n: int) -> H:
        self.op(t, "publisher", "invoke", "publish", id=f"u{n}", channel=CH, seq=n)
        return self.op(t + 0.01, "publisher", "ok", "publish", id=f"u{n}", channel=CH, seq=n)

    def deliver(self, t: float, client: str, n: int) -> H:
        return self.op(t, client, "ok", "deliver", channel=CH, id=f"u{n}", seq=n)


def history(order: dict[str, list[int]]) -> H:
    h = H()
    for client in order:
        h.op(0.999, client, "invoke", "subscribe", channel=CH)
        h.op(1.0, client, "ok", "subscribe", channel=CH, recovered=None, offset=None, epoch=None)
    for n in range(1, 6):
        h.pub(1.0 + n, n)
    for client, received in order.items():
        for i, n in enumerate(received):
            h.deliver(7.0 + i * 0.01, client, n)
        h.op(20.0, client, "ok", "drain", channels=[CH])
    return h


def test_clean_positionless_run_passes_and_says_positions_were_unavailable() -> None:
    report = check(history({"client-1": [1, 2, 3, 4, 5], "client-2": [1, 2, 3, 4, 5]}).ops)
    assert report.verdict == "pass", report.violations
    assert (report.totals["owed"], report.totals["delivered"]) == (10, 10)
    assert report.recording["positions"] == "unavailable"
    assert report.recording["unpositioned_deliveries"] == 10
    note = positions_note(report.recording)
    assert note is not None
    assert "not available" in note
    assert note in render_markdown(report)


def test_positionless_losses_duplicates_and_reorders_are_found_by_id() -> None:
    report = check(history({
        "client-1": [1, 2, 4, 5],        # lost u3
        "client-2": [1, 2, 2, 3, 4, 5],  # u2 twice
        "client-3": [1, 3, 2, 4, 5],     # u2 after u3
    }).ops)
    assert report.verdict == "fail"
    t = report.totals
    assert (t["lost"], t["duplicated"], t["reordered"]) == (1, 1, 1)
    problems = {c.client: c for c in report.clients}
    assert dict(problems["client-1"].lost_ids) == {CH: ("u3",)}
    assert problems["client-2"].duplicated_ids == (f"{CH}:u2",)
    assert problems["client-3"].reordered_ids == (f"{CH}:u2 (seq 2 after 3)",)


def test_positioned_runs_carry_no_such_note() -> None:
    h = H()
    h.op(0.999, "client-1", "invoke", "subscribe", channel=CH)
    h.op(1.0, "client-1", "ok", "subscribe", channel=CH)
    h.op(2.0, "publisher", "invoke", "publish", id="u1", channel=CH, seq=1)
    h.op(2.01, "publisher", "ok", "publish", id="u1", channel=CH, seq=1, offset=1, epoch="e")
    h.op(2.05, "client-1", "ok", "deliver", channel=CH, id="u1", seq=1, offset=1, epoch="e")
    h.op(5.0, "client-1", "ok", "drain", channels=[CH])
    report = check(h.ops)
    assert report.verdict == "pass", report.violations
    assert report.recording["positions"] == "available"
    assert positions_note(report.recording) is None


def _update(n: int, t: float) -> bytes:
    data = orjson.dumps({"id": f"u{n}", "seq": n, "t": t}).decode()
    return orjson.dumps({"event": "result", "channel": CH, "data": data})


def test_fleet_viewer_records_positionless_updates_and_closes_stale_windows(
        tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path / "h.jsonl")
    viewer = Viewer(1, (CH,), Recorder(writer))
    hello = orjson.dumps({"event": "pusher:connection_established",
                          "data": orjson.dumps({"socket_id": "1.1",
                                                "activity_timeout": 120}).decode()})
    subscribed = orjson.dumps({"event": "pusher_internal:subscription_succeeded",
                               "channel": CH, "data": "{}"})
    viewer.opened(1.0)
    viewer.on_text(hello, 1.0)
    viewer.on_text(subscribed, 1.01)
    viewer.on_text(_update(1, 1.5), 1.6)
    viewer.lost(2.0, 1006, "node killed")
    viewer.opened(3.0)
    viewer.on_text(hello, 3.0)
    viewer.on_text(subscribed, 3.01)
    viewer.on_text(_update(2, 3.5), 3.6)  # published after the reconnect: caught up
    writer.close()
    ops = list(iter_history(tmp_path / "h.jsonl"))
    delivered = [op.value["id"] for op in ops if op.f == "deliver"]
    assert delivered == ["u1", "u2"]
    assert all("offset" not in op.value for op in ops if op.f == "deliver")
    (stale,) = [op.value for op in ops if op.f == "stale"]
    assert stale["disconnected"] == 2.0
    assert stale["reconnected"] == 3.0
    # Closed by the first update published after the reconnect; it held every earlier one
    # from its resubscribe on (no replay to wait for).
    assert stale["caught_up"] == 3.01
    # Nothing to resume from: the resubscribe carries no position.
    resubscribes = [op.value for op in ops if op.f == "subscribe" and op.type == "invoke"]
    assert resubscribes == [{"channel": CH}, {"channel": CH}]
