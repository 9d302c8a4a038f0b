"""The publisher: election-night result updates through the signed Pusher HTTP API.

Each channel is published serially (one request in flight per channel) every
``interval ± jitter`` seconds, so the per-channel ``seq`` order is the order the server was
asked to apply them. Every attempt is one history op: ``ok`` (HTTP 200), ``fail`` (a 4xx: the
server refused it, so it was definitely not published) or ``info`` (timeout, connection error
or 5xx: it may or may not have been published — never guessed). A failed attempt is retried as
a new op with a new id, up to ``retries`` times.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import trio

from server.auth import sign_request

from .history import PUBLISHER, HistoryWriter

__all__ = ["Publisher", "PublisherSpec", "election_payload"]

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


def election_payload(rng: random.Random, channel: str, pid: str, seq: int,
                     size: int) -> dict[str, Any]:
    """A realistic result update (~``size`` bytes of JSON)."""
    votes = [rng.randint(1_000, 90_000) for _ in PARTIES]
    total = sum(votes)
    payload: dict[str, Any] = {
        "id": pid, "seq": seq, "channel": channel,
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

    async def run(self, stop: trio.Event) -> None:
        """Publish on every channel until ``stop`` is set (the current request completes)."""
        async with httpx.AsyncClient(base_url=self.spec.base_url) as client:
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
        data = orjson.dumps(election_payload(self.rng, channel, pid, seq,
                                             self.spec.payload_bytes)).decode()
        body = orjson.dumps({"name": self.spec.event_name, "channels": [channel], "data": data})
        path = f"/apps/{self.spec.app_id}/events"
        params = sign_request(self.spec.app_key, self.spec.app_secret, "POST", path, body)
        base = {"id": pid, "channel": channel, "seq": seq}
        self.history.record(PUBLISHER, "invoke", "publish", base)
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
