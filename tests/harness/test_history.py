"""The history: op model, buffered JSONL writer, reader and merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from harness.history import (
    HistoryError,
    HistoryWriter,
    Op,
    iter_history,
    merge_histories,
    read_history,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_op_round_trips_through_json() -> None:
    op = Op(12.345678901234, "client-3", "ok", "deliver",
            {"channel": "results-1", "id": "p17", "seq": 17, "epoch": "e1"})
    line = op.to_json()
    assert b"\n" not in line
    assert Op.from_json(line) == op
    assert Op.from_json(line.decode()) == op
    assert Op.from_dict(op.to_dict()) == op
    # Integer times are accepted and normalised.
    assert Op.from_json(b'{"time":3,"process":"nemesis","type":"info","f":"x"}').time == 3.0


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"time":"soon","process":"p","type":"ok","f":"x","value":{}}', "'time' must be"),
        (b'{"time":true,"process":"p","type":"ok","f":"x","value":{}}', "'time' must be"),
        (b'{"time":1,"process":"","type":"ok","f":"x","value":{}}', "'process' must be"),
        (b'{"time":1,"process":"p","type":"done","f":"x","value":{}}', "'type' must be one"),
        (b'{"time":1,"process":"p","type":"ok","value":{}}', "'f' must be"),
        (b'{"time":1,"process":"p","type":"ok","f":"x","value":[]}', "'value' must be an obj"),
    ],
)
def test_from_json_rejects_malformed_ops(line: bytes, problem: str) -> None:
    with pytest.raises(HistoryError, match=problem):
        Op.from_json(line)


def test_writer_buffers_until_count_interval_or_close(tmp_path: Path) -> None:
    path = tmp_path / "history-0.jsonl"
    clock = FakeClock()
    writer = HistoryWriter(path, flush_interval_s=0.5, max_buffered=3, clock=clock)
    writer.record("client-1", "ok", "connect", {"node": "node-1"})
    writer.record("client-1", "invoke", "subscribe", {"channel": "results-0"})
    assert lines(path) == []  # buffered
    writer.record("client-1", "ok", "subscribe", {"channel": "results-0"})
    assert len(lines(path)) == 3  # max_buffered reached
    writer.record("client-1", "ok", "deliver", {"channel": "results-0", "id": "p1"})
    assert len(lines(path)) == 3
    clock.now += 0.6
    writer.record("client-1", "ok", "deliver", {"channel": "results-0", "id": "p2"})
    assert len(lines(path)) == 5  # the interval elapsed
    writer.record("client-1", "ok", "drain", {"channels": ["results-0"]})
    writer.close()
    assert writer.closed
    ops = read_history(path)
    assert [o.f for o in ops] == ["connect", "subscribe", "subscribe", "deliver", "deliver",
                                  "drain"]
    assert ops[0].time == 100.0
    assert ops[-1].time == pytest.approx(100.6)
    assert writer.count == 6
    with pytest.raises(ValueError, match="closed"):
        writer.record("client-1", "ok", "drain")


def test_writer_snapshots_values_and_appends_to_existing_files(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    value = {"channel": "results-0", "id": "p1"}
    with HistoryWriter(path) as writer:
        writer.record("client-1", "ok", "deliver", value, time=1.0)
        value["id"] = "mutated"
    with HistoryWriter(path) as writer:
        writer.append(Op(2.0, "client-1", "ok", "drain", {"channels": []}))
    ops = read_history(path)
    assert [o.value.get("id") for o in ops] == ["p1", None]


async def test_autoflush_writes_while_idle(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    path = tmp_path / "h.jsonl"
    writer = HistoryWriter(path, flush_interval_s=0.5, max_buffered=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.autoflush)
        writer.record("nemesis", "invoke", "fault", {"fault_id": "f1"})
        assert lines(path) == []
        await trio.sleep(0.6)
        assert len(lines(path)) == 1
        nursery.cancel_scope.cancel()
    writer.close()


def test_reader_skips_a_torn_final_line_but_not_a_bad_middle_line(tmp_path: Path) -> None:
    good = Op(1.0, "client-1", "ok", "connect", {}).to_json() + b"\n"
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(good + good + b'{"time": 2.0, "proc')
    assert len(read_history(torn)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(good + b"garbage\n" + good)
    with pytest.raises(HistoryError, match=r"bad\.jsonl:2: invalid JSON"):
        list(iter_history(bad))
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(good + b"\n" + good)
    assert len(read_history(blank)) == 2


def test_merge_sorts_by_time_stably(tmp_path: Path) -> None:
    a, b = tmp_path / "history-0.jsonl", tmp_path / "history-1.jsonl"
    with HistoryWriter(a) as w:
        w.record("client-1", "ok", "deliver", {"id": "x"}, time=1.0)
        w.record("client-1", "ok", "deliver", {"id": "y"}, time=3.0)
        w.record("client-1", "ok", "deliver", {"id": "z"}, time=3.0)
    with HistoryWriter(b) as w:
        w.record("publisher", "invoke", "publish", {"id": "q"}, time=0.5)
        w.record("client-2", "ok", "deliver", {"id": "w"}, time=3.0)
        w.record("client-2", "ok", "deliver", {"id": "v"}, time=2.0)  # clock oddity kept
    merged = merge_histories([a, b])
    assert [o.value["id"] for o in merged] == ["q", "x", "v", "y", "z", "w"]
    assert [o.value["id"] for o in merge_histories([b, a])] == ["q", "x", "v", "w", "y", "z"]
