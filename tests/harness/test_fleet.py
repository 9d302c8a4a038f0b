"""The fleet worker's event loop against a scripted Pusher server (real sockets, one process).

A real node replays at once; on an overloaded machine the replay can pause for longer than the
client's quiet-line allowance. The final read must still wait for every event a
``recovered: true`` subscription promised, or the checker would report updates still in flight
as lost. The server here is a few lines of trio-websocket that pause the replay on purpose; the
worker runs its epoll loop in a thread and is driven through its real control socket.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from harness.fleet import ClientSpec, FleetSpec, Worker
from harness.history import HistoryWriter
from harness.pusher_client import DRAIN_QUIET_S
from harness.ws_wire import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG
from server.frames import FrameParser, accept_key, encode_close, encode_frame, encode_text

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


# --------------------------------------------------------------------------- the read path
# The worker's receive path in every shape a byte stream can take, against a raw scripted
# server: four viewers receive the same frames, each connection cut into reads differently
# (one frame per read, frames split across reads, headers split, several frames and a control
# frame in one read, frames sent with the upgrade response). Their records must be identical
# and exact whichever path (the shared decode of whole frames, the frame reader) carried them.

def _node_update(offset: int, pad: int = 0) -> bytes:
    """A message laid out exactly as a turnout node sends it (server.protocol)."""
    from harness.publisher import election_payload
    from server import protocol

    payload = election_payload(random.Random(offset), CHANNEL, f"p{offset}", offset, 600, 1.0)
    payload["note"] = "x" * pad
    return protocol.with_position(protocol.event_prefix(
        "result-update", CHANNEL, orjson.dumps(payload).decode()), offset, EPOCH)


def _update_frames() -> list[bytes]:
    short = orjson.dumps({"event": "e", "channel": CHANNEL,
                          "data": '{"id":"p2","seq":2,"t":1.0}', "offset": 2, "epoch": EPOCH})
    assert len(short) < 126  # the 7-bit length form
    # Another layout (other key order): nothing in the read path may assume the node's.
    reordered = orjson.dumps({"offset": 3, "epoch": EPOCH, "data": orjson.dumps(
        {"t": 1.0, "seq": 3, "id": "p3"}).decode(), "event": "e", "channel": CHANNEL})
    return [encode_text(_node_update(1)), encode_text(short), encode_text(reordered),
            encode_text(_node_update(4, pad=70_000)),  # 64-bit length, many reads
            encode_frame(OP_PING, b"are you there"),
            encode_text(_node_update(5)), encode_text(_node_update(6))]


def _chunkings(frames: list[bytes]) -> list[list[bytes]]:
    stream = b"".join(frames)
    ends = list(itertools.accumulate(len(f) for f in frames))
    one_per_read = list(frames)
    split = [stream[:3], stream[3:ends[0] + 1], stream[ends[0] + 1:ends[2] - 5],
             stream[ends[2] - 5:ends[3] - 100], stream[ends[3] - 100:]]
    everything = [stream]
    headers_split: list[bytes] = []
    for frame in frames:
        headers_split += [frame[:1], frame[1:]]
    return [one_per_read, split, everything, headers_split]


class _RawServer:
    """A listening socket whose n-th connection gets the n-th chunking of the same frames,
    after the upgrade, connection_established and subscription_succeeded (offset 0)."""

    def __init__(self, chunkings: list[list[bytes]]) -> None:
        self.chunkings = chunkings
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[list[tuple[int, bytes]]] = []
        self.sent = threading.Barrier(len(chunkings) + 1)
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.threads[0].start()

    def join(self, timeout: float) -> None:
        """Until every session saw its client close (so ``received`` is complete)."""
        deadline = time.monotonic() + timeout
        self.threads[0].join(timeout)  # every connection accepted: every session started
        for thread in self.threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.sock.close()

    def _serve(self) -> None:
        for index in range(len(self.chunkings)):
            conn, _ = self.sock.accept()
            self.received.append([])
            thread = threading.Thread(target=self._session, args=(conn, index), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _session(self, conn: socket.socket, index: int) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        got = self.received[index]
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        key = re.search(rb"Sec-WebSocket-Key: (\S+)", head)
        assert key is not None
        established = encode_text(orjson.dumps({
            "event": "pusher:connection_established",
            "data": orjson.dumps({"socket_id": f"1.{index}", "activity_timeout": 120}).decode()}))
        response = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                    % accept_key(key.group(1).decode()).encode())
        conn.sendall(response + established)  # the first frame arrives with the upgrade
        parser = FrameParser(1 << 20)
        while not got:
            got += parser.feed(conn.recv(65536))
        conn.sendall(encode_text(orjson.dumps({
            "event": "pusher_internal:subscription_succeeded", "channel": CHANNEL,
            "data": "{}", "offset": 0, "epoch": EPOCH})))
        time.sleep(0.2)
        for chunk in self.chunkings[index]:
            conn.sendall(chunk)
            time.sleep(0.03)  # each chunk its own read
        self.sent.wait(30)
        conn.settimeout(30)
        while True:  # what the client says until it closes (the pong, the close)
            data = conn.recv(65536)
            if not data:
                break
            for opcode, payload in parser.feed(data):
                got.append((opcode, payload))
                if opcode == OP_CLOSE:
                    conn.sendall(encode_close(1000))
                    conn.close()
                    return
        conn.close()


def _run_worker(tmp_path: Path, chunkings: list[list[bytes]],
                full_history: tuple[int, ...] = ()) -> tuple[list[dict[str, Any]], Worker,
                                                             _RawServer]:
    """One worker, one viewer per chunking, until the drain after the server sent it all."""
    server = _RawServer(chunkings)
    history_path = tmp_path / "history.jsonl"
    control_path = tmp_path / "fleet.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(control_path))
    listener.listen(1)
    spec = FleetSpec(worker=0, history_path=str(history_path),
                     entries=(f"ws://127.0.0.1:{server.port}/app/key?protocol=7",),
                     control_path=str(control_path), full_history=full_history)
    history = HistoryWriter(history_path)
    worker = Worker(spec, history)
    worker.add_clients([ClientSpec(i, (CHANNEL,)) for i in range(1, len(chunkings) + 1)],
                       paced=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    listener.settimeout(10)
    control, _ = listener.accept()
    server.sent.wait(30)
    time.sleep(0.3)
    control.sendall(b'{"cmd": "drain"}\n')
    thread.join(30)
    assert not thread.is_alive()
    server.join(10)
    history.close()
    control.close()
    listener.close()
    return [json.loads(line) for line in history_path.read_text().splitlines()], worker, server


def test_every_read_shape_records_the_same_exact_history(tmp_path: Path) -> None:
    ops, worker, server = _run_worker(tmp_path, _chunkings(_update_frames()), full_history=(4,))
    assert not [op for op in ops if op["f"] == "error"], ops
    records = {op["process"]: op["value"] for op in ops if op["f"] == "record"}
    assert sorted(records) == [f"client-{i}" for i in range(1, 5)]
    for process, record in records.items():
        assert record["runs"] == [[EPOCH, 1, 6]], (process, record)
    (positions,) = [op["value"]["positions"] for op in ops if op["f"] == "positions"]
    assert positions == {CHANNEL: {EPOCH: [1, [f"p{i}" for i in range(1, 7)]]}}
    (latency,) = [op["value"]["latency"] for op in ops if op["f"] == "latency"]
    assert sorted(latency) == [f"p{i}" for i in range(1, 7)]
    # published (t = 1.0) before any viewer subscribed: received, owed by none
    assert all(entry[0] > 1.0 and entry[2] == [] for entry in latency.values())
    # the sampled viewer's every delivery, in order
    delivered = [op["value"]["offset"] for op in ops
                 if op["f"] == "deliver" and op["process"] == "client-4"]
    assert delivered == [1, 2, 3, 4, 5, 6]
    assert worker.stats.delivered == 24
    # every connection answered the ping and ended with a close
    for got in server.received:
        assert (OP_PONG, b"are you there") in got, got
        assert got[-1][0] == OP_CLOSE, got
    # whole frames were decoded once for the worker; the reader's messages too
    assert worker.frame_updates.entries
    assert worker.message_updates.entries


def test_a_read_equal_to_a_known_frame_is_the_rest_of_a_held_frame(tmp_path: Path) -> None:
    """The rest of a frame the reader holds can be byte for byte a frame the worker already
    knows whole (here a binary message whose payload ends with update 2's frame): it must be
    read as that rest, not taken as a second delivery of update 2."""
    f1, f2, f3 = (encode_text(_node_update(i)) for i in (1, 2, 3))
    binary = encode_frame(OP_BINARY, b"junk" + f2)
    held = binary[:-len(f2)]
    ops, worker, _server = _run_worker(tmp_path, [[f1, f2, held, f2, f3]])
    (record,) = [op["value"] for op in ops if op["f"] == "record"]
    assert record["runs"] == [[EPOCH, 1, 3]]
    assert worker.stats.delivered == 3
    assert worker.stats.live_duplicates == 0
