"""Webhooks: each app's events POSTed to its endpoints, signed, batched, retried, once.

The scripts that change cluster state queue the webhook events they cause in the app's Redis
list, in the same atomic step (server/lua.py): a channel is occupied once however many nodes
see a subscriber arrive, a member leaves once however many nodes' reapers notice. Delivering
them is one node's job at a time: the node holding the *lease* (a Redis key renewed every
poll, ``LEASE_S`` long) moves the app's queue into one queue per endpoint (keeping the event
kinds that endpoint wants) and POSTs each endpoint's queue in batches of up to ``BATCH_MAX``
events every ``POLL_S``, ``{"time_ms", "events": [...]}`` with ``X-Pusher-Key`` and
``X-Pusher-Signature`` (hex HMAC-SHA256 of the body with the app secret), as Pusher does. A
batch leaves its queue only after a 2xx answer (and only while the lease is still held); an
endpoint that fails is retried after 1 s, doubling to ``BACKOFF_MAX_S``, its events waiting in
Redis, so a node that dies mid-delivery loses nothing: the next lease holder sends them.

Delivery is exactly once except across a change of lease holder in the middle of a POST (the
old holder paused or cut off after sending, before trimming): then the batch is sent again,
at least once, as Pusher's own webhooks are. Queues are bounded (`store.WEBHOOK_QUEUE_MAX`
per app and per endpoint, oldest dropped, counted and logged).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import trio

from .config import AppConfig
from .lua import Script
from .redis_link import RedisError, RedisLinkDown, reply_int
from .store import WEBHOOK_QUEUE_MAX, ClusterStore

log = logging.getLogger("turnout.webhooks")

__all__ = ["WebhookSender", "sign"]

POLL_S = 0.25
LEASE_S = 5.0
BATCH_MAX = 50
TIMEOUT_S = 5.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
ROUTE_MAX = 500

# KEYS: lease. ARGV: holder, lease ms. 1 if the caller holds the lease (taken or renewed).
_LEASE_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Move up to ARGV[3] events of the app's queue into the endpoints' queues by kind.
# KEYS: lease, app queue, endpoint queues... ARGV: holder, max length, count, then per
# endpoint its kinds (",kind,kind,"). Returns {moved, dropped since the last call}.
_ROUTE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {-1, 0}
end
local events = redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[3]) - 1)
local dropped = tonumber(redis.call('HGET', KEYS[2] .. ':dropped', 'n') or '0')
redis.call('DEL', KEYS[2] .. ':dropped')
for _, raw in ipairs(events) do
  local kind = ',' .. cjson.decode(raw).name .. ','
  for i = 3, #KEYS do
    if string.find(ARGV[i + 1], kind, 1, true) then
      redis.call('RPUSH', KEYS[i], raw)
      if redis.call('LLEN', KEYS[i]) > tonumber(ARGV[2]) then
        redis.call('LPOP', KEYS[i])
        dropped = dropped + 1
      end
    end
  end
end
redis.call('LTRIM', KEYS[2], #events, -1)
return {#events, dropped}
"""

# KEYS: lease, endpoint queue. ARGV: holder, count. Trim a delivered batch, if still holder.
_TRIM_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
return 1
"""


_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"""


def sign(secret: str, body: bytes) -> str:
    """X-Pusher-Signature: hex HMAC-SHA256 of the body with the app secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class _Endpoint:
    app: AppConfig
    url: str
    types: str
    queue: str
    failures: int = 0
    retry_at: float = 0.0


@dataclass
class WebhookStats:
    events: int = 0
    failures: int = 0
    dropped: int = 0


class WebhookSender:
    """Start with ``nursery.start(sender.serve)``; idle when no app has webhooks."""

    def __init__(self, store: ClusterStore, apps: Iterable[AppConfig], *, incarnation: str,
                 link_up: Callable[[], bool],
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.store = store
        self.holder = incarnation
        self._link_up = link_up
        self._transport = transport
        self.endpoints: dict[str, list[_Endpoint]] = {}
        for app in apps:
            for hook in app.webhooks:
                digest = hashlib.sha1(hook.url.encode()).hexdigest()[:16]
                self.endpoints.setdefault(app.id, []).append(_Endpoint(
                    app, hook.url, "," + ",".join(hook.event_types) + ",",
                    store.keys.app(app.id, f"webhooks:{digest}")))
        self.lease_key = store.keys.cluster("webhook-lease")
        self.leader = False
        self.stats = WebhookStats()
        self._lease = Script(_LEASE_LUA)
        self._route = Script(_ROUTE_LUA)
        self._trim = Script(_TRIM_LUA)
        self._release = Script(_RELEASE_LUA)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        if not self.endpoints:
            task_status.started()
            return
        async with httpx.AsyncClient(timeout=TIMEOUT_S, transport=self._transport) as client:
            task_status.started()
            while True:
                await trio.sleep(POLL_S)
                if not self._link_up():
                    continue
                try:
                    await self.run_once(client)
                except (RedisLinkDown, RedisError) as exc:
                    log.debug("webhook round failed: %s", exc)

    async def release(self) -> None:
        """Give the lease up (a clean exit): another node takes over at its next poll."""
        if not self.leader:
            return
        with trio.move_on_after(1):
            try:
                await self._release.run(self.store.commands, [self.lease_key], [self.holder])
            except (RedisLinkDown, RedisError):
                pass
        self.leader = False

    async def run_once(self, client: httpx.AsyncClient) -> None:
        """One round: hold the lease, route every app's new events, deliver every endpoint."""
        commands = self.store.commands
        held = await self._lease.run(commands, [self.lease_key],
                                     [self.holder, int(LEASE_S * 1000)])
        if not reply_int(held):
            if self.leader:
                log.info("webhook lease lost to another node")
            self.leader = False
            return
        if not self.leader:
            log.info("this node delivers the cluster's webhooks (lease %s)", self.holder)
        self.leader = True
        for app_id, endpoints in self.endpoints.items():
            _moved, dropped = await self._route.run(
                commands,
                [self.lease_key, self.store.keys.webhooks(app_id), *(e.queue for e in endpoints)],
                [self.holder, WEBHOOK_QUEUE_MAX, ROUTE_MAX, *(e.types for e in endpoints)])
            if reply_int(dropped):
                self.stats.dropped += reply_int(dropped)
                log.warning("app %s: %d webhook events dropped: a queue passed %d events (an "
                            "endpoint down for long)", app_id, reply_int(dropped),
                            WEBHOOK_QUEUE_MAX)
        async with trio.open_nursery() as nursery:
            for endpoints in self.endpoints.values():
                for endpoint in endpoints:
                    nursery.start_soon(self._deliver, client, endpoint)

    async def _deliver(self, client: httpx.AsyncClient, endpoint: _Endpoint) -> None:
        if trio.current_time() < endpoint.retry_at:
            return
        commands = self.store.commands
        try:
            raw = await commands.execute("LRANGE", endpoint.queue, 0, BATCH_MAX - 1)
        except (RedisLinkDown, RedisError):
            return
        if not raw:
            return
        events: list[Any] = [orjson.loads(r) for r in raw]
        body = orjson.dumps({"time_ms": int(time.time() * 1000), "events": events})
        headers = {"content-type": "application/json", "x-pusher-key": endpoint.app.key,
                   "x-pusher-signature": sign(endpoint.app.secret, body)}
        try:
            response = await client.post(endpoint.url, content=body, headers=headers)
            ok = 200 <= response.status_code < 300
            why = f"answered {response.status_code}"
        except httpx.HTTPError as exc:
            ok, why = False, f"failed: {exc!r}"
        if not ok:
            endpoint.failures += 1
            self.stats.failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (endpoint.failures - 1))
            endpoint.retry_at = trio.current_time() + delay * random.uniform(0.8, 1.2)
            log.warning("webhook %s %s; %d events kept, retrying in %.0f s", endpoint.url, why,
                        len(events), delay)
            return
        endpoint.failures = 0
        try:
            await self._trim.run(commands, [self.lease_key, endpoint.queue],
                                 [self.holder, len(events)])
        except (RedisLinkDown, RedisError):
            return  # kept: sent again by whoever holds the lease next (at least once)
        self.stats.events += len(events)
