"""Server adapters: which Pusher server implementation runs the cluster's nodes.

The topology (Redis, Toxiproxy on every node->redis link, HAProxy lanes with their health
checks) is the same whatever runs behind it; only the node process differs. A
:class:`ServerAdapter` says, for one implementation:

- how to **start** a node (:meth:`ServerAdapter.process_spec`: command line, environment,
  readiness probe) given its name, port and the Redis URL it must use (through its proxy);
- where its **health** endpoint is (:attr:`ServerAdapter.health_path`, used by HAProxy's
  checks, by readiness and by :meth:`harness.topology.NodeProcess.health`);
- what it **supports** (:attr:`ServerAdapter.features`), so a fault needing a feature the
  server lacks is skipped with :meth:`ServerAdapter.skip_reason` instead of failing the run.

Kill (SIGKILL), drain (SIGTERM, SIGKILL after a grace), pause (SIGSTOP/SIGCONT) and restart
(stop, start the same spec again) are plain process signals, identical for every server:
:class:`harness.topology.NodeProcess` implements them once over the supervisor's process.

Adapters: :class:`TurnoutServer` (the default: ``turnout-server`` with its chaos endpoint and
server positions) and :class:`SockudoServer` (Sockudo 5.x over its Redis adapter; see
docs/peers.md). ``server_adapter(name)`` looks one up.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

from .ports import LOOPBACK
from .procs import REPO_ROOT, HarnessSetupError, ProcessSpec, find_binary, http_ready

if TYPE_CHECKING:
    from .topology import TopologySpec

__all__ = [
    "CHAOS_ENDPOINT",
    "POSITIONS",
    "SERVERS",
    "SHARED_PORT",
    "UNIX_SOCKET",
    "NodeLaunch",
    "ServerAdapter",
    "SockudoServer",
    "TurnoutServer",
    "server_adapter",
]

#: Feature: POST /chaos/leak and /chaos/stop (turnout's chaos endpoint; leak_memory needs it).
CHAOS_ENDPOINT: Final = "chaos_endpoint"
#: Feature: every update carries a server position (offset, epoch) and resubscribes resume.
POSITIONS: Final = "positions"
#: Feature: a memory watchdog that drains the node above cluster.max_rss_mb.
MEMORY_WATCHDOG: Final = "memory_watchdog"
#: Feature: Prometheus /metrics on the node's own port with turnout_* counters.
NODE_METRICS: Final = "node_metrics"
#: Feature: also serves on a Unix socket (``--unix-socket``), which the load balancer uses
#: when no fault needs a proxy between it and the node (docs/benchmarks.md, "Hops").
UNIX_SOCKET: Final = "unix_socket"
#: Feature: also listens on a TCP port shared by every node (``--shared-port``, SO_REUSEPORT),
#: for ``cluster.balancer = "kernel"``: the kernel spreads connections over the nodes.
SHARED_PORT: Final = "shared_port"


@dataclass(frozen=True)
class NodeLaunch:
    """Where one node runs: everything an adapter needs to build its process."""

    name: str
    port: int
    #: Redis URL the node must use: through its node->redis proxy, never Redis directly
    redis_url: str
    cwd: Path
    chaos_token: str
    #: turnout's chaos endpoint listens on its own loopback port, never the public one
    chaos_port: int = 0
    #: the node's Unix-socket path for the load balancer ("" = TCP only)
    unix_socket: str = ""
    #: the TCP port every node shares under the kernel balancer (0 = none)
    shared_port: int = 0


class ServerAdapter(ABC):
    """One server implementation (see the module docstring)."""

    name: ClassVar[str]
    health_path: ClassVar[str] = "/health"
    features: ClassVar[frozenset[str]] = frozenset()

    def skip_reason(self, fault_kind: str, needs: frozenset[str]) -> str | None:
        """Why a fault of ``fault_kind`` needing ``needs`` cannot run here; None if it can."""
        missing = sorted(needs - self.features)
        if not missing:
            return None
        return (f"{fault_kind} needs {', '.join(missing)}, a turnout-only feature "
                f"that the {self.name} server does not have")

    @abstractmethod
    def require(self, spec: TopologySpec) -> None:
        """Raise :class:`HarnessSetupError` naming what is missing to start a node."""

    @abstractmethod
    def process_spec(self, spec: TopologySpec, launch: NodeLaunch) -> ProcessSpec:
        """The supervised process of one node (readiness: its health endpoint answers 200)."""

    def health_url(self, port: int) -> str:
        return f"http://{LOOPBACK}:{port}{self.health_path}"

    def metrics_url(self, port: int) -> str | None:
        """Where the node's turnout_* metrics are, if it has them."""
        return f"http://{LOOPBACK}:{port}/metrics" if NODE_METRICS in self.features else None

    def describe(self) -> str:
        """Name and version, for reports ("sockudo 5.2.0")."""
        return self.name


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class TurnoutServer(ServerAdapter):
    """turnout's own node (``server/``), started with ``--chaos`` so leak_memory can act."""

    name = "turnout"
    features = frozenset({CHAOS_ENDPOINT, POSITIONS, MEMORY_WATCHDOG, NODE_METRICS,
                          UNIX_SOCKET, SHARED_PORT})

    def command(self, spec: TopologySpec) -> list[str]:
        if spec.node_command:
            return list(spec.node_command)
        script = Path(sys.executable).parent / "turnout-server"
        if script.exists():
            return [str(script)]
        return [sys.executable, "-m", "server"]

    def describe(self) -> str:
        try:
            return f"turnout {importlib.metadata.version('turnout')}"
        except importlib.metadata.PackageNotFoundError:
            return "turnout"

    def require(self, spec: TopologySpec) -> None:
        command = self.command(spec)
        if os.sep in command[0] and not os.access(command[0], os.X_OK):
            raise HarnessSetupError(f"node command {command[0]} is not executable")

    def argv(self, spec: TopologySpec, launch: NodeLaunch) -> list[str]:
        """The node's command line. Secrets go in the environment (:meth:`secrets`): they stay
        out of ``ps`` and of the node log's start line, and a token that begins with "-"
        cannot be mistaken for a flag."""
        return [
            *self.command(spec),
            "--host", LOOPBACK,
            "--port", str(launch.port),
            "--redis-url", launch.redis_url,
            "--node-id", launch.name,
            "--app-id", spec.app_id,
            "--app-key", spec.app_key,
            "--history-size", str(spec.history_size),
            "--history-ttl", _num(spec.history_ttl_s),
            "--activity-timeout", _num(spec.activity_timeout_s),
            "--drain-grace", _num(spec.drain_grace_s),
            "--max-rss", str(spec.max_rss_mb),
            "--outbound-queue-bytes", str(spec.outbound_queue_bytes),
            "--socket-send-buffer", str(spec.socket_send_buffer),
            "--key-prefix", spec.key_prefix,
            "--chaos",
            "--chaos-port", str(launch.chaos_port),
            *(("--unix-socket", launch.unix_socket) if launch.unix_socket else ()),
            *(("--shared-port", str(launch.shared_port)) if launch.shared_port else ()),
            *(() if spec.reap_dead_nodes else ("--no-reap-dead-nodes",)),
        ]  # fmt: skip

    @staticmethod
    def secrets(spec: TopologySpec, token: str) -> dict[str, str | None]:
        return {"TURNOUT_APP_SECRET": spec.app_secret, "TURNOUT_CHAOS_TOKEN": token}

    @staticmethod
    def stray_env() -> dict[str, None]:
        # The node reads TURNOUT_* variables (TURNOUT_CONFIG, TURNOUT_MAX_CONNECTIONS...) for
        # every setting we do not pass as a flag: whatever is in the harness's environment
        # must not leak.
        return {key: None for key in os.environ if key.startswith("TURNOUT_")}

    def process_spec(self, spec: TopologySpec, launch: NodeLaunch) -> ProcessSpec:
        # -m server (no installed script) must find the repo whatever the cwd.
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        return ProcessSpec(
            name=launch.name,
            argv=self.argv(spec, launch),
            env={**self.stray_env(), **self.secrets(spec, launch.chaos_token),
                 "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath},
            cwd=launch.cwd,
            ready=http_ready(self.health_url(launch.port)),
            ready_timeout=spec.ready_timeout_s,
            stop_grace=spec.drain_grace_s + 5,
        )


#: Where ``cargo install`` puts binaries; searched after TURNOUT_SOCKUDO_BIN, .tools/bin, PATH.
CARGO_BIN: Final = Path.home() / ".cargo" / "bin"
SOCKUDO_HINT: Final = ("install it with scripts/setup-peers.sh (cargo install sockudo --version "
                       "5.2.0 --features redis --locked; needs protobuf-compiler), or point "
                       "TURNOUT_SOCKUDO_BIN at the binary")


def find_sockudo() -> str:
    """The sockudo binary (TURNOUT_SOCKUDO_BIN, .tools/bin, PATH, ~/.cargo/bin)."""
    try:
        return find_binary("sockudo", hint=SOCKUDO_HINT)
    except HarnessSetupError:
        if "TURNOUT_SOCKUDO_BIN" in os.environ:
            raise
        candidate = CARGO_BIN / "sockudo"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        raise


class SockudoServer(ServerAdapter):
    """Sockudo (Rust, https://github.com/sockudo/sockudo), configured by environment only.

    Clustered over Redis it needs ``ADAPTER_DRIVER=redis`` and ``CACHE_DRIVER=redis`` (it
    refuses to start clustered without the latter); ``REDIS_URL`` points every Redis user
    (adapter, cache, queue) at the node's proxy. Its defaults would cap the default app at 100
    connections and rate-limit websocket connections per address (the whole fleet comes from
    a few loopback addresses), so both are lifted. Metrics are off: their port (9601 by
    default) would collide between nodes, and the harness measures CPU and RSS itself.
    Sockudo speaks plain Pusher (no offset/epoch), so it has none of :data:`POSITIONS`, the
    chaos endpoint or a memory watchdog.
    """

    name = "sockudo"
    health_path = "/up"
    features = frozenset()
    #: Sockudo's per-app limits are per node; the fleet never comes close to this.
    MAX_CONNECTIONS: ClassVar[int] = 1_000_000

    def __init__(self, binary: str | None = None) -> None:
        self._binary = binary

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = find_sockudo()
        return self._binary

    def describe(self) -> str:
        try:
            result = subprocess.run([self.binary, "--version"], capture_output=True,
                                    text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired, HarnessSetupError):
            return self.name
        return result.stdout.strip() or self.name

    def require(self, spec: TopologySpec) -> None:
        self.binary  # noqa: B018 - raises HarnessSetupError naming how to install it

    def environment(self, spec: TopologySpec, launch: NodeLaunch) -> dict[str, str | None]:
        env: dict[str, str | None] = {
            "HOST": LOOPBACK,
            "PORT": str(launch.port),
            "INSTANCE_PROCESS_ID": launch.name,
            "SOCKUDO_DEFAULT_APP_ID": spec.app_id,
            "SOCKUDO_DEFAULT_APP_KEY": spec.app_key,
            "SOCKUDO_DEFAULT_APP_SECRET": spec.app_secret,
            "SOCKUDO_DEFAULT_APP_ENABLED": "true",
            "SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS": str(self.MAX_CONNECTIONS),
            "SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND": "100000",
            "ADAPTER_DRIVER": "redis",
            "CACHE_DRIVER": "redis",
            "REDIS_URL": launch.redis_url,
            "RATE_LIMITER_ENABLED": "false",
            "METRICS_ENABLED": "false",
            # Whole seconds only; the drain takes at least this long (it reports "not ready"
            # for the grace, then closes every connection).
            "SHUTDOWN_GRACE_PERIOD": str(max(1, math.ceil(spec.drain_grace_s))),
            "ACTIVITY_TIMEOUT": str(max(1, math.ceil(spec.activity_timeout_s))),
            "LOG_COLORS_ENABLED": "false",
            "RUST_LOG": "info",
        }
        # Sockudo reads many generic names (PORT, HOST, DEBUG, REDIS_URL...): only ours count.
        for key in ("DEBUG", "DEBUG_MODE", "CONFIG_FILE", "APP_MANAGER_DRIVER", "QUEUE_DRIVER",
                    "SOCKUDO_MAX_CONNECTIONS", "HISTORY_ENABLED", "SSL_ENABLED"):
            env.setdefault(key, None)
        return env

    def process_spec(self, spec: TopologySpec, launch: NodeLaunch) -> ProcessSpec:
        return ProcessSpec(
            name=launch.name,
            argv=[self.binary],
            env=self.environment(spec, launch),
            cwd=launch.cwd,
            ready=http_ready(self.health_url(launch.port)),
            ready_timeout=spec.ready_timeout_s,
            # Sockudo waits its whole grace period before closing connections.
            stop_grace=max(1, math.ceil(spec.drain_grace_s)) + 5,
        )


SERVERS: Final[Mapping[str, type[ServerAdapter]]] = {
    TurnoutServer.name: TurnoutServer,
    SockudoServer.name: SockudoServer,
}


def server_adapter(name: str) -> ServerAdapter:
    """The adapter called ``name`` (``turnout``, ``sockudo``)."""
    try:
        return SERVERS[name]()
    except KeyError:
        raise ValueError(f"unknown server {name!r}; known: {', '.join(SERVERS)}") from None
