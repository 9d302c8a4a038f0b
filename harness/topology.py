"""One run's local cluster: Redis, N nodes, HAProxy lanes, and Toxiproxy on the links the
run's faults need. The nodes are turnout's by default, or another Pusher server's
(``TopologySpec.server``; :mod:`harness.servers` says how each is started and checked).

::

    clients ──lane i──▶ [toxiproxy lane i] clients->lb[i] ──▶ [haproxy lane i]
                                           lb[i]->node-k ◀──────────┘ (leastconn, /health checks)
                                                 │
                                                 ▼
                                              node-k ──▶ [toxiproxy backend] node-k->redis ──▶ redis

A link a fault may cut goes through its own Toxiproxy proxy, named as above in
``Topology.proxies``. Every update a viewer receives crosses the client-side links, so a
Toxiproxy hop there costs about 19 µs of CPU per delivery, more than the node's send (python -m
bench.hops, docs/benchmarks.md): the client-side proxies (``clients->lb[i]`` and
``lb[i]->node-k``) exist only when ``TopologySpec.client_proxies``/``lb_proxies`` say so
(client proxies per lane: a fault on ``clients->lb[0]`` needs only lane 0's), which the runner
decides from the experiment's faults (``cluster.proxies``). Without them a client
connects to its lane's HAProxy directly and HAProxy to the nodes directly. The node->redis
proxies carry one message per publish per node and are always there. When lb->node proxies
exist, HAProxy health-checks the nodes *through* them, so cutting that link makes the load
balancer see the node down, as a real partition would.

HAProxy runs in TCP mode with one thread per lane (measured: a relayed frame costs ~30 % less
than in HTTP mode, and a second thread saves nothing), fixed 64 KiB socket buffers, and
connects to the nodes from a source address of its own per lane (127.0.1.<lane+1>), so lanes
never compete for ephemeral ports towards a node.

With ``balancer = "kernel"`` there is no HAProxy: every node also listens on one shared port
with ``SO_REUSEPORT`` (``--shared-port``) and the kernel spreads new connections over the
nodes listening on it, so no balancer process relays a frame (HAProxy's relay cost more CPU
per delivery than the node's own send: docs/benchmarks.md). A node leaves the group when it
drains or dies; what the kernel does not do is health-check: a frozen node keeps its share of
new connections, which time out and retry. A lane is then only its clients' entry: the shared
port, or a Toxiproxy in front of it where a ``clients->lb[i]`` fault needs one; there are no
``lb->node`` links.

A lane in ``TopologySpec.delay_lanes`` has no Toxiproxy even though a fault names its
``clients->lb[i]`` link: it gets a :class:`harness.netdelay.DelayLink` in
``Topology.delay_links`` instead, on which a latency fault holds the lane's packets in the
kernel only while it lasts (found by the lane's entry port, and under the kernel balancer by
its viewers' source addresses, ``TopologySpec.lane_sources``).

Lanes exist because of the 20,000 open-files cap per process: a client connection costs 2
descriptors in its lane's HAProxy and 2 more in its lane's Toxiproxy per proxied hop, so a lane
carries at most 9,000 clients, or 4,000 when both client-side hops are proxied
(:func:`lane_capacity`); a run has ``ceil(clients / capacity)`` lanes. The publisher uses lane 0.

Every listening port comes from :mod:`harness.ports` (outside the ephemeral range), so a killed
node or a re-enabled proxy can always bind its port again, and two runs can share the machine.
"""

from __future__ import annotations

import csv
import enum
import io
import math
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, NoReturn, final

import httpx
import trio

from harness.netdelay import DelayLink, remove_stale_rules
from harness.netdelay import unavailable as netdelay_unavailable
from harness.ports import LOOPBACK, PortAllocator
from harness.procs import (
    HarnessSetupError,
    ManagedProcess,
    ProcessSpec,
    ProcState,
    ProcStats,
    Supervisor,
    find_binary,
    open_supervisor,
    tcp_ready,
)
from harness.redis_server import redis_argv, redis_ready
from harness.servers import SHARED_PORT, UNIX_SOCKET, NodeLaunch, ServerAdapter, server_adapter
from harness.toxiproxy import Proxy, ToxiproxyServer, start_toxiproxy

__all__ = [
    "BALANCERS",
    "HAPROXY_LANE_CAPACITY",
    "LANE_CAPACITY",
    "HarnessSetupError",
    "Lane",
    "NodeProcess",
    "NodeState",
    "Topology",
    "TopologySpec",
    "TopologyStatistics",
    "check_haproxy_config",
    "in_rotation",
    "lane_capacity",
    "render_haproxy_config",
    "run_topology",
]

#: Most client connections one lane may carry when both client-side hops are proxied (4 fds per
#: client in the lane's Toxiproxy; see the module docstring for the fd budget).
LANE_CAPACITY: Final = 4000
#: ... when at most one is (2 fds per client in HAProxy, 2 per proxied hop in Toxiproxy).
HAPROXY_LANE_CAPACITY: Final = 9000
#: How client connections reach the nodes: "haproxy" (a lane of HAProxy, leastconn and health
#: checks) or "kernel" (every node listens on one shared port with SO_REUSEPORT and the kernel
#: spreads new connections over them: no balancer process relays any frame).
BALANCERS: Final = ("haproxy", "kernel")
# Connections a lane's HAProxy accepts beyond its clients: publisher, health probes, stats.
_LANE_HEADROOM: Final = 1000
# HAProxy needs 2 descriptors per connection plus a few of its own under the 20,000 cap.
_HAPROXY_MAXCONN: Final = 9900


def lane_capacity(client_proxies: bool | tuple[int, ...], lb_proxies: bool) -> int:
    """Clients per lane under the 20,000-fd cap, given which client-side hops are proxied."""
    return LANE_CAPACITY if client_proxies and lb_proxies else HAPROXY_LANE_CAPACITY


@dataclass(frozen=True)
class TopologySpec:
    """What to build.  Independent of the experiment-file format on purpose."""

    nodes: int = 2
    clients: int = 0
    history_size: int = 1000
    history_ttl_s: float = 300
    activity_timeout_s: float = 120
    drain_grace_s: float = 10
    max_rss_mb: int = 512
    outbound_queue_bytes: int = 1048576
    socket_send_buffer: int = 0  # 0 = kernel autotuning
    app_id: str = "turnout"
    app_key: str = "turnout-key"
    app_secret: str = "turnout-secret"
    key_prefix: str = "turnout"
    #: False: the nodes run without the reaper (--no-reap-dead-nodes), the presence
    #: negative control
    reap_dead_nodes: bool = True
    #: Token of the nodes' chaos endpoints; None picks a random one per run.
    chaos_token: str | None = None
    #: Command that starts a turnout node (the flags are appended); None = turnout-server.
    node_command: tuple[str, ...] | None = None
    #: Server implementation of the nodes (harness.servers): "turnout" or "sockudo".
    server: str = "turnout"
    #: clients per lane; None: the most the fd cap allows (:func:`lane_capacity`)
    lane_capacity: int | None = None
    ready_timeout_s: float = 30.0
    #: Seed of every Toxiproxy server's RNG (toxicity, jitter) for reproducible runs.
    toxiproxy_seed: int | None = None
    #: Toxiproxy on clients->lb[i] (every client connection of lane i crosses it): True on
    #: every lane, False on none, or the lanes listed
    client_proxies: bool | tuple[int, ...] = True
    #: Toxiproxy on lb[i]->node-k (every client connection crosses one)
    lb_proxies: bool = True
    #: One of :data:`BALANCERS`.
    balancer: str = "haproxy"
    #: Lanes whose client links latency faults delay in the kernel (harness.netdelay) rather
    #: than through a Toxiproxy: no relay on their data path outside the fault.
    delay_lanes: tuple[int, ...] = ()
    #: The fleet's source addresses (harness.fleet_control.source_addresses): under the kernel
    #: balancer lane i's viewers use ``[i::lanes]``, which is how a delay link finds them.
    client_sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a topology needs at least one node")
        if self.clients < 0:
            raise ValueError("clients must be >= 0")
        most = lane_capacity(self.client_proxies, self.lb_proxies)
        if self.lane_capacity is not None and not 1 <= self.lane_capacity <= most:
            raise ValueError(f"lane_capacity must be within 1..{most} (fd cap)")
        adapter = server_adapter(self.server)  # raises ValueError naming the known servers
        if self.balancer not in BALANCERS:
            raise ValueError(f"balancer must be one of {', '.join(BALANCERS)}, "
                             f"got {self.balancer!r}")
        proxied = [lane for lane in self.delay_lanes if self.client_proxy(lane)]
        if proxied:
            raise ValueError(f"lanes {proxied} cannot have both a Toxiproxy and a delay link")
        if self.delay_lanes and self.kernel_balanced and (
                not self.client_sources or len(self.client_sources) % self.lanes):
            raise ValueError(
                f"a delay link under the kernel balancer tells its lane's viewers apart by "
                f"their source addresses: give a multiple of the {self.lanes} lanes, got "
                f"{len(self.client_sources)}")
        if self.kernel_balanced:
            if self.lb_proxies:
                raise ValueError("the kernel balancer has no lb->node links to proxy")
            if SHARED_PORT not in adapter.features:
                raise ValueError(f"the kernel balancer needs nodes with a shared port "
                                 f"(--shared-port); {adapter.name} has none")

    @property
    def kernel_balanced(self) -> bool:
        """Whether the nodes share one SO_REUSEPORT port instead of sitting behind HAProxy."""
        return self.balancer == "kernel"

    @property
    def adapter(self) -> ServerAdapter:
        """The server implementation of the nodes."""
        return server_adapter(self.server)

    @property
    def capacity(self) -> int:
        """Clients per lane."""
        if self.lane_capacity is not None:
            return self.lane_capacity
        return lane_capacity(self.client_proxies, self.lb_proxies)

    @property
    def lanes(self) -> int:
        return max(1, math.ceil(self.clients / self.capacity))

    def lane_sources(self, lane: int) -> tuple[str, ...]:
        """The source addresses of lane ``lane``'s viewers, where they tell the lane apart (the
        kernel balancer: every lane enters through one port); () where its port does."""
        if not self.kernel_balanced:
            return ()
        return self.client_sources[lane::self.lanes]

    def client_proxy(self, lane: int) -> bool:
        """Whether lane ``lane``'s clients come in through a clients->lb proxy."""
        if isinstance(self.client_proxies, bool):
            return self.client_proxies
        return lane in self.client_proxies

    @property
    def node_names(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.nodes + 1)]


class NodeState(enum.StrEnum):
    STARTING = "starting"
    UP = "up"
    DRAINING = "draining"  # SIGTERM sent by us, not exited yet
    PAUSED = "paused"  # SIGSTOPped
    KILLED = "killed"  # died from a signal
    EXITED = "exited"  # exited by itself: 0 after a drain, 3 after its memory watchdog


@final
class NodeProcess:
    """One node, whatever server runs it.  Fault code acts on it through these methods: kill,
    drain, pause and restart are process signals, the same for every server; health asks the
    server's own health endpoint (:attr:`harness.servers.ServerAdapter.health_path`)."""

    def __init__(self, name: str, port: int, process: ManagedProcess, drain_grace_s: float,
                 adapter: ServerAdapter | None = None, chaos_port: int = 0):
        self.name = name
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        #: The node's chaos endpoint: its own loopback listener, never the public port.
        self.chaos_url = f"http://{LOOPBACK}:{chaos_port}"
        self.process = process
        self._drain_grace_s = drain_grace_s
        self.adapter = adapter if adapter is not None else server_adapter("turnout")

    def __repr__(self) -> str:
        return f"<NodeProcess {self.name} :{self.port} pid={self.pid} {self.state}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode

    @property
    def state(self) -> NodeState:
        match self.process.state:
            case ProcState.STARTING:
                return NodeState.STARTING
            case ProcState.RUNNING:
                return NodeState.UP
            case ProcState.PAUSED:
                return NodeState.PAUSED
            case ProcState.STOPPING:
                return NodeState.DRAINING
            case _:
                code = self.process.returncode
                return NodeState.KILLED if code is not None and code < 0 else NodeState.EXITED

    async def drain(self, grace: float | None = None) -> int:
        """SIGTERM (the node drains its clients), SIGKILL if still alive after the grace."""
        return await self.process.stop(self._drain_grace_s + 5 if grace is None else grace)

    async def kill(self) -> int:
        return await self.process.kill()

    def pause(self) -> None:
        self.process.pause()

    def resume(self) -> None:
        self.process.resume()

    async def restart(self) -> None:
        """Stop if needed and start again on the same port; returns once /health is 200."""
        await self.process.restart(grace=self._drain_grace_s + 5)

    async def wait(self) -> int:
        return await self.process.wait()

    async def health(self, timeout: float = 1.0) -> int | None:
        """Status of a direct GET of the health endpoint (bypassing every proxy); None if
        unreachable."""
        async with httpx.AsyncClient(trust_env=False, timeout=timeout) as client:
            try:
                return (await client.get(self.adapter.health_url(self.port))).status_code
            except httpx.HTTPError:
                return None


@final
@dataclass(frozen=True, eq=False)
class Lane:
    """One shard of the client-facing path: a Toxiproxy process and an HAProxy process (none
    under the kernel balancer, where ``frontend_port`` is the nodes' shared port)."""

    index: int
    toxiproxy: ToxiproxyServer | None  # None when neither client-side hop is proxied
    haproxy: ManagedProcess | None  # None under the kernel balancer
    frontend_port: int
    stats_port: int | None
    config_path: Path | None
    api_port: int | None = field(default=None, kw_only=True)  # the HTTP-mode API frontend
    entry: Proxy | None  # clients->lb[i]; None: clients connect to HAProxy directly
    node_proxies: Mapping[str, Proxy] = field(repr=False)  # node name -> lb[i]->node (or none)

    @property
    def entry_address(self) -> str:
        """host:port clients of this lane connect to."""
        if self.entry is not None:
            return self.entry.listen
        return f"{LOOPBACK}:{self.frontend_port}"

    @property
    def entry_url(self) -> str:
        """HTTP base URL clients of this lane use (Pusher HTTP API, /health)."""
        return f"http://{self.entry_address}"

    @property
    def api_url(self) -> str:
        """HTTP base URL of the Pusher HTTP API as a publisher reaches it: HAProxy in HTTP mode,
        each request balanced on its own (falls back to the websocket entry)."""
        if self.api_port is None:
            return self.entry_url
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def ws_url(self) -> str:
        """Websocket base URL; append ``/app/<key>?protocol=7...``."""
        return f"ws://{self.entry_address}"

    async def backend_status(self, timeout: float = 2.0) -> dict[str, tuple[str, str]]:
        """HAProxy's view of each node: name -> (status, last check status), e.g. ("UP", "L7OK");
        empty under the kernel balancer, which keeps no view (a node is in its group from its
        bind until it drains or dies)."""
        if self.stats_port is None:
            return {}
        url = f"http://{LOOPBACK}:{self.stats_port}/;csv"
        async with httpx.AsyncClient(trust_env=False, timeout=timeout) as client:
            text = (await client.get(url)).raise_for_status().text
        rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
        return {
            row["svname"]: (row["status"], row["check_status"])
            for row in rows
            if row["pxname"] == "nodes" and row["svname"] not in ("FRONTEND", "BACKEND")
        }


def in_rotation(status: tuple[str, str]) -> bool:
    """Whether HAProxy's (status, last check) puts the node in rotation after a passing check:
    "UP", or "UP 1/2" when the one failed check timed out. A node slow to answer /health
    under a reconnect storm is loaded, not gone; a refused or failed check is not waved
    through, and a second slow one takes the node out ("DOWN")."""
    state, check = status
    return state == "UP" or (state.startswith("UP ") and check.lstrip("* ") in _SLOW_CHECKS)


#: HAProxy's check results for an answer that did not come in time (not a refusal).
_SLOW_CHECKS: Final = frozenset({"L7TOUT", "L4TOUT"})


@dataclass(frozen=True)
class TopologyStatistics:
    processes: tuple[ProcStats, ...]
    nodes: Mapping[str, NodeState]
    lanes: int
    links: tuple[str, ...]
    total_rss_bytes: int
    total_fds: int


@final
class Topology:
    """Everything a fault or a client fleet needs about the running cluster."""

    def __init__(self, spec: TopologySpec, run_dir: Path, supervisor: Supervisor) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.supervisor = supervisor
        self.chaos_token = spec.chaos_token or secrets.token_urlsafe(16)
        self.redis: ManagedProcess | None = None
        self.redis_port = 0
        self.backend_toxiproxy: ToxiproxyServer | None = None
        self.nodes: dict[str, NodeProcess] = {}
        self.lanes: list[Lane] = []
        #: link name -> proxy: "clients->lb[0]", "lb[0]->node-1", "node-1->redis".
        self.proxies: dict[str, Proxy] = {}
        #: client links no Toxiproxy relays, which latency faults delay in the kernel
        self.delay_links: dict[str, DelayLink] = {}

    @property
    def link_names(self) -> tuple[str, ...]:
        """Every link a fault can name: the proxied ones and the delay links."""
        return tuple(self.proxies) + tuple(self.delay_links)

    @property
    def redis_url(self) -> str:
        """Direct Redis URL (no proxy), for inspection by checkers, never for the nodes."""
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    @property
    def entry_urls(self) -> list[str]:
        return [lane.entry_url for lane in self.lanes]

    @property
    def ws_urls(self) -> list[str]:
        return [lane.ws_url for lane in self.lanes]

    @property
    def http_api_url(self) -> str:
        """Base URL of the Pusher HTTP API (POST /apps/<id>/events): lane 0's HTTP frontend, so
        each publish is balanced on its own, as an app's backend reaches the API through a
        load balancer (a keep-alive connection through the TCP relay would pin every publish,
        and its retries, to one node)."""
        return self.lanes[0].api_url

    @property
    def toxiproxies(self) -> list[ToxiproxyServer]:
        backend = [self.backend_toxiproxy] if self.backend_toxiproxy is not None else []
        return backend + [lane.toxiproxy for lane in self.lanes if lane.toxiproxy is not None]

    def proxy(self, link: str) -> Proxy:
        try:
            return self.proxies[link]
        except KeyError:
            raise KeyError(f"no link {link!r}; links: {sorted(self.proxies)}") from None

    async def stop_redis(self, *, flush: bool = False) -> None:
        """Stop Redis gracefully (SIGTERM: it writes its AOF); ``flush`` deletes its data."""
        assert self.redis is not None
        await self.redis.stop(5.0)
        if flush:
            data_dir = self.run_dir / "redis"
            for path in sorted(data_dir.rglob("*"), reverse=True):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()

    async def start_redis(self) -> None:
        """Start Redis again on the same port; returns once it answers PING."""
        assert self.redis is not None
        await self.redis.restart()

    async def reset_faults(self) -> None:
        """Remove every toxic and re-enable every proxy on every Toxiproxy server."""
        async with trio.open_nursery() as nursery:
            for server in self.toxiproxies:
                nursery.start_soon(server.reset)

    async def lb_status(self) -> dict[int, dict[str, tuple[str, str]]]:
        """Per lane, HAProxy's view of each node (see :meth:`Lane.backend_status`)."""
        return {lane.index: await lane.backend_status() for lane in self.lanes}

    async def wait_lb_ready(
        self, nodes: Sequence[str] | None = None, *, timeout: float = 15.0
    ) -> None:
        """Wait until every lane's HAProxy has ``nodes`` (default: all up nodes) in rotation
        (:func:`in_rotation`), and the health endpoint through every lane's entry answers 200.
        Under the kernel balancer a node is in rotation once its own health endpoint answers
        200 (it binds the shared port before it serves)."""
        wanted = (
            list(nodes)
            if nodes is not None
            else [n.name for n in self.nodes.values() if n.state is NodeState.UP]
        )
        last: object = None
        with trio.move_on_after(timeout) as scope:
            async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
                while True:
                    try:
                        ready = True
                        if self.spec.kernel_balanced:
                            for name in wanted:
                                code = await self.nodes[name].health()
                                last = f"{name} health -> {code}"
                                if code != 200:
                                    ready = False
                        for lane in self.lanes if ready else ():
                            if lane.haproxy is not None:
                                status = await lane.backend_status()
                                last = status
                                if not all(in_rotation(status.get(n, ("?", "")))
                                           for n in wanted):
                                    ready = False
                                    break
                            path = self.spec.adapter.health_path
                            response = await client.get(f"{lane.entry_url}{path}")
                            last = f"lane {lane.index} GET {path} -> {response.status_code}"
                            if response.status_code != 200:
                                ready = False
                                break
                        if ready:
                            return
                    except httpx.HTTPError as exc:
                        last = exc
                    await trio.sleep(0.1)
        if scope.cancelled_caught:
            raise TimeoutError(f"load balancer not ready for {wanted} in {timeout:g}s: {last}")

    def statistics(self) -> TopologyStatistics:
        procs = tuple(p.statistics() for p in self.supervisor.processes.values())
        return TopologyStatistics(
            processes=procs,
            nodes={name: node.state for name, node in self.nodes.items()},
            lanes=len(self.lanes),
            links=tuple(sorted(self.proxies)),
            total_rss_bytes=sum(p.rss_bytes or 0 for p in procs),
            total_fds=sum(p.num_fds or 0 for p in procs),
        )


# --- building blocks -----------------------------------------------------------------------


def render_haproxy_config(
    *,
    lane: int,
    frontend_port: int,
    stats_port: int,
    backends: Mapping[str, tuple[str, int] | str],
    maxconn: int,
    source: str | None = None,
    health_checks: bool = True,
    api_port: int | None = None,
    health_path: str = "/health",
) -> str:
    """HAProxy config of one lane: one TCP frontend for websockets and the HTTP API.

    TCP mode: the load balancer only has to pick a healthy node and relay bytes; measured per
    relayed frame it costs ~30 % less CPU than HTTP mode (docs/benchmarks.md, "Hops"). One
    thread: a second one saves nothing per frame and lanes already spread the load.
    A backend is ``(host, port)`` or the path of the node's Unix socket (no TCP stack on that
    hop). ``source`` is the address HAProxy connects to TCP backends from (its own per lane).
    ``api_port``, if given, adds an HTTP-mode frontend for the publisher: every request is
    balanced round robin on its own; its servers track the relay's health checks (no second
    set of checks).
    """
    check = " check" if health_checks else ""

    def address(backend: tuple[str, int] | str) -> str:
        if isinstance(backend, str):
            return f"unix@{backend}"
        host, port = backend
        return f"{host}:{port}" + (f" source {source}" if source else "")

    servers = "\n".join(
        f"    server {name} {address(backend)}{check}" for name, backend in backends.items()
    )
    api = ""
    if api_port is not None:
        tracked = "\n".join(
            f"    server {name} {address(backend)}"
            + (f" track nodes/{name}" if health_checks else "")
            for name, backend in backends.items()
        )
        api = f"""
frontend api{lane}
    mode http
    bind {LOOPBACK}:{api_port}
    maxconn 256
    timeout client 30s
    default_backend api

backend api
    mode http
    balance roundrobin
    timeout server 30s
{tracked}
"""
    return f"""\
# Generated by turnout's harness (lane {lane}). Started as: haproxy -f <this> -db
global
    maxconn {maxconn}
    nbthread 1
    # Only alerts/notices (server UP/DOWN transitions), never one line per request.
    log stdout format raw local0 notice
    # Fixed socket buffers, as a load balancer in front of tens of thousands of sockets is
    # configured: with kernel autotuning each proxied connection could hold megabytes for a
    # stalled client, hiding it from the nodes' slow-consumer policy and costing memory.
    tune.sndbuf.client 65536
    tune.sndbuf.server 65536
    tune.rcvbuf.client 65536
    tune.rcvbuf.server 65536

defaults
    mode tcp
    log global
    option dontlognull
    timeout connect 2s
    # Websockets idle for long stretches between broadcasts: keep them for an hour.
    timeout client 1h
    timeout server 1h
    timeout client-fin 5s
    timeout queue 5s
    timeout check 1s
    retries 2
    option redispatch

frontend lane{lane}
    bind {LOOPBACK}:{frontend_port}
    maxconn {maxconn}
    default_backend nodes

backend nodes
    balance leastconn
    option httpchk GET {health_path} HTTP/1.1
    http-check send hdr Host turnout
    http-check expect status 200
    # A check every 2 s while all is well (each is an HTTP request the node serves: at 6
    # nodes x 5 lanes, every 500 ms was 60 requests a second), every 500 ms once one failed
    # or the server is down, so a dead node is still out of rotation within ~3 s.
    default-server inter 2s fastinter 500ms downinter 500ms fall 2 rise 2 maxconn {maxconn}
{servers}
{api}
listen stats
    mode http
    bind {LOOPBACK}:{stats_port}
    maxconn 16
    stats enable
    stats uri /
"""


async def check_haproxy_config(path: Path, *, timeout: float = 10.0) -> str:
    """Run ``haproxy -c -f path``; return its output, raise HarnessSetupError if rejected."""
    binary = find_binary("haproxy", hint="install it: apt-get install haproxy")
    with trio.fail_after(timeout):
        result = await trio.run_process(
            [binary, "-c", "-f", str(path)], capture_stdout=True, capture_stderr=True, check=False
        )
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    if result.returncode != 0:
        raise HarnessSetupError(f"haproxy rejected {path}:\n{output}")
    return output


def lane_source_address(lane: int) -> str:
    """The address lane ``lane``'s HAProxy connects to the nodes from (127.0.1.<lane+1>)."""
    return f"127.0.1.{lane + 1}"


async def _concurrently(thunks: Sequence[Callable[[], Awaitable[object]]]) -> None:
    """Run setup steps concurrently; re-raise the first real failure unwrapped, so run_topology
    fails with e.g. ``ProcessFailed: node-2 exited...`` rather than a nested ExceptionGroup."""
    try:
        async with trio.open_nursery() as nursery:
            for thunk in thunks:
                nursery.start_soon(thunk)
    except BaseExceptionGroup as group:
        _, rest = group.split(trio.Cancelled)
        leaves: list[BaseException] = []
        pending: list[BaseException] = [rest] if rest is not None else []
        while pending:
            exc = pending.pop()
            if isinstance(exc, BaseExceptionGroup):
                pending.extend(reversed(exc.exceptions))
            else:
                leaves.append(exc)
        if leaves and all(isinstance(e, Exception) for e in leaves):
            first = leaves[0]
            if len(leaves) > 1:
                first.add_note(f"({len(leaves) - 1} more failure(s) in the same setup step)")
            raise first from None
        raise


def _prepare_run_dir(run_dir: Path, spec: TopologySpec) -> Path:
    run_dir = Path(run_dir).resolve()
    for sub in ("logs", "redis", *spec.node_names):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return run_dir


#: HAProxy takes `unix@` paths of at most 97 bytes (sun_path holds 108).
_UNIX_PATH_MAX = 97


def _unix_socket_path(run_dir: Path, name: str, stack: AsyncExitStack) -> str:
    """``<run_dir>/<node>/node.sock``, or a short temporary folder's when that is too long
    for a socket address (deep pytest folders); the folder goes with the topology."""
    path = run_dir / name / "node.sock"
    if len(str(path)) <= _UNIX_PATH_MAX:
        return str(path)
    short = Path(tempfile.mkdtemp(prefix="turnout-"))
    stack.callback(shutil.rmtree, short, True)
    return str(short / f"{name}.sock")


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def _require_binaries(spec: TopologySpec) -> dict[str, str]:
    """Fail before starting anything if a binary is missing."""
    found = {
        "redis-server": find_binary(
            "redis-server", hint="install it: apt-get install redis-server"
        ),
        "haproxy": find_binary("haproxy", hint="install it: apt-get install haproxy"),
        "toxiproxy-server": find_binary("toxiproxy-server", hint="run scripts/setup.sh"),
    }
    spec.adapter.require(spec)
    if spec.delay_lanes and (missing := netdelay_unavailable()):
        raise HarnessSetupError(missing)
    return found


# --- the service ---------------------------------------------------------------------------


async def run_topology(
    spec: TopologySpec,
    run_dir: Path,
    *,
    task_status: trio.TaskStatus[Topology] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Start the whole cluster, hand back a :class:`Topology` once the LB routes to every node,
    and tear everything down when cancelled.

    Raises:
        HarnessSetupError: a binary is missing or a port could not be reserved.
        ProcessFailed: a component exited or was not ready in time (message has its log tail).
        TimeoutError: HAProxy did not see every node healthy in time.
    """
    binaries = _require_binaries(spec)
    run_dir = _prepare_run_dir(run_dir, spec)
    ports = PortAllocator()

    def reserve() -> int:
        try:
            return ports.allocate()
        except OSError as exc:
            raise HarnessSetupError(f"could not reserve a loopback port: {exc}") from exc

    async with AsyncExitStack() as stack:
        stack.callback(ports.close)
        supervisor = await stack.enter_async_context(
            open_supervisor(run_dir / "logs", teardown_grace=3.0)
        )
        topo = Topology(spec, run_dir, supervisor)
        timeout = spec.ready_timeout_s

        # 1. Redis.
        topo.redis_port = reserve()
        topo.redis = await supervisor.start(
            ProcessSpec(
                name="redis",
                argv=redis_argv(binaries["redis-server"], topo.redis_port, run_dir / "redis",
                                persist=True),
                ready=redis_ready(LOOPBACK, topo.redis_port),
                ready_timeout=timeout,
            )
        )

        # 2. Backend Toxiproxy and one node->redis proxy per node.
        backend = await start_toxiproxy(
            supervisor, "toxiproxy-backend", seed=spec.toxiproxy_seed, ports=ports
        )
        stack.push_async_callback(backend.aclose)
        topo.backend_toxiproxy = backend
        for name in spec.node_names:
            topo.proxies[f"{name}->redis"] = await backend.create_proxy(
                f"{name}.redis", f"{LOOPBACK}:{topo.redis_port}", listen_port=reserve()
            )

        # 3. Nodes, concurrently (each is a Python start-up).
        node_ports = {name: reserve() for name in spec.node_names}
        chaos_ports = {name: reserve() for name in spec.node_names}

        adapter = spec.adapter

        # Without a proxy between the load balancer and a node, HAProxy reaches it over a Unix
        # socket where the server has one: that hop is on the same host, and a Unix socket
        # skips the TCP stack (docs/benchmarks.md, "Hops").
        unix_paths: dict[str, str] = {}
        if UNIX_SOCKET in adapter.features and not spec.lb_proxies and not spec.kernel_balanced:
            unix_paths = {name: _unix_socket_path(run_dir, name, stack)
                          for name in spec.node_names}
        shared_port = reserve() if spec.kernel_balanced else 0

        async def start_node(name: str) -> None:
            port = node_ports[name]
            launch = NodeLaunch(name=name, port=port,
                                redis_url=f"redis://{topo.proxies[f'{name}->redis'].listen}/0",
                                cwd=run_dir / name, chaos_token=topo.chaos_token,
                                chaos_port=chaos_ports[name],
                                unix_socket=unix_paths.get(name, ""),
                                shared_port=shared_port)
            process = await supervisor.start(adapter.process_spec(spec, launch))
            topo.nodes[name] = NodeProcess(name, port, process, spec.drain_grace_s, adapter,
                                           chaos_ports[name])

        await _concurrently([partial(start_node, n) for n in spec.node_names])
        topo.nodes = {name: topo.nodes[name] for name in spec.node_names}  # stable order

        # 4. Lanes: an HAProxy each, and a Toxiproxy for the client-side hops that need one.
        maxconn = min(spec.capacity + _LANE_HEADROOM, _HAPROXY_MAXCONN)
        lanes: dict[int, Lane] = {}

        async def lane_toxiproxy(index: int, needed: bool) -> ToxiproxyServer | None:
            if not needed:
                return None
            toxi = await start_toxiproxy(
                supervisor, f"toxiproxy-lane{index}", seed=spec.toxiproxy_seed, ports=ports
            )
            stack.push_async_callback(toxi.aclose)
            return toxi

        async def client_entry(index: int, toxi: ToxiproxyServer | None,
                               port: int) -> Proxy | None:
            """The lane's clients->lb proxy in front of ``port``, where a fault needs one."""
            if toxi is None or not spec.client_proxy(index):
                return None
            return await toxi.create_proxy(
                f"lane{index}.clients-lb", f"{LOOPBACK}:{port}", listen_port=reserve()
            )

        async def start_kernel_lane(index: int) -> None:
            # No balancer process: the lane is its clients' entry (a Toxiproxy where a fault
            # needs one) to the nodes' shared port.
            toxi = await lane_toxiproxy(index, spec.client_proxy(index))
            lanes[index] = Lane(index=index, toxiproxy=toxi, haproxy=None,
                                frontend_port=shared_port, stats_port=None, config_path=None,
                                entry=await client_entry(index, toxi, shared_port),
                                node_proxies={})

        async def start_lane(index: int) -> None:
            toxi = await lane_toxiproxy(index, spec.client_proxy(index) or spec.lb_proxies)
            node_proxies: dict[str, Proxy] = {}
            backends: dict[str, tuple[str, int] | str] = {}
            for name, node in topo.nodes.items():
                if toxi is not None and spec.lb_proxies:
                    proxy = await toxi.create_proxy(
                        f"lane{index}.lb-{name}", f"{LOOPBACK}:{node.port}",
                        listen_port=reserve()
                    )
                    node_proxies[name] = proxy
                    backends[name] = (proxy.listen_host, proxy.listen_port)
                else:
                    backends[name] = unix_paths.get(name) or (LOOPBACK, node.port)
            frontend_port, stats_port = reserve(), reserve()
            api_port = reserve() if index == 0 else None
            config_path = run_dir / f"haproxy-lane{index}.cfg"
            _write_text(
                config_path,
                render_haproxy_config(
                    lane=index,
                    frontend_port=frontend_port,
                    stats_port=stats_port,
                    backends=backends,
                    maxconn=maxconn,
                    source=lane_source_address(index),
                    api_port=api_port,
                    health_path=adapter.health_path,
                ),
            )
            haproxy = await supervisor.start(
                ProcessSpec(
                    name=f"haproxy-lane{index}",
                    argv=[binaries["haproxy"], "-f", str(config_path), "-db"],
                    ready=tcp_ready(LOOPBACK, stats_port),
                    ready_timeout=timeout,
                    stop_grace=2.0,
                )
            )
            entry = await client_entry(index, toxi, frontend_port)
            lanes[index] = Lane(
                index=index,
                toxiproxy=toxi,
                haproxy=haproxy,
                frontend_port=frontend_port,
                stats_port=stats_port,
                config_path=config_path,
                api_port=api_port,
                entry=entry,
                node_proxies=node_proxies,
            )

        starter = start_kernel_lane if spec.kernel_balanced else start_lane
        await _concurrently([partial(starter, i) for i in range(spec.lanes)])
        topo.lanes = [lanes[i] for i in range(spec.lanes)]
        if spec.delay_lanes:
            await remove_stale_rules()
            holders = await stack.enter_async_context(trio.open_nursery())
            for index in spec.delay_lanes:
                name = f"clients->lb[{index}]"
                topo.delay_links[name] = DelayLink(
                    name, topo.lanes[index].frontend_port, spec.lane_sources(index), holders,
                    queue_numbers=reserve, release_number=ports.release,
                    seed=spec.toxiproxy_seed)
        for lane in topo.lanes:
            if lane.entry is not None:
                topo.proxies[f"clients->lb[{lane.index}]"] = lane.entry
            for name, proxy in lane.node_proxies.items():
                topo.proxies[f"lb[{lane.index}]->{name}"] = proxy

        # 5. Ready only when every HAProxy routes to every node, end to end.
        await topo.wait_lb_ready(timeout=timeout)
        task_status.started(topo)
        await trio.sleep(math.inf)
    raise AssertionError("unreachable")  # pragma: no cover
