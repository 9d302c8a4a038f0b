"""User authentication on a real two-node cluster: pusher:signin, events to a user
(``send_to_user`` and ``POST /apps/{id}/users/{user}/events``) reaching every connection of that
user on every node, and ``terminate_connections`` closing them all (and nobody else's)."""

from __future__ import annotations

import json
import uuid

import pusher
import trio

from server import protocol
from server.auth import user_auth
from tests.support.client import in_thread, pusher_client, signed_post
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, NodeProc


def sdk(node: NodeProc) -> pusher.Pusher:
    return pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1",
                         port=node.port, ssl=False, timeout=10)


async def test_events_to_a_user_reach_all_its_connections_on_every_node(start_nodes):
    node1, node2 = start_nodes("node-1"), start_nodes("node-2")
    user, other = f"u-{uuid.uuid4().hex[:6]}", f"v-{uuid.uuid4().hex[:6]}"
    async with pusher_client(node1.ws_url) as a1, pusher_client(node2.ws_url) as a2, \
            pusher_client(node2.ws_url) as b:
        for client, who in ((a1, user), (a2, user), (b, other)):
            success = await client.signin(who, {"name": who})
            assert success["event"] == "pusher:signin_success"
            assert json.loads(json.loads(success["data"])["user_data"])["id"] == who
        # The official SDK's send_to_user (POST /events to #server-to-user-{id}) ...
        await in_thread(sdk(node1).send_to_user, user, "notice", {"n": 1})
        # ... and the REST route for it.
        response = await in_thread(signed_post, node2.url, f"/apps/{APP_ID}/users/{user}/events",
                                   {"name": "notice", "data": json.dumps({"n": 2})})
        assert response.status_code == 200, response.text
        for client in (a1, a2):
            got = [await client.next() for _ in range(2)]
            assert [(m["event"], m["channel"], json.loads(m["data"])["n"]) for m in got] == [
                ("notice", f"#server-to-user-{user}", 1),
                ("notice", f"#server-to-user-{user}", 2)]
        assert await b.drain(0.5) == []


async def test_terminate_connections_closes_the_users_connections_on_every_node(start_nodes):
    node1, node2 = start_nodes("node-1"), start_nodes("node-2")
    user, other = f"u-{uuid.uuid4().hex[:6]}", f"v-{uuid.uuid4().hex[:6]}"
    async with pusher_client(node1.ws_url) as a1, pusher_client(node2.ws_url) as a2, \
            pusher_client(node1.ws_url) as b, pusher_client(node2.ws_url) as anonymous:
        for client, who in ((a1, user), (a2, user), (b, other)):
            assert (await client.signin(who))["event"] == "pusher:signin_success"
        assert await in_thread(sdk(node2).terminate_user_connections, user) == {}
        for client in (a1, a2):
            messages, code = await client.closed()
            assert code == protocol.UNAUTHORIZED, messages
            assert messages == []  # the internal event itself is never sent to a client
        for client in (b, anonymous):
            await client.send("pusher:ping", {})
            with trio.fail_after(5):
                assert (await client.next())["event"] == "pusher:pong"
    # The user may connect and sign in again afterwards.
    async with pusher_client(node1.ws_url) as again:
        assert (await again.signin(user))["event"] == "pusher:signin_success"
        await in_thread(sdk(node2).send_to_user, user, "welcome-back", {})
        assert (await again.next())["event"] == "welcome-back"


async def test_user_routes_validate_the_user_id(start_nodes):
    node = start_nodes("node-1")
    bad = await in_thread(signed_post, node.url, f"/apps/{APP_ID}/users/has%20space/events",
                          {"name": "e", "data": "{}"})
    assert bad.status_code == 400
    bad = await in_thread(signed_post, node.url,
                          f"/apps/{APP_ID}/users/x/terminate_connections", {})
    assert bad.status_code == 200  # no connection: nothing to do, still {}


async def test_watchlists_follow_users_online_and_offline_across_nodes(start_nodes):
    flags = ("--node-timeout", "2")
    node1, node2 = start_nodes("node-1", *flags), start_nodes("node-2", *flags)
    tag = uuid.uuid4().hex[:6]
    ada, bob, cid = f"ada-{tag}", f"bob-{tag}", f"cid-{tag}"

    def online(message: dict, *users: str) -> bool:
        return message["event"] == "pusher_internal:watchlist_events" and \
            json.loads(message["data"]) == {"events": [{"name": "online",
                                                        "user_ids": list(users)}]}

    async with pusher_client(node2.ws_url) as cid_conn:
        assert (await cid_conn.signin(cid))["event"] == "pusher:signin_success"
        async with pusher_client(node1.ws_url) as watcher:
            user_data = json.dumps({"id": ada, "watchlist": [bob, cid]})
            await watcher.send("pusher:signin", {
                "auth": user_auth(APP_KEY, APP_SECRET, watcher.socket_id, user_data),
                "user_data": user_data})
            assert (await watcher.next())["event"] == "pusher:signin_success"
            assert online(await watcher.next(), cid)  # who is online already
            async with pusher_client(node2.ws_url) as bob1, \
                    pusher_client(node1.ws_url) as bob2:
                await bob1.signin(bob)
                assert online(await watcher.next(), bob)  # once, however many connections
                await bob2.signin(bob)
                assert await watcher.drain(0.5) == []
            offline = await watcher.next()
            assert json.loads(offline["data"]) == {"events": [{"name": "offline",
                                                               "user_ids": [bob]}]}
            node2.kill()  # cid's node dies: cid goes offline within the bound
            with trio.fail_after(8):
                offline = await watcher.next()
            assert json.loads(offline["data"])["events"] == [{"name": "offline",
                                                              "user_ids": [cid]}]
