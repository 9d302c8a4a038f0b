"""The event tail, the replay, and the control-socket client (against a fake harness)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tui.catalog import FaultRequest
from tui.control_client import ControlClient, ControlError
from tui.feed import EventTail, Replay, read_events

pytestmark = pytest.mark.asyncio


async def test_the_tail_follows_a_growing_file_until_the_verdict(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = EventTail(path, poll_s=0.01)
    seen: list[dict[str, Any]] = []

    async def consume() -> None:
        async for event in tail.events():
            seen.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)  # the file does not exist yet: the tail waits for it
    with open(path, "wb") as f:
        f.write(b'{"t": 0, "type": "run", "name": "x"}\n{"t": 1, "type": "pha')
        f.flush()
        await asyncio.sleep(0.05)
        assert [e["type"] for e in seen] == ["run"]  # half a line is not an event
        f.write(b'se", "phase": "steady"}\n{"t": 2, "type": "verdict", "report": {}}\n')
        f.write(b'{"t": 3, "type": "log", "message": "after the verdict"}\n')
    await asyncio.wait_for(task, 5)
    assert [e["type"] for e in seen] == ["run", "phase", "verdict"]
    assert tail.ended_by == "verdict"


async def test_the_tail_ends_when_stopped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"t": 0, "type": "run"}\n')
    tail = EventTail(path, poll_s=0.01)
    events = tail.events()
    assert (await anext(events))["type"] == "run"
    tail.stop("the harness exited")
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(events), 5)
    assert tail.ended_by == "the harness exited"


async def test_a_replay_plays_at_its_speed(fixtures: Path) -> None:
    path = fixtures / "recorded-runs/20250601-120000-tiny/events.jsonl"
    replay = Replay.from_file(path, speed=2.0)
    assert replay.events == read_events(path)
    assert replay.outcome == "pass"
    replay.fold_to(3.0)
    folded = replay.cursor
    replay.advance(1.0)  # one second of wall time at 2x: two seconds of the run
    assert replay.position == pytest.approx(5.0)
    assert replay.cursor > folded
    replay.to_end()
    assert replay.at_end
    assert replay.state.verdict == "pass"


class FakeHarness:
    """A control.sock that answers like harness/control_server.py and records the commands."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            command = json.loads(line)
            self.commands.append(command)
            if command["cmd"] == "inject" and command["kind"] == "kill_node":
                reply = {"ok": True, "fault_id": f"i{len(self.commands)}"}
            elif command["cmd"] == "inject":
                reply = {"ok": False, "error": f"unknown fault kind {command['kind']!r}"}
            else:
                reply = {"ok": True}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()


async def test_control_client_speaks_json_lines(tmp_path: Path) -> None:
    fake = FakeHarness()
    server = await asyncio.start_unix_server(fake.handle, path=str(tmp_path / "control.sock"))
    async with server:
        client = ControlClient(tmp_path / "control.sock")
        assert await client.ping()
        request = FaultRequest("kill_node", "node-2", {"restart": True, "restart_after_s": 2.0})
        assert await client.inject(request) == "i2"
        with pytest.raises(ControlError, match="unknown fault kind"):
            await client.inject(FaultRequest("nope", "node-2"))
        await client.heal("i2")
        await client.heal_all()
    assert [c["cmd"] for c in fake.commands] == ["ping", "inject", "inject", "heal", "heal_all"]
    assert fake.commands[1] == request.command()


async def test_control_client_without_a_socket_says_so(tmp_path: Path) -> None:
    client = ControlClient(tmp_path / "control.sock")
    assert not await client.ping()
    with pytest.raises(ControlError, match="no control channel"):
        await client.heal_all()
