"""HTTP routes: the Pusher HTTP API, /health, /metrics and the opt-in chaos endpoint.

Each handler is a plain async function of the request returning a Response; the HTTP framing
lives in server.http. Every refusal carries a JSON body saying why and is logged.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import orjson

from . import protocol
from .auth import SignatureError, verify_request
from .config import AppConfig
from .peerlog import clip
from .redis_link import RedisError, RedisLinkDown, RedisUnreachable

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("turnout.api")

__all__ = ["Response", "handle_request"]

MAX_CHANNELS_PER_EVENT = 100
MAX_BATCH = 10
MAX_EVENT_NAME = 200
_SOCKET_ID_RE = re.compile(r"[0-9]{1,20}\.[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, obj: Any) -> Response:
        return cls(status, orjson.dumps(obj))


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def handle_request(node: Node, method: str, path: str, query: str,
                         headers: dict[str, str], body: bytes, peer: str, *,
                         admin: bool = False) -> Response:
    """Route one request. ``admin``: it came to the chaos listener, which serves /chaos/*."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    node.stats.http_requests += 1
    try:
        if admin:
            if path.startswith("/chaos/"):
                return await node.chaos.handle(method, path, params, headers, peer)
            raise ApiError(404, f"no route for {method} {clip(path)} on the chaos listener")
        if path == "/health" and method == "GET":
            return _health(node)
        if path == "/metrics" and method == "GET":
            return Response(200, node.metrics.render(), node.metrics.content_type)
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "apps":
            return await _api(node, method, path, parts, params, body)
        if parts[0] == "app":
            raise ApiError(400, "websocket upgrade required on /app/{key}")
        raise ApiError(404, f"no route for {method} {clip(path)}")
    except ApiError as exc:
        node.peer_log.info(log, "%s %s -> %d: %s", method, clip(path), exc.status, exc.message)
        return Response.json(exc.status, {"error": exc.message})
    except RedisUnreachable as exc:
        log.warning("%s %s -> 503: redis unreachable, nothing done: %s", method, path, exc)
        return Response.json(503, {"error": f"redis unavailable: {exc}", "published": False})
    except (RedisLinkDown, RedisError) as exc:
        log.warning("%s %s -> 503: redis unavailable: %s", method, path, exc)
        return Response.json(503, {"error": f"redis unavailable: {exc}"})


def _health(node: Node) -> Response:
    if node.draining:
        return Response.json(503, {"status": "draining", "reason": node.drain_reason,
                                   "node": node.config.node_id})
    if not node.hub.broker.link_up:
        return Response.json(503, {"status": "unavailable", "reason": "redis link down",
                                   "node": node.config.node_id})
    return Response.json(200, {"status": "ok", "node": node.config.node_id,
                               "connections": len(node.connections)})


async def _api(node: Node, method: str, path: str, parts: list[str], params: dict[str, str],
               body: bytes) -> Response:
    app = node.config.app_by_id(parts[1])
    if app is None:
        raise ApiError(404, f"unknown app id {clip(parts[1], 64)}")
    try:
        verify_request(method, path, params, body, key=app.key, secret=app.secret)
    except SignatureError as exc:
        node.stats.auth_failures += 1
        raise ApiError(exc.status, exc.message) from None
    route = parts[2:]
    if method == "POST" and route == ["events"]:
        return await _events(node, app, _json_body(body))
    if method == "POST" and route == ["batch_events"]:
        return await _batch(node, app, _json_body(body))
    if method == "GET" and route == ["channels"]:
        return await _channels(node, app, params)
    if method == "GET" and len(route) == 2 and route[0] == "channels":
        return await _channel(node, app, unquote(route[1]), params)
    raise ApiError(404, f"no route for {method} {clip(path)}")


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {clip(str(exc))}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "body must be a JSON object")
    return value


def _event_items(node: Node, event: dict[str, Any], *, batch: bool) -> list[tuple[str, bytes, str]]:
    name = event.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'name' must be a non-empty string")
    if len(name) > MAX_EVENT_NAME:
        raise ApiError(400, f"event name longer than {MAX_EVENT_NAME} characters")
    data = event.get("data")
    if data is None:
        raise ApiError(400, "'data' is required")
    if not isinstance(data, str):
        data = orjson.dumps(data).decode()
    if len(data.encode()) > node.config.max_event_data:
        raise ApiError(413, f"event data over {node.config.max_event_data} bytes")
    if batch:
        channels = [event.get("channel")]
    elif "channels" in event:
        channels = event["channels"]
        if not isinstance(channels, list) or not channels:
            raise ApiError(400, "'channels' must be a non-empty list")
    else:
        channels = [event.get("channel")]
    if len(channels) > MAX_CHANNELS_PER_EVENT:
        raise ApiError(400, f"more than {MAX_CHANNELS_PER_EVENT} channels in one event")
    for channel in channels:
        if not protocol.valid_channel_name(channel):
            raise ApiError(400, f"invalid channel name {clip(channel)}")
    socket_id = event.get("socket_id") or ""
    if socket_id and (not isinstance(socket_id, str) or not _SOCKET_ID_RE.fullmatch(socket_id)):
        raise ApiError(400, "'socket_id' must look like 123.456")
    return [(str(ch), protocol.event_prefix(name, str(ch), data), socket_id) for ch in channels]


async def _events(node: Node, app: AppConfig, body: dict[str, Any]) -> Response:
    items = _event_items(node, body, batch=False)
    results = await node.hub.broker.publish_many(app.id, items)
    node.stats.api_events += 1
    response: dict[str, Any] = {
        "positions": {ch: {"offset": r.offset, "epoch": r.epoch}
                      for (ch, _, _), r in zip(items, results, strict=True)}
    }
    if body.get("info"):
        response["channels"] = await _info(node, app, [ch for ch, _, _ in items], body["info"])
    return Response.json(200, response)


async def _batch(node: Node, app: AppConfig, body: dict[str, Any]) -> Response:
    batch = body.get("batch")
    if not isinstance(batch, list) or not batch:
        raise ApiError(400, "'batch' must be a non-empty list")
    if len(batch) > MAX_BATCH:
        raise ApiError(400, f"more than {MAX_BATCH} events in one batch")
    items = []
    for event in batch:
        if not isinstance(event, dict):
            raise ApiError(400, "each batch entry must be an object")
        items += _event_items(node, event, batch=True)
    results = await node.hub.broker.publish_many(app.id, items)
    node.stats.api_events += len(items)
    return Response.json(200, {"batch": [
        {"positions": {ch: {"offset": r.offset, "epoch": r.epoch}}}
        for (ch, _, _), r in zip(items, results, strict=True)
    ]})


async def _info(node: Node, app: AppConfig, channels: list[str], info: Any) -> dict[str, Any]:
    wanted = str(info).split(",")
    counts = await node.hub.broker.read_counts(app.id)
    out: dict[str, Any] = {}
    for ch in channels:
        entry: dict[str, Any] = {}
        if "subscription_count" in wanted:
            entry["subscription_count"] = counts.get(ch, 0)
        out[ch] = entry
    return out


async def _channels(node: Node, app: AppConfig, params: dict[str, str]) -> Response:
    prefix = params.get("filter_by_prefix", "")
    info = [i for i in params.get("info", "").split(",") if i]
    if "user_count" in info and not prefix.startswith("presence-"):
        raise ApiError(400, "info=user_count requires filter_by_prefix=presence-")
    counts = await node.hub.broker.read_counts(app.id)
    channels: dict[str, Any] = {}
    for name in sorted(counts):
        if name.startswith(prefix):
            channels[name] = {"subscription_count": counts[name]} \
                if "subscription_count" in info else {}
    return Response.json(200, {"channels": channels})


async def _channel(node: Node, app: AppConfig, name: str, params: dict[str, str]) -> Response:
    if not protocol.valid_channel_name(name):
        raise ApiError(400, f"invalid channel name {clip(name)}")
    info = [i for i in params.get("info", "").split(",") if i]
    if "user_count" in info and not protocol.is_presence(name):
        raise ApiError(400, "info=user_count is only available for presence channels")
    counts = await node.hub.broker.read_counts(app.id)
    count = counts.get(name, 0)
    result: dict[str, Any] = {"occupied": count > 0}
    if "subscription_count" in info:
        result["subscription_count"] = count
    return Response.json(200, result)


def token_matches(expected: str, given: str | None) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(
        expected.encode(), given.encode())
