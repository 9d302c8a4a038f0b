"""The fleet client's final read, against a scripted Pusher server (the logic of one piece).

A real node replays at once; on an overloaded machine the replay can pause for longer than the
client's quiet-line allowance. The final read must still wait for every event a
``recovered: true`` subscription promised, or the checker would report updates still in flight
as lost. The server here is a few lines of trio-websocket that pause the replay on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from harness.fleet import DRAIN_QUIET_S, ClientSpec, Fleet, FleetSpec, _Client
from harness.history import HistoryWriter

CHANNEL = "results"
EPOCH = "e1"
REPLAY_PAUSE_S = DRAIN_QUIET_S * 1.5


def _event(offset: int) -> str:
    data = orjson.dumps({"id": f"p{offset}", "seq": offset}).decode()
    return orjson.dumps({"event": "update", "channel": CHANNEL, "data": data,
                         "offset": offset, "epoch": EPOCH}).decode()


async def _scripted_server(request: WebSocketRequest, subscribed: trio.Event,
                           seen: list[dict[str, Any]]) -> None:
    ws = await request.accept()
    await ws.send_message(orjson.dumps({
        "event": "pusher:connection_established",
        "data": orjson.dumps({"socket_id": "1.1", "activity_timeout": 120}).decode(),
    }).decode())
    subscribe = orjson.loads(await ws.get_message())
    seen.append(subscribe)
    # Resumed from offset 3: promise 4..5, then deliver them with pauses longer than the
    # client's quiet-line allowance.
    await ws.send_message(orjson.dumps({
        "event": "pusher_internal:subscription_succeeded", "channel": CHANNEL, "data": "{}",
        "offset": 5, "epoch": EPOCH, "recovered": True,
    }).decode())
    subscribed.set()
    try:
        for offset in (4, 5):
            await trio.sleep(REPLAY_PAUSE_S)
            await ws.send_message(_event(offset))
        await trio.sleep_forever()
    except ConnectionClosed:
        pass  # a client that ended its read early; the assertions say what it missed


async def test_final_read_waits_for_the_promised_replay(tmp_path: Path) -> None:
    subscribed = trio.Event()
    seen: list[dict[str, Any]] = []
    history_path = tmp_path / "history.jsonl"
    history = HistoryWriter(history_path)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve_websocket,
            lambda request: _scripted_server(request, subscribed, seen),
            "127.0.0.1", 0, None)
        port = server.port
        fleet = Fleet(FleetSpec(
            worker=0, history_path=str(history_path),
            entries=(f"ws://127.0.0.1:{port}/app/key?protocol=7",)), history)
        client = _Client(ClientSpec(1, (CHANNEL,)))
        client.positions[CHANNEL] = (3, EPOCH)
        with trio.fail_after(20):
            async with trio.open_nursery() as clients:
                clients.start_soon(fleet.run_client, client, False)
                await subscribed.wait()
                fleet.drain_event.set()  # the final read starts while the replay is pending
        nursery.cancel_scope.cancel()
    history.close()

    assert seen[0]["data"] == {"channel": CHANNEL, "offset": 3, "epoch": EPOCH}
    ops = [json.loads(line) for line in history_path.read_text().splitlines()]
    kinds = [(op["f"], op["value"].get("offset")) for op in ops
             if op["f"] in ("deliver", "drain")]
    assert kinds == [("deliver", 4), ("deliver", 5), ("drain", None)], kinds
    assert client.replay_until == {}
