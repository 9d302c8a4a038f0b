"""Presence channels on a real two-node cluster: members across nodes, one member event per
user, the member limit, a killed node's members gone within the documented bound (and their
member_removed sent once), a paused node that leaves no partial list and no ghost, resume.

Every client keeps its member list the way pusher-js does (the snapshot of
subscription_succeeded, then member_added/member_removed), and the tests compare those lists
with each other and with GET /apps/{id}/channels/{name}/users.
"""

from __future__ import annotations

import json
import signal
import time
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
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, NodeProc, app_toml

NODE_TIMEOUT = 2.0
# The reaper runs every 1 s (jittered by up to 20 %) once a heartbeat key has expired; a
# loaded CI machine gets a second more.
REMOVAL_BOUND = NODE_TIMEOUT + 1.2 + 2.0


def channel() -> str:
    return f"presence-{uuid.uuid4().hex[:8]}"


class View:
    """One client's member list, kept as pusher-js keeps it, and every event it saw."""

    def __init__(self, client: PusherTestClient, confirmation: dict[str, Any]) -> None:
        self.client = client
        self.members = dict(members_of(confirmation))
        self.added: list[str] = []
        self.removed: list[str] = []
        self.events: list[dict[str, Any]] = []

    def apply(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        if message["event"] == "pusher_internal:member_added":
            data = json.loads(message["data"])
            self.added.append(data["user_id"])
            self.members[data["user_id"]] = data["user_info"]
        elif message["event"] == "pusher_internal:member_removed":
            data = json.loads(message["data"])
            self.removed.append(data["user_id"])
            self.members.pop(data["user_id"], None)

    async def read(self, seconds: float) -> None:
        for message in await self.client.drain(seconds):
            self.apply(message)

    async def until(self, predicate: Any, timeout: float) -> float:
        """Apply messages until ``predicate(self)``; the seconds it took."""
        start = time.monotonic()
        with trio.fail_after(timeout):
            while not predicate(self):
                self.apply(await self.client.next(timeout=timeout))
        return time.monotonic() - start


async def join(node: NodeProc, name: str, user_id: str,
               stack: list[Any]) -> View:
    cm = pusher_client(node.ws_url)
    client = await cm.__aenter__()
    stack.append(cm)
    return View(client, await client.join(name, user_id, {"name": f"user {user_id}"}))


async def close_all(stack: list[Any]) -> None:
    for cm in reversed(stack):
        try:
            await cm.__aexit__(None, None, None)
        except Exception:  # a connection the test's server kill already broke
            pass


async def users(node: NodeProc, name: str) -> list[str]:
    response = await in_thread(signed_get, node.url, f"/apps/{APP_ID}/channels/{name}/users")
    assert response.status_code == 200, response.text
    return sorted(u["id"] for u in response.json()["users"])


async def test_members_cover_every_node_and_member_events_are_once_per_user(start_nodes):
    node1, node2 = start_nodes("node-1"), start_nodes("node-2")
    name = channel()
    stack: list[Any] = []
    try:
        observer = await join(node2, name, "0", stack)
        assert observer.members == {"0": {"name": "user 0"}}
        alice = await join(node1, name, "1", stack)
        assert set(alice.members) == {"0", "1"}
        bob = await join(node2, name, "2", stack)
        bob_again = await join(node1, name, "2", stack)  # the same user, another node
        assert set(bob.members) == set(bob_again.members) == {"0", "1", "2"}
        for view in (observer, alice, bob, bob_again):
            await view.read(1.0)
        # One member_added per user, however many connections and nodes it has.
        assert observer.added == ["1", "2"]
        assert alice.added == ["2"]
        assert bob.added == bob_again.added == []
        for node in (node1, node2):
            assert await users(node, name) == ["0", "1", "2"]
            info = (await in_thread(signed_get, node.url, f"/apps/{APP_ID}/channels/{name}",
                                    {"info": "user_count,subscription_count"})).json()
            assert info == {"occupied": True, "user_count": 3, "subscription_count": 4}
        listing = (await in_thread(signed_get, node1.url, f"/apps/{APP_ID}/channels", {
            "filter_by_prefix": "presence-", "info": "user_count"})).json()
        assert listing["channels"][name] == {"user_count": 3}

        # Bob leaves on one connection: still a member; on the other: removed, once.
        await bob.client.send("pusher:unsubscribe", {"channel": name})
        await observer.read(1.0)
        assert observer.removed == []
        await stack.pop(3).__aexit__(None, None, None)  # bob_again's connection closes
        await observer.until(lambda v: v.removed, 5)
        await alice.until(lambda v: v.removed, 5)
        await observer.read(1.0)
        await alice.read(0.2)
        assert observer.removed == alice.removed == ["2"]
        # member_removed carries the user id only (Pusher's shape).
        (removal,) = [m for m in observer.events if m["event"].endswith("member_removed")]
        assert json.loads(removal["data"]) == {"user_id": "2"}
        assert removal["channel"] == name
        assert set(observer.members) == set(alice.members) == {"0", "1"}
        assert await users(node1, name) == ["0", "1"]
        # Positions stay dense through member events: they are sequenced like any event.
        offsets = [m["offset"] for m in observer.events if "offset" in m]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
    finally:
        await close_all(stack)
    with trio.fail_after(5):
        while await users(node1, name):
            await trio.sleep(0.1)


async def test_the_member_limit_is_a_per_app_setting(start_nodes):
    node = start_nodes("node-1", config=app_toml(max_presence_members=2))
    name = channel()
    stack: list[Any] = []
    try:
        await join(node, name, "1", stack)
        await join(node, name, "2", stack)
        async with pusher_client(node.ws_url) as third:
            refusal = await third.join(name, "3")
            assert refusal["event"] == "pusher:subscription_error"
            assert refusal["channel"] == name
            assert refusal["data"]["status"] == 403
            assert refusal["data"]["type"] == "LimitReached"
            # A user already in the channel may open another connection.
            again = await third.join(name, "1")
            assert set(members_of(again)) == {"1", "2"}
        assert await users(node, name) == ["1", "2"]
    finally:
        await close_all(stack)


async def test_a_killed_nodes_members_leave_within_the_bound_once(start_nodes):
    flags = ("--node-timeout", str(NODE_TIMEOUT))
    node1, node2 = start_nodes("node-1", *flags), start_nodes("node-2", *flags)
    name = channel()
    stack: list[Any] = []
    try:
        observer = await join(node1, name, "0", stack)
        await join(node2, name, "1", stack)
        await join(node2, name, "2", stack)
        await join(node1, name, "2", stack)  # user 2 also has a connection on node 1
        await observer.until(lambda v: v.added == ["1", "2"], 5)
        node2.kill()
        took = await observer.until(lambda v: v.removed, REMOVAL_BOUND + 2)
        assert took <= REMOVAL_BOUND, f"member_removed after {took:.1f} s"
        await observer.read(2 * NODE_TIMEOUT)  # every node's reaper has run meanwhile
        assert observer.removed == ["1"]  # once; user 2 is still connected on node 1
        assert set(observer.members) == {"0", "2"}
        assert await users(node1, name) == ["0", "2"]
        info = (await in_thread(signed_get, node1.url, f"/apps/{APP_ID}/channels/{name}",
                                {"info": "subscription_count"})).json()
        assert info["subscription_count"] == 2
    finally:
        await close_all(stack)


async def test_without_the_reaper_a_killed_nodes_members_stay_as_ghosts(start_nodes):
    """The negative control of the bound above (and of experiments/presence.toml): with
    --no-reap-dead-nodes nothing removes a dead node's members, so the test above would fail."""
    flags = ("--node-timeout", "1", "--no-reap-dead-nodes")
    node1, node2 = start_nodes("node-1", *flags), start_nodes("node-2", *flags)
    assert "reaper is off" in node1.log()
    name = channel()
    stack: list[Any] = []
    try:
        observer = await join(node1, name, "0", stack)
        await join(node2, name, "1", stack)
        await observer.until(lambda v: v.added == ["1"], 5)
        node2.kill()
        await observer.read(1 + 1.2 + 1.5)  # past the bound with node_timeout 1
        assert observer.removed == []
        assert await users(node1, name) == ["0", "1"]  # user 1 is a ghost
    finally:
        await close_all(stack)


async def test_a_restarted_node_leaves_no_ghost_of_its_previous_life(start_nodes):
    flags = ("--node-timeout", str(NODE_TIMEOUT))
    node1, node2 = start_nodes("node-1", *flags), start_nodes("node-2", *flags)
    name = channel()
    stack: list[Any] = []
    try:
        observer = await join(node1, name, "0", stack)
        await join(node2, name, "1", stack)
        await observer.until(lambda v: v.added == ["1"], 5)
        node2.kill()
        # Same node id, same port, at once: a new incarnation, so the old one still expires.
        start_nodes("node-2", *flags, port=node2.port)
        await observer.until(lambda v: v.removed == ["1"], REMOVAL_BOUND + 2)
        assert await users(node1, name) == ["0"]
    finally:
        await close_all(stack)


async def test_a_paused_node_leaves_no_partial_list_and_no_ghost(start_nodes):
    """A node that stops answering (SIGSTOP: a GC pause, a stalled VM) does not make the
    member list partial: it lives in Redis, not in the nodes. Paused past node_timeout its
    members leave (they are unreachable), and come back when it resumes."""
    flags = ("--node-timeout", str(NODE_TIMEOUT))
    node1, node2 = start_nodes("node-1", *flags), start_nodes("node-2", *flags)
    name = channel()
    stack: list[Any] = []
    try:
        observer = await join(node1, name, "0", stack)
        paused_member = await join(node2, name, "1", stack)
        await observer.until(lambda v: v.added == ["1"], 5)
        node2.proc.send_signal(signal.SIGSTOP)
        try:
            newcomer = await join(node1, name, "2", stack)  # while node 2 is unresponsive
            assert set(newcomer.members) == {"0", "1", "2"}
            await observer.until(lambda v: v.removed == ["1"], REMOVAL_BOUND + 2)
        finally:
            node2.proc.send_signal(signal.SIGCONT)
        # Node 2 finds its heartbeat key gone and joins its member again: added once more.
        await observer.until(lambda v: v.added == ["1", "2", "1"], 10)
        await newcomer.until(lambda v: "1" in v.added, 10)
        for view in (observer, newcomer, paused_member):
            await view.read(1.0)
        expected = {"0", "1", "2"}
        assert await users(node1, name) == sorted(expected)
        # Every client's list, kept from its events, agrees: no ghost, no one missing.
        for view in (observer, newcomer, paused_member):
            assert set(view.members) == expected, (view.added, view.removed)
    finally:
        await close_all(stack)


async def test_a_presence_resume_replays_channel_events_and_the_current_members(start_nodes):
    node1, node2 = start_nodes("node-1"), start_nodes("node-2")
    name = channel()
    stack: list[Any] = []
    try:
        await join(node2, name, "0", stack)
        async with pusher_client(node1.ws_url) as client:
            first = await client.join(name, "1")
            position = (first["offset"], first["epoch"])
        await trio.sleep(0.5)  # user 1 leaves (member_removed), then:
        for i in range(3):
            assert (await in_thread(publish, node2.url, name, "update", {"i": i})).status_code \
                == 200
        await join(node2, name, "2", stack)
        async with pusher_client(node1.ws_url) as client:
            channel_data = json.dumps({"user_id": "1", "user_info": None})
            await client.send("pusher:subscribe", {
                "channel": name, "channel_data": channel_data, "offset": position[0],
                "epoch": position[1],
                "auth": channel_auth(APP_KEY, APP_SECRET, client.socket_id, name, channel_data)})
            confirmation = await client.next()
            assert confirmation["recovered"] is True
            assert set(members_of(confirmation)) == {"0", "1", "2"}
            replay = [await client.next() for _ in range(3)]
            # The channel's events are replayed; its member events are not (the member list
            # in the confirmation is already their result).
            assert [json.loads(m["data"])["i"] for m in replay] == [0, 1, 2]
            assert all(m["event"] == "update" for m in replay)
            assert replay[-1]["offset"] <= confirmation["offset"]
            assert await client.drain(0.5) == []
    finally:
        await close_all(stack)


async def test_a_drained_nodes_members_leave_at_once(start_nodes):
    """A clean exit (SIGTERM: drain) retires the node's incarnation itself: its members leave
    as soon as it has closed its clients, not node_timeout later."""
    flags = ("--node-timeout", "60", "--drain-grace", "0.2")
    node1, node2 = start_nodes("node-1", *flags), start_nodes("node-2", *flags)
    name = channel()
    stack: list[Any] = []
    try:
        observer = await join(node1, name, "0", stack)
        await join(node2, name, "1", stack)
        await observer.until(lambda v: v.added == ["1"], 5)
        node2.terminate()
        took = await observer.until(lambda v: v.removed == ["1"], 10)
        assert took < 10
        assert node2.proc.wait(10) == 0
        assert await users(node1, name) == ["0"]
    finally:
        await close_all(stack)
