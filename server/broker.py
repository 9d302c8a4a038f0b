"""The node's link to Redis: atomic sequenced publish, channel history, pub/sub, cluster counts.

Publishing is one Lua script (after Centrifugo's broker_history_add_stream.lua): increment the
channel's dense offset, create its epoch if the channel is new, append to a capped stream with a
TTL, and PUBLISH the ready-to-send message with its position. Nodes SUBSCRIBE only to channels
they have local subscribers for. The pub/sub connection is watched by PINGs; when it drops or
stalls the broker reports the link down to the hub, reconnects with backoff, resubscribes every
wanted channel and only then reports the link up, so the hub can catch channels up from streams.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from .redis_link import (
    RedisClient,
    RedisConnection,
    RedisError,
    RedisLinkDown,
    RedisUnreachable,
    reply_int,
    reply_str,
)

log = logging.getLogger("turnout.broker")

__all__ = ["Broker", "HistoryEntry", "PublishResult"]

# KEYS: meta hash, stream, pub/sub channel.
# ARGV: epoch candidate, history size, ttl seconds, excluded socket id, message prefix.
PUBLISH_LUA = """
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
local ttl = tonumber(ARGV[3])
redis.call('EXPIRE', KEYS[1], ttl)
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0', 'm', ARGV[5], 'x', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ttl)
end
local message = ARGV[5] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
redis.call('PUBLISH', KEYS[3], offset .. ':' .. epoch .. ':' .. ARGV[4] .. ':' .. message)
return {offset, epoch}
"""


@dataclass(frozen=True, slots=True)
class PublishResult:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    offset: int
    prefix: bytes
    exclude: str


MessageHandler = Callable[[bytes, bytes], None]
LinkHandler = Callable[[bool], None]


class Broker:
    """Owns the Redis connections of one node. Start it with ``nursery.start(broker.serve)``."""

    PING_INTERVAL = 0.5
    PING_TIMEOUT = 1.5
    SUBSCRIBE_TIMEOUT = 3.0

    def __init__(
        self, *, host: str, port: int, db: int, key_prefix: str, node_id: str,
        history_size: int, history_ttl: float, on_message: MessageHandler,
        on_link: LinkHandler, command_timeout: float = 2.0,
    ) -> None:
        self.history_size = history_size
        self.history_ttl = max(1, round(history_ttl))
        self.key_prefix = key_prefix
        self.node_id = node_id
        self._host, self._port, self._db = host, port, db
        self._on_message = on_message
        self._on_link = on_link
        self.commands = RedisClient(host, port, db, command_timeout)
        self._sha: str | None = None
        # Pub/sub state. `_wanted` is the set of channels the hub wants; `_acks` counts
        # SUBSCRIBE/UNSUBSCRIBE commands not yet confirmed per channel, so a stale confirmation
        # can never mark a channel subscribed.
        self._pubsub: RedisConnection | None = None
        self._write_lock = trio.Lock()
        self._wanted: set[bytes] = set()
        self._acks: dict[bytes, int] = {}
        self._confirmed: dict[bytes, trio.Event] = {}
        self._pong = trio.Event()
        self.link_up = False
        self.link_changes = 0
        self.published = 0

    # ------------------------------------------------------------------ key names
    def channel_key(self, app_id: str, channel: str) -> bytes:
        return f"{self.key_prefix}:{app_id}:{channel}".encode()

    def _meta(self, app_id: str, channel: str) -> str:
        return f"{self.key_prefix}:{app_id}:{channel}:m"

    def _stream(self, app_id: str, channel: str) -> str:
        return f"{self.key_prefix}:{app_id}:{channel}:s"

    # ------------------------------------------------------------------ publishing
    async def publish_many(
        self, app_id: str, items: Iterable[tuple[str, bytes, str]]
    ) -> list[PublishResult]:
        """Publish (channel, message prefix, excluded socket id) items in one pipeline."""
        items = list(items)
        if not self.link_up:
            # Refuse up front, so the caller knows for certain nothing was published (a
            # command sent into a partition may or may not have been applied).
            raise RedisUnreachable("redis link is down on this node; nothing was published")
        if self._sha is None:
            self._sha = reply_str(await self.commands.execute("SCRIPT", "LOAD", PUBLISH_LUA))
        sha = self._sha or ""
        commands = [
            ("EVALSHA", sha, 3, self._meta(app_id, ch), self._stream(app_id, ch),
             self.channel_key(app_id, ch), secrets.token_hex(4), self.history_size,
             self.history_ttl, exclude, prefix)
            for ch, prefix, exclude in items
        ]
        replies = await self.commands.execute_many(commands)
        if any(isinstance(r, RedisError) and "NOSCRIPT" in str(r) for r in replies):
            # Redis restarted and lost its script cache: reload and retry once. EVALSHA that
            # failed with NOSCRIPT did not run, so nothing is published twice.
            self._sha = None
            return await self.publish_many(app_id, items)
        results = []
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
            results.append(PublishResult(int(reply[0]), reply_str(reply[1]) or ""))
        self.published += len(results)
        return results

    # ------------------------------------------------------------------ history
    async def read_top(self, app_id: str, channels: list[str]) -> list[tuple[int, str | None]]:
        """Current (offset, epoch) of each channel; (0, None) for a channel never published."""
        replies = await self.commands.execute_many(
            [("HMGET", self._meta(app_id, ch), "offset", "epoch") for ch in channels]
        )
        out: list[tuple[int, str | None]] = []
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
            out.append((reply_int(reply[0]), reply_str(reply[1])))
        return out

    async def read_history(
        self, app_id: str, channel: str, first: int, last: int | None, limit: int = 10_000
    ) -> tuple[int, str | None, list[HistoryEntry]]:
        """The channel's (top offset, epoch) and its stream entries first <= offset <= last."""
        meta = ("HMGET", self._meta(app_id, channel), "offset", "epoch")
        if self.history_size <= 0:
            (reply,) = await self.commands.execute_many([meta])
            entries: Any = []
        else:
            end = "+" if last is None else f"{last}-0"
            reply, entries = await self.commands.execute_many([
                meta,
                ("XRANGE", self._stream(app_id, channel), f"{first}-0", end, "COUNT", limit),
            ])
        for r in (reply, entries):
            if isinstance(r, RedisError):
                raise r
        out = []
        for entry_id, fields in entries or []:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            out.append(HistoryEntry(
                int(entry_id.split(b"-", 1)[0]), values[b"m"], reply_str(values.get(b"x")) or ""
            ))
        return reply_int(reply[0]), reply_str(reply[1]), out

    # ------------------------------------------------------------------ cluster counts
    async def write_counts(self, app_id: str, counts: dict[str, int], ttl: int) -> None:
        key = f"{self.key_prefix}:{app_id}:counts:{self.node_id}"
        commands: list[tuple[Any, ...]] = [("DEL", key)]
        if counts:
            flat: list[Any] = []
            for ch, n in counts.items():
                flat += [ch, n]
            commands += [("HSET", key, *flat), ("EXPIRE", key, ttl)]
        commands.append(("SADD", f"{self.key_prefix}:{app_id}:nodes", self.node_id))
        for reply in await self.commands.execute_many(commands):
            if isinstance(reply, RedisError):
                raise reply

    async def read_counts(self, app_id: str) -> dict[str, int]:
        """Subscription counts summed over every node whose count hash has not expired."""
        nodes_key = f"{self.key_prefix}:{app_id}:nodes"
        nodes = await self.commands.execute("SMEMBERS", nodes_key)
        names = sorted(reply_str(n) or "" for n in nodes or [])
        replies = await self.commands.execute_many(
            [("HGETALL", f"{self.key_prefix}:{app_id}:counts:{n}") for n in names]
        )
        totals: dict[str, int] = {}
        stale = []
        for name, reply in zip(names, replies, strict=True):
            if isinstance(reply, RedisError):
                raise reply
            if not reply:
                stale.append(name)
                continue
            for ch, n in zip(reply[::2], reply[1::2], strict=True):
                key = reply_str(ch) or ""
                totals[key] = totals.get(key, 0) + reply_int(n)
        if stale:
            await self.commands.execute("SREM", nodes_key, *stale)
        return {ch: n for ch, n in totals.items() if n > 0}

    # ------------------------------------------------------------------ pub/sub
    async def wait_subscribed(self, key: bytes) -> None:
        """SUBSCRIBE (if needed) and wait for Redis to confirm. Raises RedisLinkDown."""
        self._wanted.add(key)
        event = self._confirmed.get(key)
        if event is not None and event.is_set() and self._acks.get(key, 0) == 0:
            return
        if event is None or event.is_set():
            event = self._confirmed[key] = trio.Event()
            await self._write([("SUBSCRIBE", key)], [key])
        try:
            with trio.fail_after(self.SUBSCRIBE_TIMEOUT):
                await event.wait()
        except trio.TooSlowError:
            raise RedisLinkDown("redis did not confirm SUBSCRIBE in time") from None

    async def release(self, key: bytes, still_wanted: Callable[[bytes], bool]) -> None:
        """UNSUBSCRIBE ``key`` unless the hub wants it again by the time the command is sent."""
        async with self._write_lock:
            if still_wanted(key) or key not in self._wanted:
                return
            self._wanted.discard(key)
            self._confirmed.pop(key, None)
            conn = self._pubsub
            if conn is None or conn.broken:
                return
            self._acks[key] = self._acks.get(key, 0) + 1
            try:
                await conn.send([("UNSUBSCRIBE", key)])
            except RedisLinkDown:
                pass

    async def _write(self, commands: list[tuple[Any, ...]], keys: list[bytes]) -> None:
        async with self._write_lock:
            conn = self._pubsub
            if conn is None or conn.broken:
                raise RedisLinkDown("pub/sub link is down")
            for key in keys:
                self._acks[key] = self._acks.get(key, 0) + 1
            await conn.send(commands)

    def _dispatch(self, reply: Any) -> None:
        kind = reply[0]
        if kind == b"message":
            self._on_message(reply[1], reply[2])
        elif kind in (b"subscribe", b"unsubscribe"):
            key = reply[1]
            pending = self._acks.get(key, 0) - 1
            if pending <= 0:
                self._acks.pop(key, None)
                if kind == b"subscribe":
                    event = self._confirmed.get(key)
                    if event is not None:
                        event.set()
            else:
                self._acks[key] = pending
        elif kind == b"pong":
            self._pong.set()

    async def _pinger(self, conn: RedisConnection) -> None:
        while True:
            await trio.sleep(self.PING_INTERVAL)
            self._pong = trio.Event()
            async with self._write_lock:
                await conn.send([("PING",)])
            with trio.move_on_after(self.PING_TIMEOUT) as scope:
                await self._pong.wait()
            if scope.cancelled_caught:
                raise RedisLinkDown(f"no PONG on the pub/sub link within {self.PING_TIMEOUT} s")

    async def _reader(self, conn: RedisConnection) -> None:
        while True:
            reply = await conn.read_reply()
            if isinstance(reply, list) and reply:
                self._dispatch(reply)
            elif reply == b"PONG":
                # Outside subscribed mode (no channel subscribed yet, or all released) Redis
                # answers PING with +PONG, not ["pong", ""].
                self._pong.set()

    async def _session(self, task_status: trio.TaskStatus[None]) -> None:
        """One pub/sub connection's life: connect, resubscribe, serve until it fails."""
        conn = await RedisConnection.open(self._host, self._port, self._db)
        try:
            async with trio.open_nursery() as nursery:
                # Unconfirmed events survive: their waiters are woken by this session's
                # confirmations. Confirmations from the previous connection are void.
                self._acks.clear()
                # (Never `get(k) or Event()`: a trio.Event refuses to be used as a bool.)
                previous = self._confirmed
                self._confirmed = {
                    k: previous[k] if k in previous else trio.Event() for k in self._wanted
                }
                self._pubsub = conn
                nursery.start_soon(self._reader, conn)
                if self._wanted:
                    await self._write([("SUBSCRIBE", *sorted(self._wanted))], sorted(self._wanted))
                    with trio.fail_after(self.SUBSCRIBE_TIMEOUT):
                        for key in list(self._confirmed):
                            await self._confirmed[key].wait()
                await self.commands.execute("PING")
                task_status.started()
                nursery.start_soon(self._pinger, conn)
        finally:
            self._pubsub = None
            self._confirmed = {
                k: e if not e.is_set() else trio.Event() for k, e in self._confirmed.items()
            }
            await conn.aclose()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the pub/sub link up forever. ``started()`` after the first successful connect
        attempt *or* failure, so a node can start (unhealthy) while Redis is unreachable."""
        started = False
        backoff = 0.1
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._session)
                    self.link_up = True
                    self.link_changes += 1
                    backoff = 0.1
                    log.info("redis link up (%s:%s)", self._host, self._port)
                    self._on_link(True)
                    if not started:
                        task_status.started()
                        started = True
            except (RedisLinkDown, trio.TooSlowError, OSError) as exc:
                reason: BaseException = exc
            except BaseExceptionGroup as group:
                link_errors, rest = group.split((RedisLinkDown, trio.TooSlowError, OSError))
                if rest is not None:
                    raise
                # Name the first real error, not the (nested) group wrapping it.
                reason = link_errors if link_errors is not None else group
                while isinstance(reason, BaseExceptionGroup):
                    reason = reason.exceptions[0]
            if self.link_up:
                self.link_up = False
                self.link_changes += 1
                log.warning("redis link down: %s", reason)
                self._on_link(False)
            else:
                log.debug("redis connect failed: %s", reason)
            if not started:
                task_status.started()
                started = True
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def aclose(self) -> None:
        await self.commands.aclose()
