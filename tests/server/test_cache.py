"""Cache channels on a real two-node cluster: the last HTTP-published event replayed on
subscribe (all four kinds), pusher:cache_miss when there is none, the position contract with
resume (docs/protocol-extensions.md), client events not cached, the TTL, history off."""

from __future__ import annotations

import json
import uuid
from typing import Any

import trio

from server.auth import channel_auth
from tests.support.client import (
    PusherTestClient,
    in_thread,
    members_of,
    publish,
    pusher_client,
    signed_get,
)
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, app_toml

KINDS = ("cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-")


async def subscribe(client: PusherTestClient, name: str, *,
                    position: tuple[int, str] | None = None) -> dict[str, Any]:
    if name.startswith("presence-"):
        channel_data = json.dumps({"user_id": client.socket_id, "user_info": None})
        data: dict[str, Any] = {
            "channel": name, "channel_data": channel_data,
            "auth": channel_auth(APP_KEY, APP_SECRET, client.socket_id, name, channel_data)}
        if position is not None:
            data["offset"], data["epoch"] = position
        await client.send("pusher:subscribe", data)
        confirmation = await client.next()
        members_of(confirmation)
        return confirmation
    return await client.subscribe(name, sign=name.startswith("private-"), position=position)


async def test_every_kind_of_cache_channel_replays_its_last_event(start_nodes):
    node1, node2 = start_nodes("node-1"), start_nodes("node-2")
    for kind in KINDS:
        name = f"{kind}{uuid.uuid4().hex[:8]}"
        async with pusher_client(node1.ws_url) as first:
            confirmation = await subscribe(first, name)
            assert confirmation["event"] == "pusher_internal:subscription_succeeded"
            miss = await first.next()
            assert (miss["event"], miss["channel"]) == ("pusher:cache_miss", name), kind
            for i in range(3):
                response = await in_thread(publish, node2.url, name, "price", {"i": i})
                assert response.status_code == 200, response.text
            live = [await first.next() for _ in range(3)]
            assert [json.loads(m["data"])["i"] for m in live] == [0, 1, 2]
        for node in (node1, node2):
            async with pusher_client(node.ws_url) as late:
                confirmation = await subscribe(late, name)
                cached = await late.next()
                # The last event, right after the confirmation, as a copy without a position.
                assert (cached["event"], cached["channel"]) == ("price", name), kind
                assert json.loads(cached["data"]) == {"i": 2}
                assert cached["cached"] is True
                assert "offset" not in cached
                # The subscription starts at or after the cached event's position.
                assert confirmation["epoch"] == live[-1]["epoch"]
                assert confirmation["offset"] >= live[-1]["offset"]
                if node is node2:
                    await in_thread(publish, node1.url, name, "price", {"i": 3})
                    following = await late.next()
                    assert json.loads(following["data"]) == {"i": 3}
                    assert following["offset"] == confirmation["offset"] + 1
        info = (await in_thread(signed_get, node1.url, f"/apps/{APP_ID}/channels/{name}",
                                {"info": "cache"})).json()
        assert info["cache"]["event"] == "price"
        assert json.loads(info["cache"]["data"]) == {"i": 3}
        assert 0 < info["cache"]["ttl"] <= 1800


async def test_resume_and_the_cached_event(start_nodes):
    """A resume that is recovered replays the gap and no cached copy (the client has the
    event or gets it in the replay); one that is not recovered gets the cached event."""
    node = start_nodes("node-1")
    name = f"cache-{uuid.uuid4().hex[:8]}"
    async with pusher_client(node.ws_url) as client:
        await client.subscribe(name)
        assert (await client.next())["event"] == "pusher:cache_miss"
        await in_thread(publish, node.url, name, "e", {"i": 1})
        first = await client.next()
    await in_thread(publish, node.url, name, "e", {"i": 2})
    async with pusher_client(node.ws_url) as client:
        confirmation = await client.subscribe(name, position=(first["offset"], first["epoch"]))
        assert confirmation["recovered"] is True
        replay = await client.next()
        assert json.loads(replay["data"]) == {"i": 2}
        assert "cached" not in replay
        assert await client.drain(0.5) == []
    async with pusher_client(node.ws_url) as client:
        confirmation = await client.subscribe(name, position=(1, "not-the-epoch"))
        assert confirmation["recovered"] is False
        cached = await client.next()
        assert (json.loads(cached["data"]), cached["cached"]) == ({"i": 2}, True)


async def test_client_events_are_not_cached(start_nodes):
    node = start_nodes("node-1", config=app_toml(enable_client_events=True))
    name = f"private-cache-{uuid.uuid4().hex[:8]}"
    async with pusher_client(node.ws_url) as alice, pusher_client(node.ws_url) as bob:
        await alice.subscribe(name, sign=True)
        await bob.subscribe(name, sign=True)
        await in_thread(publish, node.url, name, "server", {"v": 1})
        await alice.send("client-note", {"v": 2}, channel=name)
        assert (await bob.next())["event"] == "pusher:cache_miss"
        assert (await bob.next())["event"] == "server"
        assert (await bob.next())["event"] == "client-note"
    async with pusher_client(node.ws_url) as late:
        await late.subscribe(name, sign=True)
        cached = await late.next()
        assert (cached["event"], json.loads(cached["data"])) == ("server", {"v": 1})


async def test_the_cache_expires_and_needs_no_history(start_nodes):
    node = start_nodes("node-1", "--cache-ttl", "1", "--history-size", "0")
    name = f"cache-{uuid.uuid4().hex[:8]}"
    await in_thread(publish, node.url, name, "e", {"v": 1})
    async with pusher_client(node.ws_url) as client:
        await client.subscribe(name)
        assert json.loads((await client.next())["data"]) == {"v": 1}
    await trio.sleep(2.2)
    async with pusher_client(node.ws_url) as client:
        await client.subscribe(name)
        assert (await client.next())["event"] == "pusher:cache_miss"
