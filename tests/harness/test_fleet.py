"""The fleet worker's event loop against a scripted Pusher server (real sockets, one process).

A real node replays at once; on an overloaded machine the replay can pause for longer than the
client's quiet-line allowance. The final read must still wait for every event a
``recovered: true`` subscription promised, or the checker would report updates still in flight
as lost. The server here is a few lines of trio-websocket that pause the replay on purpose; the
worker runs its epoll loop in a thread and is driven through its real control socket.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from harness.fleet import ClientSpec, FleetSpec, Worker
from harness.history import HistoryWriter
from harness.pusher_client import DRAIN_QUIET_S

CHANNEL = "results"
EPOCH = "e1"
REPLAY_PAUSE_S = DRAIN_QUIET_S * 1.5


def _event(offset: int) -> str:
    data = orjson.dumps({"id": f"p{offset}", "seq": offset, "t": 1.0}).decode()
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
    control_path = tmp_path / "fleet.sock"
    statuses: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve_websocket,
            lambda request: _scripted_server(request, subscribed, seen),
            "127.0.0.1", 0, None)
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await listener.bind(str(control_path))
        listener.listen(1)
        spec = FleetSpec(worker=0, history_path=str(history_path),
                         entries=(f"ws://127.0.0.1:{server.port}/app/key?protocol=7",),
                         control_path=str(control_path), full_history=(1,))
        history = HistoryWriter(history_path)
        worker = Worker(spec, history)
        worker.add_clients([ClientSpec(1, (CHANNEL,))], paced=False)
        sub = worker.viewers[0].subs[CHANNEL]
        sub.offset, sub.epoch = 3, EPOCH  # it already held 1..3
        done = trio.Event()

        async def run_worker() -> None:
            await trio.to_thread.run_sync(worker.run)
            done.set()

        with trio.fail_after(30):
            nursery.start_soon(run_worker)
            stream = trio.SocketStream((await listener.accept())[0])
            await subscribed.wait()
            await stream.send_all(b'{"cmd": "drain"}\n')  # the final read starts mid-replay
            buffer = b""
            while not done.is_set():
                with trio.move_on_after(0.5):
                    buffer += await stream.receive_some(65536)
            statuses = [json.loads(line) for line in buffer.splitlines() if line.strip()]
        history.close()
        nursery.cancel_scope.cancel()

    assert seen[0]["data"] == {"channel": CHANNEL, "offset": 3, "epoch": EPOCH}
    ops = [json.loads(line) for line in history_path.read_text().splitlines()]
    kinds = [(op["f"], op["value"].get("offset")) for op in ops
             if op["f"] in ("deliver", "drain")]
    assert kinds == [("deliver", 4), ("deliver", 5), ("drain", None)], kinds
    (record,) = [op["value"] for op in ops if op["f"] == "record"]
    assert record["runs"] == [[EPOCH, 4, 5]]
    assert statuses[-1]["type"] == "drained"
    assert statuses[-1]["drained"] == 1
    assert statuses[-1]["delivered"] == 2
