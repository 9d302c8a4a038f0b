"""One Pusher websocket connection on a raw non-blocking socket.

Sending never waits: ``send`` tries one non-blocking ``socket.send`` and only when the kernel
buffer is full queues the rest for this connection's own writer task (spawned on demand in the
connection's nursery). The queue is bounded in bytes; a client that lets it overflow is closed
with 4100 (back off and reconnect) and resumes from its position, so it is never silently
skipped. Its backlog is dropped and the close frame queued; if the socket drains enough for
that frame to reach the kernel within ``slow_consumer_grace`` the client will read why it was
closed, otherwise the connection is reset (and the kernel frees its buffer at once). Incoming
frames are parsed by frames.FrameParser and handled in order.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

import trio

from . import protocol
from .auth import verify_channel_auth
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
from .hub import SubscribeRefused
from .peerlog import clip

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("turnout.connection")

__all__ = ["Connection", "new_socket_id"]

CLOSE_TIMEOUT = 2.0
# Epochs are short server-made tokens; a longer one is made up.
MAX_EPOCH = 64
# Bytes a writer hands the kernel per send when it drains a backlog (coalescing small frames).
WRITE_CHUNK = 65536


def new_socket_id() -> str:
    return f"{secrets.randbelow(10**9) + 1}.{secrets.randbelow(10**9) + 1}"


class Connection:
    __slots__ = (
        "__weakref__", "_flushed", "_head_partial", "_nursery", "_outq", "_outq_bytes",
        "_overflow_deadline", "_scope", "_writer_running", "app", "channels", "closing",
        "frame_failed", "last_activity", "node", "parser", "peer", "ping_sent_at", "reset",
        "sock", "socket_id",
    )

    def __init__(self, node: Node, sock: socket.socket, app: AppConfig, peer: str) -> None:
        self.node = node
        self.sock = sock
        self.app = app
        self.peer = peer
        self.socket_id = new_socket_id()
        self.parser = FrameParser(node.config.max_message_size, node.config.max_fragments)
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
        if self._outq_bytes > self.node.config.outbound_queue_bytes and not self.closing:
            self._overflow()
            return
        if not self._writer_running and self._nursery is not None:
            self._writer_running = True
            self._nursery.start_soon(self._writer)

    def _overflow(self) -> None:
        """Slow consumer: drop its backlog (keeping a half-sent frame intact) and close 4100."""
        self.node.stats.slow_consumer_closes += 1
        self._overflow_deadline = trio.current_time() + self.node.config.slow_consumer_grace
        self.node.peer_log.warning(
            log, "slow consumer %s (%s): outbound queue over %d bytes, closing 4100",
            self.socket_id, self.peer, self.node.config.outbound_queue_bytes)
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
        stats = self.node.stats
        if self._outq or self.reset:
            # The close frame never reached the kernel: reset, which frees the send buffer.
            stats.slow_consumer_aborts += 1
            self.reset = True
            self._outq.clear()
            self._outq_bytes = 0
            self.node.peer_log.info(log, "slow consumer %s (%s) did not drain within %g s: "
                                    "connection reset", self.socket_id, self.peer,
                                    self.node.config.slow_consumer_grace)
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
                self.node.stats.messages_in += 1
                if not self.closing:
                    await self._on_text(payload)
            elif opcode == OP_BINARY:
                self.node.stats.bad_messages += 1
                self.node.peer_log.info(log, "binary frame from %s: not supported",
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
        self.node.peer_log.info(log, "frame error from %s (%s): %s", self.socket_id, self.peer,
                                exc.reason)
        self.node.stats.bad_frames += 1
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

    def _error(self, code: int | None, message: str) -> None:
        """Refuse one message with pusher:error; ``message`` must clip anything client-made."""
        self.node.stats.bad_messages += 1
        self.node.peer_log.info(log, "client %s (%s): %s", self.socket_id, self.peer, message)
        self.send_message(protocol.error(code, message))

    async def _on_text(self, payload: bytes) -> None:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            self.node.stats.bad_messages += 1
            self.node.peer_log.info(log, "client %s (%s): text frame is not valid UTF-8, "
                                    "closing 1007", self.socket_id, self.peer)
            self.close(1007, "text frame is not valid UTF-8")
            return
        try:
            event, data = protocol.parse_client_message(payload)
        except protocol.BadMessage as exc:
            self._error(protocol.RECONNECT, f"invalid message format: {clip(str(exc), 120)}")
            return
        if event == "pusher:ping":
            self.send_message(protocol.pong())
        elif event == "pusher:pong":
            pass
        elif event == "pusher:subscribe":
            await self._on_subscribe(data)
        elif event == "pusher:unsubscribe":
            channel = data.get("channel") if isinstance(data, dict) else None
            if not isinstance(channel, str):
                self._error(protocol.RECONNECT, "invalid message format: missing 'channel'")
                return
            self.node.hub.unsubscribe(self, channel)
        elif event == "pusher:signin":
            self._error(protocol.UNAUTHORIZED, "user sign-in is not supported by this server yet")
        elif event.startswith("client-"):
            self._error(protocol.CLIENT_EVENT_REJECTED,
                        "client events are not enabled on this server")
        else:
            self._error(protocol.RECONNECT,
                        f"invalid message format: unsupported event {clip(event, 64)}")

    async def _on_subscribe(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("channel"), str):
            self._error(protocol.RECONNECT, "invalid message format: subscribe needs 'channel'")
            return
        channel: str = data["channel"]
        if not protocol.valid_channel_name(channel):
            self._error(protocol.RECONNECT,
                        f"invalid channel name {clip(channel, 170)}: at most 164 characters "
                        "of A-Z a-z 0-9 _ - = @ , . ;")
            return
        limit = self.node.config.max_subscriptions
        if channel not in self.channels and len(self.channels) >= limit:
            self.node.stats.subscriptions_refused += 1
            message = (f"subscription limit reached: at most {limit} channels per connection; "
                       "unsubscribe from one first")
            self.node.peer_log.info(log, "client %s (%s): %s (refused %s)", self.socket_id,
                                    self.peer, message, channel)
            self.send_message(protocol.subscription_error(
                channel, message, 429, error_type="LimitReached"))
            return
        if protocol.is_presence(channel):
            self._refuse(channel, "presence channels are not supported by this server yet")
            return
        if protocol.is_private(channel) and not verify_channel_auth(
            self.app.key, self.app.secret, self.socket_id, channel, data.get("auth")
        ):
            self._refuse(channel, "invalid or missing signature for private channel")
            return
        position = _position(data)
        if position is False:
            self._error(protocol.RECONNECT,
                        "invalid message format: 'offset' must be an integer >= 0 and 'epoch' "
                        "a string")
            return
        try:
            await self.node.hub.subscribe(self, self.app.id, channel, position)
        except SubscribeRefused as exc:
            self.node.peer_log.warning(log, "refusing subscription of %s to %s: %s",
                                       self.socket_id, channel, exc)
            self.close(protocol.OVER_CAPACITY, "node cannot reach redis; reconnect elsewhere")

    def _refuse(self, channel: str, message: str) -> None:
        self.node.stats.auth_failures += 1
        self.node.peer_log.info(log, "subscription refused for %s to %s: %s", self.socket_id,
                                channel, message)
        self.send_message(protocol.subscription_error(channel, message, 401))
        self.send_message(protocol.error(protocol.UNAUTHORIZED, message))


def _position(data: dict[str, Any]) -> tuple[int, str] | Literal[False] | None:
    """(offset, epoch) from a subscribe message, None if absent, False if malformed."""
    offset = data.get("offset")
    epoch = data.get("epoch")
    if offset is None and epoch is None:
        return None
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**63:
        return False
    if not isinstance(epoch, str) or len(epoch) > MAX_EPOCH:
        return False
    return offset, epoch
