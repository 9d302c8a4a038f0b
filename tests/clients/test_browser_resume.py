"""Viewers in real browsers keep the zero-drop promise through the load balancer while a node is
killed and another drained, with @turnout/pusher-resume; the same pages without it lose updates.

The cluster is the harness's own (harness.topology: redis-server, three turnout nodes, Toxiproxy,
HAProxy health-checking /health). Eight pages in headless Chromium (Debian's /usr/bin/chromium
driven by playwright-core, tools/browser-fleet.mjs) connect through HAProxy: pusher-js and
Laravel Echo, the oldest and newest versions the package claims, half with the plugin and half
without. Each subscribes a public and a private channel. Pages open one at a time, and each
node's ``turnout_connections`` gauge tells which node took it. Updates are then published every
100 ms; the node with the most plugin-off pages is SIGKILLed, then another is drained (SIGTERM:
4200 closes). Judged per page and channel against the acknowledged publishes:

- every plugin page received every update exactly once, in order;
- every plugin-off page that was on the killed node lost updates (pusher-js resubscribes fresh),
  which is the negative control: the check that passes the plugin pages can fail.

Next to the pages, tools/node-fleet.mjs runs 20 pusher-js instances in one Node process (10 with
the plugin, 10 without), connected after the pages were placed, judged the same way: each with
the plugin gets everything once and in order; those without lose updates in total.

The publisher posts straight to the node that is never faulted: the viewers' path is what is
under test, and a publish to a dying node would be indeterminate.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import trio

from harness.topology import Topology, TopologySpec, run_topology
from tests.clients.fleet import start_fleet
from tests.support.client import signed_post
from tests.support.procs import APP_ID, APP_KEY, APP_SECRET
from tests.support.scripts import LineScript

PUBLISH_INTERVAL_S = 0.1
STEADY_S = 2.5  # publishing before the kill
BETWEEN_FAULTS_S = 3.0
AFTER_FAULTS_S = 2.5
NODE_VIEWERS = 10  # per plugin setting, in the one Node fleet process
# pusher-js waits out a 15 s attempt timer after a failed connection attempt (its
# SequentialStrategy), and a reconnect right after a 4200 can fail: HAProxy still routes to the
# draining node for up to ~1 s (two failed checks 500 ms apart) and Toxiproxy's lb->node link
# turns the refused connection into a 502 that HAProxy does not redispatch.
CATCH_UP_DEADLINE_S = 60

# (client, pusher-js version, laravel-echo version, plugin); alternating plugin on/off so that
# HAProxy's leastconn spreads both kinds over the three nodes.
PAGES = [
    ("pusher-js", "newest", "newest", True),
    ("pusher-js", "newest", "newest", False),
    ("echo", "newest", "newest", True),
    ("echo", "newest", "newest", False),
    ("pusher-js", "oldest", "newest", True),
    ("pusher-js", "oldest", "newest", False),
    ("echo", "oldest", "oldest", True),
    ("echo", "oldest", "oldest", False),
]

_CONNECTIONS = re.compile(r"^turnout_connections(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


async def node_connections(topo: Topology) -> dict[str, int]:
    """Open websockets per live node, read from each node's /metrics directly."""
    counts: dict[str, int] = {}
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        for name, node in topo.nodes.items():
            match = _CONNECTIONS.search((await client.get(f"{node.url}/metrics")).text)
            assert match, f"{name}: no turnout_connections in /metrics"
            counts[name] = int(float(match.group(1)))
    return counts


class Publisher:
    """Publishes {"id": n} to both channels every interval; remembers what was acknowledged."""

    def __init__(self, base_url: str, channels: list[str]) -> None:
        self.base_url = base_url
        self.channels = channels
        self.acked: list[int] = []
        self.failures: list[str] = []

    async def run(self, stop: trio.Event) -> None:
        next_id = 0
        while not stop.is_set():
            body = {"name": "update", "channels": self.channels,
                    "data": json.dumps({"id": next_id})}
            response = await trio.to_thread.run_sync(
                signed_post, self.base_url, f"/apps/{APP_ID}/events", body)
            if response.status_code == 200:
                self.acked.append(next_id)
            else:
                self.failures.append(f"id {next_id}: {response.status_code} {response.text}")
            next_id += 1
            await trio.sleep(PUBLISH_INTERVAL_S)


def outcome(got: list[int], acked: list[int]) -> dict[str, Any]:
    missing = sorted(set(acked) - set(got))
    return {"received": len(got), "missing": len(missing), "duplicates": len(got) - len(set(got)),
            "in_order": got == sorted(got), "first_missing": missing[:5]}


def received(fleet: LineScript, client: str, channel: str) -> list[int]:
    return [r["id"] for r in fleet.of("delivery", client=client, channel=channel)]


def reconnects(fleet: LineScript, client: str) -> int:
    """Times the page's pusher-js left the connected state (before the fleet was stopped)."""
    return sum(1 for r in fleet.of("state", client=client) if r["previous"] == "connected"
               and r["current"] != "disconnected")


async def test_browser_pages_keep_every_update_through_node_kill_and_drain(
    tmp_path: Path,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    channels = [f"results-{suffix}", f"private-results-{suffix}"]
    spec = TopologySpec(nodes=3, clients=len(PAGES), drain_grace_s=2, app_id=APP_ID,
                        app_key=APP_KEY, app_secret=APP_SECRET, key_prefix=f"b{suffix}",
                        ready_timeout_s=60)
    summary: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        topo: Topology = await nursery.start(run_topology, spec, tmp_path / "run")
        entry = topo.lanes[0].entry
        where = {"key": APP_KEY, "secret": APP_SECRET, "ws_host": entry.listen_host,
                 "ws_port": entry.listen_port}
        fleet = await start_fleet(nursery, "browser-fleet", tmp_path, **where)
        node_fleet = await start_fleet(nursery, "node-fleet", tmp_path, **where)
        try:
            await _scenario(topo, fleet, node_fleet, channels, summary, nursery)
        finally:
            (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2))
            for name, which in (("browser", fleet), ("node", node_fleet)):
                (tmp_path / f"{name}-records.jsonl").write_text(
                    "".join(json.dumps(r) + "\n" for r in which.records))
            with trio.CancelScope(shield=True):
                await fleet.stop(30, farewell={"op": "stop"})
                await node_fleet.stop(30, farewell={"op": "stop"})
            nursery.cancel_scope.cancel()
    print(json.dumps(summary, indent=2))


async def _scenario(topo: Topology, fleet: LineScript, node_fleet: LineScript, channels: list[str],
                    summary: dict[str, Any], nursery: trio.Nursery) -> None:
    # --- pages, one at a time, each located on its node ---------------------------------------
    placement: dict[str, str] = {}
    plugin: dict[str, bool] = {}
    for index, (client, pusher_version, echo_version, with_plugin) in enumerate(PAGES):
        page = f"page-{index}-{client}-{pusher_version}-{'on' if with_plugin else 'off'}"
        plugin[page] = with_plugin
        before = await node_connections(topo)
        await fleet.send({"op": "open", "viewer": {
            "id": page, "client": client, "pusher": pusher_version, "echo": echo_version,
            "plugin": with_plugin, "channels": channels}})
        await fleet.wait_for(
            lambda page=page: len(fleet.of("subscribed", client=page)) == len(channels),
            f"{page} to subscribe", 60)
        with trio.move_on_after(10):
            while True:
                after = await node_connections(topo)
                grown = [n for n in after if after[n] == before[n] + 1]
                if len(grown) == 1 and sum(after.values()) == sum(before.values()) + 1:
                    placement[page] = grown[0]
                    break
                await trio.sleep(0.05)
        assert page in placement, f"could not tell which node took {page}: {before} -> {after}"
    summary["placement"] = placement

    def off_pages_on(node: str) -> int:
        return sum(1 for p, n in placement.items() if n == node and not plugin[p])

    by_off = sorted(topo.nodes, key=lambda n: (off_pages_on(n),
                    sum(1 for v in placement.values() if v == n)), reverse=True)
    killed, drained, survivor = by_off
    assert off_pages_on(killed) >= 1, f"no plugin-off page on any node: {placement}"
    assert any(n == killed and plugin[p] for p, n in placement.items()) or any(
        n == drained and plugin[p] for p, n in placement.items()), (
        f"no plugin page on a faulted node: {placement}")
    summary.update(killed=killed, drained=drained, survivor=survivor)

    # --- pusher-js in Node next to the pages --------------------------------------------------
    for group, with_plugin in (("node-on", True), ("node-off", False)):
        await node_fleet.send({"op": "open_many", "count": NODE_VIEWERS, "rate_per_s": 50,
                               "viewer": {"id": group, "plugin": with_plugin,
                                          "channels": channels}})
    node_viewers = [f"{g}-{i}" for g in ("node-on", "node-off") for i in range(NODE_VIEWERS)]
    await node_fleet.wait_for(
        lambda: len(node_fleet.of("subscribed")) >= len(node_viewers) * len(channels),
        "every Node viewer to subscribe", 60)

    # --- publish, kill, drain ----------------------------------------------------------------
    publisher = Publisher(topo.nodes[survivor].url, channels)
    stop_publishing = trio.Event()
    done_publishing = trio.Event()

    async def publish() -> None:
        try:
            await publisher.run(stop_publishing)
        finally:
            done_publishing.set()

    nursery.start_soon(publish)
    await trio.sleep(STEADY_S)
    await topo.nodes[killed].kill()
    summary["killed_at_id"] = len(publisher.acked)
    moved = [p for p, n in placement.items() if n == killed]
    await fleet.wait_for(
        lambda: all(len(fleet.of("subscribed", client=p)) >= 2 * len(channels) for p in moved),
        f"the pages of killed {killed} to subscribe again", 30)
    await trio.sleep(BETWEEN_FAULTS_S)
    summary["drained_at_id"] = len(publisher.acked)
    drain_exit = await topo.nodes[drained].drain()
    assert drain_exit == 0, f"{drained} did not drain cleanly (exit {drain_exit})"
    await trio.sleep(AFTER_FAULTS_S)
    stop_publishing.set()
    await done_publishing.wait()
    acked = publisher.acked
    assert not publisher.failures, publisher.failures
    assert len(acked) >= 50, f"only {len(acked)} updates published"

    # --- every plugin page catches up; then a moment for stray duplicates ---------------------
    plugin_pages = [p for p in placement if plugin[p]]
    await fleet.wait_for(
        lambda: all(len(received(fleet, p, ch)) >= len(acked)
                    for p in plugin_pages for ch in channels),
        "every plugin page to receive every update", CATCH_UP_DEADLINE_S)
    node_on = [v for v in node_viewers if v.startswith("node-on")]
    await node_fleet.wait_for(
        lambda: all(len(received(node_fleet, v, ch)) >= len(acked)
                    for v in node_on for ch in channels),
        "every Node viewer with the plugin to receive every update", CATCH_UP_DEADLINE_S)
    await trio.sleep(1.0)
    await fleet.send({"op": "stats"})
    await fleet.wait_for(lambda: len(fleet.of("stats")) >= len(placement), "stats", 20)

    # --- the verdict ---------------------------------------------------------------------------
    pages: dict[str, Any] = {}
    for page, node in placement.items():
        per_channel = {ch: outcome(received(fleet, page, ch), acked) for ch in channels}
        (stats,) = [r["stats"] for r in fleet.of("stats", client=page)]
        pages[page] = {"node": node, "plugin": plugin[page], "reconnects": reconnects(fleet, page),
                       "channels": per_channel, "stats": stats}
    summary["published"] = len(acked)
    summary["pages"] = pages
    report = json.dumps(summary, indent=2)

    faulted = {killed, drained}
    for page, result in pages.items():
        if result["node"] in faulted:
            assert result["reconnects"] >= 1, f"{page} never lost its connection\n{report}"
        if not result["plugin"]:
            continue
        for channel in channels:
            assert received(fleet, page, channel) == acked, (
                f"{page} {channel}: not every update once and in order\n{report}")
        assert result["stats"]["gaps"] == 0, report
        if result["node"] in faulted:
            assert result["stats"]["resumes"] >= len(channels), report
            assert result["stats"]["recovered"] >= len(channels), report

    # The negative control: without the plugin the same pages lose what was published while
    # they were away from the killed node.
    lost_off: dict[str, int] = defaultdict(int)
    for page, result in pages.items():
        if not result["plugin"]:
            lost_off[page] = sum(c["missing"] for c in result["channels"].values())
            if result["node"] == killed:
                for channel, verdict in result["channels"].items():
                    assert verdict["missing"] >= 1, (
                        f"{page} (no plugin, on killed {killed}) lost nothing on {channel}: "
                        f"the check cannot tell a loss\n{report}")
    assert sum(lost_off.values()) > 0, report
    summary["lost_without_plugin"] = dict(lost_off)

    # --- the Node viewers: same verdict -------------------------------------------------------
    node_results = {v: {ch: outcome(received(node_fleet, v, ch), acked) for ch in channels}
                    for v in node_viewers}
    summary["node_viewers"] = node_results
    node_report = json.dumps(node_results, indent=1)
    for viewer in node_on:
        for channel in channels:
            assert received(node_fleet, viewer, channel) == acked, (
                f"Node viewer {viewer} {channel}: not every update once and in order\n"
                f"{node_report}\n{node_fleet.report()}")
    node_off_lost = sum(r[ch]["missing"] for v, r in node_results.items()
                        if v.startswith("node-off") for ch in channels)
    summary["node_viewers_lost_without_plugin"] = node_off_lost
    assert node_off_lost > 0, f"Node viewers without the plugin lost nothing\n{node_report}"
