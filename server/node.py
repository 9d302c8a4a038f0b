"""One broadcast node: listener, hub, broker, reaper, metrics, chaos, drain.

``serve_node(config, task_status=...)`` is nursery-startable and hands back the running Node
(with its bound port) once it accepts connections. ``run(config)`` is the process entry point:
it adds SIGTERM/SIGINT handling and returns the exit code (0 after a drain, 3 after the memory
watchdog drained the node).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import resource
import signal
import socket

import trio

from . import api, protocol
from .broker import Broker
from .chaos import Chaos
from .cluster import Cluster
from .config import Config
from .connection import Connection
from .http import serve_socket
from .hub import Hub
from .interfaces import ConnectionContext
from .metrics import Metrics, NodeStats
from .peerlog import ErrorLog, PeerLog
from .reuseport import listening_sockets
from .store import NO_WEBHOOKS, Keys, WebhookPolicy, webhook_policies
from .webhooks import WebhookSender

log = logging.getLogger("turnout.node")

__all__ = ["Node", "run", "serve_node"]

ACCEPT_BATCH = 256
LISTEN_BACKLOG = 4096
REAPER_INTERVAL = 1.0
# File descriptors kept out of max_connections: listeners, Redis links, log files, /proc reads.
FD_RESERVE = 128
# Sockets accepted over max_connections only to be told so (4100 / 503) within a short
# deadline; beyond these a socket is closed at once without a word.
OVERFLOW_SLOTS = 64
# Concurrent sockets on the chaos listener (loopback, token-guarded, harness use only).
MAX_CHAOS_SOCKETS = 16
# The shared port's group: the kernel spreads new connections evenly whatever each node holds,
# so in a rolling restart the nodes restarted last pile up the others' viewers. A node leaves
# the group at this share of max_connections and rejoins below the lower one (checked every
# SHARED_PORT_RECHECK seconds); the gap keeps it from flapping.
SHARED_PORT_HIGH_WATER = 0.9
SHARED_PORT_LOW_WATER = 0.8
SHARED_PORT_RECHECK = 0.5


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (as Go and nginx do); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_limits(configured: int, file_limit: int) -> tuple[int, int, str]:
    """(max_connections, overflow slots, how it was chosen) for a file limit.

    Every accepted socket costs a descriptor; a node that runs out stops accepting anything,
    /health included. So the limit always leaves room for the node's own descriptors and for
    the overflow sockets that are told "over capacity".
    """
    reserve = min(FD_RESERVE, file_limit // 4)
    overflow = min(OVERFLOW_SLOTS, file_limit // 8)
    available = max(1, file_limit - reserve - overflow)
    if configured == 0:
        return available, overflow, (
            f"automatic: open-file limit {file_limit} - {reserve} reserved - {overflow} "
            "overflow slots")
    if configured > available:
        return available, overflow, (
            f"--max-connections {configured} lowered to {available}: the open-file limit is "
            f"{file_limit} ({reserve} reserved, {overflow} overflow slots)")
    return configured, overflow, f"--max-connections {configured} (open-file limit {file_limit})"


class Node:
    """Wires one node's parts together; each part sees only its seam (server/interfaces.py)."""

    def __init__(self, config: Config, *, hub: Hub | None = None) -> None:
        self.config = config
        self.stats = NodeStats()
        self.connections: dict[Connection, None] = {}
        self.draining = False
        self.drain_reason = ""
        self.exit_code = 0
        self.port = 0
        policies = webhook_policies(config.apps, Keys(config.key_prefix))

        def webhooks(app_id: str) -> WebhookPolicy:
            return policies.get(app_id, NO_WEBHOOKS)

        apps = {app.id: app for app in config.apps}
        # ``hub``: a stand-in for unit tests of the parts around it (tests/server/test_fuzz.py).
        self.hub = hub or Hub(
            lambda on_message, on_link: Broker(
                host=config.redis_host, port=config.redis_port, db=config.redis_db,
                key_prefix=config.key_prefix, node_id=config.node_id,
                history_size=config.history_size, history_ttl=config.history_ttl,
                cache_ttl=config.cache_ttl, on_message=on_message, on_link=on_link,
                webhooks=webhooks,
            ),
            position_check_interval=config.position_check_interval,
            history_enabled=config.history_size > 0,
            max_members=lambda app_id: apps[app_id].max_presence_members if app_id in apps
            else 100,
            webhooks=webhooks,
            subscription_count_apps=lambda: [a.id for a in config.apps
                                             if a.subscription_count_events],
        )
        broker = self.hub.broker
        self.cluster: Cluster | None = None
        self.webhook_sender: WebhookSender | None = None
        if hub is None:
            self.cluster = Cluster(
                broker.store, node_id=config.node_id, node_timeout=config.node_timeout,
                link_up=lambda: broker.link_up, local_counts=self.hub.local_counts,
                webhooks=webhooks,
                limited_apps=lambda: [a.id for a in config.apps if a.max_connections],
                rejoin=self.hub.resync_presence, reap=config.reap_dead_nodes)
            self.hub.cluster = self.cluster
            self.webhook_sender = WebhookSender(broker.store, config.apps,
                                                incarnation=self.cluster.incarnation,
                                                link_up=lambda: broker.link_up)
        self.metrics = Metrics(self)
        self.chaos = Chaos(config, self)
        self.peer_log = PeerLog(config.log_rate)
        self.error_log = ErrorLog()
        self.context = ConnectionContext(config, self.stats, self.peer_log, self.hub,
                                         broker, self.hub.cluster)
        self.api_route = functools.partial(api.handle_request, api.ApiContext(
            config, self.stats, self.peer_log, broker, self, self.metrics))
        # Client sockets open now (every accepted socket until it is closed), and per address.
        self.open_sockets = 0
        self.sockets_by_ip: dict[str, int] = {}
        self.max_connections, self.overflow_slots, self.limit_reason = connection_limits(
            config.max_connections, raise_file_limit())
        self.chaos_port = 0
        self._chaos_sockets = 0
        self._listener: socket.socket | None = None
        self._chaos_listener: socket.socket | None = None
        self._unix_listener: socket.socket | None = None
        self._shared_listener: socket.socket | None = None
        self.shared_port_high_water = max(1, int(self.max_connections * SHARED_PORT_HIGH_WATER))
        self.shared_port_low_water = int(self.max_connections * SHARED_PORT_LOW_WATER)
        self._shared_port_checked_at = -math.inf
        self._alone_logged = False
        self._drain_requested = trio.Event()
        self._done = trio.Event()

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    @property
    def shared_port_member(self) -> bool:
        """In the shared port's group now (False when off, full, draining or stopped)."""
        return self._shared_listener is not None

    # ------------------------------------------------------------------ serving
    @staticmethod
    def _bind(host: str, port: int, backlog: int = LISTEN_BACKLOG, *, shared: bool = False
              ) -> socket.socket:
        """A TCP listener; ``shared``: in the SO_REUSEPORT group of every node bound to the
        same address, among which the kernel spreads new connections."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
        return sock

    @staticmethod
    def _bind_unix(path: str, backlog: int = LISTEN_BACKLOG) -> socket.socket:
        """A Unix-socket listener at ``path``. Whatever file is there is replaced: a killed
        node leaves its socket file behind, and its restart must be able to bind again."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(backlog)
        sock.setblocking(False)
        return sock

    async def _bind_shared(self, patience: float = 15.0) -> socket.socket:
        """Join the shared port's group. A restart right after a SIGKILL has been refused with
        EADDRINUSE once at 40,000 viewers (cause not found; the same bind succeeded later), so
        retry for ``patience`` seconds, logging each refusal, before giving up."""
        deadline = trio.current_time() + patience
        while True:
            try:
                return self._bind(self.config.host, self.config.shared_port, shared=True)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or trio.current_time() >= deadline:
                    raise
                log.warning("shared port %d refused (%s); retrying", self.config.shared_port,
                            exc)
                await trio.sleep(0.5)

    def _leave_balancing(self) -> None:
        """Stop taking new connections from the balancing paths: leave the shared port's
        group (the kernel sends new connections to the other nodes from now on) and close the
        Unix socket."""
        if self._shared_listener is not None:
            trio.lowlevel.notify_closing(self._shared_listener)
            self._shared_listener.close()
            self._shared_listener = None
        self._close_unix_listener()

    def _others_in_shared_port(self) -> bool:
        """Whether another node listens in the shared port's group, so leaving it moves new
        clients there rather than refusing them. Read at most every SHARED_PORT_RECHECK
        seconds while at the high-water mark (alone, the node stays and fills to its cap)."""
        now = trio.current_time()
        if now < self._shared_port_checked_at + SHARED_PORT_RECHECK:
            return False
        self._shared_port_checked_at = now
        try:
            others = listening_sockets(self.config.host, self.config.shared_port) - 1
        except OSError as exc:
            log.warning("cannot count the shared port's group (%s); staying in it", exc)
            return False
        if others <= 0 and not self._alone_logged:
            self._alone_logged = True
            log.warning("at the high-water mark (%d sockets) but alone in the shared port's "
                        "group: staying in it", self.open_sockets)
        return others > 0

    def _leave_shared_port_when_full(self, conns: trio.Nursery) -> None:
        """At the high-water mark: take what the kernel already queued on our shared listener
        (closing it would reset those handshakes; the node has room above the mark for them),
        then leave the group, so new connections go to the nodes with room."""
        listener = self._shared_listener
        assert listener is not None
        before = self.open_sockets
        self._accept_batch(listener, conns, LISTEN_BACKLOG)
        trio.lowlevel.notify_closing(listener)
        listener.close()
        self._shared_listener = None
        self.stats.shared_port_leaves += 1
        log.warning("left the shared port's group at %d sockets (high-water mark %d; %d queued "
                    "taken first); rejoining at %d", self.open_sockets,
                    self.shared_port_high_water, self.open_sockets - before,
                    self.shared_port_low_water)

    async def _rejoin_shared_port_with_room(self, conns: trio.Nursery) -> None:
        """Owns re-entry into the shared port's group after a high-water leave: rejoin once the
        node is back under its low-water mark, unless it is draining (then it stays out)."""
        while True:
            await trio.sleep(SHARED_PORT_RECHECK)
            if self._shared_listener is not None or self.draining or \
                    self.open_sockets > self.shared_port_low_water:
                continue
            try:
                listener = self._bind(self.config.host, self.config.shared_port, shared=True)
            except OSError as exc:
                log.warning("rejoining shared port %d refused (%s); retrying",
                            self.config.shared_port, exc)
                continue
            self._shared_listener = listener
            conns.start_soon(self._accept_loop, listener, conns)
            log.warning("rejoined the shared port's group at %d sockets", self.open_sockets)

    def _close_unix_listener(self) -> None:
        """Stop accepting on the Unix socket and remove its file (once: a node restarted in
        our place may already have bound the path again after that)."""
        if self._unix_listener is None:
            return
        trio.lowlevel.notify_closing(self._unix_listener)
        self._unix_listener.close()
        self._unix_listener = None
        with contextlib.suppress(OSError):
            os.unlink(self.config.unix_socket)

    def internal_error(self, what: str, exc: BaseException) -> None:
        """An unexpected exception ended one connection: count it, log it (rate-limited)."""
        self.stats.internal_errors += 1
        self.error_log.log(log, what, exc)

    def release_socket(self, ip: str) -> None:
        self.open_sockets -= 1
        left = self.sockets_by_ip.get(ip, 0) - 1
        if left > 0:
            self.sockets_by_ip[ip] = left
        else:
            self.sockets_by_ip.pop(ip, None)

    async def serve(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as root:
            await root.start(self.hub.serve)
            if self.cluster is not None:
                await root.start(self.cluster.serve)
            if self.webhook_sender is not None:
                await root.start(self.webhook_sender.serve)
            await root.start(self.chaos.serve)
            root.start_soon(self._reaper)
            root.start_soon(self._lag_monitor)
            async with trio.open_nursery() as conns:
                self._listener = self._bind(self.config.host, self.config.port)
                self.port = self._listener.getsockname()[1]
                if self.config.chaos:
                    self._chaos_listener = self._bind(
                        self.config.chaos_host, self.config.chaos_port, 16)
                    self.chaos_port = self._chaos_listener.getsockname()[1]
                    conns.start_soon(self._chaos_accept_loop, self._chaos_listener, conns)
                conns.start_soon(self._accept_loop, self._listener, conns)
                if self.config.unix_socket:
                    self._unix_listener = self._bind_unix(self.config.unix_socket)
                    conns.start_soon(self._accept_loop, self._unix_listener, conns)
                    log.info("node %s also listening on unix:%s", self.config.node_id,
                             self.config.unix_socket)
                if self.config.shared_port:
                    self._shared_listener = await self._bind_shared()
                    conns.start_soon(self._accept_loop, self._shared_listener, conns)
                    conns.start_soon(self._rejoin_shared_port_with_room, conns)
                    log.info("node %s also listening on shared port %s:%d (SO_REUSEPORT; "
                             "leaves it at %d sockets, rejoins at %d)", self.config.node_id,
                             self.config.host, self.config.shared_port,
                             self.shared_port_high_water, self.shared_port_low_water)
                conns.start_soon(self._drain_when_requested)
                log.info("node %s listening on %s:%d (redis %s)", self.config.node_id,
                         self.config.host, self.port, self.config.redis_url)
                log.info("max_connections %d (%s); per address %s", self.max_connections,
                         self.limit_reason, self.config.max_connections_per_ip or "unlimited")
                if self.config.chaos:
                    log.warning("chaos endpoint on http://%s:%d/chaos/ (loopback only, token "
                                "required)", self.config.chaos_host, self.chaos_port)
                task_status.started(self)
                await self._done.wait()
                conns.cancel_scope.cancel()
            self._leave_balancing()
            for listener in (self._listener, self._chaos_listener):
                if listener is not None:
                    trio.lowlevel.notify_closing(listener)
                    listener.close()
            self._listener = self._chaos_listener = None
            root.cancel_scope.cancel()
        await self.hub.broker.aclose()

    async def _accept_loop(self, listener: socket.socket, conns: trio.Nursery) -> None:
        while True:
            try:
                await trio.lowlevel.wait_readable(listener)
            except trio.ClosedResourceError:
                return
            if self._accept_batch(listener, conns, ACCEPT_BATCH) is not None:
                # EMFILE and friends (another process's descriptors, a lowered limit):
                # let the backlog wait instead of spinning.
                await trio.sleep(0.1)
            if listener is self._shared_listener and \
                    self.open_sockets >= self.shared_port_high_water and \
                    self._others_in_shared_port():
                self._leave_shared_port_when_full(conns)
                return

    def _accept_batch(self, listener: socket.socket, conns: trio.Nursery, limit: int
                      ) -> OSError | None:
        """Accept up to ``limit`` queued connections and start serving each; the error that
        stopped it early (logged), if any. Sockets over max_connections are still accepted
        (into the overflow slots) to be told "over capacity" in their own protocol."""
        per_ip_limit = self.config.max_connections_per_ip
        # A Unix-socket peer (the load balancer on this host) has no address.
        unix = listener.family == socket.AF_UNIX
        for _ in range(limit):
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                return None
            except OSError as exc:
                log.error("accept failed: %s", exc)
                return exc
            ip = "unix" if unix else addr[0]
            from_ip = self.sockets_by_ip.get(ip, 0)
            over = self.open_sockets >= self.max_connections or (
                per_ip_limit > 0 and from_ip >= per_ip_limit)
            if over and self.open_sockets >= self.max_connections + self.overflow_slots:
                # Not even room to say why: close at once (the descriptor is what is short).
                self.stats.rejected_connections += 1
                sock.close()
                continue
            self.open_sockets += 1
            self.sockets_by_ip[ip] = from_ip + 1
            sock.setblocking(False)
            if not unix:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.config.socket_send_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                self.config.socket_send_buffer)
            conns.start_soon(serve_socket, self, self.api_route, sock, ip,
                             ip if unix else f"{ip}:{addr[1]}", over)
        return None

    async def _chaos_accept_loop(self, listener: socket.socket, conns: trio.Nursery) -> None:
        while True:
            try:
                await trio.lowlevel.wait_readable(listener)
            except trio.ClosedResourceError:
                return
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                log.error("chaos accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            if self._chaos_sockets >= MAX_CHAOS_SOCKETS:
                sock.close()
                continue
            self._chaos_sockets += 1
            sock.setblocking(False)
            conns.start_soon(self._serve_chaos_socket, sock, f"{addr[0]}:{addr[1]}")

    async def _serve_chaos_socket(self, sock: socket.socket, peer: str) -> None:
        try:
            await serve_socket(self, self.chaos.handle_request, sock, "", peer, False,
                               admin=True)
        finally:
            self._chaos_sockets -= 1

    async def _reaper(self) -> None:
        """Ping silent clients; close those that do not answer within pong_timeout (4201)."""
        activity = self.config.activity_timeout
        pong_timeout = self.config.pong_timeout
        ping = protocol.ping()
        while True:
            await trio.sleep(REAPER_INTERVAL)
            now = trio.current_time()
            for conn in list(self.connections):
                if conn.ping_sent_at is not None:
                    if now - conn.ping_sent_at > pong_timeout:
                        conn.close(protocol.PONG_NOT_RECEIVED, "pong not received")
                elif now - conn.last_activity > activity:
                    conn.ping_sent_at = now
                    conn.send_message(ping)

    async def _lag_monitor(self) -> None:
        interval = 0.25
        while True:
            start = trio.current_time()
            await trio.sleep(interval)
            lag = max(0.0, trio.current_time() - start - interval)
            self.stats.loop_lag = lag
            self.stats.loop_lag_max = max(self.stats.loop_lag_max, lag)

    # ------------------------------------------------------------------ draining
    def request_drain(self, reason: str, exit_code: int = 0) -> None:
        if not self._drain_requested.is_set():
            self.drain_reason = reason
            self.exit_code = exit_code
            self.draining = True  # /health answers 503 from this instant
            self._drain_requested.set()

    async def _drain_when_requested(self) -> None:
        await self._drain_requested.wait()
        await self._drain()

    async def _drain(self) -> None:
        """Stop accepting, close clients with 4200 spread over the grace period, finish."""
        log.warning("draining (%s): %d connections over %.1f s", self.drain_reason,
                    len(self.connections), self.config.drain_grace)
        # The chaos listener stays open: the harness may still stop a leak while we drain.
        if self._listener is not None:
            trio.lowlevel.notify_closing(self._listener)
            self._listener.close()
            self._listener = None
        self._leave_balancing()
        targets = list(self.connections)
        grace = self.config.drain_grace
        start = trio.current_time()
        for index, conn in enumerate(targets):
            due = start + grace * index / max(1, len(targets))
            if due > trio.current_time():
                await trio.sleep_until(due)
            conn.close(protocol.RECONNECT, "server draining; reconnect")
        with trio.move_on_after(5.0):
            while self.connections:
                await trio.sleep(0.05)
        if self.cluster is not None:
            # Its presence members and counts leave the cluster now, not node_timeout later.
            await self.cluster.retire()
        if self.webhook_sender is not None:
            await self.webhook_sender.release()
        log.warning("drained; exiting with %d", self.exit_code)
        self._done.set()


async def serve_node(config: Config, *,
                     task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
    await Node(config).serve(task_status=task_status)


async def _main(config: Config) -> int:
    node = Node(config)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await nursery.start(node.serve)

            async def watch() -> None:
                async for signum in signals:
                    log.warning("received %s", signal.Signals(signum).name)
                    node.request_drain(f"signal {signal.Signals(signum).name}")

            nursery.start_soon(watch)
            await node._done.wait()
            nursery.cancel_scope.cancel()
    return node.exit_code


def run(config: Config) -> int:
    """Run one node until it is drained; returns the process exit code."""
    try:
        return trio.run(_main, config)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 2
