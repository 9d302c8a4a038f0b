"""Per-app settings from the TOML file on real nodes: allowed origins checked on the
handshake's Origin, a disabled app, a connection quota across the cluster, two apps kept
apart."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import open_websocket_url

from server import protocol
from server.http import origin_allowed
from tests.support.client import closed_with, in_thread, publish, pusher_client, signed_post
from tests.support.procs import APP_ID, APP_KEY, app_toml


async def handshake_with_origin(url: str, origin: str | None) -> int | None:
    """Connect with ``Origin``; the close code if refused, None if welcomed."""
    headers = [("Origin", origin)] if origin is not None else []
    with trio.fail_after(10):
        async with open_websocket_url(url, extra_headers=headers) as ws:
            first = json.loads(await ws.get_message())
            if first["event"] == "pusher:connection_established":
                return None
            assert first["event"] == "pusher:error"
            try:
                await ws.get_message()
            except Exception:  # trio_websocket.ConnectionClosed
                pass
            assert ws.closed is not None
            return ws.closed.code
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("origin", "allowed"), [
    ("https://app.example.com", True),
    ("https://www.example.com", True),     # https://*.example.com
    ("HTTPS://WWW.EXAMPLE.COM", True),     # case-insensitive
    ("http://localhost:5173", True),       # host pattern 'localhost'
    ("https://example.com", False),        # the wildcard needs a subdomain
    ("http://app.example.com", False),     # other scheme
    ("https://evil.com", False),
    ("https://app.example.com.evil.com", False),
    ("null", False),
    ("", False),
    ("http://[not-an-address", False),     # urlsplit raises on it: refused, not a crash
])
def test_origin_patterns(origin, allowed):
    assert origin_allowed(origin, ("https://*.example.com", "localhost")) is allowed
    assert origin_allowed(origin, ("*",))  # the default allows every origin


async def test_allowed_origins_are_checked_on_the_handshake(start_nodes):
    node = start_nodes("node-1", config=app_toml(
        allowed_origins=["https://*.example.com", "localhost"]))
    assert await handshake_with_origin(node.ws_url, "https://app.example.com") is None
    assert await handshake_with_origin(node.ws_url, None) is None  # not a browser
    for refused in ("https://evil.com", "http://[not-an-address"):
        assert await handshake_with_origin(node.ws_url, refused) == protocol.UNAUTHORIZED
    assert "origin 'https://evil.com' is not allowed" in node.log()


async def test_a_disabled_app_refuses_connections_4003_and_its_api_403(start_nodes):
    node = start_nodes("node-1", config=app_toml(enabled=False))
    messages, code = await closed_with(node.ws_url)
    assert code == protocol.APP_DISABLED
    assert messages[0]["data"]["code"] == protocol.APP_DISABLED
    response = await in_thread(publish, node.url, "c", "e", {})
    assert response.status_code == 403


async def test_the_connection_quota_counts_the_whole_cluster(start_nodes):
    config = app_toml(max_connections=3)
    node1, node2 = start_nodes("node-1", config=config), start_nodes("node-2", config=config)
    async with pusher_client(node1.ws_url), pusher_client(node1.ws_url):
        async with pusher_client(node2.ws_url):
            # Node 1 learns node 2's count within a heartbeat (node_timeout / 5 = 1 s).
            with trio.fail_after(10):
                while (code := await handshake_with_origin(node1.ws_url, None)) is None:
                    await trio.sleep(0.2)
            assert code == protocol.OVER_QUOTA
    # Everyone left: there is room again, on either node.
    with trio.fail_after(10):
        while await handshake_with_origin(node2.ws_url, None) is not None:
            await trio.sleep(0.2)


async def test_two_apps_on_one_cluster_are_kept_apart(start_nodes):
    other = ('[[apps]]\nid = "2"\nkey = "other-key"\nsecret = "other-secret"\n'
             "enable_client_events = true\n")
    config = app_toml() + other
    node = start_nodes("node-1", config=config)
    other_url = f"ws://127.0.0.1:{node.port}/app/other-key?protocol=7"
    async with pusher_client(node.ws_url) as mine, pusher_client(other_url) as theirs:
        await mine.subscribe("shared-name")
        await theirs.subscribe("shared-name")
        response = await in_thread(publish, node.url, "shared-name", "for-app-1", {})
        assert response.status_code == 200
        assert (await mine.next())["event"] == "for-app-1"
        assert await theirs.drain(0.5) == []
        # App 2's secret does not sign for app 1.
        refused = await in_thread(signed_post, node.url, f"/apps/{APP_ID}/events",
                                  {"name": "e", "data": "{}", "channel": "c"},
                                  key="other-key", secret="other-secret")
        assert refused.status_code == 401
    assert APP_KEY != "other-key"


async def test_subscription_count_events_are_a_per_app_option(start_nodes):
    config = app_toml(subscription_count_events=True)
    node1, node2 = start_nodes("node-1", config=config), start_nodes("node-2", config=config)
    async with pusher_client(node1.ws_url) as a:
        await a.subscribe("counted")
        first = await a.next()
        assert first["event"] == "pusher_internal:subscription_count"
        assert json.loads(first["data"]) == {"subscription_count": 1}
        async with pusher_client(node2.ws_url) as b:
            await b.subscribe("counted")
            with trio.fail_after(5):
                while True:
                    message = await a.next()
                    if json.loads(message["data"])["subscription_count"] == 2:
                        break
        with trio.fail_after(5):
            while json.loads((await a.next())["data"])["subscription_count"] != 1:
                pass
    plain = start_nodes("node-3")  # the default app does not send them
    async with pusher_client(plain.ws_url) as c:
        await c.subscribe("counted")
        assert await c.drain(2.5) == []
