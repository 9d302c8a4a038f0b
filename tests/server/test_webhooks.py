"""Webhooks from a real two-node cluster to a real HTTP receiver, checked with the official
Python SDK's ``validate_webhook``: every kind, once per cluster though both nodes see the
event, signed, batched, retried with backoff, delivered by another node when the sender dies,
and filtered per endpoint by event type."""

from __future__ import annotations

import collections
import itertools
import signal
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pusher
import pytest
import trio

from tests.support.client import in_thread, publish, pusher_client
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, app_toml
from tests.support.webhook_receiver import WebhookReceiver

SDK = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET)


@pytest.fixture
def receiver() -> Iterator[Callable[[], WebhookReceiver]]:
    started: list[WebhookReceiver] = []

    def start() -> WebhookReceiver:
        started.append(WebhookReceiver().__enter__())
        return started[-1]

    yield start
    for r in started:
        r.__exit__()


def validated(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    """Every accepted delivery's events, each delivery validated as an app would."""
    out = []
    for delivery in receiver.accepted():
        body = SDK.validate_webhook(delivery.headers["x-pusher-key"],
                                    delivery.headers["x-pusher-signature"],
                                    delivery.body.decode())
        assert body is not None, f"the SDK refused a delivery: {delivery}"
        out += body["events"]
    return out


async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.1)


def kinds(events: list[dict[str, Any]], channel: str) -> collections.Counter[str]:
    return collections.Counter(e["name"] for e in events if e.get("channel") == channel)


async def test_every_kind_once_per_cluster_signed_and_batched(start_nodes, receiver):
    hooks = receiver()
    members_only = receiver()
    config = app_toml(enable_client_events=True, webhooks=[
        {"url": hooks.url}, {"url": members_only.url,
                             "event_types": ["member_added", "member_removed"]}])
    node1, node2 = start_nodes("node-1", config=config), start_nodes("node-2", config=config)
    tag = uuid.uuid4().hex[:6]
    room, presence, cache = f"room-{tag}", f"presence-{tag}", f"cache-{tag}"
    private = f"private-{tag}"
    async with pusher_client(node1.ws_url) as a, pusher_client(node2.ws_url) as b:
        # Occupied once though a subscriber arrives on each node.
        await a.subscribe(room)
        await b.subscribe(room)
        # One user on both nodes, another on one: member_added once per user.
        await a.join(presence, "ada")
        await b.join(presence, "ada")
        await b.join(presence, "bob")
        await a.subscribe(private, sign=True)
        await b.subscribe(private, sign=True)
        await a.send("client-hello", {"hi": 1}, channel=private)
        await a.subscribe(cache)  # nothing cached: cache_miss
        await a.drain(0.5)
        await b.drain(0.1)
    # Both connections are gone: the channels are vacated, the users removed, once each.
    await wait_for(lambda: kinds(validated(hooks), room)["channel_vacated"] >= 1
                   and kinds(validated(hooks), presence)["member_removed"] >= 2, 15)
    await trio.sleep(1.5)  # anything duplicated would arrive by now
    events = validated(hooks)
    assert kinds(events, room) == {"channel_occupied": 1, "channel_vacated": 1,
                                   "subscription_count": 4}, events
    assert [e["subscription_count"] for e in events if e["channel"] == room
            and e["name"] == "subscription_count"][-1] == 0
    presence_events = [(e["name"], e["user_id"]) for e in events
                       if e["channel"] == presence and e["name"].startswith("member_")]
    assert sorted(presence_events) == [("member_added", "ada"), ("member_added", "bob"),
                                       ("member_removed", "ada"), ("member_removed", "bob")]
    (whisper,) = [e for e in events if e["name"] == "client_event"]
    assert whisper == {"name": "client_event", "channel": private, "event": "client-hello",
                       "data": '{"hi":1}', "socket_id": a.socket_id}
    assert [e for e in events if e["name"] == "cache_miss"] == [
        {"name": "cache_miss", "channel": cache}]
    # Batched: events that happen together share one POST (Pusher: up to 250 ms together).
    assert len(hooks.accepted()) < len(events)
    assert max(len(d.events) for d in hooks.accepted()) > 1
    # The second endpoint only gets the kinds it asked for.
    assert sorted((e["name"], e["user_id"]) for e in validated(members_only)) == \
        sorted(presence_events)


async def test_a_failing_endpoint_is_retried_with_backoff_and_loses_nothing(start_nodes,
                                                                            receiver):
    hooks = receiver()
    hooks.fail_next = 3
    node = start_nodes("node-1", config=app_toml(webhooks=[
        {"url": hooks.url, "event_types": ["channel_occupied", "channel_vacated"]}]))
    names = [f"room-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    async with pusher_client(node.ws_url) as client:
        for name in names:
            await client.subscribe(name)
        await wait_for(lambda: len(hooks.deliveries) >= 1, 5)
        for name in names:
            await client.send("pusher:unsubscribe", {"channel": name})
    await wait_for(lambda: sum(kinds(validated(hooks), n)["channel_vacated"]
                               for n in names) == 3, 20)
    attempts = [d.at for d in hooks.deliveries]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # 1 s, then 2 s, then 4 s between the failed attempts (each within +-20 % jitter).
    assert gaps[0] >= 0.75
    assert gaps[1] >= 1.5
    assert gaps[2] >= 3.0
    assert [d.status for d in hooks.deliveries[:4]] == [500, 500, 500, 200]
    events = validated(hooks)
    for name in names:
        assert kinds(events, name) == {"channel_occupied": 1, "channel_vacated": 1}


async def test_another_node_delivers_when_the_sender_dies(start_nodes, receiver, redis_proc,
                                                         key_prefix):
    hooks = receiver()
    hooks.fail_next = 1_000_000  # the endpoint is down: events wait in Redis
    config = app_toml(webhooks=[{"url": hooks.url, "event_types": ["channel_occupied"]}])
    nodes = {n: start_nodes(n, config=config) for n in ("node-1", "node-2")}
    names = [f"room-{uuid.uuid4().hex[:6]}" for _ in range(4)]
    survivor_name = ""
    async with pusher_client(nodes["node-1"].ws_url) as a:
        for name in names[:2]:
            await a.subscribe(name)
        await wait_for(lambda: len(hooks.deliveries) >= 1, 5)
        holder = await in_thread(_lease_holder, redis_proc.port, key_prefix)
        sender = holder.split(".", 1)[0]
        survivor_name = "node-2" if sender == "node-1" else "node-1"
        nodes[sender].proc.send_signal(signal.SIGKILL)
        nodes[sender].proc.wait(5)
    async with pusher_client(nodes[survivor_name].ws_url) as b:
        for name in names[2:]:
            await b.subscribe(name)
        hooks.fail_next = 0
        await wait_for(lambda: all(kinds(validated(hooks), n)["channel_occupied"] >= 1
                                   for n in names), 25)
    events = validated(hooks)
    for name in names:
        assert kinds(events, name)["channel_occupied"] == 1, events


def _lease_holder(port: int, prefix: str) -> str:
    import redis

    value = redis.Redis(port=port).get(f"{prefix}::webhook-lease")
    assert value is not None, "no node holds the webhook lease"
    return value.decode()


async def test_no_webhook_endpoint_means_nothing_is_queued(start_nodes, redis_proc, key_prefix):
    node = start_nodes("node-1")
    async with pusher_client(node.ws_url) as client:
        await client.subscribe("room")
        await in_thread(publish, node.url, "room", "e", {})
        await client.next()

    def queued() -> int:
        import redis

        return sum(1 for _ in redis.Redis(port=redis_proc.port).scan_iter(
            f"{key_prefix}:*webhooks*"))

    assert await in_thread(queued) == 0
