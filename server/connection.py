"""One Pusher websocket connection on a raw non-blocking socket.

Sending never waits: ``send`` tries one non-blocking ``socket.send`` and only when the kernel
buffer is full queues the rest for this connection's own writer task (spawned on demand in the
connection's nursery). The queue is bounded in bytes; a client that lets it overflow is closed
with 4100 (back off and reconnect) and resumes from its position, so it is never silently
skipped. Its backlog is dropped and the close frame queued; if the socket drains enough for
that frame to reach the kernel within ``slow_consumer_grace`` the client will read why it was
closed, otherwise the connection is reset (and the kernel frees its buffer at once). Incoming
frames are parsed by frames.FrameParser; text messages go to the connection's sans-IO
session.PusherSession, which answers through ``send_message`` and ``close``.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from typing import Any

import trio

from . import protocol
from .config import AppConfig
from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    encode_close,
    encode_frame,
    encode_text,
    parse_close,
)
from .interfaces import ConnectionContext
from .session import PusherSession, new_socket_id

log = logging.getLogger("turnout.connection")

__all__ = ["Connection"]

CLOSE_TIMEOUT = 2.0
# Bytes a writer hands the kernel per send when it drains a backlog (coalescing small frames).
WRITE_CHUNK = 65536


class Connection:
    __slots__ = (
        "__weakref__", "_flushed", "_head_partial", "_nursery", "_outq", "_outq_bytes",
        "_overflow_deadline", "_scope", "_writer_running", "channels", "closing", "context",
        "frame_failed", "last_activity", "parser", "peer", "ping_sent_at", "reset", "session",
        "sock", "socket_id",
    )

    def __init__(self, context: ConnectionContext, sock: socket.socket, app: AppConfig,
                 peer: str) -> None:
        self.context = context
        self.sock = sock
        self.peer = peer
        self.socket_id = new_socket_id()
        self.session = PusherSession(app, context, peer)
        self.parser = FrameParser(context.config.max_message_size, context.config.max_fragments)
        self.channels: dict[str, Any] = {}
        self.closing = False
        self.frame_failed = False
        # Set when the socket must be reset (RST) instead of closed; read by http.serve_socket.
        self.reset = False
        self._overflow_deadline: float | None = None
        self.last_activity = trio.current_time()
        self.ping_sent_at: float | None = None
        self._outq: deque[bytes] = deque()
        self._outq_bytes = 0
        self._head_partial = False
        self._writer_running = False
        self._flushed: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None

    # ------------------------------------------------------------------ sending
    def send(self, frame: bytes) -> None:
        """Queue-free fast path: one non-blocking send; never awaits, never blocks."""
        if self.closing:
            return
        self._send_raw(frame)

    def send_message(self, message: bytes) -> None:
        self.send(encode_text(message))

    def _send_raw(self, frame: bytes) -> None:
        if self._outq:
            self._enqueue(frame, partial=False)
            return
        try:
            sent = self.sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._abort()
            return
        if sent < len(frame):
            self._enqueue(frame[sent:] if sent else frame, partial=sent > 0)

    def _enqueue(self, data: bytes, *, partial: bool) -> None:
        if not self._outq:
            self._head_partial = partial
        self._outq.append(data)
        self._outq_bytes += len(data)
        if self._outq_bytes > self.context.config.outbound_queue_bytes and not self.closing:
            self._overflow()
            return
        if not self._writer_running and self._nursery is not None:
            self._writer_running = True
            self._nursery.start_soon(self._writer)

    def _overflow(self) -> None:
        """Slow consumer: drop its backlog (keeping a half-sent frame intact) and close 4100."""
        self.context.stats.slow_consumer_closes += 1
        self._overflow_deadline = trio.current_time() + self.context.config.slow_consumer_grace
        self.context.peer_log.warning(
            log, "slow consumer %s (%s): outbound queue over %d bytes, closing 4100",
            self.socket_id, self.peer, self.context.config.outbound_queue_bytes)
        head = self._outq[0] if self._head_partial and self._outq else None
        self._outq.clear()
        self._outq_bytes = 0
        if head is not None:
            self._outq.append(head)
            self._outq_bytes = len(head)
        self._begin_close(protocol.OVER_CAPACITY, "slow consumer: outbound queue full")

    async def _writer(self) -> None:
        try:
            while self._outq:
                await trio.lowlevel.wait_writable(self.sock)
                if len(self._outq) > 1 and len(self._outq[0]) < WRITE_CHUNK:
                    # Coalesce a backlog of small frames into one syscall.
                    chunk = []
                    size = 0
                    while self._outq and size < WRITE_CHUNK:
                        item = self._outq.popleft()
                        chunk.append(item)
                        size += len(item)
                    self._outq.appendleft(b"".join(chunk))
                data = self._outq[0]
                try:
                    sent = self.sock.send(data)
                except BlockingIOError:
                    continue
                except OSError:
                    self._abort()
                    return
                self._outq_bytes -= sent
                if sent == len(data):
                    self._outq.popleft()
                    self._head_partial = False
                else:
                    self._outq[0] = data[sent:]
                    self._head_partial = True
        finally:
            self._writer_running = False
            if self._flushed is not None:
                self._flushed.set()

    # ------------------------------------------------------------------ closing
    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame (after anything already queued) and stop reading soon."""
        if not self.closing:
            self._begin_close(code, reason)

    def _begin_close(self, code: int, reason: str) -> None:
        self.closing = True
        log.debug("closing %s with %d: %s", self.socket_id, code, reason)
        self._send_raw(encode_close(code, reason))
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + CLOSE_TIMEOUT)

    def _abort(self) -> None:
        """The socket failed (reset by the peer, broken pipe): stop everything, reset it."""
        self.closing = True
        self.reset = True
        self._outq.clear()
        self._outq_bytes = 0
        if self._scope is not None:
            self._scope.cancel()

    def fail_internal(self) -> bool:
        """After an unexpected exception: send close 1011 if the stream allows; True to reset.

        A half-sent frame at the head of the queue means the peer is mid-frame: a close frame
        now would be read as that frame's payload, so the connection is reset instead.
        """
        if self.closing or self._head_partial:
            return True
        self.closing = True
        try:
            frame = encode_close(1011, "internal error")
            return self.sock.send(frame) < len(frame)
        except OSError:
            return True

    # ------------------------------------------------------------------ reading
    async def run(self, initial: bytes = b"") -> None:
        """Serve the connection until it closes. The caller owns and closes the socket."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            with trio.CancelScope() as scope:
                self._scope = scope
                if self.closing:
                    scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                if initial:
                    await self._on_data(initial)
                await self._read_loop()
            self._scope = None
            if self._writer_running:
                # A slow consumer's close frame gets its grace to reach the kernel; any other
                # backlog the usual close timeout.
                if self._overflow_deadline is not None:
                    flush_by = self._overflow_deadline
                else:
                    flush_by = trio.current_time() + CLOSE_TIMEOUT
                self._flushed = trio.Event()
                with trio.move_on_at(flush_by):
                    await self._flushed.wait()
            if self._overflow_deadline is not None:
                self._count_slow_consumer_outcome()
            nursery.cancel_scope.cancel()

    def _count_slow_consumer_outcome(self) -> None:
        stats = self.context.stats
        if self._outq or self.reset:
            # The close frame never reached the kernel: reset, which frees the send buffer.
            stats.slow_consumer_aborts += 1
            self.reset = True
            self._outq.clear()
            self._outq_bytes = 0
            self.context.peer_log.info(log, "slow consumer %s (%s) did not drain within %g s: "
                                    "connection reset", self.socket_id, self.peer,
                                    self.context.config.slow_consumer_grace)
        else:
            stats.slow_consumer_close_frames += 1

    async def _read_loop(self) -> None:
        sock = self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            if not await self._on_data(data):
                return

    async def _on_data(self, data: bytes) -> bool:
        """Handle bytes from the client; False when the connection is finished."""
        self.last_activity = trio.current_time()
        self.ping_sent_at = None
        if self.frame_failed:
            # RFC 6455 7.1.7: once failed, process nothing more (not even a close frame); the
            # rest of the stream is unparseable (e.g. the body of an oversize frame).
            return True
        try:
            messages = self.parser.feed(data)
        except FrameError as exc:
            self._fail(exc)
            return True
        for opcode, payload in messages:
            if opcode == OP_TEXT:
                self.context.stats.messages_in += 1
                if not self.closing:
                    await self.session.on_text(self, payload)
            elif opcode == OP_BINARY:
                self.context.stats.bad_messages += 1
                self.context.peer_log.info(log, "binary frame from %s: not supported",
                                           self.socket_id)
                self.send_message(protocol.error(
                    protocol.RECONNECT, "invalid message format: binary frames are not supported"
                ))
            elif opcode == OP_PING:
                self._send_raw(encode_frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                try:
                    code, _reason = parse_close(payload)
                except FrameError as exc:
                    self._fail(exc)
                    return True
                if not self.closing:
                    self.closing = True
                    # Echo the peer's code (RFC 6455 5.5.1); no code given: 1000.
                    self._send_raw(encode_close(code or 1000))
                return False
        return True

    def _fail(self, exc: FrameError) -> None:
        """Fail the websocket (RFC 6455 7.1.7): close frame with exc.code, read nothing more."""
        self.context.peer_log.info(log, "frame error from %s (%s): %s", self.socket_id, self.peer,
                                exc.reason)
        self.context.stats.bad_frames += 1
        self.frame_failed = True
        self.close(exc.code, exc.reason)
        if not self._outq:
            # Our close frame is out and we cannot read theirs: half-close so the client
            # sees the end now instead of waiting out CLOSE_TIMEOUT. Keep draining input
            # until its EOF, so closing the socket does not reset it.
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
