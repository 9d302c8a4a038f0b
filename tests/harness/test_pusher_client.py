"""The fleet's sans-IO Pusher client and its compact recording, driven by hand (no sockets).

Every behaviour the shipped experiments rely on is exercised here on a scripted conversation:
resume positions, replay promises and the final read, pings both ways, backoff, stalls, and
what the recording says about each delivery. The last tests feed the recording to the checker
and show it judges lost, duplicated, reordered and unexpected deliveries exactly as it judges
the same deliveries recorded in full.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.checker import check_files
from harness.history import HistoryWriter
from harness.publisher import election_payload
from harness.pusher_client import (
    DRAIN_QUIET_S,
    DUPLICATE,
    FINISHED,
    NEW,
    REORDERED,
    Backoff,
    PresenceJoin,
    Subscription,
    UpdateCache,
    Viewer,
    as_update,
    parse_update,
)
from harness.recording import Recorder, latency_bucket

EPOCH = "e1"


def established(activity: int = 120) -> bytes:
    return orjson.dumps({"event": "pusher:connection_established",
                         "data": orjson.dumps({"socket_id": "1.2",
                                               "activity_timeout": activity}).decode()})


def succeeded(channel: str, offset: int, epoch: str | None = EPOCH,
              recovered: bool | None = None) -> bytes:
    msg: dict[str, Any] = {"event": "pusher_internal:subscription_succeeded",
                           "channel": channel, "data": "{}", "offset": offset, "epoch": epoch}
    if recovered is not None:
        msg["recovered"] = recovered
    return orjson.dumps(msg)


def update(channel: str, offset: int, pid: str, t: float, epoch: str = EPOCH) -> bytes:
    data = orjson.dumps(election_payload(random.Random(1), channel, pid, offset, 600, t))
    return orjson.dumps({"event": "result-update", "channel": channel, "data": data.decode(),
                         "offset": offset, "epoch": epoch})


class Rig:
    """A viewer and its recorder writing to a real history file."""

    def __init__(self, tmp_path: Path, channels: tuple[str, ...] = ("a",), **kw: Any) -> None:
        self.path = tmp_path / "history-client-w0.jsonl"
        self.history = HistoryWriter(self.path)
        self.recorder = Recorder(self.history, 0)
        self.viewer = Viewer(7, channels, self.recorder, **kw)

    def connect(self, now: float, *subs: bytes) -> list[dict[str, Any]]:
        v = self.viewer
        v.opened(now)
        assert v.on_text(established(), now) is None
        sent = [orjson.loads(x) for x in v.outbox]
        v.outbox.clear()
        for msg in subs:
            assert v.on_text(msg, now) is None
        return sent

    def ops(self) -> list[dict[str, Any]]:
        self.history.flush()
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def close(self, now: float) -> None:
        self.recorder.finish([self.viewer], now)
        self.history.close()


def test_parse_update_reads_the_head_and_falls_back_to_json() -> None:
    data = orjson.dumps(election_payload(random.Random(0), "a", "p12", 12, 600, 1234.5))
    assert parse_update(data.decode()) == ("p12", 12, 1234.5)
    assert parse_update('{"seq": 3, "id": "x", "t": 2}') == ("x", 3, 2.0)  # other key order
    assert parse_update("not json") == (None, None, None)
    assert parse_update('{"other": 1}') == (None, None, None)


def test_as_update_takes_only_positioned_channel_updates_with_an_id_and_a_time() -> None:
    raw = update("a", 4, "p4", 12.5)
    message = orjson.loads(raw)
    assert as_update(message) == ("a", "p4", 4, 12.5, 4, EPOCH, message)
    # another key order and data that is not the publisher's head: decoded, not sliced
    other = {"epoch": "e2", "offset": 7, "data": '{"t": 3, "seq": 1, "id": "x"}',
             "channel": "b", "event": "e"}
    assert as_update(other) == ("b", "x", 1, 3.0, 7, "e2", other)
    for changed in ({"event": "pusher_internal:subscription_succeeded"}, {"offset": None},
                    {"offset": True}, {"offset": "4"}, {"epoch": None}, {"channel": 3},
                    {"data": '{"id": "p4", "seq": 4}'},  # no publish time
                    {"data": '{"seq": 4, "t": 1.0}'},  # no update id
                    {"data": "not json"}):
        assert as_update({**message, **changed}) is None, changed
    positionless = dict(message)
    del positionless["offset"]
    assert as_update(positionless) is None


def test_update_cache_decodes_each_distinct_message_once_and_stays_bounded() -> None:
    cache = UpdateCache(limit=3)
    first, second = update("a", 1, "p1", 1.0), update("a", 2, "p2", 2.0)
    one = cache.lookup(first, first)
    assert one is not None
    assert one[:6] == ("a", "p1", 1, 1.0, 1, EPOCH)
    assert cache.lookup(bytes(bytearray(first)), first) is one  # equal bytes: the same decode
    assert (cache.hits, cache.misses) == (1, 1)
    # the key is the bytes as received (a whole frame), the payload what is decoded
    framed = b"\x81\x7e" + len(second).to_bytes(2, "big") + second
    assert cache.lookup(framed, second) == cache.lookup(second, second)
    assert set(cache.entries) == {first, framed, second}
    # what is not a positioned update is never cached: the viewer decodes it itself
    for other in (established(), succeeded("a", 0), b"not json", b"[1, 2]",
                  b'{"event":"e","channel":"a","data":"{}"}'):
        assert cache.lookup(other, other) is None
    assert len(cache.entries) == 3
    cache.lookup(update("a", 3, "p3", 3.0), update("a", 3, "p3", 3.0))
    assert len(cache.entries) == 1  # the limit reached: it started over
    big = orjson.dumps({**orjson.loads(update("a", 4, "p4", 4.0)), "pad": "x" * 20_000})
    decoded = cache.lookup(big, big)  # decoded, but too big to keep
    assert decoded is not None
    assert decoded[1] == "p4"
    assert big not in cache.entries


def _conversation(rng: random.Random) -> list[tuple[str, Any, float]]:
    """A scripted life of one viewer on channels a and b: in-order runs, duplicates,
    reorders, holes, a new epoch, a position carrying another id, updates invoked before the
    subscription, updates without a publish time or an id, a server ping, a disconnect with a
    replay and a stale window, and the final read."""
    steps: list[tuple[str, Any, float]] = []
    now = 1.0

    def text(raw: bytes) -> None:
        nonlocal now
        now += rng.uniform(0.001, 0.05)
        steps.append(("text", raw, now))

    steps.append(("connect", None, now))
    text(succeeded("a", 0))
    text(succeeded("b", 5))
    text(update("a", 1, "pa1", 0.5))  # invoked before the subscription: not owed
    offsets = {"a": 1, "b": 5}
    for _ in range(60):
        ch = rng.choice("ab")
        roll = rng.random()
        if roll < 0.7:
            offsets[ch] += 1
            o = offsets[ch]
        elif roll < 0.8:
            o = offsets[ch]  # a duplicate
        elif roll < 0.88:
            o = max(1, offsets[ch] - rng.randint(1, 3))  # an older position
        else:
            offsets[ch] += 2  # a hole
            o = offsets[ch]
        text(update(ch, o, f"p{ch}{o}", now - 0.01))
    for _ in range(2):  # back in line
        offsets["a"] += 1
        text(update("a", offsets["a"], f"pa{offsets['a']}", now))
    text(update("a", offsets["a"], "pX", now))  # a known position carrying another id
    # another viewer of the worker received other ids at the next positions: in line, yet
    # conflicts with the worker's position table
    for o in (offsets["a"] + 1, offsets["a"] + 2):
        steps.append(("peer", update("a", o, f"peer{o}", now), now))
        text(update("a", o, f"pa{o}", now))
    offsets["a"] += 3
    text(b'{"event":"e","channel":"a","offset":%d,"epoch":"e1","data":"{\\"id\\":\\"n\\"}"}'
         % offsets["a"])  # an update without a publish time
    text(b'{"event":"e","channel":"b","data":"{\\"id\\":\\"u\\",\\"t\\":1}"}')
    text(b'{"event":"pusher:ping","data":"{}"}')
    now += 1.0
    steps.append(("lost", None, now))
    now += 0.5
    steps.append(("connect", None, now))
    # a replay promised up to A+2 on a; b restarted: the stale window closes unrecovered, the
    # replay goes on in line
    text(succeeded("a", offsets["a"] + 2, recovered=True))
    text(succeeded("b", 0, epoch="e2", recovered=False))
    for o in (offsets["a"] + 1, offsets["a"] + 2, offsets["a"] + 3):
        text(update("a", o, f"pa{o}", now - 0.2))
    for o in range(1, 6):
        text(update("b", o, f"pb2.{o}", now + 0.1, epoch="e2"))
    text(update("a", offsets["a"] + 4, "pa-late", now + 0.1))
    steps.append(("final", None, now + 0.1))
    text(update("b", 6, "pb2.6", now + 0.15, epoch="e2"))
    steps.append(("tick", None, now + 5.0))
    return steps


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decoded_once_updates_are_recorded_exactly_as_decoded_per_viewer(
        tmp_path: Path, full: bool, seed: int) -> None:
    """Viewer.on_update with a worker's shared UpdateCache records the same history, record,
    positions, latency and live counts as on_text decoding every message itself."""
    steps = _conversation(random.Random(seed))
    cache = UpdateCache()
    results = []
    for shared in (False, True):
        path = tmp_path / f"shared-{shared}"
        path.mkdir()
        rig = Rig(path, ("a", "b"), full=full)
        v = rig.viewer
        peer = Viewer(8, ("a",), rig.recorder)
        peer.opened(0.5)
        peer.on_text(established(), 0.5)
        peer.on_text(succeeded("a", 0), 0.5)
        for kind, raw, now in steps:
            if kind == "peer":
                peer.on_text(raw, now)
            elif kind == "connect":
                rig.connect(now)
            elif kind == "lost":
                v.lost(now, None, "EOF")
            elif kind == "final":
                v.begin_final_read(now)
            elif kind == "tick":
                assert v.tick(now) == FINISHED
            elif shared:
                decoded = cache.lookup(bytes(bytearray(raw)), raw)
                v.on_text(raw, now) if decoded is None else v.on_update(decoded, now)
            else:
                v.on_text(raw, now)
        outbox = list(v.outbox)
        rig.close(99.0)
        stats = rig.recorder.stats
        results.append((rig.path.read_text(), outbox, stats.delivered, stats.live_duplicates,
                        stats.live_reorders, stats.conflicts, stats.live_latency))
    assert cache.hits == 0  # every message met once per viewer
    assert cache.misses > 60
    assert results[0][5] == 3  # pX, and both ids the other viewer saw first
    assert results[0] == results[1]
    history = results[0][0]
    for kind in ('"f":"record"', '"conflict"', '"stale"'):
        assert kind in history, kind


def test_a_first_delivery_at_offset_zero_lands_in_the_position_table(tmp_path: Path) -> None:
    """An epoch-less server (epoch "") delivering offset 0 first: the open run and the
    subscription's position table start from the general path, never from a detached table."""
    rig = Rig(tmp_path)
    v = rig.viewer
    rig.connect(1.0, succeeded("a", 0, epoch=""))
    cache = UpdateCache()
    for offset in (0, 1):
        raw = update("a", offset, f"p{offset}", 2.0, epoch="")
        decoded = cache.lookup(raw, raw)
        assert decoded is not None
        v.on_update(decoded, 2.5)
    rig.close(9.0)
    ops = {o["f"]: o for o in rig.ops()}
    assert ops["positions"]["value"]["positions"] == {"a": {"": [0, ["p0", "p1"]]}}
    assert ops["record"]["value"]["runs"] == [["", 0, 1]]


def test_subscription_runs_keep_the_exact_delivery_order() -> None:
    sub = Subscription("a")
    kinds = [sub.note(EPOCH, o) for o in (1, 2, 3, 5, 4, 5, 6, 7)]
    assert kinds == [NEW, NEW, NEW, NEW, REORDERED, DUPLICATE, NEW, NEW]
    assert sub.all_runs() == [[EPOCH, 1, 3], [EPOCH, 5, 5], [EPOCH, 4, 7]]
    assert sub.note("e2", 1) == NEW  # a new epoch starts a new run
    assert sub.note(EPOCH, 8) == NEW  # the old epoch continues from its own top
    assert sub.all_runs()[-2:] == [["e2", 1, 1], [EPOCH, 8, 8]]


def test_first_connect_subscribes_fresh_then_resumes_from_the_last_position(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("a", "b"))
    sent = rig.connect(1.0, succeeded("a", 0, None), succeeded("b", 4))
    assert [m["data"] for m in sent] == [{"channel": "a"}, {"channel": "b"}]
    v = rig.viewer
    v.on_text(update("a", 1, "p1", 1.5, "e9"), 2.0)
    v.on_text(update("b", 5, "p2", 1.6), 2.0)
    v.lost(3.0, 4200, "restart")
    assert [m["data"] for m in rig.connect(4.0)] == [
        {"channel": "a", "offset": 1, "epoch": "e9"}, {"channel": "b", "offset": 5, "epoch": EPOCH}]
    ops = rig.ops()
    assert [(o["f"], o["type"]) for o in ops if o["f"] != "deliver"] == [
        ("connect", "ok"), ("subscribe", "invoke"), ("subscribe", "invoke"),
        ("subscribe", "ok"), ("subscribe", "ok"), ("disconnect", "info"), ("connect", "ok"),
        ("subscribe", "invoke"), ("subscribe", "invoke")]
    assert ops[5]["value"] == {"code": 4200, "reason": "restart"}


def test_resume_off_never_sends_a_position(tmp_path: Path) -> None:
    rig = Rig(tmp_path, resume=False)
    rig.connect(1.0, succeeded("a", 3))
    rig.viewer.on_text(update("a", 4, "p1", 1.5), 2.0)
    rig.viewer.lost(3.0, None, "EOF")
    assert rig.connect(4.0)[0]["data"] == {"channel": "a"}


def test_final_read_waits_for_the_promised_replay_then_a_quiet_line(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    v = rig.viewer
    rig.connect(1.0, succeeded("a", 3))
    v.lost(2.0, 4200, "restart")
    rig.connect(3.0, succeeded("a", 5, recovered=True))  # promises offsets 4 and 5
    v.begin_final_read(3.0)
    assert v.tick(3.0 + DRAIN_QUIET_S * 3) is None  # quiet, but the replay is not in yet
    v.on_text(update("a", 4, "p4", 1.0), 10.0)
    assert v.tick(10.0 + DRAIN_QUIET_S * 3) is None
    v.on_text(update("a", 5, "p5", 1.1), 20.0)
    assert v.tick(20.0 + DRAIN_QUIET_S / 2) is None  # complete, not yet quiet
    assert v.tick(20.0 + DRAIN_QUIET_S) == FINISHED
    assert v.finished
    assert rig.ops()[-1]["f"] == "drain"


def test_silence_ping_then_pong_timeout(tmp_path: Path) -> None:
    rig = Rig(tmp_path, silence_ping_s=5.0, pong_timeout_s=5.0)
    v = rig.viewer
    rig.connect(0.0, succeeded("a", 0))
    assert v.tick(4.9) is None
    assert v.outbox == []
    assert v.tick(5.0) is None
    assert v.outbox == [b'{"event":"pusher:ping","data":{}}']
    v.outbox.clear()
    assert v.tick(9.9) is None
    assert v.tick(10.0) == (1002, "no pong from server")
    # Any message is an answer: the deadline goes away.
    rig2 = Rig(tmp_path / "..", silence_ping_s=5.0)
    rig2.connect(0.0, succeeded("a", 0))
    rig2.viewer.tick(5.0)
    rig2.viewer.on_text(b'{"event":"pusher:pong","data":{}}', 6.0)
    assert rig2.viewer.tick(10.5) is None


def test_server_activity_timeout_caps_the_silence_ping(tmp_path: Path) -> None:
    rig = Rig(tmp_path, silence_ping_s=30.0)
    rig.viewer.opened(0.0)
    rig.viewer.on_text(established(activity=10), 0.0)
    assert rig.viewer.silence_ping_s == 10.0


def test_server_ping_is_answered_and_stall_silences_the_client(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    v = rig.viewer
    rig.connect(0.0, succeeded("a", 0))
    v.on_text(b'{"event":"pusher:ping","data":{}}', 1.0)
    assert v.outbox == [b'{"event":"pusher:pong","data":{}}']
    v.outbox.clear()
    v.stalled_until = 100.0
    assert v.tick(50.0) is None  # a stalled consumer does not ping
    assert v.outbox == []
    v.begin_final_read(60.0)
    assert v.stalled_until == 0.0  # the final read ends a stall


def test_connection_established_deadline(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.viewer.opened(0.0)
    assert rig.viewer.tick(9.0) is None
    assert rig.viewer.tick(10.5) == (1002, "no connection_established within 10 s")


def test_backoff_full_jitter_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.1, 1.0)
    rng = random.Random(3)
    caps = []
    for _ in range(6):
        caps.append(backoff.current)
        assert 0 <= backoff.next_delay(rng) <= caps[-1]
    assert caps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.current == 0.1


def test_a_node_saying_try_later_gets_a_second_and_a_normal_close_resets_it(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("a",))
    v = rig.viewer
    v.backoff = Backoff(0.1, 5.0)
    rng = random.Random(7)
    for attempt in range(4):  # pusher-js: a second after each, not a growing wait
        rig.connect(float(attempt))
        v.lost(attempt + 0.5, 4100, "node cannot reach redis; reconnect elsewhere")
        assert 1.0 <= v.backoff.next_delay(rng) <= 1.1
    rig.connect(10.0)
    v.lost(11.0, 4200, "server draining; reconnect")  # come back at once after a drain
    assert v.backoff.floor == 0.0
    assert v.backoff.next_delay(rng) <= 0.1


def test_stale_window_from_disconnect_until_everything_published_before_the_reconnect(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, ("a", "b"))
    v = rig.viewer
    rig.connect(1.0, succeeded("a", 0), succeeded("b", 0))
    v.on_text(update("a", 1, "p1", 1.5), 1.6)
    v.lost(10.0, None, "EOF")  # D = 10
    v.lost(10.5, None, "ConnectionRefusedError")  # a failed attempt does not move D
    rig.connect(12.0)  # C = 12
    v.on_text(succeeded("a", 2, recovered=True), 12.1)
    v.on_text(succeeded("b", 0, recovered=True), 12.1)
    v.on_text(update("a", 2, "p2", 11.0), 12.2)  # invoked during the outage: still stale
    v.on_text(update("b", 1, "p3", 12.5), 12.6)  # b: first update invoked after C -> done
    assert not [o for o in rig.ops() if o["f"] == "stale"]
    v.on_text(update("a", 3, "p4", 12.7), 12.8)  # a done too: the window closes
    (stale,) = [o for o in rig.ops() if o["f"] == "stale"]
    assert stale["value"] == {"disconnected": 10.0, "reconnected": 12.0, "caught_up": 12.2}


def test_recovered_false_leaves_the_stale_window_unrecovered(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    v = rig.viewer
    rig.connect(1.0, succeeded("a", 0))
    v.lost(2.0, 4200, "restart")
    rig.connect(3.0, succeeded("a", 9, recovered=False))
    (stale,) = [o for o in rig.ops() if o["f"] == "stale"]
    assert stale["value"]["caught_up"] is None
    assert stale["value"]["unrecovered"] is True


def test_record_positions_and_latency_ops(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    v = rig.viewer
    rig.connect(1.0, succeeded("a", 0))
    v.on_text(update("a", 1, "p1", 0.5), 1.2)  # invoked before the subscription: not owed
    v.on_text(update("a", 2, "p2", 2.0), 2.0125)
    v.on_text(update("a", 2, "p2", 2.0), 2.5)  # a duplicate: no second latency
    v.on_text(update("a", 3, "pX", 3.0), 3.25)  # position 3 carries pX
    rig.close(9.0)
    ops = {o["f"]: o for o in rig.ops()}
    assert ops["record"]["value"] == {"channel": "a", "first_ok": 1.0,
                                      "runs": [[EPOCH, 1, 2], [EPOCH, 2, 3]],
                                      "worker": "fleet-w0"}
    assert ops["positions"]["value"]["positions"] == {"a": {EPOCH: [1, ["p1", "p2", "pX"]]}}
    latency = ops["latency"]["value"]["latency"]
    assert latency["p1"] == [1.2, -1.0, []]
    assert latency["p2"] == [2.0125, 2.0125, [latency_bucket(12500), 1]]
    assert rig.recorder.stats.live_duplicates == 1


def _judge(path: Path, publishes: list[tuple[str, int, float]], drain: float = 50.0) -> Any:
    """Append the publisher's ops and a drain to a recorded client file, then check it."""
    pub_path = path.parent / "history-publisher.jsonl"
    with HistoryWriter(pub_path) as h:
        for pid, offset, t in publishes:
            h.record("publisher", "invoke", "publish", {"id": pid, "channel": "a", "seq": offset},
                     time=t)
            h.record("publisher", "ok", "publish",
                     {"id": pid, "channel": "a", "seq": offset, "offset": offset,
                      "epoch": EPOCH}, time=t + 0.01)
    return check_files([pub_path, path])


@pytest.mark.parametrize("full", [False, True])
def test_the_checker_judges_the_compact_record_exactly(tmp_path: Path, full: bool) -> None:
    rig = Rig(tmp_path, full=full)
    v = rig.viewer
    rig.connect(1.0, succeeded("a", 0))
    # 1..8 published after the subscription; 3 lost, 5 duplicated, 7 before 6, and position 8
    # carries an update that was never published.
    for offset, pid, t in ((1, "p1", 2), (2, "p2", 3), (4, "p4", 5), (5, "p5", 6),
                           (5, "p5", 6), (7, "p7", 8), (6, "p6", 7), (8, "bogus", 9)):
        v.on_text(update("a", offset, pid, float(t)), t + 0.05)
    v.begin_final_read(20.0)
    assert v.tick(21.0) == FINISHED
    rig.close(22.0)
    report = _judge(rig.path, [(f"p{i}", i, float(i + 1)) for i in range(1, 8)])
    totals = report.totals
    assert (totals["owed"], totals["delivered"], totals["lost"]) == (7, 6, 1)
    assert (totals["duplicated"], totals["reordered"], totals["unexpected"]) == (1, 1, 1)
    assert report.clients[0].lost_ids == {"a": ("p3",)}
    assert report.recording["compact"] is True
    assert report.recording["sampled_subscriptions"] == (1 if full else 0)
    assert report.recording["inconsistent"] == 0
    assert report.latency_ms["count"] == 6
    assert report.latency_ms["max"] == pytest.approx(50.0)


def test_a_sample_that_disagrees_with_its_record_is_reported(tmp_path: Path) -> None:
    rig = Rig(tmp_path, full=True)
    v = rig.viewer
    rig.connect(1.0, succeeded("a", 0))
    v.on_text(update("a", 1, "p1", 2.0), 2.05)
    v.begin_final_read(3.0)
    v.tick(5.0)
    v.subs["a"].hi = 5  # the compact record now claims offsets 1..5
    rig.close(6.0)
    report = _judge(rig.path, [("p1", 1, 2.0)])
    assert report.verdict == "fail"
    assert any(v.startswith("recording: 1 sampled subscriptions disagree") for v in
               report.violations)
    assert math.isfinite(report.duration_s)


# ------------------------------------------------------------------ presence viewers


def presence_succeeded(channel: str, ids: list[str]) -> bytes:
    data = {"presence": {"ids": ids, "hash": dict.fromkeys(ids), "count": len(ids)}}
    return orjson.dumps({"event": "pusher_internal:subscription_succeeded", "channel": channel,
                         "data": orjson.dumps(data).decode(), "offset": 3, "epoch": EPOCH})


def member(channel: str, change: str, user: str, offset: int) -> bytes:
    return orjson.dumps({"event": f"pusher_internal:member_{change}", "channel": channel,
                         "data": orjson.dumps({"user_id": user}).decode(), "offset": offset,
                         "epoch": EPOCH})


@pytest.mark.parametrize("fresh", [False, True])
def test_a_presence_viewer_joins_signed_on_every_connection_and_records_its_list(
        tmp_path: Path, fresh: bool) -> None:
    from harness.checks.presence import judge_presence
    from server.auth import verify_channel_auth

    room = "presence-room-1"
    join = PresenceJoin(room, "u7", "key", "secret", fresh=fresh)
    rig = Rig(tmp_path, presence=join)
    v = rig.viewer
    sent = rig.connect(1.0, succeeded("a", 0))
    subscribe = sent[-1]["data"]
    assert (subscribe["channel"], subscribe.get("offset")) == (room, None)  # no resume
    assert verify_channel_auth("key", "secret", "1.2", room, subscribe["auth"],
                               subscribe["channel_data"])
    first = "u7.1" if fresh else "u7"
    assert orjson.loads(subscribe["channel_data"]) == {"user_id": first}
    v.begin_final_read(1.0)
    assert not v.read_complete  # the presence subscription is not answered yet
    v.on_text(presence_succeeded(room, ["u1", first]), 1.1)
    v.on_text(member(room, "added", "u2", 4), 1.2)
    v.on_text(member(room, "removed", "u1", 5), 1.3)
    assert v.read_complete
    v.final = False
    v.lost(2.0, 4200, "restart")
    again = rig.connect(3.0, succeeded("a", 0))[-1]["data"]
    second = "u7.2" if fresh else "u7"
    assert orjson.loads(again["channel_data"]) == {"user_id": second}
    v.on_text(presence_succeeded(room, ["u2", second]), 3.1)
    v.begin_final_read(3.1)
    assert v.tick(3.2 + DRAIN_QUIET_S) == FINISHED
    ops = [o for o in rig.ops() if o["f"] in ("members", "member", "drain")]
    assert [(o["type"], o["f"]) for o in ops] == [
        ("invoke", "members"), ("ok", "members"), ("ok", "member"), ("ok", "member"),
        ("invoke", "members"), ("ok", "members"), ("ok", "drain")]
    assert ops[2]["value"] == {"channel": room, "user": "u2", "change": "added"}
    # The presence check reads exactly these ops: u2 and the viewer itself remain, and only
    # the viewer is connected here.
    raw = [(o["time"], o["process"], o["type"], o["f"], o["value"]) for o in ops]
    result = judge_presence(raw)
    assert (result.finished, result.problems, result.member_events) == (1, 1, 2)
    assert (result.missing, result.ghosts) == (0, 1)  # u2 is listed but no viewer here


def test_a_refused_presence_join_is_recorded_and_ends_the_wait(tmp_path: Path) -> None:
    rig = Rig(tmp_path, presence=PresenceJoin("presence-x", "u7", "key", "secret"))
    v = rig.viewer
    rig.connect(1.0, succeeded("a", 0))
    v.on_text(orjson.dumps({"event": "pusher:subscription_error", "channel": "presence-x",
                            "data": {"type": "LimitReached", "status": 403}}), 1.1)
    assert v.read_complete
    assert [o["type"] for o in rig.ops() if o["f"] == "members"] == ["invoke", "fail"]
