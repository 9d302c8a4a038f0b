"""Accepted sockets: HTTP/1.1 via h11, then either the HTTP API or a websocket upgrade.

The public listener serves what a Pusher server serves on one port: ``/app/{key}`` websockets,
the ``/apps/{id}/...`` HTTP API, ``/health`` and ``/metrics``; the chaos listener (loopback,
opt-in) serves ``/chaos/*`` only. h11 parses requests (only at connection start for
websockets, so its cost is off the hot path); after a 101 the socket is handed to
connection.Connection.

Whatever a peer sends, the node survives it: every refusal is an HTTP status (400 malformed or
ambiguous, 408 too slow, 413 body too large, 426 wrong websocket version, 431 head too large,
503 over capacity) or a Pusher/RFC 6455 close code, and an unexpected exception while serving
one socket ends that socket only (500 or close 1011), counted in ``turnout_internal_errors``
and logged once per code site per minute. Time is bounded by deadlines, not by idle timers
that each received byte would restart: the request head must arrive within
``header_timeout`` of its first byte (of the connection, for the first request), the body
within ``body_timeout`` of the head.
"""

from __future__ import annotations

import base64
import http
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qsl, urlsplit

import h11
import orjson
import trio

from . import protocol
from .config import AppConfig
from .connection import Connection
from .frames import accept_key, encode_close, encode_text
from .interfaces import ConnectionContext
from .peerlog import clip

if TYPE_CHECKING:
    from .api import Response

log = logging.getLogger("turnout.http")

__all__ = ["MAX_BODY", "Route", "SocketHost", "serve_socket", "split_target"]

#: Answers one HTTP request: (method, path, query, headers, body, peer) -> Response.
Route = Callable[[str, str, str, dict[str, str], bytes, str], Awaitable["Response"]]


class SocketHost(Protocol):
    """What serving one accepted socket needs of the node that accepted it."""

    context: ConnectionContext
    draining: bool
    connections: dict[Connection, None]

    def internal_error(self, what: str, exc: BaseException) -> None: ...
    def release_socket(self, ip: str) -> None: ...

MAX_BODY = 1024 * 1024
# An idle keep-alive connection is closed (silently) after this long without a new request.
KEEPALIVE_TIMEOUT = 30.0
# A socket accepted over max_connections gets this long to say what it wanted (so it can be
# told "over capacity" in its own protocol) before it is closed.
OVER_CAPACITY_DEADLINE = 2.0
# After an error response, read and discard what the client still sends for this long (or
# this many bytes) before closing: closing with unread input would reset the connection and
# could destroy the response before the client reads it (a "lingering close").
LINGER_S = 1.0
LINGER_BYTES = 256 * 1024



def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


class _Deadline(Exception):
    """A request did not arrive in time."""


class BadRequest(Exception):
    """A request refused before routing: answered with ``status`` and closed."""

    def __init__(self, status: int, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def _recv(sock: socket.socket, deadline: float) -> bytes:
    with trio.move_on_at(deadline):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(65536)
            except BlockingIOError:
                continue
    raise _Deadline


async def _next_event(conn: h11.Connection, sock: socket.socket, deadline: float) -> object:
    """The next h11 event, reading as needed until ``deadline`` (then _Deadline)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await _recv(sock, deadline))


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target; BadRequest(400) unless origin- or absolute-form.

    Not urlsplit on the raw target: it reads ``//x`` as a host name and raises on ``//[``.
    """
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query.partition("#")[0]
    if target[:7].lower() == "http://" or target[:8].lower() == "https://":
        try:
            url = urlsplit(target)
        except ValueError:
            raise BadRequest(400, f"malformed request target {clip(target)}") from None
        return url.path or "/", url.query
    raise BadRequest(400, f"request target must start with '/', got {clip(target)}")


def _header_map(request: h11.Request) -> dict[str, str]:
    """Header name (lower case) -> value; repeated headers joined with ', ' (RFC 9110 5.3)."""
    headers: dict[str, str] = {}
    for name, value in request.headers:
        key = name.decode("ascii")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _check_framing(request: h11.Request) -> None:
    names = [name for name, _ in request.headers]
    if b"transfer-encoding" in names and b"content-length" in names:
        # RFC 9112 6.1: the pair is how request smuggling works; refuse rather than guess.
        raise BadRequest(400, "both Content-Length and Transfer-Encoding: ambiguous framing")


def _error_bytes(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    body = orjson.dumps({"error": message})
    head = [b"HTTP/1.1 %d %s" % (status, _reason(status)),
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"connection: close"]
    head += [f"{k}: {v}".encode("latin-1") for k, v in headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def _refuse_and_close(host: SocketHost, sock: socket.socket, peer: str, status: int,
                            message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
    """Answer ``status`` with a JSON reason, log it (rate-limited), then a lingering close."""
    if status != 503:
        host.context.stats.bad_requests += 1
    host.context.peer_log.info(log, "request from %s refused with %d: %s", peer, status, message)
    await send_all(sock, _error_bytes(status, message, headers))
    await _linger(sock)


async def _refuse_malformed(host: SocketHost, sock: socket.socket, peer: str,
                            exc: h11.RemoteProtocolError) -> None:
    status = exc.error_status_hint or 400
    if status == 431:
        message = f"request head larger than {host.context.config.max_header_size} bytes"
    else:
        message = f"malformed request: {clip(str(exc), 120)}"
    await _refuse_and_close(host, sock, peer, status, message)


async def _linger(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    discarded = 0
    with trio.move_on_after(LINGER_S):
        while discarded < LINGER_BYTES:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            discarded += len(data)


async def serve_socket(host: SocketHost, route: Route, sock: socket.socket, ip: str, peer: str,
                       over: bool, *, admin: bool = False) -> None:
    """Own ``sock`` until it is closed, whatever the peer sends or does.

    ``route`` answers its HTTP requests. ``over``: accepted beyond max_connections (or the
    per-address cap); the peer is told so. ``admin``: a socket of the chaos listener: no
    websockets, and not counted in the node's client sockets.
    """
    reset = False
    try:
        accepted = await _serve(host, route, sock, peer, over, admin)
        if accepted is not None:
            # A separate call so the HTTP parser and request objects are freed while the
            # websocket lives on: idle connections are the memory budget.
            reset = await _run_websocket(host, sock, *accepted, peer)
    except (OSError, _Deadline) as exc:
        log.debug("connection from %s ended: %r", peer, exc)
    except Exception as exc:
        # A bug, found by a peer: this socket ends, the node and every other client go on.
        host.internal_error(f"serving {peer}", exc)
        reset = True
    finally:
        if not admin:
            host.release_socket(ip)
        if reset:
            # RST instead of FIN: the kernel drops whatever is still queued for the peer at
            # once (a stalled reader's send buffer can hold megabytes).
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def _serve(host: SocketHost, route: Route, sock: socket.socket, peer: str, over: bool,
                 admin: bool) -> tuple[AppConfig, bytes] | None:
    config = host.context.config
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_size)
    head_time = OVER_CAPACITY_DEADLINE if over else config.header_timeout
    deadline = trio.current_time() + head_time
    pending: object = None  # a pipelined request h11 had already parsed
    while True:
        # ---- the request head, within its deadline
        try:
            event = pending if pending is not None else await _next_event(conn, sock, deadline)
        except _Deadline:
            await _refuse_and_close(host, sock, peer, 408,
                                    f"request head not received within {head_time:g} s")
            return None
        except h11.RemoteProtocolError as exc:
            await _refuse_malformed(host, sock, peer, exc)
            return None
        pending = None
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed between requests
        try:
            _check_framing(event)
            path, query = split_target(event.target.decode("latin-1"))
            headers = _header_map(event)
            if not admin and "websocket" in _tokens(headers.get("upgrade", "")):
                return await _upgrade(host, sock, conn, event, headers, path, query, peer,
                                      over)
            if over:
                host.context.stats.rejected_connections += 1
                raise BadRequest(503, "over capacity; retry shortly", (("retry-after", "1"),))
            body = await _read_body(conn, sock, event, trio.current_time() + config.body_timeout)
        except BadRequest as exc:
            await _refuse_and_close(host, sock, peer, exc.status, exc.message, exc.headers)
            return None
        except h11.RemoteProtocolError as exc:
            await _refuse_malformed(host, sock, peer, exc)
            return None
        try:
            response = await route(event.method.decode("ascii"), path, query, headers, body, peer)
        except Exception as exc:
            host.internal_error(f"handling {event.method!r} {clip(path)} from {peer}", exc)
            await send_all(sock, _error_bytes(500, "internal error; the request was not "
                                                   "necessarily applied"))
            await _linger(sock)
            return None
        keep_alive = conn.our_state is h11.SEND_RESPONSE and not host.draining
        headers_out = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
        ]
        if not keep_alive:
            headers_out.append(("connection", "close"))
        await send_all(sock, conn.send(h11.Response(
            status_code=response.status, headers=headers_out,
            reason=_reason(response.status))) or b"")
        if event.method != b"HEAD":  # a HEAD response has headers only (RFC 9110 9.3.2)
            await send_all(sock, conn.send(h11.Data(data=response.body)) or b"")
        await send_all(sock, conn.send(h11.EndOfMessage()) or b"")
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE or not keep_alive:
            return None
        conn.start_next_cycle()
        # ---- keep-alive: wait (idle) for the next request's first byte, then its deadline
        try:
            pending = conn.next_event()
        except h11.RemoteProtocolError as exc:
            await _refuse_malformed(host, sock, peer, exc)
            return None
        if pending is h11.NEED_DATA:
            pending = None
            with trio.move_on_after(KEEPALIVE_TIMEOUT) as idle:
                await trio.lowlevel.wait_readable(sock)
            if idle.cancelled_caught:
                return None
        deadline = trio.current_time() + head_time


async def _read_body(conn: h11.Connection, sock: socket.socket, request: h11.Request,
                     deadline: float) -> bytes:
    for name, value in request.headers:
        if name == b"content-length" and int(value) > MAX_BODY:
            raise BadRequest(413, f"request body over {MAX_BODY} bytes")
    body = bytearray()
    while True:
        try:
            part = await _next_event(conn, sock, deadline)
        except _Deadline:
            raise BadRequest(408, "request body not received in time") from None
        if isinstance(part, h11.Data):
            if len(body) + len(part.data) > MAX_BODY:
                raise BadRequest(413, f"request body over {MAX_BODY} bytes")
            body += part.data
            continue
        if isinstance(part, h11.EndOfMessage):
            return bytes(body)
        raise BadRequest(400, "request ended before its body")


def _websocket_problem(request: h11.Request, headers: dict[str, str]) -> BadRequest | None:
    """Why a websocket handshake is invalid (RFC 6455 4.2.1), or None."""
    if request.http_version != b"1.1":
        return BadRequest(400, "a websocket handshake needs HTTP/1.1")
    if request.method != b"GET":
        return BadRequest(400, "a websocket handshake must be a GET")
    if "upgrade" not in _tokens(headers.get("connection", "")):
        return BadRequest(400, "a websocket handshake needs 'Connection: Upgrade'")
    if (headers.get("content-length", "0") != "0") or "transfer-encoding" in headers:
        return BadRequest(400, "a websocket handshake has no body")
    if headers.get("sec-websocket-version", "").strip() != "13":
        return BadRequest(426, "unsupported Sec-WebSocket-Version; this server speaks 13",
                          (("sec-websocket-version", "13"),))
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid = len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors
        valid = False
    if not valid:
        return BadRequest(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return None


async def _reject_ws(host: SocketHost, sock: socket.socket, peer: str, code: int,
                     message: str) -> None:
    host.context.peer_log.info(log, "websocket from %s refused with %d: %s", peer, code, message)
    await send_all(sock, encode_text(protocol.error(code, message)) + encode_close(code, message))
    await _linger(sock)


async def _upgrade(host: SocketHost, sock: socket.socket, conn: h11.Connection,
                   request: h11.Request, headers: dict[str, str], path: str,
                   query_text: str, peer: str, over: bool) -> tuple[AppConfig, bytes] | None:
    """Complete the handshake; the app and any bytes after it, or None if refused."""
    problem = _websocket_problem(request, headers)
    if problem is not None:
        raise problem
    key = headers["sec-websocket-key"].strip()
    # The request has no body (checked above): h11 ends it at once and pauses for the switch.
    while True:
        part = conn.next_event()
        if part is h11.PAUSED or isinstance(part, h11.EndOfMessage):
            if part is h11.PAUSED:
                break
            continue
        raise BadRequest(400, "unexpected data in a websocket handshake")
    await send_all(sock, conn.send(h11.InformationalResponse(status_code=101, headers=[
        ("upgrade", "websocket"), ("connection", "Upgrade"),
        ("sec-websocket-accept", accept_key(key)),
    ])) or b"")
    initial, _closed = conn.trailing_data
    # From here on the refusals are Pusher's: pusher:error then a close frame with the code.
    parts = path.strip("/").split("/")
    query = dict(parse_qsl(query_text))
    if len(parts) != 2 or parts[0] != "app":
        await _reject_ws(host, sock, peer, protocol.PATH_NOT_FOUND,
                         f"path not found: {clip(path, 100)}")
        return None
    app = host.context.config.app_by_key(parts[1])
    if app is None:
        host.context.stats.rejected_connections += 1
        await _reject_ws(host, sock, peer, protocol.UNKNOWN_APP,
                         f"app key {clip(parts[1], 64)} does not exist")
        return None
    if "protocol" not in query:
        await _reject_ws(host, sock, peer, protocol.NO_PROTOCOL, "no protocol version supplied")
        return None
    if query["protocol"] != str(protocol.SUPPORTED_PROTOCOL):
        await _reject_ws(host, sock, peer, protocol.UNSUPPORTED_PROTOCOL,
                         f"unsupported protocol version {clip(query['protocol'], 16)}; use 7")
        return None
    if host.draining:
        await _reject_ws(host, sock, peer, protocol.RECONNECT,
                         "server draining; reconnect elsewhere")
        return None
    if over:
        host.context.stats.rejected_connections += 1
        await _reject_ws(host, sock, peer, protocol.OVER_CAPACITY, "over capacity")
        return None
    return app, bytes(initial)


async def _run_websocket(host: SocketHost, sock: socket.socket, app: AppConfig, initial: bytes,
                         peer: str) -> bool:
    """Serve one websocket; True if its socket must be reset rather than closed."""
    ws = Connection(host.context, sock, app, peer)
    host.connections[ws] = None
    host.context.stats.connections_total += 1
    try:
        ws.session.welcome(ws)
        await ws.run(initial)
    except Exception as exc:
        host.internal_error(f"on websocket {ws.socket_id} from {peer}", exc)
        return ws.fail_internal()
    finally:
        host.connections.pop(ws, None)  # first: nothing below may leave it registered
        host.context.channels.drop_connection(ws)
    return ws.reset
