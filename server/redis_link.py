"""A small trio-native Redis client: RESP2 over a trio socket, parsed by hiredis.

Why not a library: redis-py's async client is asyncio-only; coredis runs under trio (anyio) but
costs 2-2.5x this client's time per round trip (bench/redis_client.py, docs/benchmarks.md) and
reconnects and resubscribes on its own. The zero-drop contract needs the opposite: the broker
must *know* the moment a link drops, so it can mark itself unhealthy and catch every channel up
from the streams when the link returns. So this client never reconnects behind the caller's
back: any I/O failure or deadline poisons the connection and raises RedisLinkDown; the caller
decides. Parsing is hiredis's C reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import trio

__all__ = ["RedisClient", "RedisConnection", "RedisError", "RedisLinkDown", "RedisUnreachable"]

Arg = bytes | str | int | float


class RedisLinkDown(Exception):
    """The connection to Redis failed or timed out; it is closed and must be re-established."""


class RedisUnreachable(RedisLinkDown):
    """Redis could not be reached, so the command was certainly not sent (nor applied)."""


class RedisError(Exception):
    """Redis answered a command with an error reply."""


def _encode(args: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            b = arg
        elif isinstance(arg, str):
            b = arg.encode()
        else:
            b = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class RedisConnection:
    """One TCP connection. Not safe for concurrent use: RedisClient adds the lock."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._reader = hiredis.Reader()
        self.broken = False

    @classmethod
    async def open(cls, host: str, port: int, db: int = 0, timeout: float = 2.0) -> RedisConnection:
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise RedisUnreachable(f"cannot connect to redis at {host}:{port}: {exc!r}") from None
        conn = cls(stream)
        if db:
            await conn.call_many([("SELECT", db)], timeout)
        return conn

    async def send(self, commands: Sequence[Sequence[Arg]]) -> None:
        try:
            await self._stream.send_all(b"".join(_encode(c) for c in commands))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.broken = True
            raise RedisLinkDown(f"redis write failed: {exc!r}") from None

    async def read_reply(self) -> Any:
        """The next reply; error replies are returned as RedisError instances, not raised."""
        while True:
            reply = self._reader.gets()
            if reply is not False:
                return reply
            try:
                data = await self._stream.receive_some(65536)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.broken = True
                raise RedisLinkDown(f"redis read failed: {exc!r}") from None
            if not data:
                self.broken = True
                raise RedisLinkDown("redis closed the connection")
            self._reader.feed(data)

    async def call_many(self, commands: Sequence[Sequence[Arg]], timeout: float) -> list[Any]:
        """Pipeline ``commands``; replies in order. Error replies come back as RedisError."""
        try:
            with trio.fail_after(timeout):
                await self.send(commands)
                replies = [await self.read_reply() for _ in commands]
        except trio.TooSlowError:
            self.broken = True
            raise RedisLinkDown(f"redis did not answer within {timeout} s") from None
        except BaseException:
            # A cancelled or failed exchange leaves unread replies behind: the connection can
            # never be trusted to pair replies with commands again.
            self.broken = True
            raise
        return [RedisError(r.args[0] if r.args else str(r)) if isinstance(r, hiredis.ReplyError)
                else r for r in replies]

    async def aclose(self) -> None:
        self.broken = True
        with trio.CancelScope(shield=True):
            await self._stream.aclose()


class RedisClient:
    """Command client: one lazily (re)opened connection, one exchange at a time.

    A failed exchange closes the connection and raises RedisLinkDown; the next call opens a new
    one. Publishing is a few commands per second per channel, so a single pipelined connection
    is ample; ``execute_many`` pipelines a batch in one round trip.
    """

    def __init__(self, host: str, port: int, db: int = 0, timeout: float = 2.0) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.timeout = timeout
        self._conn: RedisConnection | None = None
        self._lock = trio.Lock()

    async def execute(self, *args: Arg) -> Any:
        (reply,) = await self.execute_many([args])
        if isinstance(reply, RedisError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        if not commands:
            return []
        async with self._lock:
            if self._conn is None or self._conn.broken:
                if self._conn is not None:
                    await self._conn.aclose()
                self._conn = None
                self._conn = await RedisConnection.open(self.host, self.port, self.db, self.timeout)
            try:
                return await self._conn.call_many(commands, self.timeout)
            except BaseException:
                if self._conn.broken:
                    await self._conn.aclose()
                    self._conn = None
                raise

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.aclose()
            self._conn = None


def reply_str(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def reply_int(value: Any, default: int = 0) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default

