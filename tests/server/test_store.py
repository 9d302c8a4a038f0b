"""The cluster-state scripts (server/lua.py through server/store.py) against a real Redis,
one script call at a time: what they change, what they return, what they queue for webhooks.
The cluster behaviour built on them is in test_presence.py and test_webhooks.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import trio

from server.broker import Broker
from server.cluster import Cluster
from server.interfaces import PublishItem
from server.redis_link import RedisClient
from server.store import (
    CONNECTIONS_FIELD,
    ClusterStore,
    Keys,
    PresenceFull,
    WebhookPolicy,
)


@pytest.fixture
async def store(redis_proc: Any) -> AsyncIterator[ClusterStore]:
    client = RedisClient("127.0.0.1", redis_proc.port)
    yield ClusterStore(client, Keys(f"t{uuid.uuid4().hex[:8]}"), history_size=100,
                       history_ttl=60)
    await client.aclose()


def policy(store: ClusterStore, app: str = "a") -> WebhookPolicy:
    kinds = "channel_occupied,channel_vacated,member_added,member_removed,cache_miss," \
            "subscription_count"
    return WebhookPolicy(store.keys.webhooks(app), f",{kinds},")


async def queued(store: ClusterStore, app: str = "a") -> list[dict[str, Any]]:
    raw = await store.commands.execute("LRANGE", store.keys.webhooks(app), 0, -1)
    await store.commands.execute("DEL", store.keys.webhooks(app))
    return [orjson.loads(r) for r in raw or []]


async def stream(store: ClusterStore, channel: str) -> list[bytes]:
    entries = await store.commands.execute("XRANGE", store.keys.stream("a", channel), "-", "+")
    return [dict(zip(f[::2], f[1::2], strict=True))[b"m"] for _, f in entries]


def test_the_broker_and_the_store_name_channel_keys_alike() -> None:
    broker = Broker(host="127.0.0.1", port=1, db=0, key_prefix="p", node_id="n",
                    history_size=1, history_ttl=1, on_message=lambda k, v: None,
                    on_link=lambda up: None)
    keys = Keys("p")
    assert broker.channel_key("a", "c") == keys.pubsub("a", "c")
    assert broker._meta("a", "c") == keys.meta("a", "c")
    assert broker._stream("a", "c") == keys.stream("a", "c")


async def test_join_and_leave_are_once_per_user_and_sequenced(store: ClusterStore) -> None:
    hooks = policy(store)
    first = await store.join("a", "presence-r", "n1", "s1", "ada", {"x": 1}, max_members=10,
                             webhooks=hooks)
    assert first.members == {"ada": {"x": 1}}
    assert first.added
    assert first.offset == 1  # its own member_added is the channel's first event
    again = await store.join("a", "presence-r", "n2", "s2", "ada", {"x": 2}, max_members=10,
                             webhooks=hooks)
    assert not again.added  # the same user on another connection: no event
    assert again.offset == 1
    assert again.members == {"ada": {"x": 1}}
    # Joining twice with the same connection changes nothing.
    same = await store.join("a", "presence-r", "n1", "s1", "ada", None, max_members=10)
    assert (same.offset, same.added) == (1, False)
    assert await store.leave_many([("a", "presence-r", "n1", "s1")], webhooks=lambda a: hooks) \
        == [0]  # ada is still connected through s2
    assert await store.leave_many([("a", "presence-r", "n2", "s2")] * 2,
                                  webhooks=lambda a: hooks) == [1, 0]  # idempotent
    assert await store.members("a", "presence-r") == {}
    events = [orjson.loads(m + b"}") for m in await stream(store, "presence-r")]
    assert [(e["event"], orjson.loads(e["data"])["user_id"]) for e in events] == [
        ("pusher_internal:member_added", "ada"), ("pusher_internal:member_removed", "ada")]
    assert await queued(store) == [
        {"name": "member_added", "channel": "presence-r", "user_id": "ada"},
        {"name": "member_removed", "channel": "presence-r", "user_id": "ada"}]
    assert await store.node_entries("n1") == set()


async def test_the_member_limit_counts_users_not_connections(store: ClusterStore) -> None:
    for user in ("1", "2"):
        await store.join("a", "presence-r", "n", user, user, None, max_members=2)
    with pytest.raises(PresenceFull):
        await store.join("a", "presence-r", "n", "3", "3", None, max_members=2)
    snapshot = await store.join("a", "presence-r", "n", "1b", "1", None, max_members=2)
    assert set(snapshot.members or {}) == {"1", "2"}


async def test_a_conditional_leave_waits_while_the_node_is_alive(store: ClusterStore) -> None:
    await store.join("a", "presence-r", "n1", "s1", "ada", None, max_members=10)
    await store.commands.execute("SET", store.keys.alive("n1"), "1")
    assert await store.leave_many([("a", "presence-r", "n1", "s1")], conditional=True) == [-1]
    await store.commands.execute("DEL", store.keys.alive("n1"))
    assert await store.leave_many([("a", "presence-r", "n1", "s1")], conditional=True) == [1]


async def test_counts_keep_cluster_totals_and_queue_transitions_once(store: ClusterStore
                                                                      ) -> None:
    hooks = policy(store)
    totals = await store.write_counts("a", "n1", {"room": 2, CONNECTIONS_FIELD: 2},
                                      webhooks=hooks)
    assert totals == {"room": 2, CONNECTIONS_FIELD: 2}
    totals = await store.write_counts("a", "n2", {"room": 1}, mode="delta", webhooks=hooks)
    assert totals == {"room": 3}
    assert await queued(store) == [
        {"name": "channel_occupied", "channel": "room"},
        {"name": "subscription_count", "channel": "room", "subscription_count": 2},
        {"name": "subscription_count", "channel": "room", "subscription_count": 3}]
    # 'full': a channel the node no longer reports is 0 for it.
    assert await store.write_counts("a", "n1", {CONNECTIONS_FIELD: 1}, webhooks=hooks) == {
        CONNECTIONS_FIELD: 1, "room": 1}
    # A dead node's counts are reaped only while it is dead.
    await store.commands.execute("SET", store.keys.alive("n2"), "1")
    await store.reap_counts("a", "n2", hooks)
    assert (await store.read_totals("a"))["room"] == 1
    await store.commands.execute("DEL", store.keys.alive("n2"))
    await store.reap_counts("a", "n2", hooks)
    assert await store.read_totals("a") == {CONNECTIONS_FIELD: 1}
    assert await queued(store) == [
        {"name": "subscription_count", "channel": "room", "subscription_count": 1},
        {"name": "channel_vacated", "channel": "room"},
        {"name": "subscription_count", "channel": "room", "subscription_count": 0}]


async def test_the_cache_snapshot_is_read_with_the_position(store: ClusterStore,
                                                            redis_proc: Any) -> None:
    miss = await store.snapshot("a", "cache-x", webhooks=policy(store))
    assert (miss.cached, miss.cache_miss, miss.offset) == (None, True, 0)
    assert await queued(store) == [{"name": "cache_miss", "channel": "cache-x"}]
    broker = Broker(host="127.0.0.1", port=redis_proc.port, db=0,
                    key_prefix=store.keys.prefix, node_id="n", history_size=10,
                    history_ttl=60, on_message=lambda k, v: None, on_link=lambda up: None)
    broker.link_up = True
    try:
        for i in (1, 2):
            await broker.publish_many("a", [PublishItem(
                "cache-x", b'{"event":"e","channel":"cache-x","data":"%d"' % i, cache=True)])
        await broker.publish_many("a", [PublishItem(
            "cache-x", b'{"event":"client-e","channel":"cache-x","data":"3"')])
    finally:
        await broker.aclose()
    hit = await store.snapshot("a", "cache-x")
    assert hit.offset == 3
    assert hit.epoch == miss.epoch  # the snapshot created the epoch the publishes used
    assert hit.cached is not None
    assert (hit.cached.offset, hit.cached.prefix) == (
        2, b'{"event":"e","channel":"cache-x","data":"2"')


async def test_the_reaper_removes_a_dead_incarnation_once(store: ClusterStore) -> None:
    hooks = policy(store)
    await store.join("a", "presence-r", "dead.1", "s1", "ada", None, max_members=10)
    await store.join("a", "presence-r", "live.1", "s2", "bob", None, max_members=10)
    await store.write_counts("a", "dead.1", {"presence-r": 1}, webhooks=hooks)
    await store.write_counts("a", "live.1", {"presence-r": 1}, webhooks=hooks)
    await store.commands.execute("SADD", store.keys.incarnations(), "dead.1", "live.1")
    await queued(store)

    async def rejoin() -> None:
        pass

    reapers = [Cluster(store, node_id=f"r{i}", node_timeout=5, link_up=lambda: True,
                       local_counts=lambda app, chans: {}, webhooks=lambda app: hooks,
                       limited_apps=list, rejoin=rejoin) for i in range(2)]
    await store.commands.execute("SET", store.keys.alive("live.1"), "1")
    # Two nodes' reapers at once: each removal happens once.
    async with trio.open_nursery() as nursery:
        for reaper in reapers:
            nursery.start_soon(reaper.reap_once)
    assert await store.members("a", "presence-r") == {"bob": None}
    assert await store.read_totals("a") == {"presence-r": 1}
    assert await queued(store) == [
        {"name": "member_removed", "channel": "presence-r", "user_id": "ada"},
        {"name": "subscription_count", "channel": "presence-r", "subscription_count": 1}]
    incarnations = await store.commands.execute("SMEMBERS", store.keys.incarnations())
    assert incarnations == [b"live.1"]


async def test_online_users_publish_watchlist_events_in_their_own_channel(
        store: ClusterStore) -> None:
    first = await store.join("a", "#online", "n1", "s1", "bob", None, max_members=2**62)
    assert (first.added, first.members) == (True, {})  # no snapshot of every user online
    again = await store.join("a", "#online", "n2", "s2", "bob", None, max_members=2**62)
    assert not again.added
    assert await store.online("a", ["bob", "ada"]) == ["bob"]
    assert await store.leave_many([("a", "#online", "n1", "s1"), ("a", "#online", "n2", "s2")]) \
        == [0, 1]
    assert await store.online("a", ["bob"]) == []
    watch = [orjson.loads(m + b"}") for m in await stream(store, "#watchlist-bob")]
    assert [(e["event"], orjson.loads(e["data"])) for e in watch] == [
        ("pusher_internal:watchlist_events", {"events": [{"name": "online",
                                                          "user_ids": ["bob"]}]}),
        ("pusher_internal:watchlist_events", {"events": [{"name": "offline",
                                                          "user_ids": ["bob"]}]})]
    assert await queued(store) == []  # no member webhooks for sign-ins
