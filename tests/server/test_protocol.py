"""Pusher protocol v7 conformance of a real turnout node: websocket and HTTP API."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pusher
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from harness.redis_server import RedisServer
from server.auth import channel_auth, sign_request
from tests.support.client import (
    PusherTestClient,
    closed_with,
    publish,
    pusher_client,
    signed_get,
    signed_post,
)
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, NodeProc, start_node


async def run(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


def sdk(node) -> pusher.Pusher:
    return pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1",
                         port=node.port, ssl=False, timeout=10)


async def read_until_closed(ws, events: list[str]) -> int:
    """Collect event names until the server closes; the close code."""
    try:
        while True:
            events.append(json.loads(await ws.get_message())["event"])
    except ConnectionClosed as exc:
        return exc.reason.code


async def expect_error(client: PusherTestClient, code: int) -> dict[str, Any]:
    message = await client.next()
    assert message["event"] == "pusher:error", message
    assert message["data"]["code"] == code, message
    assert message["data"]["message"], message
    return message


async def assert_open(client: PusherTestClient) -> None:
    """The connection still works: an application-level ping is answered."""
    await client.send("pusher:ping", {})
    assert (await client.next())["event"] == "pusher:pong"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, redis_proc: RedisServer) -> Iterator[NodeProc]:
    """One node with default settings shared by the tests of this module that need no flags.

    Starting a node costs about a second; no test here depends on state another left behind.
    """
    proc = start_node(tmp_path_factory.mktemp("protocol"), redis_proc.url, "shared",
                      "--key-prefix", f"t{uuid.uuid4().hex[:10]}")
    yield proc
    proc.kill()


def raw_ws_url(node, path: str = "") -> str:
    return f"ws://127.0.0.1:{node.port}{path}"


# ---------------------------------------------------------------------------- connection


async def test_connection_established_shape(node):
    async with open_websocket_url(node.ws_url) as ws:
        hello = json.loads(await ws.get_message())
    assert hello["event"] == "pusher:connection_established"
    assert isinstance(hello["data"], str), "pusher:* data is double-encoded"
    data = json.loads(hello["data"])
    assert re.fullmatch(r"\d+\.\d+", data["socket_id"]), data
    assert data["activity_timeout"] == 120
    assert isinstance(data["activity_timeout"], int)


async def test_socket_ids_are_unique(node):
    ids = set()
    for _ in range(5):
        async with pusher_client(node.ws_url) as client:
            ids.add(client.socket_id)
    assert len(ids) == 5


async def test_pusher_ping_is_answered_with_pong(node):
    async with pusher_client(node.ws_url) as client:
        await client.ws.send_message('{"event":"pusher:ping","data":{}}')
        pong = await client.next()
        assert pong["event"] == "pusher:pong"
        await client.ws.send_message('{"event":"pusher:ping","data":"{}"}')
        assert (await client.next())["event"] == "pusher:pong"


async def test_websocket_ping_frame_is_answered_with_pong_frame(node):
    async with pusher_client(node.ws_url) as client:
        with trio.fail_after(5):
            await client.ws.ping(b"turnout-ping")  # returns when the matching pong arrives
            await client.ws.ping(b"")


@pytest.mark.parametrize("version", ["5", "6", "7"])
async def test_protocol_versions_5_to_7_are_accepted(node, version):
    """5 is what the official Java/Android client sends."""
    async with pusher_client(f"ws://127.0.0.1:{node.port}/app/{APP_KEY}?protocol={version}"
                             "&client=java&version=2.4.4") as client:
        ok = await client.subscribe("versions")
        assert ok["event"] == "pusher_internal:subscription_succeeded"


@pytest.mark.parametrize(("path", "code"), [
    ("/app/no-such-key?protocol=7", 4001),
    (f"/app/{APP_KEY}?protocol=4", 4007),
    (f"/app/{APP_KEY}?protocol=8", 4007),
    (f"/app/{APP_KEY}?protocol=7.0", 4006),
    (f"/app/{APP_KEY}?protocol=seven", 4006),
    (f"/app/{APP_KEY}", 4008),
    (f"/app/{APP_KEY}?client=js&version=8.4.0", 4008),
    (f"/nothing/{APP_KEY}?protocol=7", 4005),
])
async def test_refused_connections_get_a_close_code(node, path, code):
    messages, close_code = await closed_with(raw_ws_url(node, path))
    assert close_code == code
    # The reason is also sent as pusher:error, for old clients that ignore close codes.
    assert [m["event"] for m in messages] == ["pusher:error"]
    assert messages[0]["data"]["code"] == code
    # The node survives and still serves good connections.
    async with pusher_client(node.ws_url) as client:
        await assert_open(client)


async def test_max_connections_refuses_with_4100(start_nodes):
    node = start_nodes("node-1", "--max-connections", "2")
    async with pusher_client(node.ws_url), pusher_client(node.ws_url) as second:
        messages, code = await closed_with(node.ws_url)
        assert code == 4100
        assert messages[0]["data"]["code"] == 4100
        await assert_open(second)
    # The slots are freed when clients leave.
    with trio.fail_after(5):
        while True:
            try:
                async with pusher_client(node.ws_url) as client:
                    await assert_open(client)
                    break
            except (ConnectionClosed, AssertionError):
                await trio.sleep(0.05)


async def test_activity_timeout_closes_silent_clients_4201(start_nodes):
    node = start_nodes("node-1", "--activity-timeout", "1", "--pong-timeout", "1")
    async with open_websocket_url(node.ws_url) as silent, \
            pusher_client(node.ws_url) as lively:
        hello = json.loads(json.loads(await silent.get_message())["data"])
        assert hello["activity_timeout"] == 1
        assert lively.activity_timeout == 1
        unexpected: list[dict[str, Any]] = []
        pings_answered = 0

        async def keep_answering() -> None:
            nonlocal pings_answered
            while True:
                message = json.loads(await lively.ws.get_message())
                if message["event"] != "pusher:ping":
                    unexpected.append(message)
                    continue
                await lively.send("pusher:pong", {})
                pings_answered += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_answering)
            seen: list[str] = []
            with trio.fail_after(8):
                code = await read_until_closed(silent, seen)
            assert code == 4201
            assert "pusher:ping" in seen, "the server must ping before giving up"
            # The answering client outlives the silent one by at least one more ping round.
            answered_then = pings_answered
            with trio.fail_after(5):
                while pings_answered < max(2, answered_then + 1):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert unexpected == []
        await assert_open(lively)


# ---------------------------------------------------------------------------- subscriptions


async def test_subscribe_and_unsubscribe_public(node):
    async with pusher_client(node.ws_url) as client:
        ok = await client.subscribe("news")
        assert ok["event"] == "pusher_internal:subscription_succeeded"
        assert ok["channel"] == "news"
        assert isinstance(ok["data"], str)
        assert (await run(publish, node.url, "news", "story", {"n": 1})).status_code == 200
        event = await client.next()
        assert (event["event"], event["channel"]) == ("story", "news")
        assert json.loads(event["data"]) == {"n": 1}

        await client.send("pusher:unsubscribe", {"channel": "news"})
        # Messages are handled in order: once "other" is confirmed, "news" is gone.
        assert (await client.subscribe("other"))["channel"] == "other"
        await run(publish, node.url, "news", "story", {"n": 2})
        await run(publish, node.url, "other", "marker", {})
        event = await client.next()
        assert (event["event"], event["channel"]) == ("marker", "other")


async def test_unsubscribe_from_a_channel_never_joined_is_harmless(node):
    async with pusher_client(node.ws_url) as client:
        await client.send("pusher:unsubscribe", {"channel": "never-joined"})
        await assert_open(client)


async def test_private_channel_with_correct_auth(node):
    async with pusher_client(node.ws_url) as client:
        auth = channel_auth(APP_KEY, APP_SECRET, client.socket_id, "private-room")
        ok = await client.subscribe("private-room", auth=auth)
        assert ok["event"] == "pusher_internal:subscription_succeeded"
        await run(publish, node.url, "private-room", "secret", {"x": 1})
        assert (await client.next())["event"] == "secret"


@pytest.mark.parametrize("how", ["missing", "other-socket", "other-channel", "wrong-secret",
                                 "wrong-key", "not-a-string"])
async def test_private_channel_with_bad_auth_is_refused_4009(node, how):
    async with pusher_client(node.ws_url) as client:
        sid = client.socket_id
        auth = {
            "missing": None,
            "other-socket": channel_auth(APP_KEY, APP_SECRET, "1.2", "private-room"),
            "other-channel": channel_auth(APP_KEY, APP_SECRET, sid, "private-other"),
            "wrong-secret": channel_auth(APP_KEY, "not-the-secret", sid, "private-room"),
            "wrong-key": channel_auth("other-key", APP_SECRET, sid, "private-room"),
            "not-a-string": 42,
        }[how]
        data: dict[str, Any] = {"channel": "private-room"}
        if auth is not None:
            data["auth"] = auth
        await client.send("pusher:subscribe", data)
        refused = await client.next()
        assert refused["event"] == "pusher:subscription_error"
        assert refused["channel"] == "private-room"
        assert refused["data"]["status"] == 401
        await expect_error(client, 4009)
        # Not subscribed: an event on the channel does not arrive, the connection is fine.
        assert (await client.subscribe("public-marker"))["channel"] == "public-marker"
        await run(publish, node.url, "private-room", "leak", {})
        await run(publish, node.url, "public-marker", "marker", {})
        assert (await client.next())["event"] == "marker"


async def test_presence_channels_need_a_signed_channel_data(node):
    async with pusher_client(node.ws_url) as client:
        channel_data = json.dumps({"user_id": "1", "user_info": {}})
        auth = channel_auth(APP_KEY, APP_SECRET, client.socket_id, "presence-room")  # no data
        await client.send("pusher:subscribe", {"channel": "presence-room", "auth": auth,
                                               "channel_data": channel_data})
        refused = await client.next()
        assert refused["event"] == "pusher:subscription_error"
        assert refused["channel"] == "presence-room"
        assert refused["data"]["status"] == 401
        await expect_error(client, 4009)
        await assert_open(client)


async def test_client_events_are_refused_4301(node):
    async with pusher_client(node.ws_url) as client, pusher_client(node.ws_url) as peer:
        for c in (client, peer):
            ok = await c.subscribe("private-chat", sign=True)
            assert ok["event"] == "pusher_internal:subscription_succeeded"
        await client.send("client-typing", {"who": "me"}, channel="private-chat")
        await expect_error(client, 4301)
        await assert_open(client)
        # Not relayed to the other subscriber either.
        await run(publish, node.url, "private-chat", "marker", {})
        assert (await peer.next())["event"] == "marker"


async def test_a_badly_signed_signin_is_refused_4009(node):
    async with pusher_client(node.ws_url) as client:
        await client.send("pusher:signin", {"auth": f"{APP_KEY}:00", "user_data": '{"id":"1"}'})
        await expect_error(client, 4009)
        await assert_open(client)


async def test_channel_name_of_164_characters_is_accepted(node):
    name = "private-" + "a" * 156
    assert len(name) == 164
    allowed = "Az09_-=@,.;"
    async with pusher_client(node.ws_url) as client:
        assert (await client.subscribe("c" * 164))["event"] == \
            "pusher_internal:subscription_succeeded"
        assert (await client.subscribe(name, sign=True))["channel"] == name
        assert (await client.subscribe(allowed))["channel"] == allowed


@pytest.mark.parametrize("name", ["c" * 165, "private-" + "a" * 157, "", "has space", "slash/y",
                                  "star*", "ümlaut", "new\nline", "#server-to-user-1"])
async def test_invalid_channel_names_are_refused_for_the_channel(node, name):
    """A channel-level refusal carries the channel, so Echo's .error() fires."""
    async with pusher_client(node.ws_url) as client:
        await client.send("pusher:subscribe", {"channel": name})
        refused = await client.next()
        assert refused["event"] == "pusher:subscription_error"
        assert refused["channel"] == name
        # A user channel is refused for want of a sign-in, the others for their name.
        code = 4009 if name.startswith("#") else 4200
        assert refused["data"]["status"] == (401 if code == 4009 else 400)
        await expect_error(client, code)
        await assert_open(client)


@pytest.mark.parametrize("name", [123, None, ["list"]])
async def test_subscribes_without_a_channel_name_are_refused(node, name):
    async with pusher_client(node.ws_url) as client:
        await client.send("pusher:subscribe", {"channel": name})
        await expect_error(client, 4200)
        await assert_open(client)


# ---------------------------------------------------------------------------- HTTP API


async def test_sdk_trigger_reaches_a_subscriber(node):
    async with pusher_client(node.ws_url) as client:
        await client.subscribe("sdk-channel")
        result = await run(sdk(node).trigger, "sdk-channel", "sdk-event", {"hello": "world"})
        assert isinstance(result, dict)
        event = await client.next()
        assert (event["event"], event["channel"]) == ("sdk-event", "sdk-channel")
        assert json.loads(event["data"]) == {"hello": "world"}
        # A string payload is delivered verbatim; a list of channels reaches each.
        await client.subscribe("sdk-second")
        await run(sdk(node).trigger, ["sdk-channel", "sdk-second"], "raw", "plain text")
        got = {(e["channel"], e["data"]) for e in [await client.next(), await client.next()]}
        assert got == {("sdk-channel", "plain text"), ("sdk-second", "plain text")}


async def test_sdk_trigger_batch(node):
    async with pusher_client(node.ws_url) as client:
        await client.subscribe("batch-a")
        await client.subscribe("batch-b")
        await run(sdk(node).trigger_batch, [
            {"channel": "batch-a", "name": "first", "data": {"i": 1}},
            {"channel": "batch-b", "name": "second", "data": {"i": 2}},
            {"channel": "batch-a", "name": "third", "data": {"i": 3}},
        ])
        events = [await client.next() for _ in range(3)]
        assert [(e["channel"], e["event"], json.loads(e["data"])["i"]) for e in events] == [
            ("batch-a", "first", 1), ("batch-b", "second", 2), ("batch-a", "third", 3)]


async def test_socket_id_exclusion(node):
    async with pusher_client(node.ws_url) as sender, pusher_client(node.ws_url) as other:
        await sender.subscribe("excl")
        await other.subscribe("excl")
        client = sdk(node)
        await run(lambda: client.trigger("excl", "echo", {"n": 1}, socket_id=sender.socket_id))
        await run(lambda: client.trigger("excl", "after", {"n": 2}))
        assert (await other.next())["event"] == "echo"
        assert (await other.next())["event"] == "after"
        # The excluded socket skips "echo" and gets "after" next.
        assert (await sender.next())["event"] == "after"
        # Exclusion applies to batches too.
        await run(lambda: client.trigger_batch([
            {"channel": "excl", "name": "b-echo", "data": "x", "socket_id": sender.socket_id},
            {"channel": "excl", "name": "b-after", "data": "y"},
        ]))
        assert (await sender.next())["event"] == "b-after"
        assert [(await other.next())["event"] for _ in range(2)] == ["b-echo", "b-after"]


def events_path() -> str:
    return f"/apps/{APP_ID}/events"


async def test_channel_count_limit(node):
    ok = await run(signed_post, node.url, events_path(),
                   {"name": "e", "data": "{}", "channels": [f"c{i}" for i in range(100)]})
    assert ok.status_code == 200, ok.text
    refused = await run(signed_post, node.url, events_path(),
                        {"name": "e", "data": "{}", "channels": [f"c{i}" for i in range(101)]})
    assert refused.status_code == 400
    assert "100" in refused.json()["error"]


async def test_event_data_limit(node):
    async with pusher_client(node.ws_url) as client:
        await client.subscribe("big")
        ok = await run(signed_post, node.url, events_path(),
                       {"name": "fits", "data": "x" * 10240, "channel": "big"})
        assert ok.status_code == 200, ok.text
        assert len((await client.next())["data"]) == 10240
        refused = await run(signed_post, node.url, events_path(),
                            {"name": "too-big", "data": "x" * 10241, "channel": "big"})
        assert refused.status_code == 413
        # Multi-byte characters count as bytes.
        refused = await run(signed_post, node.url, events_path(),
                            {"name": "too-big", "data": "é" * 5121, "channel": "big"})
        assert refused.status_code == 413
        await run(publish, node.url, "big", "marker", {})
        assert (await client.next())["event"] == "marker"


async def test_batch_size_limit(node):
    path = f"/apps/{APP_ID}/batch_events"
    batch = [{"name": "e", "data": "{}", "channel": f"c{i}"} for i in range(11)]
    refused = await run(signed_post, node.url, path, {"batch": batch})
    assert refused.status_code == 400
    assert "10" in refused.json()["error"]
    ok = await run(signed_post, node.url, path, {"batch": batch[:10]})
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["batch"]) == 10


async def test_cluster_wide_channel_counts(start_nodes):
    node1 = start_nodes("node-1")
    node2 = start_nodes("node-2")
    async with pusher_client(node1.ws_url) as a1, pusher_client(node1.ws_url) as a2, \
            pusher_client(node2.ws_url) as b1, pusher_client(node2.ws_url) as b2:
        for client, channel in [(a1, "room-1"), (a2, "room-1"), (b1, "room-1"),
                                (b2, "room-2"), (a1, "private-room-3")]:
            ok = await client.subscribe(channel, sign=channel.startswith("private-"))
            assert ok["event"] == "pusher_internal:subscription_succeeded"
        expected = {"room-1": 3, "room-2": 1, "private-room-3": 1}
        for node in (node1, node2):
            await poll_counts(node, expected)
            body = (await run(signed_get, node.url, f"/apps/{APP_ID}/channels/room-1",
                              {"info": "subscription_count"})).json()
            assert body == {"occupied": True, "subscription_count": 3}
            filtered = (await run(signed_get, node.url, f"/apps/{APP_ID}/channels",
                                  {"filter_by_prefix": "private-"})).json()
            assert filtered == {"channels": {"private-room-3": {}}}
        # The official SDK's signed GETs work as well.
        info = await run(lambda: sdk(node2).channel_info("room-1", ["subscription_count"]))
        assert info == {"occupied": True, "subscription_count": 3}
        listing = await run(lambda: sdk(node1).channels_info(None, ["subscription_count"]))
        assert listing["channels"]["room-2"] == {"subscription_count": 1}
        await b1.send("pusher:unsubscribe", {"channel": "room-1"})
        await poll_counts(node1, {"room-1": 2, "room-2": 1, "private-room-3": 1})
    # Every client has gone: the whole cluster reports nothing occupied.
    await poll_counts(node2, {})
    body = (await run(signed_get, node1.url, f"/apps/{APP_ID}/channels/room-1",
                      {"info": "subscription_count"})).json()
    assert body == {"occupied": False, "subscription_count": 0}


async def poll_counts(node, expected: dict[str, int], timeout: float = 3.0) -> None:
    want = {name: {"subscription_count": n} for name, n in expected.items()}
    body: Any = None
    with trio.move_on_after(timeout):
        while True:
            response = await run(signed_get, node.url, f"/apps/{APP_ID}/channels",
                                 {"info": "subscription_count"})
            assert response.status_code == 200, response.text
            body = response.json()
            if body == {"channels": want}:
                return
            await trio.sleep(0.05)
    raise AssertionError(f"{node.node_id}: counts {body} never became {want}")


async def test_channel_names_with_special_characters_over_http(node):
    name = "a-_=@,.;z"
    async with pusher_client(node.ws_url) as client:
        await client.subscribe(name)
        await run(sdk(node).trigger, name, "special", "ok")
        assert (await client.next())["channel"] == name
        await poll_single(node, name)


async def poll_single(node, name: str) -> None:
    with trio.fail_after(3):
        while True:
            info = await run(lambda: sdk(node).channel_info(name, ["subscription_count"]))
            if info.get("subscription_count") == 1:
                return
            await trio.sleep(0.05)


def raw_post(node, path: str, body: bytes, *, key: str = APP_KEY, secret: str = APP_SECRET,
             timestamp: int | None = None, tamper: dict[str, str] | None = None
             ) -> httpx.Response:
    params = sign_request(key, secret, "POST", path, body, timestamp=timestamp)
    params.update(tamper or {})
    return httpx.post(f"{node.url}{path}", params=params, content=body, timeout=10)


GOOD_BODY = json.dumps({"name": "e", "data": "{}", "channel": "c"}).encode()


@pytest.mark.parametrize(("label", "kwargs", "status"), [
    ("good", {}, 200),
    ("bad signature", {"tamper": {"auth_signature": "0" * 64}}, 401),
    ("wrong secret", {"secret": "nope"}, 401),
    ("wrong key", {"key": "other-key"}, 401),
    ("expired", {"timestamp": 1353088179}, 401),
    ("future", {"timestamp": 4102444800}, 401),
    ("wrong body_md5", {"tamper": {"body_md5": "0" * 32}}, 401),
])
async def test_http_signature_checks(node, label, kwargs, status):
    response = await run(lambda: raw_post(node, events_path(), GOOD_BODY, **kwargs))
    assert response.status_code == status, (label, response.text)
    assert isinstance(response.json(), dict)
    if status != 200:
        assert response.json()["error"]


async def test_unknown_app_id_is_404(node):
    response = await run(raw_post, node, "/apps/999/events", GOOD_BODY)
    assert response.status_code == 404
    assert "error" in response.json()
    response = await run(signed_get, node.url, "/apps/999/channels")
    assert response.status_code == 404


@pytest.mark.parametrize("body", [b"{not json", b"[1,2]", b'"text"', b"\xff\xfe", b"{}",
                                  b'{"name":"e","data":"{}","channel":"bad name"}',
                                  b'{"name":"","data":"{}","channel":"c"}',
                                  b'{"name":"e","channel":"c"}',
                                  b'{"name":"e","data":"{}","channels":[]}',
                                  b'{"name":"e","data":"{}","channel":"c","socket_id":"x"}'])
async def test_bad_event_bodies_are_400(node, body):
    response = await run(raw_post, node, events_path(), body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]


async def test_sdk_reports_bad_credentials(node):
    bad = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret="wrong", host="127.0.0.1",
                        port=node.port, ssl=False)
    with pytest.raises(pusher.errors.PusherBadAuth):
        await run(bad.trigger, "c", "e", {})


# ---------------------------------------------------------------------------- publish rules


async def test_a_channel_listed_twice_gets_one_event(node):
    async with pusher_client(node.ws_url) as client:
        await client.subscribe("twice")
        response = await run(signed_post, node.url, events_path(),
                             {"name": "e", "data": "{}", "channels": ["twice", "twice", "other"]})
        assert response.status_code == 200, response.text
        assert set(response.json()["positions"]) == {"twice", "other"}
        event = await client.next()
        assert event["offset"] == response.json()["positions"]["twice"]["offset"]
        assert await client.drain(0.5) == []


async def test_an_encrypted_channel_cannot_share_a_publish(node):
    refused = await run(signed_post, node.url, events_path(), {
        "name": "e", "data": "{}", "channels": ["private-encrypted-a", "public-b"]})
    assert refused.status_code == 400
    assert "encrypted" in refused.json()["error"]
    alone = await run(signed_post, node.url, events_path(), {
        "name": "e", "data": "{}", "channels": ["private-encrypted-a"]})
    assert alone.status_code == 200


@pytest.mark.parametrize("name", ["pusher:subscription_succeeded", "pusher_internal:member_added",
                                  "pusher_internal:terminate"])
async def test_protocol_event_names_cannot_be_published(node, name):
    refused = await run(signed_post, node.url, events_path(),
                        {"name": name, "data": "{}", "channel": "c"})
    assert refused.status_code == 400
    assert "reserved" in refused.json()["error"]


async def test_info_is_honoured_in_events_and_batches(node):
    async with pusher_client(node.ws_url) as a, pusher_client(node.ws_url) as b:
        await a.subscribe("info-room")
        await b.subscribe("info-room")
        await a.join("presence-info", "ada")
        await b.join("presence-info", "ada")
        with trio.fail_after(5):
            while True:
                response = await run(signed_post, node.url, events_path(), {
                    "name": "e", "data": "{}", "channels": ["info-room", "presence-info"],
                    "info": "subscription_count,user_count"})
                if response.json()["channels"]["info-room"]["subscription_count"] == 2:
                    break
                await trio.sleep(0.05)
        assert response.json()["channels"] == {
            "info-room": {"subscription_count": 2},
            "presence-info": {"subscription_count": 2, "user_count": 1}}
        batch = await run(signed_post, node.url, f"/apps/{APP_ID}/batch_events", {"batch": [
            {"name": "e", "data": "{}", "channel": "info-room", "info": "subscription_count"},
            {"name": "e", "data": "{}", "channel": "presence-info", "info": "user_count"},
            {"name": "e", "data": "{}", "channel": "info-room"}]})
        items = batch.json()["batch"]
        assert items[0]["subscription_count"] == 2
        assert items[1]["user_count"] == 1
        assert "subscription_count" not in items[1]
        assert set(items[2]) == {"positions"}
        bad = await run(signed_post, node.url, events_path(), {
            "name": "e", "data": "{}", "channel": "info-room", "info": "nonsense"})
        assert bad.status_code == 400


@pytest.mark.parametrize(("path", "params"), [
    ("/channels/not-presence/users", None),
    ("/channels/not-cache", {"info": "cache"}),
    ("/channels/public", {"info": "user_count"}),
    ("/channels/public", {"info": "whatever"}),
    ("/channels", {"info": "user_count"}),
])
async def test_channel_queries_that_do_not_apply_are_400(node, path, params):
    response = await run(signed_get, node.url, f"/apps/{APP_ID}{path}", params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]
