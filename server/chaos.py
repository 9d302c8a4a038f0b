"""The opt-in chaos endpoint (memory leak on demand) and the RSS watchdog.

The endpoint is off unless the node runs with --chaos; then it listens on its own port
(``--chaos-port``, 0 = any free one, logged) of a loopback address (``--chaos-host``, which
must be loopback), never on the public port, and every request must carry the token (header
``X-Chaos-Token`` or ``?token=``) and come from a loopback peer. Routes:
``POST /chaos/leak?mb_per_s=N``, ``POST /chaos/stop``, ``GET /chaos/status``. The leak
allocates and touches real pages so RSS really grows.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any
from urllib.parse import parse_qsl

import psutil
import trio

from .api import Response
from .auth import signatures_match
from .config import Config
from .interfaces import NodeStatus
from .peerlog import clip

log = logging.getLogger("turnout.chaos")

__all__ = ["EXIT_MAX_RSS", "Chaos"]

EXIT_MAX_RSS = 3
LEAK_TICK = 0.1
MAX_LEAK_MB_PER_S = 1024.0


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / (1024 * 1024)


class Chaos:
    """The leak endpoint and the RSS watchdog of one node; ``status`` is drained past the limit."""

    def __init__(self, config: Config, status: NodeStatus) -> None:
        self.config = config
        self.status = status
        self._leaked: list[bytearray] = []
        self._leak_rate = 0.0
        self._leak_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def leaked_mb(self) -> float:
        return sum(len(b) for b in self._leaked) / (1024 * 1024)

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.config.max_rss_mb > 0:
                nursery.start_soon(self._watchdog)
            task_status.started()
            await trio.sleep_forever()

    async def _watchdog(self) -> None:
        limit = self.config.max_rss_mb
        while True:
            await trio.sleep(0.25)
            current = rss_mb()
            if current > limit and not self.status.draining:
                log.error("RSS %.0f MB passed --max-rss %.0f MB: draining and exiting with %d",
                          current, limit, EXIT_MAX_RSS)
                self.stop_leak()
                self.status.request_drain(f"max_rss exceeded ({current:.0f} MB > {limit:.0f} MB)",
                                        exit_code=EXIT_MAX_RSS)
                return

    def stop_leak(self) -> None:
        if self._leak_scope is not None:
            self._leak_scope.cancel()
            self._leak_scope = None
        self._leak_rate = 0.0

    async def _leak(self, mb_per_s: float, scope: trio.CancelScope) -> None:
        with scope:
            chunk = int(mb_per_s * 1024 * 1024 * LEAK_TICK)
            # Not ``while True``: a leak stopped before this task first ran (a stop pipelined
            # right behind the leak request) must not allocate a chunk nobody will release.
            while not scope.cancel_called:
                block = bytearray(chunk)
                # Touch one byte per page so the kernel really backs the allocation.
                block[::4096] = b"\x01" * len(range(0, chunk, 4096))
                self._leaked.append(block)
                await trio.sleep(LEAK_TICK)

    def _status(self) -> dict[str, Any]:
        return {"leaking_mb_per_s": self._leak_rate, "leaked_mb": round(self.leaked_mb, 1),
                "rss_mb": round(rss_mb(), 1), "max_rss_mb": self.config.max_rss_mb,
                "node": self.config.node_id}

    async def handle_request(self, method: str, path: str, query: str,
                             headers: dict[str, str], body: bytes, peer: str) -> Response:
        """Route one request of the chaos listener, which serves /chaos/* only."""
        if not path.startswith("/chaos/"):
            return Response.json(404, {"error": f"no route for {method} {clip(path)} on the "
                                                "chaos listener"})
        params = dict(parse_qsl(query, keep_blank_values=True))
        config = self.config
        if not config.chaos:
            return Response.json(404, {"error": "chaos endpoint is disabled (start with --chaos)"})
        host = peer.rsplit(":", 1)[0].strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:  # cannot happen on a loopback listener; kept as a second lock
            log.warning("chaos request from non-loopback peer %s refused", peer)
            return Response.json(403, {"error": "chaos endpoint only answers loopback"})
        token = params.get("token") or headers.get("x-chaos-token")
        if not (config.chaos_token and signatures_match(config.chaos_token, token)):
            log.warning("chaos request from %s with a bad token refused", peer)
            return Response.json(401, {"error": "missing or wrong chaos token"})
        if path == "/chaos/status" and method == "GET":
            return Response.json(200, self._status())
        if path == "/chaos/leak" and method == "POST":
            try:
                rate = float(params.get("mb_per_s", ""))
            except ValueError:
                return Response.json(400, {"error": "mb_per_s must be a number"})
            if not 0 < rate <= MAX_LEAK_MB_PER_S:
                return Response.json(
                    400, {"error": f"mb_per_s must be in (0, {MAX_LEAK_MB_PER_S}]"})
            self.stop_leak()
            self._leak_rate = rate
            self._leak_scope = trio.CancelScope()
            assert self._nursery is not None
            self._nursery.start_soon(self._leak, rate, self._leak_scope)
            log.warning("chaos: leaking %.1f MB/s", rate)
            return Response.json(200, self._status())
        if path == "/chaos/stop" and method == "POST":
            self.stop_leak()
            freed = self.leaked_mb
            self._leaked.clear()
            log.warning("chaos: leak stopped, %.1f MB released", freed)
            return Response.json(200, self._status())
        return Response.json(404, {"error": f"no chaos route {method} {path}"})
