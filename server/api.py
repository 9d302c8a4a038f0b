"""HTTP routes of the public listener: the Pusher HTTP API, /health and /metrics.

Each handler is a plain async function of an `ApiContext` and the request, returning a
Response; the HTTP framing lives in server.http. The API publishes through the context's
`Publisher` (never through the node), so it can be served by anything that sequences events.
Every refusal carries a JSON body saying why and is logged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from . import protocol
from .auth import SignatureError, verify_request
from .config import AppConfig, Config
from .interfaces import NodeStatus, Publisher, PublishItem
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
    try:
        if path == "/health" and method == "GET":
            return _health(ctx)
        if path == "/metrics" and method == "GET":
            return Response(200, ctx.metrics.render(), ctx.metrics.content_type)
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "apps":
            return await _api(ctx, method, path, parts, params, body)
        if len(parts) == 3 and parts[0] == "users":
            # The official Python SDK (3.3) sends terminate_user_connections without the
            # /apps/{id} prefix; its signed auth_key names the app.
            app = ctx.config.app_by_key(params.get("auth_key", ""))
            if app is None:
                raise ApiError(401, "unknown auth_key")
            return await _api(ctx, method, path, ["apps", app.id, *parts], params, body)
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
    if not app.enabled:
        raise ApiError(403, "app is disabled")
    route = parts[2:]
    if method == "POST" and route == ["events"]:
        return await _events(ctx, app, _json_body(body))
    if method == "POST" and route == ["batch_events"]:
        return await _batch(ctx, app, _json_body(body))
    if method == "GET" and route == ["channels"]:
        return await _channels(ctx, app, params)
    if method == "GET" and len(route) == 2 and route[0] == "channels":
        return await _channel(ctx, app, unquote(route[1]), params)
    if method == "GET" and len(route) == 3 and route[0] == "channels" and route[2] == "users":
        return await _users(ctx, app, unquote(route[1]))
    if method == "POST" and len(route) == 3 and route[0] == "users":
        user_id = unquote(route[1])
        if not protocol.valid_user_id(user_id):
            raise ApiError(400, f"invalid user id {clip(user_id, 64)}")
        if route[2] == "events":
            return await _user_event(ctx, app, user_id, _json_body(body))
        if route[2] == "terminate_connections":
            return await _terminate(ctx, app, user_id)
    raise ApiError(404, f"no route for {method} {clip(path)}")


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {clip(str(exc))}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "body must be a JSON object")
    return value


def _event_name(event: dict[str, Any]) -> str:
    name = event.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'name' must be a non-empty string")
    if len(name) > MAX_EVENT_NAME:
        raise ApiError(400, f"event name longer than {MAX_EVENT_NAME} characters")
    if name.startswith(("pusher:", "pusher_internal:")):
        # Clients act on these as protocol messages (pusher-js re-emits pusher:* ones).
        raise ApiError(400, "event names starting with 'pusher:' or 'pusher_internal:' are "
                       "reserved for the protocol")
    return name


def _event_data(ctx: ApiContext, event: dict[str, Any]) -> str:
    data = event.get("data")
    if data is None:
        raise ApiError(400, "'data' is required")
    if not isinstance(data, str):
        data = orjson.dumps(data).decode()
    if len(data.encode()) > ctx.config.max_event_data:
        raise ApiError(413, f"event data over {ctx.config.max_event_data} bytes")
    return data


def _valid_target(channel: object) -> bool:
    """A channel an HTTP publish may name: a channel, or a user's #server-to-user- channel
    (the SDKs' send_to_user publishes to it)."""
    if isinstance(channel, str) and protocol.is_user_channel(channel):
        return protocol.valid_user_id(channel[len(protocol.USER_CHANNEL_PREFIX):])
    return protocol.valid_channel_name(channel)


def _event_items(ctx: ApiContext, event: dict[str, Any], *, batch: bool) -> list[PublishItem]:
    name = _event_name(event)
    data = _event_data(ctx, event)
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
        if not _valid_target(channel):
            raise ApiError(400, f"invalid channel name {clip(channel)}")
    # The same channel twice is one event in it (one position), not two.
    names: list[str] = list(dict.fromkeys(str(ch) for ch in channels))
    if len(names) > 1 and any(protocol.is_encrypted(ch) for ch in names):
        # Each encrypted channel has its own key: one payload cannot be for several.
        raise ApiError(400, "an event to an encrypted channel must name that channel alone")
    socket_id = event.get("socket_id") or ""
    if socket_id and (not isinstance(socket_id, str) or not _SOCKET_ID_RE.fullmatch(socket_id)):
        raise ApiError(400, "'socket_id' must look like 123.456")
    return [PublishItem(ch, protocol.event_prefix(name, ch, data), socket_id,
                        protocol.is_cache(ch)) for ch in names]


def _info_names(info: Any) -> list[str]:
    if info is None or info == "":
        return []
    if not isinstance(info, str):
        raise ApiError(400, "'info' must be a comma-separated string")
    names = [i for i in info.split(",") if i]
    for name in names:
        if name not in ("subscription_count", "user_count"):
            raise ApiError(400, f"unknown info attribute {clip(name, 40)} (expected "
                           "subscription_count, user_count)")
    return names


def _positions(items: list[PublishItem], results: list[Any]) -> dict[str, Any]:
    return {item.channel: {"offset": r.offset, "epoch": r.epoch}
            for item, r in zip(items, results, strict=True)}


async def _events(ctx: ApiContext, app: AppConfig, body: dict[str, Any]) -> Response:
    items = _event_items(ctx, body, batch=False)
    info = _info_names(body.get("info"))
    results = await ctx.publisher.publish_many(app.id, items)
    response: dict[str, Any] = {"positions": _positions(items, results)}
    if info:
        response["channels"] = await _info(ctx, app, [item.channel for item in items], info)
    return Response.json(200, response)


async def _batch(ctx: ApiContext, app: AppConfig, body: dict[str, Any]) -> Response:
    batch = body.get("batch")
    if not isinstance(batch, list) or not batch:
        raise ApiError(400, "'batch' must be a non-empty list")
    if len(batch) > MAX_BATCH:
        raise ApiError(400, f"more than {MAX_BATCH} events in one batch")
    items = []
    infos = []
    for event in batch:
        if not isinstance(event, dict):
            raise ApiError(400, "each batch entry must be an object")
        items += _event_items(ctx, event, batch=True)
        infos.append(_info_names(event.get("info")))
    results = await ctx.publisher.publish_many(app.id, items)
    out: list[dict[str, Any]] = [{"positions": _positions([item], [r])}
                                 for item, r in zip(items, results, strict=True)]
    if any(infos):
        channels = [item.channel for item, info in zip(items, infos, strict=True) if info]
        attributes = await _info(ctx, app, channels, sorted({i for x in infos for i in x}))
        for entry, item, info in zip(out, items, infos, strict=True):
            for name in info:
                if name in attributes[item.channel]:
                    entry[name] = attributes[item.channel][name]
    return Response.json(200, {"batch": out})


async def _info(ctx: ApiContext, app: AppConfig, channels: list[str],
                wanted: list[str]) -> dict[str, Any]:
    """Pusher's channel attributes after a publish: subscription_count for every channel,
    user_count for presence channels."""
    counts = await ctx.publisher.read_counts(app.id) if "subscription_count" in wanted else {}
    presence = [ch for ch in channels if protocol.is_presence(ch)]
    users = dict(zip(presence, await ctx.publisher.read_user_counts(app.id, presence),
                     strict=True)) if "user_count" in wanted and presence else {}
    out: dict[str, Any] = {}
    for ch in channels:
        entry: dict[str, Any] = {}
        if "subscription_count" in wanted:
            entry["subscription_count"] = counts.get(ch, 0)
        if ch in users:
            entry["user_count"] = users[ch]
        out[ch] = entry
    return out


async def _channels(ctx: ApiContext, app: AppConfig, params: dict[str, str]) -> Response:
    prefix = params.get("filter_by_prefix", "")
    info = _info_names(params.get("info"))
    if "user_count" in info and not prefix.startswith("presence-"):
        raise ApiError(400, "info=user_count requires filter_by_prefix=presence-")
    counts = await ctx.publisher.read_counts(app.id)
    names = [name for name in sorted(counts) if name.startswith(prefix)]
    users = dict(zip(names, await ctx.publisher.read_user_counts(app.id, names),
                     strict=True)) if "user_count" in info and names else {}
    channels: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {}
        if "subscription_count" in info:
            entry["subscription_count"] = counts[name]
        if "user_count" in info:
            entry["user_count"] = users[name]
        channels[name] = entry
    return Response.json(200, {"channels": channels})


async def _channel(ctx: ApiContext, app: AppConfig, name: str, params: dict[str, str]) -> Response:
    if not protocol.valid_channel_name(name):
        raise ApiError(400, f"invalid channel name {clip(name)}")
    info = [i for i in params.get("info", "").split(",") if i]
    for attribute in info:
        if attribute not in ("subscription_count", "user_count", "cache"):
            raise ApiError(400, f"unknown info attribute {clip(attribute, 40)} (expected "
                           "subscription_count, user_count, cache)")
    if "user_count" in info and not protocol.is_presence(name):
        raise ApiError(400, "info=user_count is only available for presence channels")
    if "cache" in info and not protocol.is_cache(name):
        raise ApiError(400, "info=cache is only available for cache channels")
    counts = await ctx.publisher.read_counts(app.id)
    count = counts.get(name, 0)
    result: dict[str, Any] = {"occupied": count > 0}
    if "subscription_count" in info:
        result["subscription_count"] = count
    if "user_count" in info:
        (result["user_count"],) = await ctx.publisher.read_user_counts(app.id, [name])
    if "cache" in info:
        cached, ttl = await ctx.publisher.read_cache(app.id, name)
        if cached is not None:
            event = orjson.loads(cached.prefix + b"}")
            result["cache"] = {"event": event["event"], "data": event["data"], "ttl": ttl}
    return Response.json(200, result)


async def _users(ctx: ApiContext, app: AppConfig, name: str) -> Response:
    if not protocol.valid_channel_name(name):
        raise ApiError(400, f"invalid channel name {clip(name)}")
    if not protocol.is_presence(name):
        raise ApiError(400, "users are only available for presence channels")
    members = await ctx.publisher.read_members(app.id, name)
    return Response.json(200, {"users": [{"id": user_id} for user_id in members]})


async def _user_event(ctx: ApiContext, app: AppConfig, user_id: str,
                      body: dict[str, Any]) -> Response:
    """POST /apps/{id}/users/{user}/events: an event to every connection signed in as user."""
    channel = protocol.user_channel(user_id)
    item = PublishItem(channel, protocol.event_prefix(_event_name(body), channel,
                                                      _event_data(ctx, body)))
    (result,) = await ctx.publisher.publish_many(app.id, [item])
    return Response.json(200, {"positions": _positions([item], [result])})


async def _terminate(ctx: ApiContext, app: AppConfig, user_id: str) -> Response:
    """POST /apps/{id}/users/{user}/terminate_connections: close every connection signed in
    as user, on every node (an internal event in the user's channel; never sent to clients)."""
    channel = protocol.user_channel(user_id)
    await ctx.publisher.publish_many(app.id, [PublishItem(channel,
                                                          protocol.terminate_prefix(channel))])
    return Response.json(200, {})
