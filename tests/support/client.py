"""A minimal Pusher protocol test client on trio-websocket, plus signed publishing helpers."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from server.auth import channel_auth, sign_request

from .procs import APP_ID, APP_KEY, APP_SECRET


class PusherTestClient:
    """Wraps one websocket; ``events()`` yields decoded messages, answering pusher:ping."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.socket_id = ""
        self.activity_timeout = 0

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                message = json.loads(await self.ws.get_message())
                if message.get("event") == "pusher:ping":
                    await self.send("pusher:pong", {})
                    continue
                return message

    async def send(self, event: str, data: Any, channel: str | None = None) -> None:
        message: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            message["channel"] = channel
        await self.ws.send_message(json.dumps(message))

    async def subscribe(self, channel: str, *, position: tuple[int, str] | None = None,
                        auth: str | None = None, sign: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": channel}
        if sign:
            auth = channel_auth(APP_KEY, APP_SECRET, self.socket_id, channel)
        if auth is not None:
            data["auth"] = auth
        if position is not None:
            data["offset"], data["epoch"] = position
        await self.send("pusher:subscribe", data)
        return await self.next()


class pusher_client:
    def __init__(self, url: str) -> None:
        self._cm = open_websocket_url(url)

    async def __aenter__(self) -> PusherTestClient:
        ws = await self._cm.__aenter__()
        client = PusherTestClient(ws)
        hello = await client.next()
        assert hello["event"] == "pusher:connection_established", hello
        data = json.loads(hello["data"])
        client.socket_id = data["socket_id"]
        client.activity_timeout = data["activity_timeout"]
        return client

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(*exc)


def signed_post(base_url: str, path: str, body: dict[str, Any], *, key: str = APP_KEY,
                secret: str = APP_SECRET, timestamp: int | None = None) -> httpx.Response:
    raw = json.dumps(body).encode()
    params = sign_request(key, secret, "POST", path, raw, timestamp=timestamp)
    return httpx.post(f"{base_url}{path}", params=params, content=raw,
                      headers={"content-type": "application/json"}, timeout=10)


def signed_get(base_url: str, path: str, params: dict[str, str] | None = None) -> httpx.Response:
    query = sign_request(APP_KEY, APP_SECRET, "GET", path, b"", params=params)
    return httpx.get(f"{base_url}{path}", params=query, timeout=10)


def publish(base_url: str, channel: str, event: str, data: Any) -> httpx.Response:
    return signed_post(base_url, f"/apps/{APP_ID}/events",
                       {"name": event, "channels": [channel], "data": json.dumps(data)})


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking helper (httpx, raw sockets) without blocking the trio test."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def closed_with(url: str, timeout: float = 10.0) -> tuple[list[dict[str, Any]], int]:
    """Connect and read until the server closes: (messages received, close code)."""
    messages: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        async with open_websocket_url(url) as ws:
            try:
                while True:
                    messages.append(json.loads(await ws.get_message()))
            except ConnectionClosed as exc:
                return messages, exc.reason.code
    raise AssertionError("unreachable")
