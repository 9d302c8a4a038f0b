"""Client events (whispers) on a real two-node cluster: relayed across nodes, never echoed,
``user_id`` on presence channels, sequenced like any event, the per-app switch and the
documented rate limit (close 4301)."""

from __future__ import annotations

import json
import uuid

import pytest
import trio

from server import protocol
from tests.support.client import pusher_client
from tests.support.procs import app_toml


def suffix() -> str:
    return uuid.uuid4().hex[:8]


async def test_client_events_cross_nodes_and_are_never_echoed(start_nodes):
    config = app_toml(enable_client_events=True)
    node1, node2 = start_nodes("node-1", config=config), start_nodes("node-2", config=config)
    private, presence = f"private-chat-{suffix()}", f"presence-room-{suffix()}"
    async with pusher_client(node1.ws_url) as alice, pusher_client(node2.ws_url) as bob, \
            pusher_client(node2.ws_url) as carol:
        for client in (alice, bob, carol):
            assert (await client.subscribe(private, sign=True))["event"] == \
                "pusher_internal:subscription_succeeded"
        await alice.join(presence, "alice")
        await bob.join(presence, "bob")
        assert (await alice.next())["event"] == "pusher_internal:member_added"
        await alice.send("client-typing", {"text": "héllo"}, channel=private)
        await bob.send("client-typing", "plain", channel=presence)
        for client in (bob, carol):
            got = await client.next()
            assert (got["event"], got["channel"], got["data"]) == (
                "client-typing", private, {"text": "héllo"})
            assert "user_id" not in got  # only presence channels name the sender
        whisper = await alice.next()
        assert (whisper["channel"], whisper["data"], whisper["user_id"]) == (
            presence, "plain", "bob")
        # Sequenced like any event: the next offset of the channel.
        assert isinstance(whisper["offset"], int)
        # Never echoed to the sender.
        assert await alice.drain(0.5) == []
        assert await bob.drain(0.1) == []
        assert await carol.drain(0.1) == []


async def test_client_events_are_off_unless_the_app_enables_them(start_nodes):
    node = start_nodes("node-1")  # the default app: client events off, as on Pusher
    name = f"private-chat-{suffix()}"
    async with pusher_client(node.ws_url) as alice, pusher_client(node.ws_url) as bob:
        await alice.subscribe(name, sign=True)
        await bob.subscribe(name, sign=True)
        await alice.send("client-typing", {}, channel=name)
        error = await alice.next()
        assert error["event"] == "pusher:error"
        assert error["data"]["code"] == protocol.CLIENT_EVENT_REJECTED
        assert "not enabled" in error["data"]["message"]
        assert await bob.drain(0.5) == []


async def test_the_rate_limit_closes_4301_and_spares_the_others(start_nodes):
    node = start_nodes("node-1", config=app_toml(enable_client_events=True,
                                                  client_event_rate=5.0))
    name = f"private-chat-{suffix()}"
    async with pusher_client(node.ws_url) as flooder, pusher_client(node.ws_url) as peer:
        await flooder.subscribe(name, sign=True)
        await peer.subscribe(name, sign=True)
        for i in range(8):  # a bucket of 5, nearly no refill in the time this takes
            await flooder.send("client-spam", {"i": i}, channel=name)
        messages, code = await flooder.closed()
        assert code == protocol.CLIENT_EVENT_REJECTED
        assert messages[-1]["data"]["code"] == protocol.CLIENT_EVENT_REJECTED
        got = await peer.drain(1.0)
        relayed = [json.loads(json.dumps(m["data"]))["i"] for m in got]
        assert relayed == [0, 1, 2, 3, 4] or relayed == [0, 1, 2, 3, 4, 5]
        # The peer is unaffected.
        await peer.send("pusher:ping", {})
        with trio.fail_after(5):
            assert (await peer.next())["event"] == "pusher:pong"


@pytest.mark.parametrize(("channel", "subscribe", "why"), [
    ("public-chat", True, "only allowed on private and presence"),
    ("private-encrypted-chat", True, "not supported on encrypted channels"),
    ("private-chat", False, "not subscribed"),
])
async def test_client_events_follow_pusher_rules(start_nodes, channel, subscribe, why):
    node = start_nodes("node-1", config=app_toml(enable_client_events=True))
    async with pusher_client(node.ws_url) as sender, pusher_client(node.ws_url) as other:
        await other.subscribe(channel, sign=channel.startswith("private-"))
        if subscribe:
            await sender.subscribe(channel, sign=channel.startswith("private-"))
        await sender.send("client-x", {}, channel=channel)
        error = await sender.next()
        assert error["event"] == "pusher:error"
        assert error["data"]["code"] == protocol.CLIENT_EVENT_REJECTED
        assert why in error["data"]["message"]
        assert await other.drain(0.5) == []
        await sender.send("pusher:ping", {})
        assert (await sender.next())["event"] == "pusher:pong"
