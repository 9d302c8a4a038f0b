"""The official clients against a two-node cluster: pusher-js 8 (presence, whispers, sign-in),
Laravel Echo 2 (join() with here/joining/leaving, whisper/listenForWhisper, .error()) and the
official Python SDK (presence and user authentication in the app's auth endpoint,
send_to_user, terminate_user_connections, users_info, webhook validation).

The clients run in Node (tests/compat/scripted_clients.js), driven line by line from here;
their authorization requests go to a small app backend that signs with the Python SDK, as a
real app's backend would (`pusher.authenticate`, `pusher.authenticate_user`).
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pusher
import pytest
import trio

from tests.support.client import in_thread
from tests.support.procs import (
    APP_ID,
    APP_KEY,
    APP_SECRET,
    REPO,
    NodeProc,
    app_toml,
    logs_of,
)
from tests.support.scripts import LineScript, start_script
from tests.support.webhook_receiver import HttpEndpoint, WebhookReceiver

NODE = shutil.which("node")
COMPAT = REPO / "tests" / "compat"
STEP = 30.0  # generous for a loaded 2-core machine

pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js 18+ is needed for these tests")


def sdk(node: NodeProc | None = None) -> pusher.Pusher:
    if node is None:
        return pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET)
    return pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1",
                         port=node.port, ssl=False, timeout=10)


class Backend(HttpEndpoint):
    """The app's auth endpoint, signing with the official SDK. Channels in ``refuse`` are
    signed with a wrong secret (the server must refuse them)."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.signer = sdk()
        self.forger = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret="wrong")
        super().__init__("/auth", self._sign)

    def _sign(self, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        body = json.loads(raw)
        user = body.get("user_id")
        info = {"name": f"User {user}"}
        if body.get("signin"):
            user_data = {"id": user, "user_info": info}
            if body.get("watchlist"):
                user_data["watchlist"] = body["watchlist"]
            return 200, self.signer.authenticate_user(body["socket_id"], user_data)
        channel = body["channel_name"]
        client = self.forger if channel in self.refuse else self.signer
        custom = {"user_id": user, "user_info": info} if channel.startswith("presence-") else None
        return 200, client.authenticate(channel, body["socket_id"], custom)


class Script(LineScript):
    """tests/compat/scripted_clients.js: commands in, reports collected."""

    async def command(self, op: str, name: str, **fields: Any) -> None:
        await self.send({"op": op, "name": name, **fields})
        await self.wait("ready", op=op, name=name)

    async def wait(self, kind: str, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        await self.wait_for(lambda: len(self.of(kind, **match)) >= count,
                            f"{count} x {kind} {match}", STEP)
        return self.of(kind, **match)


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start the Node script (and an app backend) inside the test's own nursery."""
    backend = Backend()

    async def run(nodes: list[NodeProc], body: Callable[[Script, Backend], Any]) -> None:
        async with trio.open_nursery() as nursery:
            script = start_script(
                nursery, [NODE, str(COMPAT / "scripted_clients.js")],
                tmp_path / "scripted_clients.log", name="scripted_clients.js", cwd=COMPAT,
                env={"PATH": "/usr/bin:/bin", "SCRIPT_TIMEOUT": "150"}, fatal=("script_error",),
                context=lambda: logs_of(nodes), cls=Script)
            try:
                await body(script, backend)
            finally:
                with trio.CancelScope(shield=True):
                    await script.stop(0)

    yield run
    backend.close()


async def test_pusher_js_presence_whispers_and_sign_in(start_nodes, clients):
    hooks = WebhookReceiver().__enter__()
    try:
        config = app_toml(enable_client_events=True, webhooks=[
            {"url": hooks.url, "event_types": ["member_added", "member_removed"]}])
        node1, node2 = start_nodes("node-1", config=config), start_nodes("node-2", config=config)
        room = f"presence-room-{uuid.uuid4().hex[:6]}"

        async def body(script: Script, backend: Backend) -> None:
            await script.command("pusher", "ada", port=node1.port, auth_url=backend.url)
            await script.command("pusher", "bob", port=node2.port, auth_url=backend.url)
            await script.wait("connected", name="ada")
            await script.wait("connected", name="bob")
            # Ada watches bob (pusher.user.watchlist): bob's sign-in on node 2 is an online
            # event on node 1, his connection ending an offline one (below).
            await script.command("signin", "ada", user_id="ada", watchlist=["bob"])
            (signed,) = await script.wait("signed_in", name="ada")
            assert signed["user_data"]["id"] == "ada"
            await script.command("signin", "bob", user_id="bob")
            await script.wait("signed_in", name="bob")
            (online,) = await script.wait("watchlist", name="ada", status="online")
            assert online["user_ids"] == ["bob"]
            await script.command("subscribe", "ada", channel=room, user_id="ada")
            (ada_in,) = await script.wait("subscribed", name="ada", channel=room)
            assert ada_in["members"] == {"ada": {"name": "User ada"}}
            assert ada_in["me"] == {"id": "ada", "info": {"name": "User ada"}}
            await script.command("subscribe", "bob", channel=room, user_id="bob",
                                 bind=["client-typing"])
            (bob_in,) = await script.wait("subscribed", name="bob", channel=room)
            assert set(bob_in["members"]) == {"ada", "bob"}
            (added,) = await script.wait("member_added", name="ada")
            assert added["member"] == {"id": "bob", "info": {"name": "User bob"}}
            # The SDK's users_info sees both, through either node.
            for node in (node1, node2):
                listed = await in_thread(sdk(node).users_info, room)
                assert sorted(u["id"] for u in listed["users"]) == ["ada", "bob"]
            # A whisper crosses nodes with its sender's user id, and is not echoed.
            await script.command("trigger", "ada", channel=room, event="client-typing",
                                 data={"typing": True})
            (whisper,) = await script.wait("bound", name="bob", event="client-typing")
            assert whisper["data"] == {"typing": True}
            assert whisper["metadata"] == {"user_id": "ada"}
            # send_to_user through the SDK, to bob's sign-in on node 2.
            await in_thread(sdk(node1).send_to_user, "bob", "private-note", {"hi": "bob"})
            (note,) = await script.wait("user_event", name="bob", event="private-note")
            assert note["data"] == {"hi": "bob"}
            assert not script.of("event", name="ada", event="client-typing")
            assert not script.of("user_event", name="ada")
            # terminate_user_connections through the SDK: ada's connection on node 1 ends,
            # and bob sees ada leave.
            await in_thread(sdk(node2).terminate_user_connections, "ada")
            await script.wait("member_removed", name="bob")
            assert script.of("member_removed", name="bob")[0]["member"]["id"] == "ada"
            await script.wait("state", name="ada", previous="connected")
            await trio.sleep(1.0)
            assert script.of("state", name="bob", current="connected")
            assert not script.of("state", name="bob", previous="connected")
            assert not script.of("watchlist", name="ada", status="offline")

        await clients([node1, node2], body)
        # The member webhooks arrive once each, valid for the official SDK.
        with trio.fail_after(15):
            while len(hooks.events()) < 4:
                await trio.sleep(0.1)
        events = []
        for delivery in hooks.accepted():
            checked = sdk().validate_webhook(delivery.headers["x-pusher-key"],
                                             delivery.headers["x-pusher-signature"],
                                             delivery.body.decode())
            assert checked is not None
            events += checked["events"]
        assert sorted((e["name"], e["user_id"]) for e in events) == [
            ("member_added", "ada"), ("member_added", "bob"),
            ("member_removed", "ada"), ("member_removed", "bob")]
    finally:
        hooks.__exit__()


async def test_laravel_echo_join_here_joining_leaving_and_whispers(start_nodes, clients):
    config = app_toml(enable_client_events=True)
    node1, node2 = start_nodes("node-1", config=config), start_nodes("node-2", config=config)
    tag = uuid.uuid4().hex[:6]
    room, chat, refused = f"room-{tag}", f"chat-{tag}", f"private-secret-{tag}"

    async def body(script: Script, backend: Backend) -> None:
        backend.refuse.add(refused)
        await script.command("echo", "one", port=node1.port, auth_url=backend.url)
        await script.command("echo", "two", port=node2.port, auth_url=backend.url)
        await script.wait("connected", name="one")
        await script.wait("connected", name="two")
        await script.command("join", "one", channel=room, user_id="1")
        (here,) = await script.wait("here", name="one")
        assert here["users"] == [{"name": "User 1"}]
        await script.command("join", "two", channel=room, user_id="2")
        (here,) = await script.wait("here", name="two")
        assert sorted(u["name"] for u in here["users"]) == ["User 1", "User 2"]
        (joining,) = await script.wait("joining", name="one")
        assert joining["user"] == {"name": "User 2"}
        # whisper / listenForWhisper on the presence channel and on a private one.
        await script.command("whisper", "two", channel=room, kind="presence", data={"k": 1})
        (whisper,) = await script.wait("whisper", name="one", channel=room)
        assert whisper["data"] == {"k": 1}
        for name in ("one", "two"):
            await script.command("private", name, channel=chat, user_id=name)
            await script.wait("echo_subscribed", name=name, channel=chat)
        await script.command("whisper", "one", channel=chat, kind="private", data="hello")
        (whisper,) = await script.wait("whisper", name="two", channel=chat)
        assert whisper["data"] == "hello"
        assert not script.of("whisper", name="one", channel=chat)  # never echoed
        assert not script.of("whisper", name="two", channel=room)
        # .error() fires for a refused private channel and for an invalid channel name.
        await script.command("private", "one", channel=refused.removeprefix("private-"))
        (error,) = await script.wait("echo_error", name="one")
        assert error["error"]["status"] == 401
        await script.command("public", "one", channel="not valid!")
        (error,) = await script.wait("echo_error", name="one", channel="not valid!")
        assert error["error"]["status"] == 400
        # A public channel still works alongside.
        await script.command("public", "two", channel=f"news-{tag}")
        await script.wait("echo_subscribed", name="two", channel=f"news-{tag}")
        await in_thread(sdk(node1).trigger, f"news-{tag}", "update", {"n": 1})
        (update,) = await script.wait("echo_event", name="two")
        assert update["data"] == {"n": 1}
        # Leaving: the other side's leaving() gets the user's info.
        await script.command("leave", "two", channel=room)
        (leaving,) = await script.wait("leaving", name="one")
        assert leaving["user"] == {"name": "User 2"}

    await clients([node1, node2], body)
