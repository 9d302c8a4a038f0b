"""HTTP routes of the public listener: the Pusher HTTP API, /health and /metrics.

Each handler is a plain async function of an `ApiContext` and the request, returning a
Response; the HTTP framing lives in server.http. The API publishes through the context's
`Publisher` (never through the node), so it can be served by anything that sequences events.
Every refusal carries a JSON body saying why and is logged.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from . import protocol
from .auth import SignatureError, verify_request
from .config import AppConfig, Config
from .interfaces import NodeStatus, Publisher
from .metrics import Metrics, NodeStats
from .peerlog import PeerLog, clip
from .redis_link import RedisError, RedisLinkDown, RedisUnreachable

log = logging.getLogger("turnout.api")

__all__ = ["ApiContext", "Response", "handle_request"]

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


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What the HTTP API of one node uses."""

    config: Config
    stats: NodeStats
    peer_log: PeerLog
    publisher: Publisher
    status: NodeStatus
    metrics: Metrics


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def handle_request(ctx: ApiContext, method: str, path: str, query: str,
                         headers: dict[str, str], body: bytes, peer: str) -> Response:
    """Route one request of the public listener."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    ctx.stats.http_requests += 1
    try:
        if path == "/health" and method == "GET":
            return _health(ctx)
        if path == "/metrics" and method == "GET":
            return Response(200, ctx.metrics.render(), ctx.metrics.content_type)
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "apps":
            return await _api(ctx, method, path, parts, params, body)
        if parts[0] == "app":
            raise ApiError(400, "websocket upgrade required on /app/{key}")
        raise ApiError(404, f"no route for {method} {clip(path)}")
    except ApiError as exc:
        ctx.peer_log.info(log, "%s %s -> %d: %s", method, clip(path), exc.status, exc.message)
        return Response.json(exc.status, {"error": exc.message})
    except RedisUnreachable as exc:
        log.warning("%s %s -> 503: redis unreachable, nothing done: %s", method, path, exc)
        return Response.json(503, {"error": f"redis unavailable: {exc}", "published": False})
    except (RedisLinkDown, RedisError) as exc:
        log.warning("%s %s -> 503: redis unavailable: %s", method, path, exc)
        return Response.json(503, {"error": f"redis unavailable: {exc}"})


def _health(ctx: ApiContext) -> Response:
    node_id = ctx.config.node_id
    if ctx.status.draining:
        return Response.json(503, {"status": "draining", "reason": ctx.status.drain_reason,
                                   "node": node_id})
    if not ctx.publisher.link_up:
        return Response.json(503, {"status": "unavailable", "reason": "redis link down",
                                   "node": node_id})
    return Response.json(200, {"status": "ok", "node": node_id,
                               "connections": ctx.status.connection_count})


async def _api(ctx: ApiContext, method: str, path: str, parts: list[str], params: dict[str, str],
               body: bytes) -> Response:
    app = ctx.config.app_by_id(parts[1])
    if app is None:
        raise ApiError(404, f"unknown app id {clip(parts[1], 64)}")
    try:
        verify_request(method, path, params, body, key=app.key, secret=app.secret)
    except SignatureError as exc:
        ctx.stats.auth_failures += 1
        raise ApiError(exc.status, exc.message) from None
    route = parts[2:]
    if method == "POST" and route == ["events"]:
        return await _events(ctx, app, _json_body(body))
    if method == "POST" and route == ["batch_events"]:
        return await _batch(ctx, app, _json_body(body))
    if method == "GET" and route == ["channels"]:
        return await _channels(ctx, app, params)
    if method == "GET" and len(route) == 2 and route[0] == "channels":
        return await _channel(ctx, app, unquote(route[1]), params)
    raise ApiError(404, f"no route for {method} {clip(path)}")


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {clip(str(exc))}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "body must be a JSON object")
    return value


def _event_items(ctx: ApiContext, event: dict[str, Any], *,
                 batch: bool) -> list[tuple[str, bytes, str]]:
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
    if len(data.encode()) > ctx.config.max_event_data:
        raise ApiError(413, f"event data over {ctx.config.max_event_data} bytes")
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


async def _events(ctx: ApiContext, app: AppConfig, body: dict[str, Any]) -> Response:
    items = _event_items(ctx, body, batch=False)
    results = await ctx.publisher.publish_many(app.id, items)
    ctx.stats.api_events += 1
    response: dict[str, Any] = {
        "positions": {ch: {"offset": r.offset, "epoch": r.epoch}
                      for (ch, _, _), r in zip(items, results, strict=True)}
    }
    if body.get("info"):
        response["channels"] = await _info(ctx, app, [ch for ch, _, _ in items], body["info"])
    return Response.json(200, response)


async def _batch(ctx: ApiContext, app: AppConfig, body: dict[str, Any]) -> Response:
    batch = body.get("batch")
    if not isinstance(batch, list) or not batch:
        raise ApiError(400, "'batch' must be a non-empty list")
    if len(batch) > MAX_BATCH:
        raise ApiError(400, f"more than {MAX_BATCH} events in one batch")
    items = []
    for event in batch:
        if not isinstance(event, dict):
            raise ApiError(400, "each batch entry must be an object")
        items += _event_items(ctx, event, batch=True)
    results = await ctx.publisher.publish_many(app.id, items)
    ctx.stats.api_events += len(items)
    return Response.json(200, {"batch": [
        {"positions": {ch: {"offset": r.offset, "epoch": r.epoch}}}
        for (ch, _, _), r in zip(items, results, strict=True)
    ]})


async def _info(ctx: ApiContext, app: AppConfig, channels: list[str], info: Any) -> dict[str, Any]:
    wanted = str(info).split(",")
    counts = await ctx.publisher.read_counts(app.id)
    out: dict[str, Any] = {}
    for ch in channels:
        entry: dict[str, Any] = {}
        if "subscription_count" in wanted:
            entry["subscription_count"] = counts.get(ch, 0)
        out[ch] = entry
    return out


async def _channels(ctx: ApiContext, app: AppConfig, params: dict[str, str]) -> Response:
    prefix = params.get("filter_by_prefix", "")
    info = [i for i in params.get("info", "").split(",") if i]
    if "user_count" in info and not prefix.startswith("presence-"):
        raise ApiError(400, "info=user_count requires filter_by_prefix=presence-")
    counts = await ctx.publisher.read_counts(app.id)
    channels: dict[str, Any] = {}
    for name in sorted(counts):
        if name.startswith(prefix):
            channels[name] = {"subscription_count": counts[name]} \
                if "subscription_count" in info else {}
    return Response.json(200, {"channels": channels})


async def _channel(ctx: ApiContext, app: AppConfig, name: str, params: dict[str, str]) -> Response:
    if not protocol.valid_channel_name(name):
        raise ApiError(400, f"invalid channel name {clip(name)}")
    info = [i for i in params.get("info", "").split(",") if i]
    if "user_count" in info and not protocol.is_presence(name):
        raise ApiError(400, "info=user_count is only available for presence channels")
    counts = await ctx.publisher.read_counts(app.id)
    count = counts.get(name, 0)
    result: dict[str, Any] = {"occupied": count > 0}
    if "subscription_count" in info:
        result["subscription_count"] = count
    return Response.json(200, result)


def token_matches(expected: str, given: str | None) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(
        expected.encode(), given.encode())
