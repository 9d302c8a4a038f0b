"""End-to-end smoke: one real node, one real Redis, a websocket client and a signed publish."""

import json

import trio

from tests.support.client import publish, pusher_client


async def test_publish_reaches_subscriber_with_position(start_nodes):
    node = start_nodes("node-1")
    async with pusher_client(node.ws_url) as client:
        ok = await client.subscribe("results-1")
        assert ok["event"] == "pusher_internal:subscription_succeeded"
        assert ok["offset"] == 0
        response = await trio.to_thread.run_sync(
            publish, node.url, "results-1", "update", {"n": 1})
        assert response.status_code == 200, response.text
        event = await client.next()
        assert event["event"] == "update"
        assert json.loads(event["data"]) == {"n": 1}
        assert event["offset"] == 1
        assert event["epoch"] == response.json()["positions"]["results-1"]["epoch"]
