"""Compatibility with the official clients: pusher-js 8 (Node build) subscribed on node 1 of a
two-node cluster receives what the official ``pusher`` Python SDK triggers through node 2.

The Node side is tests/compat/pusher_client.js, which prints one JSON line per thing pusher-js
reports. Private channels are authorized by pusher-js's ``channelAuthorization.customHandler``,
which asks the tiny HTTP auth endpoint served here; the endpoint signs with the app secret,
except for one channel that it deliberately signs with the wrong secret.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pusher
import pytest
import trio

from server.auth import channel_auth
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET, REPO, NodeProc, logs_of
from tests.support.scripts import LineScript, start_script
from tests.support.webhook_receiver import HttpEndpoint

NODE = shutil.which("node")
COMPAT = REPO / "tests" / "compat"
SCRIPT = COMPAT / "pusher_client.js"

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node (Node.js 18+) is not installed: the pusher-js test needs it")

# Generous: a loaded 2-core CI machine starts node + pusher-js in well under this.
SUBSCRIBE_DEADLINE = 60.0
DELIVERY_DEADLINE = 60.0
SCRIPT_TIMEOUT = 150  # the Node script gives up on its own after this many seconds


class AuthEndpoint(HttpEndpoint):
    """A pusher auth endpoint: POST {"socket_id", "channel_name"} -> {"auth"}, signed with a
    wrong secret for ``bad_channels``."""

    def __init__(self, bad_channels: set[str]) -> None:
        self.bad_channels = bad_channels
        self.requests: list[dict[str, str]] = []
        super().__init__("/pusher/auth", self._sign)

    def _sign(self, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str]]:
        body = json.loads(raw or b"{}")
        socket_id, channel = body.get("socket_id"), body.get("channel_name")
        self.requests.append({"socket_id": socket_id, "channel_name": channel})
        if not isinstance(socket_id, str) or not isinstance(channel, str):
            return 400, {"error": "socket_id and channel_name are required"}
        secret = "wrong-secret" if channel in self.bad_channels else APP_SECRET
        return 200, {"auth": channel_auth(APP_KEY, secret, socket_id, channel)}


@pytest.fixture
def auth_endpoint() -> Iterator[Callable[[set[str]], AuthEndpoint]]:
    started: list[AuthEndpoint] = []

    def start(bad_channels: set[str]) -> AuthEndpoint:
        endpoint = AuthEndpoint(bad_channels).__enter__()
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        endpoint.__exit__()


async def test_pusher_js_receives_sdk_events_across_the_cluster(
    start_nodes, auth_endpoint, tmp_path
) -> None:
    if not (COMPAT / "node_modules" / "pusher-js").is_dir():
        pytest.fail("tests/compat/node_modules/pusher-js is missing: run scripts/setup.sh "
                    "(it runs npm install in tests/compat)")
    suffix = uuid.uuid4().hex[:8]
    public, private, bad = f"pjs-public-{suffix}", f"private-pjs-{suffix}", f"private-bad-{suffix}"
    node1 = start_nodes("node-1")
    node2 = start_nodes("node-2")
    auth = auth_endpoint({bad})

    argv = [NODE, str(SCRIPT), "--host", "127.0.0.1", "--port", str(node1.port),
            "--key", APP_KEY, "--auth-url", auth.url, "--channel", public, "--channel", private,
            "--channel", bad, "--timeout", str(SCRIPT_TIMEOUT)]
    # Published below: to both channels, to one, in a batch, and a non-JSON string.
    both = [{"i": i, "text": f"héllo ✓ {i}", "nested": {"list": [i, None, True]}}
            for i in range(8)]
    expected_count = 2 * len(both) + 1 + 1 + 2
    argv += ["--expect", str(expected_count)]

    async with trio.open_nursery() as nursery:
        script = start_script(nursery, argv, tmp_path / "pusher_client.log",
                              name="pusher-js script", cwd=COMPAT,
                              context=lambda: logs_of([node1, node2]))
        try:
            await _exercise(script, node2, public, private, bad, both, expected_count, auth)
        finally:
            with trio.CancelScope(shield=True):
                await script.stop(0)


async def _exercise(script: LineScript, node2: NodeProc, public: str, private: str, bad: str,
                    both: list[dict[str, Any]], expected_count: int, auth: AuthEndpoint) -> None:
    await script.wait_for(
        lambda: bool(script.of("subscription_succeeded", channel=public))
        and bool(script.of("subscription_succeeded", channel=private))
        and bool(script.of("subscription_error", channel=bad)),
        "both subscriptions to succeed and the badly signed one to fail", SUBSCRIBE_DEADLINE)

    # --- the wrongly signed private channel: pusher-js's subscription_error path -----------
    (connected,) = script.of("connected")
    socket_id = connected["socket_id"]
    assert {"socket_id": socket_id, "channel_name": bad} in auth.requests
    assert {"socket_id": socket_id, "channel_name": private} in auth.requests
    (refusal,) = script.of("subscription_error", channel=bad)
    assert refusal["error"] == {
        "type": "AuthError", "error": "invalid or missing signature for private channel",
        "status": 401,
    }, script.report()
    assert not script.of("subscription_succeeded", channel=bad), script.report()
    assert not script.of("subscription_error", channel=private), script.report()
    # The accompanying pusher:error 4009 reaches pusher.connection's 'error' without closing.
    assert any(line["error"] == {"type": "PusherError", "data": {
        "code": 4009, "message": "invalid or missing signature for private channel"}}
        for line in script.of("connection_error")), script.report()

    # --- publish through node 2 with the official SDK ---------------------------------------
    sdk = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1",
                        port=node2.port, ssl=False, timeout=30)
    sent: dict[str, list[tuple[str, Any, dict[str, Any]]]] = {public: [], private: []}

    def record(response: dict[str, Any], event: str, data: Any, *channels: str) -> None:
        for channel in channels:
            sent[channel].append((event, data, response["positions"][channel]))

    def publish_all() -> None:
        # Refused channel first: were it (wrongly) delivered, it would arrive before the end.
        sdk.trigger(bad, "leak", {"secret": True})
        for data in both:
            record(sdk.trigger([public, private], "update", data), "update", data,
                   public, private)
        record(sdk.trigger(private, "private-only", {"only": "private"}), "private-only",
               {"only": "private"}, private)
        record(sdk.trigger(public, "plain", "just text, not JSON"), "plain",
               "just text, not JSON", public)
        batch = sdk.trigger_batch([
            {"channel": public, "name": "batched", "data": {"b": 1}},
            {"channel": private, "name": "batched", "data": {"b": 2}},
        ])
        record(batch["batch"][0], "batched", {"b": 1}, public)
        record(batch["batch"][1], "batched", {"b": 2}, private)

    await trio.to_thread.run_sync(publish_all)
    assert sum(len(v) for v in sent.values()) == expected_count

    await script.wait_for(lambda: bool(script.of("done")),
                            f"{expected_count} events through pusher-js", DELIVERY_DEADLINE)
    (done,) = script.of("done")
    assert done["reason"] == "count", script.report()

    # --- every event, in order, with its data and its position, on both channels ------------
    for channel, expected in sent.items():
        got = script.of("event", channel=channel)
        assert [(e["event"], e["data"]) for e in got] == [(ev, d) for ev, d, _ in expected], (
            f"{channel}:\n{script.report()}")
        assert [(e["offset"], e["epoch"]) for e in got] == [
            (pos["offset"], pos["epoch"]) for _, _, pos in expected], script.report()
        offsets = [e["offset"] for e in got]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), script.report()
    assert not script.of("event", channel=bad), script.report()
    # One connection throughout: the refused subscription did not cost the socket.
    assert len(script.of("connected")) == 1, script.report()
    before_done = script.records[:script.records.index(done)]
    assert not [line for line in before_done
                if line["type"] == "state" and line["previous"] == "connected"], script.report()
