"""Prometheus metrics through prometheus-client.

The hot path only bumps plain integer attributes (a prometheus Counter takes a lock per
increment); a custom collector reads them at scrape time. Each node has its own registry so
several nodes can live in one process (tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics", "NodeStats", "NodeView"]


@dataclass(slots=True)
class NodeStats:
    messages_in: int = 0
    connections_total: int = 0
    rejected_connections: int = 0
    slow_consumer_closes: int = 0
    slow_consumer_close_frames: int = 0
    slow_consumer_aborts: int = 0
    subscriptions_refused: int = 0
    internal_errors: int = 0
    bad_requests: int = 0
    bad_frames: int = 0
    bad_messages: int = 0
    auth_failures: int = 0
    client_events: int = 0
    client_events_rejected: int = 0
    shared_port_leaves: int = 0
    loop_lag: float = 0.0
    loop_lag_max: float = 0.0


# Counters read straight from NodeStats: metric name (turnout_*_total) -> (attribute, help).
_STAT_COUNTERS = {
    "connections_opened": ("connections_total", "Websocket connections accepted"),
    "connections_rejected": ("rejected_connections", "Websocket connections refused"),
    "messages_in": ("messages_in", "Websocket text messages received"),
    "slow_consumer_disconnects": ("slow_consumer_closes", "Clients closed 4100 for a full queue"),
    "slow_consumer_close_frames_delivered": (
        "slow_consumer_close_frames",
        "Slow consumers whose 4100 close frame reached their socket in the grace"),
    "slow_consumer_resets": (
        "slow_consumer_aborts", "Slow consumers that did not drain in the grace: connection reset"),
    "subscriptions_refused": (
        "subscriptions_refused", "Subscriptions refused for the per-connection limit"),
    "internal_errors": (
        "internal_errors", "Unexpected exceptions that ended one connection (500 or close 1011)"),
    "bad_requests": ("bad_requests", "HTTP requests refused before routing (400/408/413/426/431)"),
    "bad_frames": ("bad_frames", "Websocket protocol violations"),
    "bad_messages": ("bad_messages", "Malformed or refused client messages"),
    "auth_failures": ("auth_failures", "Rejected signatures"),
    "client_events": ("client_events", "Client events relayed (published) by this node"),
    "client_events_rate_limited": (
        "client_events_rejected", "Connections closed 4301 for the client-event rate limit"),
    "shared_port_leaves": (
        "shared_port_leaves", "Times the node left the shared port's group at its high-water "
        "mark of sockets"),
}


class NodeView(Protocol):
    """What the collector reads at scrape time (the node, which reports on all its parts)."""

    config: Any
    stats: NodeStats
    hub: Any
    open_sockets: int
    max_connections: int
    draining: bool
    peer_log: Any

    @property
    def shared_port_member(self) -> bool: ...

    @property
    def connection_count(self) -> int: ...


class _NodeCollector(Collector):
    def __init__(self, node: NodeView) -> None:
        self._node = node
        self._process = psutil.Process()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        node = self._node
        stats = node.stats
        hub = node.hub.statistics()
        label = ["node"]
        value = [node.config.node_id]

        def gauge(name: str, doc: str, v: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"turnout_{name}", doc, labels=label)
            g.add_metric(value, v)
            return g

        def counter(name: str, doc: str, v: float) -> CounterMetricFamily:
            c = CounterMetricFamily(f"turnout_{name}", doc, labels=label)
            c.add_metric(value, v)
            return c

        yield gauge("connections", "Open websocket connections", node.connection_count)
        yield gauge("sockets", "Open client sockets: websockets, HTTP and handshakes",
                    node.open_sockets)
        yield gauge("max_connections", "Client sockets allowed at once (--max-connections, "
                    "or chosen from the open-file limit)", node.max_connections)
        yield gauge("subscriptions", "Channel subscriptions on this node", hub["subscriptions"])
        yield gauge("channels", "Channels with local subscribers", hub["channels"])
        yield gauge("redis_link_up", "1 while the pub/sub link to Redis is up",
                    1.0 if node.hub.broker.link_up else 0.0)
        yield gauge("draining", "1 while the node drains", 1.0 if node.draining else 0.0)
        yield gauge("shared_port_member", "1 while in the shared port's group (--shared-port)",
                    1.0 if node.shared_port_member else 0.0)
        yield gauge("rss_bytes", "Resident set size of the node process",
                    self._process.memory_info().rss)
        yield gauge("event_loop_lag_seconds", "Last measured scheduling lag", stats.loop_lag)
        yield gauge("event_loop_lag_max_seconds", "Worst scheduling lag since start",
                    stats.loop_lag_max)
        for name, (attr, doc) in _STAT_COUNTERS.items():
            yield counter(name, doc, getattr(stats, attr))
        yield counter("messages_out", "Channel event frames written to sockets",
                      hub["frames_out"])
        yield counter("events_delivered", "Channel events fanned out by this node",
                      hub["delivered"])
        yield counter("events_published", "Events published through this node's HTTP API",
                      node.hub.broker.published)
        yield counter("log_lines_suppressed", "Log lines about client input over --log-rate",
                      node.peer_log.suppressed)
        yield counter("gaps_detected", "Out-of-order or missing pub/sub events detected",
                      hub["gaps_detected"])
        yield counter("catchups", "Channel catch-ups read from Redis streams", hub["catchups"])
        yield counter("unrecoverable_gaps", "Gaps the stream could not fill",
                      hub["unrecoverable"])
        yield counter("redis_link_changes", "Redis link up/down transitions",
                      node.hub.broker.link_changes)
        yield gauge("presence_members", "Presence memberships held by this node",
                    hub["presence_members"])
        yield gauge("presence_leaves_pending", "Presence leaves waiting for Redis",
                    hub["presence_leaves_pending"])
        yield counter("connections_terminated", "Connections closed by terminate_connections",
                      hub["terminated"])
        cluster = getattr(node, "cluster", None)
        if cluster is not None:
            yield counter("rejoins", "Times this node found itself presumed dead (no heartbeat "
                          "for node_timeout) and re-registered its memberships", cluster.rejoins)
            yield counter("dead_nodes_reaped", "Dead node incarnations this node's reaper "
                          "cleaned up", cluster.reaped)
        sender = getattr(node, "webhook_sender", None)
        if sender is not None:
            yield gauge("webhook_sender", "1 while this node holds the cluster's webhook lease",
                        1.0 if sender.leader else 0.0)
            yield counter("webhook_events_sent", "Webhook events delivered (2xx) by this node",
                          sender.stats.events)
            yield counter("webhook_failures", "Webhook POSTs that failed (retried with backoff)",
                          sender.stats.failures)
            yield counter("webhook_events_dropped", "Webhook events dropped from full queues",
                          sender.stats.dropped)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, node: NodeView) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_NodeCollector(node))

    def render(self) -> bytes:
        return generate_latest(self.registry)
