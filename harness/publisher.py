"""The publisher: election-night result updates through the signed Pusher HTTP API.

Each channel is published serially (one request in flight per channel) every
``interval ± jitter`` seconds, so the per-channel ``seq`` order is the order the server was
asked to apply them. Every attempt is one history op: ``ok`` (HTTP 200, with the position the
server assigned), ``fail`` (a 4xx, or a 503 that says nothing was written: definitely not
published) or ``info`` (timeout, connection error or another 5xx: it may or may not have been
published, never guessed). A failed attempt is retried as a new op with a new id, up to
``retries`` times.

Every update starts with ``{"id": ..., "seq": ..., "t": ...}``: ``t`` is the publish invoke
time on CLOCK_MONOTONIC, the same float as the ``invoke`` op's time, so a viewer's receive time
minus ``t`` is exactly the latency the checker defines (the fleet records it per update).

It runs in its own process (``python -m harness.publisher SPEC.json``, started by the runner,
see :class:`PublisherProcess`) so that its CPU is accounted apart from the harness's and its
timing does not depend on the harness's event loop. Control is JSON lines over the run's
``publisher.sock``: the harness sends ``{"cmd": "stop"}``; the publisher sends ``status``
lines (ok / failed / indeterminate) twice a second and ``stopped`` once every channel's last
request has completed.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from server.auth import sign_request

from .history import PUBLISHER, HistoryWriter
from .procs import ProcessSpec, read_lines, unix_listener

__all__ = ["Publisher", "PublisherProcess", "PublisherSpec", "election_payload"]

PARTIES = ("Social Democrats", "Liberals", "Conservatives", "Greens", "Red-Green Alliance",
           "Danish People's Party", "Social Liberals", "New Right")


@dataclass(frozen=True)
class PublisherSpec:
    base_url: str
    app_id: str
    app_key: str
    app_secret: str
    channels: tuple[str, ...]
    interval_s: float = 2.5
    jitter_s: float = 0.5
    payload_bytes: int = 600
    timeout_s: float = 5.0
    retries: int = 3
    event_name: str = "result-update"
    seed: int = 0
    history_path: str = ""
    control_path: str = ""

    @classmethod
    def from_json(cls, raw: str | bytes) -> PublisherSpec:
        data = json.loads(raw)
        data["channels"] = tuple(data["channels"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "channels": list(self.channels)})


def election_payload(rng: random.Random, channel: str, pid: str, seq: int, size: int,
                     t: float | None = None) -> dict[str, Any]:
    """A realistic result update (~``size`` bytes of JSON); ``id``, ``seq`` and the invoke
    time ``t`` come first (the fleet reads them without decoding the rest)."""
    votes = [rng.randint(1_000, 90_000) for _ in PARTIES]
    total = sum(votes)
    payload: dict[str, Any] = {
        "id": pid, "seq": seq, "t": time.monotonic() if t is None else t, "channel": channel,
        "reported_pct": round(min(100.0, seq * 0.7 + rng.random()), 1),
        "turnout_pct": round(60 + rng.random() * 25, 1),
        "parties": [{"name": p, "votes": v, "pct": round(100 * v / total, 2)}
                    for p, v in zip(PARTIES, votes, strict=True)],
        "sent_at": time.time(),
    }
    padding = size - len(orjson.dumps(payload))
    if padding > 0:
        payload["note"] = "x" * padding
    return payload


class Publisher:
    def __init__(self, spec: PublisherSpec, history: HistoryWriter) -> None:
        self.spec = spec
        self.history = history
        self.rng = random.Random(spec.seed)
        self._next_id = 0
        self._seq: dict[str, int] = dict.fromkeys(spec.channels, 0)
        self.ok = 0
        self.failed = 0
        self.indeterminate = 0

    def _new_attempt(self, channel: str) -> tuple[str, int]:
        self._next_id += 1
        self._seq[channel] += 1
        return f"p{self._next_id}", self._seq[channel]

    def counts(self) -> dict[str, int]:
        return {"ok": self.ok, "failed": self.failed, "indeterminate": self.indeterminate}

    async def run(self, stop: trio.Event) -> None:
        """Publish on every channel until ``stop`` is set (the current request completes)."""
        # No keep-alive: each publish is a new connection, so the lane's HAProxy (TCP mode,
        # leastconn) picks a healthy node per publish. A pooled connection stays pinned to
        # one node: while that node's Redis link is cut every publish would fail there and
        # nothing would be published that the partitioned node's viewers could miss.
        limits = httpx.Limits(max_connections=len(self.spec.channels) + 4,
                              max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.spec.base_url, trust_env=False,
                                     limits=limits) as client:
            async with trio.open_nursery() as nursery:
                for index, channel in enumerate(self.spec.channels):
                    offset = self.spec.interval_s * index / max(1, len(self.spec.channels))
                    nursery.start_soon(self._channel_loop, client, channel, offset, stop)

    async def _channel_loop(self, client: httpx.AsyncClient, channel: str, offset: float,
                            stop: trio.Event) -> None:
        with trio.move_on_after(offset):
            await stop.wait()
        while not stop.is_set():
            for _attempt in range(self.spec.retries + 1):
                if await self.publish_once(client, channel) or stop.is_set():
                    break
                await trio.sleep(0.2 + self.rng.random() * 0.3)
            delay = self.spec.interval_s + self.rng.uniform(-self.spec.jitter_s,
                                                            self.spec.jitter_s)
            with trio.move_on_after(max(0.05, delay)):
                await stop.wait()

    async def publish_once(self, client: httpx.AsyncClient, channel: str) -> bool:
        pid, seq = self._new_attempt(channel)
        invoked = time.monotonic()
        data = orjson.dumps(election_payload(self.rng, channel, pid, seq,
                                             self.spec.payload_bytes, invoked)).decode()
        body = orjson.dumps({"name": self.spec.event_name, "channels": [channel], "data": data})
        path = f"/apps/{self.spec.app_id}/events"
        params = sign_request(self.spec.app_key, self.spec.app_secret, "POST", path, body)
        base = {"id": pid, "channel": channel, "seq": seq}
        self.history.record(PUBLISHER, "invoke", "publish", base, time=invoked)
        try:
            response = await client.post(path, params=params, content=body,
                                         headers={"content-type": "application/json"},
                                         timeout=self.spec.timeout_s)
        except httpx.HTTPError as exc:
            self.indeterminate += 1
            self.history.record(PUBLISHER, "info", "publish",
                                {**base, "error": f"{type(exc).__name__}: {exc}"[:200]})
            return False
        if response.status_code == 200:
            self.ok += 1
            value = dict(base)
            try:
                position = response.json().get("positions", {}).get(channel)
            except ValueError:
                position = None
            if isinstance(position, dict) and isinstance(position.get("offset"), int):
                value["offset"] = position["offset"]
                value["epoch"] = position.get("epoch")
            self.history.record(PUBLISHER, "ok", "publish", value)
            return True
        error = f"HTTP {response.status_code}: {response.text[:160]}"
        if 400 <= response.status_code < 500 or _not_published(response):
            # Refused before anything was written (signature, limits, Redis unreachable):
            # definitely not published.
            self.failed += 1
            self.history.record(PUBLISHER, "fail", "publish", {**base, "error": error})
        else:
            self.indeterminate += 1
            self.history.record(PUBLISHER, "info", "publish", {**base, "error": error})
        return False


def _not_published(response: httpx.Response) -> bool:
    """turnout nodes say so when a 503 certainly published nothing (Redis unreachable)."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("published") is False


# --------------------------------------------------------------------------- the process
async def _serve(spec: PublisherSpec) -> None:
    stream = await trio.open_unix_socket(spec.control_path)
    stop = trio.Event()
    with HistoryWriter(spec.history_path) as history:
        publisher = Publisher(spec, history)

        async def emit(kind: str) -> None:
            line = orjson.dumps({"type": kind, **publisher.counts()}) + b"\n"
            try:
                await stream.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                stop.set()

        async def control() -> None:
            async for line in read_lines(stream):
                if line.strip() and json.loads(line).get("cmd") == "stop":
                    stop.set()
            stop.set()  # the harness went away

        async def status() -> None:
            while True:
                await emit("status")
                history.flush()
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(history.autoflush)
            nursery.start_soon(control)
            nursery.start_soon(status)
            await publisher.run(stop)
            history.flush()
            await emit("stopped")
            nursery.cancel_scope.cancel()
    await stream.aclose()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.publisher SPEC.json", file=sys.stderr)
        return 2
    spec = PublisherSpec.from_json(Path(args[0]).read_text())
    trio.run(_serve, spec)
    return 0


class PublisherProcess:
    """The harness side: start the publisher process, read its counts, stop it."""

    def __init__(self, spec: PublisherSpec, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.socket_path = run_dir / "publisher.sock"
        self.spec = PublisherSpec(**{**asdict(spec), "channels": spec.channels,
                                     "control_path": str(self.socket_path)})
        self.ok = 0
        self.failed = 0
        self.indeterminate = 0
        self._stream: trio.SocketStream | None = None
        self.stopped = trio.Event()

    async def serve(self, supervisor: Any, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the process; ``started`` once it is connected (it publishes at once)."""
        listener = await unix_listener(self.socket_path, 1)
        spec_path = self.run_dir / "publisher.json"
        spec_path.write_text(self.spec.to_json())
        repo = Path(__file__).resolve().parent.parent
        await supervisor.start(ProcessSpec(
            name="publisher", argv=[sys.executable, "-m", "harness.publisher", str(spec_path)],
            env={"PYTHONPATH": str(repo)}, ready=None, stop_grace=5.0))
        async with listener:
            with trio.fail_after(30):
                self._stream = await listener.accept()
        task_status.started()
        async with self._stream:
            async for line in read_lines(self._stream):
                message = json.loads(line)
                self.ok = int(message.get("ok", 0))
                self.failed = int(message.get("failed", 0))
                self.indeterminate = int(message.get("indeterminate", 0))
                if message.get("type") == "stopped":
                    self.stopped.set()
        self.stopped.set()

    async def stop(self, timeout: float) -> bool:
        """Ask it to stop; True once every channel's last request has completed."""
        if self._stream is not None:
            try:
                await self._stream.send_all(b'{"cmd": "stop"}\n')
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        with trio.move_on_after(timeout):
            await self.stopped.wait()
            return True
        return False


if __name__ == "__main__":
    sys.exit(main())
