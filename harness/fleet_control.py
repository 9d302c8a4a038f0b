"""The harness side of the client fleet: worker processes, their control socket, their status.

Workers (harness.fleet) are separate processes started under the run's process supervisor
(so none outlives the run). Each connects back to one Unix socket in the run folder and then
receives commands and sends status lines. Clients are spread over workers so that no process
holds more than ``MAX_FDS_PER_WORKER`` sockets (the 20,000 open-file cap), and over several
127.0.0.x source addresses (28,232 ephemeral ports each).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .fleet import ClientSpec, FleetSpec
from .procs import ProcessFailed, ProcessSpec, Supervisor, serve_unix

__all__ = ["FleetControl", "FleetTotals", "plan_clients", "source_addresses"]

MAX_FDS_PER_WORKER = 15_000
REPO_ROOT = Path(__file__).resolve().parent.parent
SOCKETS_PER_SOURCE = 20_000


def source_addresses(connections: int, lanes: int = 1) -> tuple[str, ...]:
    """Enough 127.0.0.x source addresses for ``connections`` (never 127.0.0.1 for clients:
    the proxies' own outgoing connections use it), a multiple of ``lanes`` of them: viewer
    ``id`` enters through lane ``id % lanes`` from address ``id % count``, so lane i's
    viewers use the addresses ``[i::lanes]`` and no other lane's."""
    count = max(2, math.ceil(connections / SOCKETS_PER_SOURCE) + 1)
    count = math.ceil(count / lanes) * lanes
    if count > 253:
        raise ValueError(f"{connections} connections over {lanes} lanes need {count} source "
                         "addresses; 127.0.0.2-254 has 253")
    return tuple(f"127.0.0.{i}" for i in range(2, 2 + count))


def plan_clients(count: int, channels: Sequence[str], per_client: int, first_id: int = 1,
                 presence: Sequence[str] = ()) -> list[ClientSpec]:
    """Client i subscribes to ``per_client`` consecutive channels starting at i (round robin),
    so every channel has about the same number of subscribers. With ``presence`` channels,
    client i also joins ``presence[i % len]``: even ids as the same user on every connection,
    odd ids as a new user each time (so a dead node's users must leave, not just come back)."""
    per_client = min(per_client, len(channels))
    return [
        ClientSpec(first_id + i, tuple(channels[(i + k) % len(channels)]
                                       for k in range(per_client)),
                   presence[i % len(presence)] if presence else "",
                   fresh_user=bool(presence) and (first_id + i) % 2 == 1)
        for i in range(count)
    ]


@dataclass
class FleetTotals:
    clients: int = 0
    connected: int = 0
    subscribed: int = 0
    delivered: int = 0
    reconnects: int = 0
    drained: int = 0
    stalled: int = 0
    storm_open: int = 0
    storm_opened: int = 0
    storm_failed: int = 0
    live_duplicates: int = 0
    live_reorders: int = 0
    latency_p99_ms: float | None = None
    latency_p50_ms: float | None = None
    storm_connect_s: float | None = None
    storm_errors: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "storm_errors": dict(self.storm_errors)}


@dataclass
class _Worker:
    index: int
    stream: trio.SocketStream | None = None
    status: dict[str, Any] = field(default_factory=dict)
    drained: trio.Event = field(default_factory=trio.Event)
    connected: trio.Event = field(default_factory=trio.Event)


class FleetControl:
    def __init__(self, run_dir: Path, processes: int, *, seed: int = 0) -> None:
        self.run_dir = run_dir
        self.socket_path = run_dir / "fleet.sock"
        self.processes = processes
        self.seed = seed
        self.workers = [_Worker(i) for i in range(processes)]
        self._next_id = 0
        self._supervisor: Supervisor | None = None

    # ------------------------------------------------------------------ lifecycle
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Accept worker connections on the control socket and read their status lines."""
        await serve_unix(self.socket_path, self._read_worker, task_status=task_status)

    async def _read_worker(self, stream: trio.SocketStream) -> None:
        buffer = b""
        worker: _Worker | None = None
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    if worker is not None and not worker.drained.is_set():
                        # A worker gone before its final read leaves its viewers' deliveries
                        # unknown: the run ends now, in error, naming it (not at the drain).
                        await self._worker_lost(worker)
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = json.loads(line)
                    index = int(message.get("worker", -1))
                    if not 0 <= index < len(self.workers):
                        continue
                    worker = self.workers[index]
                    worker.stream = stream
                    worker.status = message
                    worker.connected.set()
                    if message.get("type") == "drained":
                        worker.drained.set()

    async def _worker_lost(self, worker: _Worker) -> None:
        if self._supervisor is None or self._supervisor.closing:
            return  # the run's teardown stops the workers: not a loss
        name = f"fleet-w{worker.index}"
        proc = self._supervisor.processes.get(name)
        returncode: int | None = None
        if proc is not None:
            with trio.move_on_after(5):
                returncode = await proc.wait()
        raise ProcessFailed(
            f"fleet worker {name} exited (status {returncode}) before its final read: its "
            "viewers cannot be judged", name=name, returncode=returncode,
            log_tail=proc.log_tail(10) if proc is not None else "")

    async def start_workers(self, supervisor: Supervisor, *, entries: Sequence[str],
                            clients: Sequence[ClientSpec], history_dir: Path,
                            spec_kwargs: dict[str, Any], storm_capacity: int = 0,
                            sources: Sequence[str] = (), app_secret: str = "") -> None:
        """Start the worker processes, ``clients`` spread round robin over them.

        ``spec_kwargs["connect_rate_per_s"]``, if given, is the whole fleet's ramp: each worker
        paces its own clients at its share of it. ``sources`` (the experiment's
        ``clients.source_addresses``) overrides the computed 127.0.0.x addresses.
        """
        self._supervisor = supervisor
        spec_kwargs = dict(spec_kwargs)
        if "connect_rate_per_s" in spec_kwargs:
            spec_kwargs["connect_rate_per_s"] = spec_kwargs["connect_rate_per_s"] / self.processes
        per_worker = math.ceil((len(clients) + storm_capacity) / self.processes)
        if per_worker > MAX_FDS_PER_WORKER:
            raise ValueError(
                f"{len(clients) + storm_capacity} connections over {self.processes} client "
                f"processes is {per_worker} per process, above the {MAX_FDS_PER_WORKER} "
                "open-file budget: raise clients.processes")
        addresses = tuple(sources) or source_addresses(len(clients) + storm_capacity)
        self._next_id = max((c.id for c in clients), default=0) + 1
        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                mine = tuple(clients[worker.index::self.processes])
                spec = FleetSpec(
                    worker=worker.index,
                    history_path=str(history_dir / f"history-client-w{worker.index}.jsonl"),
                    entries=tuple(entries), control_path=str(self.socket_path),
                    source_addresses=addresses, clients=mine, seed=self.seed, **spec_kwargs)
                spec_path = self.run_dir / f"fleet-w{worker.index}.json"
                spec_path.write_text(spec.to_json())
                nursery.start_soon(self._start_one, supervisor, worker, spec_path, app_secret)

    async def _start_one(self, supervisor: Supervisor, worker: _Worker, spec_path: Path,
                         app_secret: str) -> None:
        env = {"PYTHONPATH": str(REPO_ROOT)}
        if app_secret:  # presence joins are signed; the secret stays out of files and ps
            env["TURNOUT_APP_SECRET"] = app_secret
        await supervisor.start(ProcessSpec(
            name=f"fleet-w{worker.index}",
            argv=[sys.executable, "-m", "harness.fleet", str(spec_path)],
            env=env, ready=None, stop_grace=5.0,
        ))
        with trio.fail_after(30):
            await worker.connected.wait()

    # ------------------------------------------------------------------ commands
    async def _send(self, worker: _Worker, command: dict[str, Any]) -> None:
        if worker.stream is None:
            raise RuntimeError(f"fleet worker {worker.index} is not connected")
        await worker.stream.send_all((json.dumps(command) + "\n").encode())

    async def broadcast(self, command: dict[str, Any]) -> None:
        for worker in self.workers:
            await self._send(worker, command)

    async def stall(self, share: float, duration_s: float) -> int:
        await self.broadcast({"cmd": "stall", "share": share, "duration_s": duration_s,
                              "seed": self.seed})
        await trio.sleep(0.6)  # one status interval, to report how many stalled
        return self.totals().stalled

    async def storm(self, count: int, duration_s: float, channel: str) -> int:
        share = math.ceil(count / len(self.workers))
        for index, worker in enumerate(self.workers):
            n = min(share, count - index * share)
            if n > 0:
                await self._send(worker, {"cmd": "storm", "count": n, "duration_s": duration_s,
                                          "channel": channel})
        return count

    async def drain(self, timeout: float) -> bool:
        """The final read of every client; True when every worker reported drained."""
        await self.broadcast({"cmd": "drain"})
        with trio.move_on_after(timeout):
            for worker in self.workers:
                await worker.drained.wait()
            return True
        return False

    async def wait_subscribed(self, expected: int, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while self.totals().subscribed < expected:
                await trio.sleep(0.2)
            return True
        return False

    def totals(self) -> FleetTotals:
        totals = FleetTotals()
        p99s: list[float] = []
        p50s: list[float] = []
        for worker in self.workers:
            s = worker.status
            for key in ("clients", "connected", "subscribed", "delivered", "reconnects",
                        "drained", "stalled", "storm_open", "storm_opened", "storm_failed",
                        "live_duplicates", "live_reorders"):
                setattr(totals, key, getattr(totals, key) + int(s.get(key, 0)))
            if s.get("storm_connect_s") is not None:
                totals.storm_connect_s = max(totals.storm_connect_s or 0.0,
                                             float(s["storm_connect_s"]))
            for reason, n in (s.get("storm_errors") or {}).items():
                totals.storm_errors[reason] = totals.storm_errors.get(reason, 0) + int(n)
            latency = s.get("latency_ms")
            if latency:
                p99s.append(latency["p99"])
                p50s.append(latency["p50"])
        totals.latency_p99_ms = max(p99s) if p99s else None
        totals.latency_p50_ms = max(p50s) if p50s else None
        return totals
