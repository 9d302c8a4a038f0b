"""Experiment files: TOML in, validated frozen dataclasses out.

Each table of the file is a pydantic dataclass (``Cluster``, ``Clients``, ``Workload``,
``Phases``, ``InvariantLimits``, ``ClientGroup``; a fault's own keys are its kind's ``Params``,
harness.faults) whose fields carry their default, unit, constraints and docs. The same fields
drive validation, defaults, the reference tables of docs/experiments.md
(:func:`reference_markdown`) and the TUI's fault forms, so neither can drift from what the
loader accepts. Every error names the file, the dotted key (``faults[2].at_s``, 0-based) and
what was expected (server.schema words pydantic's errors)::

    experiments/x.toml: faults[2].at_s: expected a number of seconds >= 0, got 'ten'

Unknown keys are errors: a misspelt key silently ignored would run a different experiment
than the one written down.

``python -m harness.experiment FILE...`` validates files; ``--write-docs PATH`` regenerates the
reference block of the docs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, final

from pydantic import AfterValidator, ValidationError

from harness import targets
from harness.checker import Invariants
from harness.faults import FAULTS as FAULT_KINDS
from harness.faults import FaultKind as FaultKind
from harness.faults.base import param, parameters
from harness.targets import parse as parse_target
from server.schema import Key, got, keys, problem, validate

__all__ = [
    "CLIENT_GROUP_KEYS",
    "FAULT_KEYS",
    "FAULT_KINDS",
    "SECTIONS",
    "ClientGroup",
    "Clients",
    "Cluster",
    "Experiment",
    "ExperimentError",
    "FaultKind",
    "FaultSpec",
    "Key",
    "Params",
    "Phases",
    "Workload",
    "load_experiment",
    "parse_experiment",
    "parse_fault",
    "parse_target",
    "reference_markdown",
    "shipped_experiments",
]

ParamValue = bool | int | float | str | None

EXPERIMENTS_DIR: Final = Path(__file__).resolve().parent.parent / "experiments"
DOCS_BEGIN: Final = "<!-- BEGIN GENERATED REFERENCE (python -m harness.experiment --write-docs) -->"
DOCS_END: Final = "<!-- END GENERATED REFERENCE -->"
S, MS = "a number of seconds", "a number of milliseconds"
NAME = "a lowercase name of letters, digits and '-'"


class ExperimentError(ValueError):
    """An experiment file is invalid. ``str()`` names the file, the key and what was expected."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


def _addresses(value: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ValueError(f"expected an array of IP addresses, got {got(item)} in the "
                             "array") from None
    return tuple(out)


def _unique(value: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(value)) != len(value):
        raise ValueError(f"expected an array naming each phase at most once, got {list(value)}")
    return value


# --------------------------------------------------------------------------------------------
# The schema: one pydantic dataclass per table. ``param(default, unit, doc, expect=...,
# <constraints>)``; ``expect`` words what the key accepts in errors and docs.


@parameters
class Header:
    name: str | None = param(None, "—", "the experiment's name; defaults to the file name "
                             "without .toml", expect=NAME, pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = param(..., "—", "what the experiment proves (shown in the TUI and "
                             "reports)", min_length=1)
    ci: bool = param(True, "—", "false: too big for CI; the headless CI run skips it")
    seed: int = param(1, "—", "seed of every random choice (random targets, jitter, "
                      "slow-consumer selection)", ge=0)


@parameters
class Cluster:
    nodes: int = param(3, "nodes", "server nodes behind the load balancer", ge=1, le=64)
    history_size: int = param(1000, "updates", "per-channel history kept in Redis for recovery "
                              "(stream MAXLEN)", ge=1)
    history_ttl_s: float = param(300.0, "s", "how long a channel's history lives after its "
                                 "last publish", expect=S, gt=0)
    activity_timeout_s: float = param(30.0, "s", "Pusher activity_timeout sent to clients: idle "
                                      "time before they ping", expect=S, gt=0)
    drain_grace_s: float = param(5.0, "s", "on SIGTERM, how long a node may take to close its "
                                 "clients with a reconnect code", expect=S, ge=0)
    max_rss_mb: int = param(0, "MB", "memory limit per node; above it the node sheds clients "
                            "gracefully (0 = none)", ge=0)
    outbound_queue_bytes: int = param(1048576, "bytes", "per-connection outbound queue; a "
                                      "consumer beyond it is disconnected to resume", ge=1024)
    socket_send_buffer_bytes: int = param(
        0, "bytes", "kernel send buffer (SO_SNDBUF) of each client socket on the nodes; 0 = "
        "kernel autotuning, which lets a stalled client hold megabytes before the queue fills",
        ge=0)
    recovery: bool = param(True, "—", "false runs the nodes with history_size 0: the negative "
                           "control, which must report losses")
    reaper: bool = param(True, "—", "false runs the nodes with --no-reap-dead-nodes (presence "
                         "without node liveness): the presence negative control, whose killed "
                         "node leaves ghost members")
    proxies: Literal["auto", "all"] = param(
        "auto", "—", "client-side Toxiproxy hops: 'auto' puts clients->lb and lb->node proxies "
        "only where a scheduled fault needs them (each costs ~19 µs of CPU per delivery); "
        "'all' proxies every link, for interactive link faults from the TUI (node->redis links "
        "are always proxied)", strict=False)
    balancer: Literal["haproxy", "kernel"] = param(
        "haproxy", "—", "how viewers reach the nodes: 'haproxy' (lanes of HAProxy: leastconn, "
        "health checks) or 'kernel' (every node also listens on one shared port with "
        "SO_REUSEPORT and the kernel spreads new connections over the nodes: no balancer "
        "process relays a frame, ~15 µs of CPU less per delivery, but no health checks and no "
        "lb->node links to cut; turnout nodes only)", strict=False)
    client_link_faults: Literal["toxiproxy", "netfilter"] = param(
        "toxiproxy", "—", "how faults reach the viewers' links: 'toxiproxy' puts a Toxiproxy "
        "on each lane a clients->lb fault names, on its data path for the whole run; "
        "'netfilter' puts none there, and a latency fault holds the lane's packets in an "
        "iptables NFQUEUE only while it lasts (needs root and iptables; only latency faults "
        "may target client links)", strict=False)
    server: Literal["turnout", "sockudo"] = param(
        "turnout", "—", "the Pusher server the nodes run (turnout run --server overrides it): "
        "'sockudo' runs Sockudo nodes over their Redis adapter behind the same load balancer "
        "and proxies; faults needing a turnout-only feature (leak_memory) are skipped with the "
        "reason in the report (docs/peers.md)", strict=False)

    @property
    def effective_history_size(self) -> int:
        """The history size nodes run with: 0 when recovery is off (the negative control)."""
        return self.history_size if self.recovery else 0


@parameters
class Clients:
    count: int = param(200, "clients", "measured websocket clients", ge=1)
    processes: int = param(2, "processes", "client worker processes", ge=1)
    channels_per_client: int = param(2, "channels", "channels each client subscribes to (spread "
                                     "evenly over workload.channels)", ge=1)
    connect_rate_per_s: float = param(500.0, "clients/s", "connection ramp-up rate of the whole "
                                      "fleet (each worker process ramps its share)",
                                      expect="a number per second", gt=0)
    reconnect_backoff_min_s: float = param(0.1, "s", "first reconnect delay after a disconnect "
                                           "(doubles, with jitter)", expect=S, gt=0)
    reconnect_backoff_max_s: float = param(5.0, "s", "cap of the reconnect delay", expect=S,
                                           gt=0)
    ping_after_silence_s: float = param(
        5.0, "s", "a client that has heard nothing for this long sends pusher:ping and "
        "reconnects if no pong comes within pong_timeout_s (its dead-link detector; pusher-js "
        "waits the server's activity_timeout); raise it for very large idle fleets",
        expect=S, gt=0)
    pong_timeout_s: float = param(
        5.0, "s", "how long a client waits for the pong before it calls the link dead and "
        "reconnects (pusher-js waits 30 s: under a loaded cluster a short wait turns slow "
        "answers into a reconnect storm)", expect=S, gt=0)
    resume: bool = param(True, "—", "resubscribe with the last position (false: plain Pusher "
                         "clients, expect losses)")
    source_addresses: Annotated[tuple[str, ...], AfterValidator(_addresses)] = param(
        (), "—", "local addresses the clients bind to, spread round-robin; more than ~28,000 "
        "connections to one address:port need several (e.g. 127.0.0.2)",
        expect="an array of IP addresses", strict=False)
    full_history: int = param(
        1000, "clients", "a seeded sample of this many clients records every delivery as a "
        "history op; every client is also recorded compactly (positions as runs), which is "
        "what the checker judges, and the sample must agree with it", ge=0)


@parameters
class Workload:
    channels: int = param(4, "channels", "result channels published to", ge=1)
    channel_prefix: str = param("results-", "—", "channel names are `<prefix><n>`, n = 1 .. "
                                "channels", expect="a Pusher channel name prefix",
                                pattern=r"^[A-Za-z0-9_\-=@,.;]+$")
    publish_interval_s: float = param(2.5, "s", "mean time between two updates of one channel",
                                      expect=S, gt=0)
    interval_jitter_s: float = param(0.5, "s", "uniform jitter added to each interval (must be "
                                     "below publish_interval_s)", expect=S, ge=0)
    payload_bytes: int = param(600, "bytes", "size of each update's JSON payload (a realistic "
                               "election result is ~600 B; Pusher caps events at 10 KB)",
                               ge=16, le=10240)
    publish_timeout_s: float = param(5.0, "s", "HTTP publish timeout; a timeout is recorded as "
                                     "indeterminate (info)", expect=S, gt=0)
    publish_retries: int = param(3, "retries", "retries of a failed or indeterminate publish, "
                                 "each a new update with a new id", ge=0)
    presence_channels: int = param(
        0, "channels", "presence channels the clients also join as users (client i joins "
        "presence-room-<i mod n>, even ids as one user on every connection, odd ids as a new "
        "user per connection); their member lists are checked (invariants.presence). At most "
        "50 clients per channel (the app's limit is 100 users)", ge=0)

    @property
    def presence_names(self) -> tuple[str, ...]:
        return tuple(f"presence-room-{n}" for n in range(1, self.presence_channels + 1))

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(f"{self.channel_prefix}{n}" for n in range(1, self.channels + 1))


@parameters
class Phases:
    steady_s: float = param(10.0, "s", "steady state before any fault", expect=S, ge=0)
    faults_s: float = param(30.0, "s", "the window in which faults are scheduled "
                            "(faults[*].at_s is relative to it)", expect=S, ge=0)
    heal_s: float = param(5.0, "s", "every fault still active is healed at its start",
                          expect=S, ge=0)
    settle_s: float = param(10.0, "s", "publishing continues, no faults; then every client "
                            "does its final read (drain)", expect=S, ge=0)

    @property
    def total_s(self) -> float:
        return self.steady_s + self.faults_s + self.heal_s + self.settle_s


PhaseName = Literal["steady", "faults", "heal", "settle"]


@parameters
class InvariantLimits:
    """``[invariants]`` as written; the checker's :class:`Invariants` names them max_*."""

    lost: int = param(0, "updates", "maximum lost (client, update) pairs", ge=0)
    duplicated: int = param(0, "deliveries", "maximum duplicate deliveries", ge=0)
    reordered: int = param(0, "deliveries", "maximum out-of-order deliveries", ge=0)
    unexpected: int = param(0, "deliveries", "maximum deliveries of never-published or failed "
                            "updates", ge=0)
    unsubscribed: int = param(0, "subscriptions", "maximum (client, channel) subscriptions "
                              "that never succeeded", ge=0)
    p99_ms: float | None = param(None, "ms", "maximum p99 delivery latency (unset: not "
                                 "checked)", expect=MS, gt=0)
    p99_phases: Annotated[tuple[PhaseName, ...], AfterValidator(_unique)] = param(
        (), "—", "phases whose p99 must each be within p99_ms (updates by publish time); "
        "empty: the p99 over every delivery",
        expect="an array of 'steady', 'faults', 'heal', 'settle'", strict=False)
    recovery_s: float | None = param(None, "s", "maximum recovery time of every fault (unset: "
                                     "not checked)", expect=S, ge=0)
    min_delivered: int = param(1, "updates", "minimum owed updates delivered: a run that "
                               "proves nothing fails", ge=1)
    rss_slope_mb_per_h: float | None = param(
        None, "MB/h", "leak detector: maximum RSS growth of any node process that ran 10 min "
        "past a 5 min warm-up (least squares over per-minute medians; unset: not checked)",
        expect="a number of MB per hour", ge=0)
    presence: int = param(0, "problems", "maximum presence problems after the final read: "
                          "ghost and missing members in a client's list, member events that "
                          "contradict it (checked when workload.presence_channels > 0)", ge=0)


class _KindNames:
    """What ``kind`` accepts: the kinds registered when it is asked (harness.faults)."""

    def __str__(self) -> str:
        return "one of " + ", ".join(f"'{k}'" for k in FAULT_KINDS)


@parameters
class FaultKeys:
    """The keys common to every ``[[faults]]`` entry (the kind's own are its ``Params``)."""

    at_s: float = param(..., "s", "start, in seconds from the start of the faults phase",
                        expect=S, ge=0)
    kind: str = param(..., "—", "the fault kind (below)", expect=_KindNames())
    target: str = param("per kind", "—", "what the fault hits (per kind, below)")
    duration_s: float = param("per kind", "s", "how long before the heal, for kinds that have "
                              "a duration", expect=S, gt=0)


@parameters
class ClientGroup:
    """One ``[[client_groups]]`` entry: real Pusher clients run by harness.real_clients."""

    name: str = param("per group", "—", "the group's name; its viewers are `<name>-<i>` in the "
                      "history (default: the kind, numbered when several groups share it)",
                      expect=NAME, pattern=r"^[a-z][a-z0-9-]*$")
    kind: Literal["pusher-js", "browser"] = param(
        ..., "—", "pusher-js: viewers in Node processes (tools/node-fleet.mjs); browser: one "
        "headless Chromium page per viewer (tools/browser-fleet.mjs)", strict=False)
    count: int = param(10, "clients", "viewers in the group", ge=1)
    processes: int = param(1, "processes", "Node processes (each with one Chromium for kind = "
                           "browser); viewers spread over them", ge=1, le=16)
    library: Literal["pusher-js", "echo", "both"] = param(
        "pusher-js", "—", "what the application is written with: pusher-js alone, Laravel Echo "
        "on pusher-js, or both alternating per viewer", strict=False)
    versions: Literal["newest", "oldest", "both"] = param(
        "newest", "—", "the pusher-js 8.x / Echo 2.x versions clients/pusher-resume claims "
        "(oldest or newest, or both alternating)", strict=False)
    plugin: bool = param(True, "—", "wrap each instance in @turnout/pusher-resume (false: plain "
                         "pusher-js, which resubscribes fresh and loses what was published "
                         "meanwhile)")
    channels_per_client: int = param(2, "channels", "channels each viewer subscribes to (spread "
                                     "evenly over workload.channels)", ge=1)
    connect_rate_per_s: float = param(50.0, "clients/s", "how fast the group's viewers are "
                                      "opened", expect="a number per second", gt=0)


_TABLES: Final[dict[str, type]] = {"": Header, "cluster": Cluster, "clients": Clients,
                                   "workload": Workload, "phases": Phases,
                                   "invariants": InvariantLimits}
#: The keys of each table, as docs and forms show them ("" is the top level).
SECTIONS: Final[dict[str, tuple[Key, ...]]] = {s: keys(t) for s, t in _TABLES.items()}
FAULT_KEYS: Final = keys(FaultKeys)
CLIENT_GROUP_KEYS: Final = keys(ClientGroup)
# checker.Invariants field for each [invariants] key.
_INVARIANT_FIELDS: Final = {k.name: k.name if k.name in ("p99_ms", "p99_phases", "min_delivered")
                            else f"max_{k.name}" for k in SECTIONS["invariants"]}


# --------------------------------------------------------------------------------------------
# The model.


@final
class Params(Mapping[str, ParamValue]):
    """A read-only mapping of a fault's kind-specific keys (defaults filled in). Picklable."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, ParamValue] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> ParamValue:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"Params({self._data!r})"

    def __getstate__(self) -> dict[str, ParamValue]:
        return self._data

    def __setstate__(self, state: dict[str, ParamValue]) -> None:
        self._data = dict(state)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One ``[[faults]]`` entry as declared. ``params`` holds the kind's own keys, defaults
    filled in (the running fault is an instance of the kind's class, harness.faults)."""

    index: int  # position in the file (0-based)
    kind: str
    at_s: float  # from the start of the faults phase
    target: str
    duration_s: float | None  # None for kinds without a duration
    params: Params = field(default_factory=Params)

    @property
    def fault_id(self) -> str:
        """The id the nemesis records for this fault: f1, f2, ... in file order."""
        return f"f{self.index + 1}"

    def to_dict(self) -> dict[str, Any]:
        return {"fault_id": self.fault_id, "kind": self.kind, "at_s": self.at_s,
                "target": self.target, "duration_s": self.duration_s,
                "params": dict(self.params)}


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    description: str
    cluster: Cluster = field(default_factory=Cluster)
    clients: Clients = field(default_factory=Clients)
    workload: Workload = field(default_factory=Workload)
    phases: Phases = field(default_factory=Phases)
    faults: tuple[FaultSpec, ...] = ()
    invariants: Invariants = field(default_factory=Invariants)
    client_groups: tuple[ClientGroup, ...] = ()
    ci: bool = True
    seed: int = 1
    source: str | None = None  # the file it was loaded from

    def scaled(self, factor: float) -> Experiment:
        """The same experiment with ``factor`` times the clients (and storm connections).

        Worker processes stay as configured (never more than clients).
        """
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"scale factor must be a number > 0, got {factor!r}")
        count = max(1, round(self.clients.count * factor))
        clients = dataclasses.replace(
            self.clients, count=count, processes=min(self.clients.processes, count)
        )
        faults = tuple(
            dataclasses.replace(
                f,
                params=Params({**f.params, "clients": max(1, round(int(f.params["clients"] or 0)
                                                                     * factor))}),
            )
            if f.kind == "connection_storm"
            else f
            for f in self.faults
        )
        return dataclasses.replace(self, clients=clients, faults=faults)

    def _variant(self, suffix: str, **changes: Any) -> Experiment:
        """The same experiment named ``<name>-<suffix>``, with ``changes``."""
        return dataclasses.replace(self, name=f"{self.name}-{suffix}", **changes)

    def presence_negative_control(self) -> Experiment:
        """The same experiment with the nodes' reaper off: a killed node's presence members
        stay, and the presence check must report them (ghosts)."""
        return self._variant("no-reaper", cluster=dataclasses.replace(self.cluster, reaper=False))

    def negative_control(self) -> Experiment:
        """The same experiment with recovery off: it must report losses to prove the checker."""
        return self._variant("negative-control",
                             cluster=dataclasses.replace(self.cluster, recovery=False))

    def plugin_off(self) -> Experiment:
        """The same experiment with every client group's resume plugin off: plain pusher-js,
        which must lose updates where the plugin kept them (the Python fleet still resumes)."""
        return self._variant("plugin-off", client_groups=tuple(
            dataclasses.replace(g, plugin=False) for g in self.client_groups))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "ci": self.ci,
            "seed": self.seed,
            "source": self.source,
            "cluster": dataclasses.asdict(self.cluster),
            "clients": {
                **dataclasses.asdict(self.clients),
                "source_addresses": list(self.clients.source_addresses),
            },
            "workload": dataclasses.asdict(self.workload),
            "phases": dataclasses.asdict(self.phases),
            "faults": [f.to_dict() for f in self.faults],
            "invariants": dataclasses.asdict(self.invariants),
            "client_groups": [dataclasses.asdict(g) for g in self.client_groups],
        }


# --------------------------------------------------------------------------------------------
# Loading.


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; raise ExperimentError naming file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentError(str(path), "", f"cannot read the file: {exc}") from None
    return parse_experiment(text, source=str(path), default_name=path.stem)


def parse_experiment(
    text: str, *, source: str = "<string>", default_name: str | None = None
) -> Experiment:
    """Validate TOML text. ``default_name`` is used when the file has no ``name`` key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(source, "", f"invalid TOML: {exc}") from None
    return _Loader(source).experiment(data, default_name)


def parse_fault(raw: Mapping[str, Any], *, source: str = "fault", index: int = 0,
                phases: Phases | None = None) -> FaultSpec:
    """Validate one ``[[faults]]`` entry (an interactive fault too: harness.fault_request)."""
    return _Loader(source).fault(index, dict(raw), phases or Phases())


class _Loader:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str) -> ExperimentError:
        return ExperimentError(self.source, key, problem)

    def table(self, prefix: str, schema: type, data: Mapping[str, Any], *,
              allowed: list[str] | None = None, why: str = "") -> Any:
        """Validate one table against ``schema``; errors name ``prefix`` + the key."""
        try:
            return validate(schema, data)
        except ValidationError as exc:
            key, text = problem(exc, schema, allowed=allowed, why=why)
            raise self.error(prefix + key, text) from None

    def experiment(self, data: dict[str, Any], default_name: str | None) -> Experiment:
        sections = [s for s in _TABLES if s]
        lists = ["faults", "client_groups"]
        allowed = [k.name for k in SECTIONS[""]] + sections + lists
        top = {k: v for k, v in data.items() if k not in sections and k not in lists}
        head = self.table("", Header, top, allowed=allowed)
        if head.name is None:
            if default_name is None:
                raise self.error("name", "missing (and there is no file name to default to)")
            head = self.table("", Header, {**top, "name": default_name})
        parts = {}
        for s in sections:
            raw = data.get(s, {})
            if not isinstance(raw, dict):
                raise self.error(s, f"expected a table [{s}], got {got(raw)}")
            parts[s] = self.table(f"{s}.", _TABLES[s], raw)
        workload: Workload = parts["workload"]
        limits = dataclasses.asdict(parts["invariants"])
        invariants = Invariants(**{_INVARIANT_FIELDS[k]: v for k, v in limits.items()},
                                presence=workload.presence_channels > 0)
        raw_faults = data.get("faults", [])
        if not isinstance(raw_faults, list):
            raise self.error(
                "faults", f"expected an array of tables [[faults]], got {got(raw_faults)}"
            )
        faults = tuple(self.fault(i, raw, parts["phases"]) for i, raw in enumerate(raw_faults))
        exp = Experiment(
            name=head.name,
            description=head.description,
            cluster=parts["cluster"],
            clients=parts["clients"],
            workload=workload,
            phases=parts["phases"],
            faults=faults,
            invariants=invariants,
            client_groups=self.client_groups(data.get("client_groups", [])),
            ci=head.ci,
            seed=head.seed,
            source=self.source,
        )
        self.cross_checks(exp)
        return exp

    def fault(self, index: int, raw: object, phases: Phases) -> FaultSpec:
        prefix = f"faults[{index}]."
        if not isinstance(raw, dict):
            raise self.error(f"faults[{index}]", f"expected a table [[faults]], got {got(raw)}")
        if "kind" not in raw:
            raise self.error(prefix + "kind", f"missing; expected {_KindNames()}")
        if raw["kind"] not in FAULT_KINDS:
            raise self.error(prefix + "kind", f"expected {_KindNames()}, got {got(raw['kind'])}")
        kind = FAULT_KINDS[raw["kind"]]
        common = [k.name for k in FAULT_KEYS]
        allowed = common + [k.name for k in kind.keys]
        why = f"for kind '{kind.kind}'"
        if "duration_s" in raw and kind.duration_s is None:
            raise self.error(prefix + "duration_s",
                             f"{kind.kind} takes no duration_s; it heals at {kind.heal_at}")
        own = {k: v for k, v in raw.items() if k not in common}
        self.table(prefix, kind.Params, {k: v for k, v in own.items() if k not in allowed},
                   allowed=allowed, why=why)  # unknown keys first, with what is allowed
        head = self.table(prefix, FaultKeys, {k: v for k, v in raw.items()
                                              if k in ("at_s", "kind", "duration_s")})
        if head.at_s > phases.faults_s:
            raise self.error(
                prefix + "at_s",
                f"expected a number of seconds within the faults phase (0 .. phases.faults_s = "
                f"{phases.faults_s:g}), got {got(raw['at_s'])}",
            )
        target = raw.get("target", kind.default_target)
        form = parse_target(target) if isinstance(target, str) else None
        if form is None or form.cls not in kind.targets:
            raise self.error(prefix + "target",
                             f"expected {targets.expected(kind.targets)}, got {got(target)}")
        duration = head.duration_s if "duration_s" in raw else kind.duration_s
        params = self.table(prefix, kind.Params, own, allowed=allowed, why=why)
        return FaultSpec(index, kind.kind, head.at_s, target, duration,
                         Params(dataclasses.asdict(params)))

    def client_groups(self, raw: object) -> tuple[ClientGroup, ...]:
        if not isinstance(raw, list):
            raise self.error(
                "client_groups",
                f"expected an array of tables [[client_groups]], got {got(raw)}")
        groups: list[ClientGroup] = []
        for index, entry in enumerate(raw):
            prefix = f"client_groups[{index}]."
            if not isinstance(entry, dict):
                raise self.error(f"client_groups[{index}]",
                                 f"expected a table [[client_groups]], got {got(entry)}")
            group: ClientGroup = self.table(prefix, ClientGroup, entry)
            if "name" not in entry:
                same = [e for e in raw if isinstance(e, dict) and e.get("kind") == group.kind]
                group = dataclasses.replace(group, name=group.kind + (
                    f"-{sum(1 for g in groups if g.kind == group.kind) + 1}"
                    if len(same) > 1 else ""))
            if group.processes > group.count:
                raise self.error(prefix + "processes",
                                 f"expected at most count ({group.count}) processes, "
                                 f"got {group.processes}")
            if any(g.name == group.name for g in groups):
                raise self.error(prefix + "name",
                                 f"expected a name no other group has, got '{group.name}'")
            if group.name == "client" or group.name.startswith("client-"):
                raise self.error(prefix + "name",
                                 "expected a name other than 'client' or 'client-…' (the "
                                 f"Python fleet's viewers are client-<n>), got '{group.name}'")
            groups.append(group)
        return tuple(groups)

    def cross_checks(self, exp: Experiment) -> None:
        c, w, p, k = exp.clients, exp.workload, exp.phases, exp.cluster
        if c.processes > c.count:
            raise self.error(
                "clients.processes",
                f"expected at most clients.count ({c.count}) processes, got {c.processes}",
            )
        for index, group in enumerate(exp.client_groups):
            if group.channels_per_client > w.channels:
                raise self.error(
                    f"client_groups[{index}].channels_per_client",
                    f"expected at most workload.channels ({w.channels}), "
                    f"got {group.channels_per_client}",
                )
        if w.presence_channels and c.count > 50 * w.presence_channels:
            raise self.error(
                "workload.presence_channels",
                f"expected at least {math.ceil(c.count / 50)} for {c.count} clients (at most 50 "
                f"per presence channel), got {w.presence_channels}",
            )
        if c.channels_per_client > w.channels:
            raise self.error(
                "clients.channels_per_client",
                f"expected at most workload.channels ({w.channels}), got {c.channels_per_client}",
            )
        if c.reconnect_backoff_max_s < c.reconnect_backoff_min_s:
            raise self.error(
                "clients.reconnect_backoff_max_s",
                f"expected a number of seconds >= reconnect_backoff_min_s "
                f"({c.reconnect_backoff_min_s:g}), got {c.reconnect_backoff_max_s:g}",
            )
        if w.interval_jitter_s >= w.publish_interval_s:
            raise self.error(
                "workload.interval_jitter_s",
                f"expected a number of seconds below publish_interval_s "
                f"({w.publish_interval_s:g}), got {w.interval_jitter_s:g}",
            )
        if k.balancer == "kernel":
            if k.server != "turnout":
                raise self.error("cluster.balancer", f"expected 'haproxy' with server "
                                 f"'{k.server}' (only turnout nodes share a port), got 'kernel'")
            for fault in exp.faults:
                form = parse_target(fault.target)
                if form is not None and form.cls == "lb_link":
                    raise self.error(
                        f"faults[{fault.index}].target",
                        f"expected a link the kernel balancer has (it has no lb->node links: "
                        f"cluster.balancer = 'kernel'), got '{fault.target}'")
        if k.client_link_faults == "netfilter":
            if k.proxies == "all":
                raise self.error("cluster.proxies", "expected 'auto' with client_link_faults = "
                                 "'netfilter' (no Toxiproxy on client links), got 'all'")
            for fault in exp.faults:
                form = parse_target(fault.target)
                if (form is not None and form.cls in ("clients", "client_link")
                        and fault.kind != "latency"):
                    raise self.error(
                        f"faults[{fault.index}].kind",
                        f"expected latency on '{fault.target}' (client links have no "
                        f"Toxiproxy with cluster.client_link_faults = 'netfilter'), "
                        f"got '{fault.kind}'")
                if (form is not None and form.cls in ("clients", "client_link")
                        and k.balancer == "kernel" and exp.client_groups):
                    # Under the kernel balancer a delay link finds its lane's viewers by their
                    # source addresses; pusher-js and Chromium connect from 127.0.0.1.
                    raise self.error(
                        f"faults[{fault.index}].target",
                        "expected no client link with [[client_groups]] under the kernel "
                        "balancer and client_link_faults = 'netfilter' (real clients connect "
                        "from 127.0.0.1, so no lane's rule can pick them out), "
                        f"got '{fault.target}'")
        if exp.faults and p.faults_s == 0:
            raise self.error(
                "phases.faults_s", "expected a number of seconds > 0 when there are faults, got 0"
            )
        if k.recovery:
            # Recovery is only provable if every update published during the faults can still
            # be replayed when the last client resumes, at the latest by the final read.
            window = p.faults_s + p.heal_s + p.settle_s
            if k.history_ttl_s <= window:
                raise self.error(
                    "cluster.history_ttl_s",
                    f"expected a number of seconds above phases.faults_s + heal_s + settle_s "
                    f"({window:g}) so that recovery stays possible, got {k.history_ttl_s:g}",
                )
            fastest = w.publish_interval_s - w.interval_jitter_s
            needed = math.ceil(window / fastest)
            if k.history_size < needed:
                raise self.error(
                    "cluster.history_size",
                    f"expected an integer >= {needed} (the most updates one channel can get "
                    f"in the faults, heal and settle phases), got {k.history_size}",
                )


# --------------------------------------------------------------------------------------------
# Shipped experiments and docs.


def shipped_experiments(directory: Path = EXPERIMENTS_DIR) -> dict[str, Path]:
    """name (file stem) -> path of every experiment shipped in experiments/."""
    return {p.stem: p for p in sorted(directory.glob("*.toml"))}


def _toml(key: Key) -> str:
    value = key.default
    if key.required:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value in ("per kind", "per group") else f'"{value}"'
    if isinstance(value, tuple | list):
        return "[]" if not value else "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _table(keys: Sequence[Key]) -> list[str]:
    lines = ["| key | accepts | unit | default | meaning |", "|---|---|---|---|---|"]
    for k in keys:
        lines.append(f"| `{k.name}` | {k.expected()} | {k.unit} | {_toml(k)} | {k.doc} |")
    return lines


def reference_markdown() -> str:
    """The generated reference of docs/experiments.md: every key with unit and default."""
    out: list[str] = []
    for section, section_keys in SECTIONS.items():
        out += ["", "### Top level" if not section else f"### `[{section}]`", ""]
        out += _table(section_keys)
    out += ["", "### `[[faults]]`", "", "Keys common to every kind:", ""]
    out += _table(FAULT_KEYS)
    out += ["", "Target forms (existence is not checked, only the form):", ""]
    out += ["| form | means |", "|---|---|"]
    for _, form, meaning in targets.FORMS.values():
        out.append(f"| `{form}` | {meaning} |")
    out += ["", "### `[[client_groups]]`", "",
            "Real Pusher clients next to the Python fleet (see \"Real clients\" above):", ""]
    out += _table(CLIENT_GROUP_KEYS)
    out += ["", "### Fault kinds", ""]
    for kind in FAULT_KINDS.values():
        forms = ", ".join(f"`{targets.FORMS[c][1]}`" for c in kind.targets)
        duration = (f"`duration_s` default {kind.duration_s:g} s" if kind.duration_s is not None
                    else "no `duration_s`")
        out += [f"#### `{kind.kind}`", "", kind.summary, "",
                f"- target: {forms} (default `{kind.default_target}`)",
                f"- {duration}; heal: {kind.heal_at}", ""]
        if kind.keys:
            out += _table(kind.keys)
            out.append("")
    return "\n".join(out).strip("\n") + "\n"


def write_docs(path: Path) -> bool:
    """Replace the generated block of ``path``; True if the file changed."""
    text = path.read_text(encoding="utf-8")
    begin, end = text.index(DOCS_BEGIN), text.index(DOCS_END)
    new = text[: begin + len(DOCS_BEGIN)] + "\n\n" + reference_markdown() + "\n" + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--write-docs"] and len(args) == 2:
        changed = write_docs(Path(args[1]))
        print(f"{args[1]}: {'updated' if changed else 'up to date'}")
        return 0
    if not args or args[0].startswith("-"):
        print(
            "usage: python -m harness.experiment FILE... | --write-docs docs/experiments.md",
            file=sys.stderr,
        )
        return 2
    status = 0
    for arg in args:
        try:
            exp = load_experiment(arg)
        except ExperimentError as exc:
            print(exc, file=sys.stderr)
            status = 1
        else:
            print(
                f"{arg}: ok ({exp.name}: {exp.clients.count} clients, "
                f"{len(exp.faults)} faults, {exp.phases.total_s:g} s)"
            )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
