"""The fleet's receive cost per delivery against the raw non-blocking ``recv`` floor.

One source process broadcasts the same ~760-byte turnout update frame (a realistic election
result, stamped with its send time) to N websocket connections. Two receivers take turns on
the same source in the same run, each in its own process on the same source addresses:

``floor``
    ``bench.wire`` floor sink: ``epoll`` + one ``recv`` per ready socket into the fleet's buffer
    size, counting bytes. Nothing else: the floor.
``fleet``
    the real fleet worker (``python -m harness.fleet SPEC.json``, the process a run starts):
    N sans-IO Pusher viewers in one epoll loop, frame reader, JSON decode of each distinct
    update (once per worker: every viewer of a channel receives the same bytes), positions into
    runs, the position table, per-update latency histograms, timers and status.

For each receiver, M broadcasts 0.1 s apart are sent, and the receiver's CPU time
(``/proc/<pid>/task/*/schedstat``) from just before the first until every connection has all M
frames, divided by N x M, is its CPU per delivery. Rounds alternate the order. The ratio
fleet / floor is the number the issue sets a target for (<= 2).

    .venv/bin/python -m bench.fleet_recv [--connections 5000] [--messages 20] [--rounds 3]

Results and method: docs/benchmarks.md ("Fleet receive").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.wire import BenchError, Child, cpu_ns

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 2.0
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() \
    else sys.executable


class FleetReceiver:
    """A real fleet worker process, driven through its control socket."""

    def __init__(self, work: Path, port: int, connections: int, sources: list[str]) -> None:
        from harness.fleet import ClientSpec, FleetSpec

        self.path = work / "fleet.sock"
        self.path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(1)
        spec = FleetSpec(
            worker=0, history_path=str(work / "history-fleet.jsonl"),
            entries=(f"ws://127.0.0.1:{port}/app/key?protocol=7",),
            control_path=str(self.path), source_addresses=tuple(sources),
            clients=tuple(ClientSpec(i, ("results-3",)) for i in range(1, connections + 1)),
            connect_rate_per_s=5000.0, silence_ping_s=3600.0)
        spec_path = work / "fleet.json"
        spec_path.write_text(spec.to_json())
        self.child = Child([PY, "-m", "harness.fleet", str(spec_path)], work / "fleet.log",
                           env=dict(os.environ, PYTHONPATH=str(REPO)), pipes=False)
        self.listener.settimeout(30)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(1.0)
        self.buf = b""
        self.status: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.child.pid

    def _read(self) -> None:
        try:
            data = self.conn.recv(65536)
        except TimeoutError:
            return
        if not data:
            raise BenchError(f"fleet worker exited: {self.child.log_tail()}")
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.status = json.loads(line)

    def wait(self, key: str, value: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while int(self.status.get(key, 0)) < value:
            if time.monotonic() > deadline:
                raise BenchError(f"fleet: {key} {self.status.get(key)} < {value}")
            self._read()

    def close(self) -> None:
        self.child.kill()
        self.conn.close()
        self.listener.close()


class FloorReceiver:
    def __init__(self, work: Path, port: int, connections: int, sources: list[str]) -> None:
        self.child = Child([PY, "-m", "bench.wire", "floor-sink"], work / "floor.log",
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
        self.child.send({"host": "127.0.0.1", "port": port, "count": connections,
                         "sources": sources})
        got = self.child.read_json(time.monotonic() + 180)["connected"]
        if got != connections:
            raise BenchError(f"floor: {got} of {connections} connected")
        self.connections = connections

    @property
    def pid(self) -> int:
        return self.child.pid

    def close(self) -> None:
        self.child.kill()


def measure(kind: str, work: Path, connections: int, messages: int,
            sources: list[str]) -> dict[str, float]:
    source = Child([PY, "-m", "bench.wire", "source"], work / f"source-{kind}.log",
                   env=dict(os.environ, PYTHONPATH=str(REPO)))
    receiver: FleetReceiver | FloorReceiver | None = None
    started = time.monotonic()
    try:
        port = int(source.read_json(time.monotonic() + 15)["port"])
        if kind == "fleet":
            receiver = FleetReceiver(work, port, connections, sources)
            receiver.wait("subscribed", connections, 180)
        else:
            receiver = FloorReceiver(work, port, connections, sources)
            receiver.child.send({"cmd": "expect", "frames": connections * messages})
        ready_s = time.monotonic() - started
        time.sleep(1.0)
        import psutil

        times0 = psutil.Process(receiver.pid).cpu_times()
        cpu_src0, cpu0, t0 = cpu_ns(source.pid), cpu_ns(receiver.pid), time.monotonic()
        for _ in range(messages):
            source.send({"cmd": "send"})
            source.read_json(time.monotonic() + 30)
            time.sleep(0.1)
        if isinstance(receiver, FleetReceiver):
            receiver.wait("delivered", connections * messages, 120)
        else:
            receiver.child.read_json(time.monotonic() + 120)
        cpu1, cpu_src1 = cpu_ns(receiver.pid), cpu_ns(source.pid)
        times1 = psutil.Process(receiver.pid).cpu_times()
        deliveries = connections * messages
        return {"us_per_delivery": (cpu1 - cpu0) / 1000 / deliveries,
                "source_us_per_delivery": (cpu_src1 - cpu_src0) / 1000 / deliveries,
                "wall_s": time.monotonic() - t0, "connect_s": ready_s,
                "user_us_per_delivery": (times1.user - times0.user) * 1e6 / deliveries,
                "system_us_per_delivery": (times1.system - times0.system) * 1e6 / deliveries}
    finally:
        if receiver is not None:
            receiver.close()
        source.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_recv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sources = [f"127.0.0.{i}" for i in range(2, 4)]
    rounds: dict[str, list[dict[str, float]]] = {"floor": [], "fleet": []}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-recv-") as tmp:
        work = Path(tmp)
        for rnd in range(args.rounds):
            order = ("floor", "fleet") if rnd % 2 == 0 else ("fleet", "floor")
            got = {}
            for kind in order:
                got[kind] = measure(kind, work, args.connections, args.messages, sources)
                rounds[kind].append(got[kind])
            ratio = got["fleet"]["us_per_delivery"] / got["floor"]["us_per_delivery"]
            ratios.append(ratio)
            print(f"round {rnd + 1}: floor {got['floor']['us_per_delivery']:.2f} µs, "
                  f"fleet {got['fleet']['us_per_delivery']:.2f} µs per delivery "
                  f"(x{ratio:.2f}; connected in {got['floor']['connect_s']:.0f} s / "
                  f"{got['fleet']['connect_s']:.0f} s, measured over "
                  f"{got['floor']['wall_s']:.0f} s / {got['fleet']['wall_s']:.0f} s; user/system "
                  f"µs floor {got['floor']['user_us_per_delivery']:.1f}/"
                  f"{got['floor']['system_us_per_delivery']:.1f}, fleet "
                  f"{got['fleet']['user_us_per_delivery']:.1f}/"
                  f"{got['fleet']['system_us_per_delivery']:.1f})",
                  flush=True)
    summary = {
        kind: {"median_us": statistics.median(r["us_per_delivery"] for r in rs),
               "samples_us": [round(r["us_per_delivery"], 3) for r in rs]}
        for kind, rs in rounds.items()}
    result = {
        "config": {"connections": args.connections, "messages": args.messages,
                   "rounds": args.rounds},
        "receivers": summary,
        "ratio": {"median": statistics.median(ratios), "samples": [round(r, 3) for r in ratios]},
        "target": {"ratio": TARGET_RATIO, "met": statistics.median(ratios) <= TARGET_RATIO},
    }
    print(f"\nCPU per delivery, median of {args.rounds} rounds, {args.connections} connections "
          f"x {args.messages} messages: floor {summary['floor']['median_us']:.2f} µs, fleet "
          f"{summary['fleet']['median_us']:.2f} µs; fleet/floor x{result['ratio']['median']:.2f}"
          f" (target <= {TARGET_RATIO:g}: {'met' if result['target']['met'] else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
