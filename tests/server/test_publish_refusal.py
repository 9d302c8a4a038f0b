"""A node that cannot reach Redis refuses publishes in a way that tells the caller nothing was
published (so a publisher can record a definite failure instead of an unknown outcome)."""

from __future__ import annotations

import httpx
import trio

from tests.support.client import publish
from tests.support.procs import free_port


async def test_publish_without_redis_is_a_definite_refusal(start_nodes):
    node = start_nodes("node-1", redis_url=f"redis://127.0.0.1:{free_port()}/0", wait=False)
    with trio.fail_after(20):
        while True:
            try:
                response = await trio.to_thread.run_sync(
                    publish, node.url, "results-1", "update", {"n": 1})
                break
            except httpx.HTTPError:  # node still starting
                await trio.sleep(0.1)
    assert response.status_code == 503, response.text
    assert response.json()["published"] is False
    assert "redis" in response.json()["error"]
