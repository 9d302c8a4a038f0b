"""Accepted sockets: HTTP/1.1 via h11, then either the HTTP API or a websocket upgrade.

One listener serves everything a Pusher server serves on one port: ``/app/{key}`` websockets,
the ``/apps/{id}/...`` HTTP API, ``/health``, ``/metrics`` and the opt-in chaos endpoint. h11
parses requests (only at connection start for websockets, so its cost is off the hot path);
after a 101 the socket is handed to connection.Connection.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

from . import protocol
from .api import Response, handle_request
from .config import AppConfig
from .connection import Connection
from .frames import accept_key, encode_close, encode_text

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("turnout.http")

__all__ = ["serve_socket"]

MAX_BODY = 1024 * 1024
HEADER_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 60.0


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def _receive(sock: socket.socket, timeout: float) -> bytes:
    with trio.fail_after(timeout):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(65536)
            except BlockingIOError:
                continue


async def serve_socket(node: Node, sock: socket.socket, peer: str) -> None:
    """Own ``sock`` until it is closed, whatever happens."""
    try:
        accepted = await _serve(node, sock, peer)
        if accepted is not None:
            # A separate call so the HTTP parser and request objects are freed while the
            # websocket lives on: idle connections are the memory budget.
            await _run_websocket(node, sock, *accepted, peer)
    except (OSError, trio.TooSlowError, h11.ProtocolError) as exc:
        log.debug("connection from %s ended: %r", peer, exc)
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def _serve(node: Node, sock: socket.socket, peer: str) -> tuple[AppConfig, bytes] | None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    timeout = HEADER_TIMEOUT
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await _receive(sock, timeout)
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        if not isinstance(event, h11.Request):
            return None
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        target = event.target.decode("latin-1")
        if headers.get("upgrade", "").lower() == "websocket":
            return await _upgrade(node, sock, conn, event, headers, target, peer)
        body = bytearray()
        too_big = False
        while True:
            part = conn.next_event()
            if part is h11.NEED_DATA:
                conn.receive_data(await _receive(sock, HEADER_TIMEOUT))
                continue
            if isinstance(part, h11.Data):
                if len(body) + len(part.data) > MAX_BODY:
                    too_big = True
                else:
                    body += part.data
                continue
            break
        if too_big:
            response = Response.json(413, {"error": f"request body over {MAX_BODY} bytes"})
        else:
            response = await handle_request(
                node, event.method.decode(), target, headers, bytes(body), peer)
        keep_alive = conn.our_state is h11.SEND_RESPONSE and not too_big
        headers_out = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
        ]
        if not keep_alive or node.draining:
            headers_out.append(("connection", "close"))
        await send_all(sock, conn.send(h11.Response(status_code=response.status,
                                                    headers=headers_out)) or b"")
        await send_all(sock, conn.send(h11.Data(data=response.body)) or b"")
        await send_all(sock, conn.send(h11.EndOfMessage()) or b"")
        if conn.our_state is h11.MUST_CLOSE or not keep_alive or node.draining:
            return None
        conn.start_next_cycle()
        timeout = KEEPALIVE_TIMEOUT


async def _reject_ws(sock: socket.socket, peer: str, code: int, message: str) -> None:
    log.info("websocket from %s refused with %d: %s", peer, code, message)
    await send_all(sock, encode_text(protocol.error(code, message)) + encode_close(code, message))


async def _upgrade(node: Node, sock: socket.socket, conn: h11.Connection, request: h11.Request,
                   headers: dict[str, str], target: str, peer: str
                   ) -> tuple[AppConfig, bytes] | None:
    """Complete the handshake; the app and any bytes after it, or None if refused."""
    key = headers.get("sec-websocket-key")
    if (request.method != b"GET" or not key or headers.get("sec-websocket-version") != "13"
            or "upgrade" not in headers.get("connection", "").lower()):
        response = Response.json(400, {"error": "bad websocket handshake"})
        await send_all(sock, conn.send(h11.Response(
            status_code=400, headers=[("content-length", str(len(response.body))),
                                      ("connection", "close")])) or b"")
        await send_all(sock, conn.send(h11.Data(data=response.body)) or b"")
        return None
    # Drain any request body (there should be none) so trailing bytes are websocket frames.
    while True:
        part = conn.next_event()
        if part is h11.NEED_DATA:
            conn.receive_data(await _receive(sock, HEADER_TIMEOUT))
            continue
        if isinstance(part, h11.EndOfMessage) or part is h11.PAUSED:
            break
    await send_all(sock, conn.send(h11.InformationalResponse(status_code=101, headers=[
        ("upgrade", "websocket"), ("connection", "Upgrade"),
        ("sec-websocket-accept", accept_key(key)),
    ])) or b"")
    initial, _closed = conn.trailing_data
    url = urlsplit(target)
    parts = url.path.strip("/").split("/")
    query = dict(parse_qsl(url.query))
    if len(parts) != 2 or parts[0] != "app":
        await _reject_ws(sock, peer, protocol.PATH_NOT_FOUND, f"path not found: {url.path}")
        return None
    app = node.config.app_by_key(parts[1])
    if app is None:
        node.stats.rejected_connections += 1
        await _reject_ws(sock, peer, protocol.UNKNOWN_APP,
                         f"app key {parts[1][:64]} does not exist")
        return None
    if "protocol" not in query:
        await _reject_ws(sock, peer, protocol.NO_PROTOCOL, "no protocol version supplied")
        return None
    if query["protocol"] != str(protocol.SUPPORTED_PROTOCOL):
        await _reject_ws(sock, peer, protocol.UNSUPPORTED_PROTOCOL,
                         f"unsupported protocol version {query['protocol'][:16]}; use 7")
        return None
    if node.draining:
        await _reject_ws(sock, peer, protocol.RECONNECT, "server draining; reconnect elsewhere")
        return None
    limit = node.config.max_connections
    if limit and len(node.connections) >= limit:
        node.stats.rejected_connections += 1
        await _reject_ws(sock, peer, protocol.OVER_CAPACITY, "over capacity")
        return None
    return app, bytes(initial)


async def _run_websocket(node: Node, sock: socket.socket, app: AppConfig, initial: bytes,
                         peer: str) -> None:
    ws = Connection(node, sock, app, peer)
    node.connections[ws] = None
    node.stats.connections_total += 1
    try:
        ws.send_message(protocol.connection_established(
            ws.socket_id, node.config.activity_timeout))
        await ws.run(initial)
    finally:
        node.hub.drop_connection(ws)
        node.connections.pop(ws, None)
