"""Experiment files: TOML in, validated frozen dataclasses out.

One schema (``SECTIONS``, ``FAULT_KEYS``, ``FAULT_KINDS``) drives three things: validation,
defaults, and the reference tables of docs/experiments.md (:func:`reference_markdown`), so the
documentation cannot drift from what the loader accepts. Every error names the file, the
dotted key (``faults[2].at_s``, 0-based) and what was expected::

    experiments/x.toml: faults[2].at_s: expected a number of seconds >= 0, got 'ten'

Unknown keys are errors: a misspelt key silently ignored would run a different experiment
than the one written down.

``python -m harness.experiment FILE...`` validates files; ``--write-docs PATH`` regenerates the
reference block of the docs.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

from pydantic import ValidationError

from harness import targets
from harness.checker import Invariants
from harness.faults import FAULTS as FAULT_KINDS
from harness.faults import FaultKind as FaultKind
from harness.targets import Target as Target
from harness.targets import parse as parse_target
from server.schema import got as _got
from server.schema import problem, validate

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
    "Fault",
    "FaultKind",
    "Key",
    "Params",
    "Phases",
    "Target",
    "Workload",
    "load_experiment",
    "parse_experiment",
    "parse_target",
    "reference_markdown",
    "shipped_experiments",
]

ParamValue = bool | int | float | str | None

EXPERIMENTS_DIR: Final = Path(__file__).resolve().parent.parent / "experiments"
DOCS_BEGIN: Final = "<!-- BEGIN GENERATED REFERENCE (python -m harness.experiment --write-docs) -->"
DOCS_END: Final = "<!-- END GENERATED REFERENCE -->"


class ExperimentError(ValueError):
    """An experiment file is invalid. ``str()`` names the file, the key and what was expected."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


class _Invalid(Exception):
    """Raised by a check; turned into an ExperimentError with the file and key attached."""


# --------------------------------------------------------------------------------------------
# Value checks: each converts a TOML value or raises _Invalid; `expected` is used in errors and
# in the docs' "type" column.


@dataclass(frozen=True)
class _Check:
    def expected(self) -> str:
        raise NotImplementedError

    def convert(self, value: object) -> ParamValue | tuple[str, ...]:
        raise NotImplementedError

    def fail(self, value: object) -> _Invalid:
        return _Invalid(f"expected {self.expected()}, got {_got(value)}")


def _bounds(lo: float | None, hi: float | None, lo_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" between {lo:g} and {hi:g}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" <= {hi:g}"
    return ""


@dataclass(frozen=True)
class Integer(_Check):
    lo: int | None = 0
    hi: int | None = None
    what: str = "an integer"

    def expected(self) -> str:
        return self.what + _bounds(self.lo, self.hi, False)

    def convert(self, value: object) -> int:
        # bool is an int subclass in Python; `nodes = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(value)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise self.fail(value)
        return value


@dataclass(frozen=True)
class Number(_Check):
    lo: float | None = 0.0
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded
    what: str = "a number"

    def expected(self) -> str:
        return self.what + _bounds(self.lo, self.hi, self.lo_open)

    def convert(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(value)
        v = float(value)
        if not math.isfinite(v):
            raise self.fail(value)
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            raise self.fail(value)
        if self.hi is not None and v > self.hi:
            raise self.fail(value)
        return v


def _seconds(lo: float = 0.0, *, lo_open: bool = False) -> Number:
    return Number(lo, None, lo_open, "a number of seconds")


def _ms(lo: float = 0.0, *, lo_open: bool = False) -> Number:
    return Number(lo, None, lo_open, "a number of milliseconds")


@dataclass(frozen=True)
class Boolean(_Check):
    def expected(self) -> str:
        return "true or false"

    def convert(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.fail(value)
        return value


@dataclass(frozen=True)
class Choice(_Check):
    options: tuple[str, ...] = ()

    def expected(self) -> str:
        return "one of " + ", ".join(f"'{o}'" for o in self.options)

    def convert(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise self.fail(value)
        return value


@dataclass(frozen=True)
class Text(_Check):
    pattern: str = r".+"
    what: str = "a non-empty string"

    def expected(self) -> str:
        return self.what

    def convert(self, value: object) -> str:
        if not isinstance(value, str) or not re.fullmatch(self.pattern, value, re.DOTALL):
            raise self.fail(value)
        return value


@dataclass(frozen=True)
class Addresses(_Check):
    def expected(self) -> str:
        return "an array of IP addresses"

    def convert(self, value: object) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(value)
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_address(item)))
            except (ValueError, TypeError):
                raise _Invalid(
                    f"expected {self.expected()}, got {_got(item)} in the array"
                ) from None
        return tuple(out)


@dataclass(frozen=True)
class Names(_Check):
    """An array of names from ``options`` (each at most once)."""

    options: tuple[str, ...] = ()

    def expected(self) -> str:
        return "an array of " + ", ".join(f"'{o}'" for o in self.options)

    def convert(self, value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or any(
                not isinstance(v, str) or v not in self.options for v in value) \
                or len(set(value)) != len(value):
            raise self.fail(value)
        return tuple(value)


# --------------------------------------------------------------------------------------------
# The schema.


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


@dataclass(frozen=True)
class Key:
    """One key: its check, default (REQUIRED, None = optional and unset, or a value), unit, doc."""

    name: str
    check: _Check
    default: object
    unit: str
    doc: str

    def expected(self) -> str:
        return self.check.expected()


SECTIONS: Final[dict[str, tuple[Key, ...]]] = {
    "": (
        Key(
            "name",
            Text(r"[a-z0-9][a-z0-9-]*", "a lowercase name of letters, digits and '-'"),
            None,
            "—",
            "the experiment's name; defaults to the file name without .toml",
        ),
        Key(
            "description",
            Text(),
            REQUIRED,
            "—",
            "what the experiment proves (shown in the TUI and reports)",
        ),
        Key("ci", Boolean(), True, "—", "false: too big for CI; the headless CI run skips it"),
        Key(
            "seed",
            Integer(0),
            1,
            "—",
            "seed of every random choice (random targets, jitter, slow-consumer selection)",
        ),
    ),
    "cluster": (
        Key("nodes", Integer(1, 64), 3, "nodes", "server nodes behind the load balancer"),
        Key(
            "history_size",
            Integer(1),
            1000,
            "updates",
            "per-channel history kept in Redis for recovery (stream MAXLEN)",
        ),
        Key(
            "history_ttl_s",
            _seconds(0, lo_open=True),
            300.0,
            "s",
            "how long a channel's history lives after its last publish",
        ),
        Key(
            "activity_timeout_s",
            _seconds(0, lo_open=True),
            30.0,
            "s",
            "Pusher activity_timeout sent to clients: idle time before they ping",
        ),
        Key(
            "drain_grace_s",
            _seconds(),
            5.0,
            "s",
            "on SIGTERM, how long a node may take to close its clients with a reconnect code",
        ),
        Key(
            "max_rss_mb",
            Integer(0),
            0,
            "MB",
            "memory limit per node; above it the node sheds clients gracefully (0 = none)",
        ),
        Key(
            "outbound_queue_bytes",
            Integer(1024),
            1048576,
            "bytes",
            "per-connection outbound queue; a consumer beyond it is disconnected to resume",
        ),
        Key(
            "socket_send_buffer_bytes",
            Integer(0),
            0,
            "bytes",
            "kernel send buffer (SO_SNDBUF) of each client socket on the nodes; 0 = kernel "
            "autotuning, which lets a stalled client hold megabytes before the queue fills",
        ),
        Key(
            "recovery",
            Boolean(),
            True,
            "—",
            "false runs the nodes with history_size 0: the negative control, which must "
            "report losses",
        ),
        Key(
            "reaper",
            Boolean(),
            True,
            "—",
            "false runs the nodes with --no-reap-dead-nodes (presence without node liveness): "
            "the presence negative control, whose killed node leaves ghost members",
        ),
        Key(
            "proxies",
            Choice(("auto", "all")),
            "auto",
            "—",
            "client-side Toxiproxy hops: 'auto' puts clients->lb and lb->node proxies only "
            "where a scheduled fault needs them (each costs ~19 µs of CPU per delivery); "
            "'all' proxies every link, for interactive link faults from the TUI "
            "(node->redis links are always proxied)",
        ),
        Key(
            "server",
            Choice(("turnout", "sockudo")),
            "turnout",
            "—",
            "the Pusher server the nodes run (turnout run --server overrides it): 'sockudo' "
            "runs Sockudo nodes over their Redis adapter behind the same load balancer and "
            "proxies; faults needing a turnout-only feature (leak_memory) are skipped with "
            "the reason in the report (docs/peers.md)",
        ),
    ),
    "clients": (
        Key("count", Integer(1), 200, "clients", "measured websocket clients"),
        Key("processes", Integer(1), 2, "processes", "client worker processes"),
        Key(
            "channels_per_client",
            Integer(1),
            2,
            "channels",
            "channels each client subscribes to (spread evenly over workload.channels)",
        ),
        Key(
            "connect_rate_per_s",
            Number(0, None, True, "a number per second"),
            500.0,
            "clients/s",
            "connection ramp-up rate of the whole fleet (each worker process ramps its share)",
        ),
        Key(
            "reconnect_backoff_min_s",
            _seconds(0, lo_open=True),
            0.1,
            "s",
            "first reconnect delay after a disconnect (doubles, with jitter)",
        ),
        Key(
            "reconnect_backoff_max_s",
            _seconds(0, lo_open=True),
            5.0,
            "s",
            "cap of the reconnect delay",
        ),
        Key(
            "ping_after_silence_s",
            _seconds(0, lo_open=True),
            5.0,
            "s",
            "a client that has heard nothing for this long sends pusher:ping and reconnects "
            "if no pong comes within 5 s (its dead-link detector; pusher-js waits the "
            "server's activity_timeout); raise it for very large idle fleets",
        ),
        Key(
            "resume",
            Boolean(),
            True,
            "—",
            "resubscribe with the last position (false: plain Pusher clients, expect losses)",
        ),
        Key(
            "source_addresses",
            Addresses(),
            (),
            "—",
            "local addresses the clients bind to, spread round-robin; more than ~28,000 "
            "connections to one address:port need several (e.g. 127.0.0.2)",
        ),
        Key(
            "full_history",
            Integer(0),
            1000,
            "clients",
            "a seeded sample of this many clients records every delivery as a history op; "
            "every client is also recorded compactly (positions as runs), which is what the "
            "checker judges, and the sample must agree with it",
        ),
    ),
    "workload": (
        Key("channels", Integer(1), 4, "channels", "result channels published to"),
        Key(
            "channel_prefix",
            Text(r"[A-Za-z0-9_\-=@,.;]+", "a Pusher channel name prefix"),
            "results-",
            "—",
            "channel names are `<prefix><n>`, n = 0 .. channels-1",
        ),
        Key(
            "publish_interval_s",
            _seconds(0, lo_open=True),
            2.5,
            "s",
            "mean time between two updates of one channel",
        ),
        Key(
            "interval_jitter_s",
            _seconds(),
            0.5,
            "s",
            "uniform jitter added to each interval (must be below publish_interval_s)",
        ),
        Key(
            "payload_bytes",
            Integer(16, 10240),
            600,
            "bytes",
            "size of each update's JSON payload (a realistic election result is ~600 B; "
            "Pusher caps events at 10 KB)",
        ),
        Key(
            "publish_timeout_s",
            _seconds(0, lo_open=True),
            5.0,
            "s",
            "HTTP publish timeout; a timeout is recorded as indeterminate (info)",
        ),
        Key(
            "publish_retries",
            Integer(0),
            3,
            "retries",
            "retries of a failed or indeterminate publish, each a new update with a new id",
        ),
        Key(
            "presence_channels",
            Integer(0),
            0,
            "channels",
            "presence channels the clients also join as users (client i joins "
            "presence-room-<i mod n>, even ids as one user on every connection, odd ids as a "
            "new user per connection); their member lists are checked (invariants.presence). "
            "At most 50 clients per channel (the app's limit is 100 users)",
        ),
    ),
    "phases": (
        Key("steady_s", _seconds(), 10.0, "s", "steady state before any fault"),
        Key(
            "faults_s",
            _seconds(),
            30.0,
            "s",
            "the window in which faults are scheduled (faults[*].at_s is relative to it)",
        ),
        Key("heal_s", _seconds(), 5.0, "s", "every fault still active is healed at its start"),
        Key(
            "settle_s",
            _seconds(),
            10.0,
            "s",
            "publishing continues, no faults; then every client does its final read (drain)",
        ),
    ),
    "invariants": (
        Key("lost", Integer(0), 0, "updates", "maximum lost (client, update) pairs"),
        Key("duplicated", Integer(0), 0, "deliveries", "maximum duplicate deliveries"),
        Key("reordered", Integer(0), 0, "deliveries", "maximum out-of-order deliveries"),
        Key(
            "unexpected",
            Integer(0),
            0,
            "deliveries",
            "maximum deliveries of never-published or failed updates",
        ),
        Key(
            "unsubscribed",
            Integer(0),
            0,
            "subscriptions",
            "maximum (client, channel) subscriptions that never succeeded",
        ),
        Key(
            "p99_ms",
            _ms(0, lo_open=True),
            None,
            "ms",
            "maximum p99 delivery latency (unset: not checked)",
        ),
        Key(
            "p99_phases",
            Names(("steady", "faults", "heal", "settle")),
            (),
            "—",
            "phases whose p99 must each be within p99_ms (updates by publish time); empty: "
            "the p99 over every delivery",
        ),
        Key(
            "recovery_s",
            _seconds(),
            None,
            "s",
            "maximum recovery time of every fault (unset: not checked)",
        ),
        Key(
            "min_delivered",
            Integer(1),
            1,
            "updates",
            "minimum owed updates delivered: a run that proves nothing fails",
        ),
        Key(
            "rss_slope_mb_per_h",
            Number(0, None, False, "a number of MB per hour"),
            None,
            "MB/h",
            "leak detector: maximum RSS growth of any node process that ran 10 min past a "
            "5 min warm-up (least squares over per-minute medians; unset: not checked)",
        ),
        Key(
            "presence",
            Integer(0),
            0,
            "problems",
            "maximum presence problems after the final read: ghost and missing members in a "
            "client's list, member events that contradict it (checked when "
            "workload.presence_channels > 0)",
        ),
    ),
}

# checker.Invariants field for each [invariants] key.
_INVARIANT_FIELDS: Final = {
    "lost": "max_lost",
    "duplicated": "max_duplicated",
    "reordered": "max_reordered",
    "unexpected": "max_unexpected",
    "unsubscribed": "max_unsubscribed",
    "p99_ms": "p99_ms",
    "p99_phases": "p99_phases",
    "recovery_s": "max_recovery_s",
    "min_delivered": "min_delivered",
    "rss_slope_mb_per_h": "max_rss_slope_mb_per_h",
    "presence": "max_presence",
}


@dataclass(frozen=True)
class _Kinds(_Check):
    """One of the registered fault kinds (harness.faults), as registered when checked."""

    def expected(self) -> str:
        return Choice(tuple(FAULT_KINDS)).expected()

    def convert(self, value: object) -> str:
        return Choice(tuple(FAULT_KINDS)).convert(value)


FAULT_KEYS: Final[tuple[Key, ...]] = (
    Key("at_s", _seconds(), REQUIRED, "s", "start, in seconds from the start of the faults phase"),
    Key("kind", _Kinds(), REQUIRED, "—", "the fault kind (below)"),
    Key("target", Text(), "per kind", "—", "what the fault hits (per kind, below)"),
    Key(
        "duration_s",
        _seconds(0, lo_open=True),
        "per kind",
        "s",
        "how long before the heal, for kinds that have a duration",
    ),
)

#: ``[[client_groups]]``: real Pusher clients next to the Python fleet (harness.real_clients).
CLIENT_GROUP_KEYS: Final[tuple[Key, ...]] = (
    Key(
        "name",
        Text(r"[a-z][a-z0-9-]*", "a lowercase name of letters, digits and '-'"),
        "per group",
        "—",
        "the group's name; its viewers are `<name>-<i>` in the history (default: the kind, "
        "numbered when several groups share it)",
    ),
    Key(
        "kind",
        Choice(("pusher-js", "browser")),
        REQUIRED,
        "—",
        "pusher-js: viewers in Node processes (tools/node-fleet.mjs); browser: one headless "
        "Chromium page per viewer (tools/browser-fleet.mjs)",
    ),
    Key("count", Integer(1), 10, "clients", "viewers in the group"),
    Key(
        "processes",
        Integer(1, 16),
        1,
        "processes",
        "Node processes (each with one Chromium for kind = browser); viewers spread over them",
    ),
    Key(
        "library",
        Choice(("pusher-js", "echo", "both")),
        "pusher-js",
        "—",
        "what the application is written with: pusher-js alone, Laravel Echo on pusher-js, "
        "or both alternating per viewer",
    ),
    Key(
        "versions",
        Choice(("newest", "oldest", "both")),
        "newest",
        "—",
        "the pusher-js 8.x / Echo 2.x versions clients/pusher-resume claims (oldest or newest, "
        "or both alternating)",
    ),
    Key(
        "plugin",
        Boolean(),
        True,
        "—",
        "wrap each instance in @turnout/pusher-resume (false: plain pusher-js, which "
        "resubscribes fresh and loses what was published meanwhile)",
    ),
    Key(
        "channels_per_client",
        Integer(1),
        2,
        "channels",
        "channels each viewer subscribes to (spread evenly over workload.channels)",
    ),
    Key(
        "connect_rate_per_s",
        Number(0, None, True, "a number per second"),
        50.0,
        "clients/s",
        "how fast the group's viewers are opened",
    ),
)


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
class Cluster:
    nodes: int = 3
    history_size: int = 1000
    history_ttl_s: float = 300.0
    activity_timeout_s: float = 30.0
    drain_grace_s: float = 5.0
    max_rss_mb: int = 0
    outbound_queue_bytes: int = 1048576
    socket_send_buffer_bytes: int = 0
    recovery: bool = True
    proxies: str = "auto"
    reaper: bool = True
    server: str = "turnout"

    @property
    def effective_history_size(self) -> int:
        """The history size nodes run with: 0 when recovery is off (the negative control)."""
        return self.history_size if self.recovery else 0


@dataclass(frozen=True, slots=True)
class Clients:
    count: int = 200
    processes: int = 2
    channels_per_client: int = 2
    connect_rate_per_s: float = 500.0
    reconnect_backoff_min_s: float = 0.1
    reconnect_backoff_max_s: float = 5.0
    ping_after_silence_s: float = 5.0
    resume: bool = True
    source_addresses: tuple[str, ...] = ()
    full_history: int = 1000


@dataclass(frozen=True, slots=True)
class Workload:
    channels: int = 4
    channel_prefix: str = "results-"
    publish_interval_s: float = 2.5
    interval_jitter_s: float = 0.5
    payload_bytes: int = 600
    publish_timeout_s: float = 5.0
    publish_retries: int = 3
    presence_channels: int = 0

    @property
    def presence_names(self) -> tuple[str, ...]:
        return tuple(f"presence-room-{n}" for n in range(1, self.presence_channels + 1))

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(f"{self.channel_prefix}{n}" for n in range(self.channels))


@dataclass(frozen=True, slots=True)
class Phases:
    steady_s: float = 10.0
    faults_s: float = 30.0
    heal_s: float = 5.0
    settle_s: float = 10.0

    @property
    def total_s(self) -> float:
        return self.steady_s + self.faults_s + self.heal_s + self.settle_s


@dataclass(frozen=True, slots=True)
class Fault:
    """One scheduled fault. ``params`` holds the kind's own keys, defaults filled in."""

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
        return {
            "fault_id": self.fault_id,
            "kind": self.kind,
            "at_s": self.at_s,
            "target": self.target,
            "duration_s": self.duration_s,
            "params": dict(self.params),
        }


@dataclass(frozen=True, slots=True)
class ClientGroup:
    """One ``[[client_groups]]`` entry: real Pusher clients run by harness.real_clients."""

    name: str
    kind: str  # "pusher-js" | "browser"
    count: int = 10
    processes: int = 1
    library: str = "pusher-js"
    versions: str = "newest"
    plugin: bool = True
    channels_per_client: int = 2
    connect_rate_per_s: float = 50.0


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    description: str
    cluster: Cluster = Cluster()
    clients: Clients = Clients()
    workload: Workload = Workload()
    phases: Phases = Phases()
    faults: tuple[Fault, ...] = ()
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
                params=Params(
                    {**f.params, "clients": max(1, round(_int(f.params["clients"]) * factor))}
                ),
            )
            if f.kind == "connection_storm"
            else f
            for f in self.faults
        )
        return dataclasses.replace(self, clients=clients, faults=faults)

    def presence_negative_control(self) -> Experiment:
        """The same experiment with the nodes' reaper off: a killed node's presence members
        stay, and the presence check must report them (ghosts)."""
        return dataclasses.replace(
            self,
            name=f"{self.name}-no-reaper",
            cluster=dataclasses.replace(self.cluster, reaper=False),
        )

    def negative_control(self) -> Experiment:
        """The same experiment with recovery off: it must report losses to prove the checker."""
        return dataclasses.replace(
            self,
            name=f"{self.name}-negative-control",
            cluster=dataclasses.replace(self.cluster, recovery=False),
        )

    def plugin_off(self) -> Experiment:
        """The same experiment with every client group's resume plugin off: plain pusher-js,
        which must lose updates where the plugin kept them (the Python fleet still resumes)."""
        return dataclasses.replace(
            self,
            name=f"{self.name}-plugin-off",
            client_groups=tuple(
                dataclasses.replace(g, plugin=False) for g in self.client_groups),
        )

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


def _int(value: ParamValue) -> int:
    assert isinstance(value, int)  # validated by the schema
    return value


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


class _Loader:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str) -> ExperimentError:
        return ExperimentError(self.source, key, problem)

    def unknown(self, prefix: str, key: str, allowed: Sequence[str], why: str = "") -> None:
        hint = difflib.get_close_matches(key, allowed, n=1)
        problem = "unknown key" + (f" {why}" if why else "")
        if hint:
            problem += f" (did you mean '{hint[0]}'?)"
        problem += "; allowed: " + ", ".join(allowed)
        raise self.error(f"{prefix}{key}", problem)

    def value(self, dotted: str, key: Key, raw: object) -> Any:
        try:
            return key.check.convert(raw)
        except _Invalid as exc:
            raise self.error(dotted, str(exc)) from None

    def table(self, dotted: str, raw: object) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.error(dotted, f"expected a table [{dotted}], got {_got(raw)}")
        return raw

    def keys(self, prefix: str, keys: Sequence[Key], data: Mapping[str, Any]) -> dict[str, Any]:
        """Check the keys of one table against ``keys``; fill in defaults."""
        names = [k.name for k in keys]
        for name in data:
            if name not in names:
                self.unknown(prefix, name, names)
        out: dict[str, Any] = {}
        for key in keys:
            if key.name in data:
                out[key.name] = self.value(prefix + key.name, key, data[key.name])
            elif key.default is REQUIRED:
                raise self.error(prefix + key.name, f"missing; expected {key.check.expected()}")
            else:
                out[key.name] = key.default
        return out

    def experiment(self, data: dict[str, Any], default_name: str | None) -> Experiment:
        sections = [s for s in SECTIONS if s]
        allowed = [k.name for k in SECTIONS[""]] + sections + ["faults", "client_groups"]
        top = {k: v for k, v in data.items()
               if k not in sections and k not in ("faults", "client_groups")}
        for name in top:
            if name not in allowed:
                self.unknown("", name, allowed)
        head = self.keys("", SECTIONS[""], top)
        if head["name"] is None:
            if default_name is None:
                raise self.error("name", "missing (and there is no file name to default to)")
            head["name"] = self.value("name", SECTIONS[""][0], default_name)
        parts = {
            s: self.keys(f"{s}.", SECTIONS[s], self.table(s, data.get(s, {}))) for s in sections
        }
        cluster = Cluster(**parts["cluster"])
        clients = Clients(**parts["clients"])
        workload = Workload(**parts["workload"])
        phases = Phases(**parts["phases"])
        invariants = Invariants(**{_INVARIANT_FIELDS[k]: v for k, v in parts["invariants"].items()},
                                presence=workload.presence_channels > 0)
        raw_faults = data.get("faults", [])
        if not isinstance(raw_faults, list):
            raise self.error(
                "faults", f"expected an array of tables [[faults]], got {_got(raw_faults)}"
            )
        faults = tuple(self.fault(i, raw, phases) for i, raw in enumerate(raw_faults))
        client_groups = self.client_groups(data.get("client_groups", []))
        exp = Experiment(
            name=head["name"],
            description=head["description"],
            cluster=cluster,
            clients=clients,
            workload=workload,
            phases=phases,
            faults=faults,
            invariants=invariants,
            client_groups=client_groups,
            ci=head["ci"],
            seed=head["seed"],
            source=self.source,
        )
        self.cross_checks(exp)
        return exp

    def fault(self, index: int, raw: object, phases: Phases) -> Fault:
        prefix = f"faults[{index}]."
        if not isinstance(raw, dict):
            raise self.error(f"faults[{index}]", f"expected a table [[faults]], got {_got(raw)}")
        at_key, kind_key, _, duration_key = FAULT_KEYS
        if "kind" not in raw:
            raise self.error(prefix + "kind", f"missing; expected {kind_key.check.expected()}")
        kind = FAULT_KINDS[self.value(prefix + "kind", kind_key, raw["kind"])]
        common = [k.name for k in FAULT_KEYS]
        allowed = common + [k.name for k in kind.keys]
        why = f"for kind '{kind.kind}'"
        for name in raw:
            if name == "duration_s" and kind.duration_s is None:
                raise self.error(
                    prefix + name,
                    f"{kind.kind} takes no duration_s; it heals at {kind.heal_at}",
                )
            if name not in allowed:
                self.unknown(prefix, name, allowed, why)
        if "at_s" not in raw:
            raise self.error(prefix + "at_s", f"missing; expected {at_key.check.expected()}")
        at_s = self.value(prefix + "at_s", at_key, raw["at_s"])
        if at_s > phases.faults_s:
            raise self.error(
                prefix + "at_s",
                f"expected a number of seconds within the faults phase (0 .. phases.faults_s = "
                f"{phases.faults_s:g}), got {_got(raw['at_s'])}",
            )
        target = raw.get("target", kind.default_target)
        form = parse_target(target) if isinstance(target, str) else None
        if form is None or form.cls not in kind.targets:
            raise self.error(prefix + "target",
                             f"expected {targets.expected(kind.targets)}, got {_got(target)}")
        duration = kind.duration_s
        if "duration_s" in raw:
            duration = self.value(prefix + "duration_s", duration_key, raw["duration_s"])
        try:
            params = validate(kind.Params, {k: v for k, v in raw.items() if k not in common})
        except ValidationError as exc:
            key, text = problem(exc, kind.Params, allowed=allowed, why=why)
            raise self.error(prefix + key, text) from None
        return Fault(index, kind.kind, at_s, target, duration, Params(dataclasses.asdict(params)))

    def client_groups(self, raw: object) -> tuple[ClientGroup, ...]:
        if not isinstance(raw, list):
            raise self.error(
                "client_groups",
                f"expected an array of tables [[client_groups]], got {_got(raw)}")
        groups: list[ClientGroup] = []
        for index, entry in enumerate(raw):
            prefix = f"client_groups[{index}]."
            if not isinstance(entry, dict):
                raise self.error(f"client_groups[{index}]",
                                 f"expected a table [[client_groups]], got {_got(entry)}")
            values = self.keys(prefix, CLIENT_GROUP_KEYS, entry)
            if values["name"] == "per group":
                same = [e for e in raw if isinstance(e, dict) and e.get("kind") == values["kind"]]
                values["name"] = values["kind"] + (
                    f"-{sum(1 for g in groups if g.kind == values['kind']) + 1}"
                    if len(same) > 1 else "")
            if values["processes"] > values["count"]:
                raise self.error(prefix + "processes",
                                 f"expected at most count ({values['count']}) processes, "
                                 f"got {values['processes']}")
            if any(g.name == values["name"] for g in groups):
                raise self.error(prefix + "name",
                                 f"expected a name no other group has, got '{values['name']}'")
            if values["name"] == "client" or values["name"].startswith("client-"):
                raise self.error(prefix + "name",
                                 "expected a name other than 'client' or 'client-…' (the "
                                 f"Python fleet's viewers are client-<n>), got '{values['name']}'")
            groups.append(ClientGroup(**values))
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


def _toml(value: object) -> str:
    if value is REQUIRED:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value in ("per kind", "per group") else f'"{value}"'
    if isinstance(value, tuple | list):
        return "[]" if not value else "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _table(keys: Sequence[Any]) -> list[str]:
    lines = ["| key | accepts | unit | default | meaning |", "|---|---|---|---|---|"]
    for k in keys:
        lines.append(f"| `{k.name}` | {k.expected()} | {k.unit} | {_toml(k.default)} | {k.doc} |")
    return lines


def reference_markdown() -> str:
    """The generated reference of docs/experiments.md: every key with unit and default."""
    out: list[str] = []
    for section, keys in SECTIONS.items():
        out += ["", "### Top level" if not section else f"### `[{section}]`", ""]
        out += _table(keys)
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
        duration = (
            f"`duration_s` default {kind.duration_s:g} s"
            if kind.duration_s is not None
            else "no `duration_s`"
        )
        out += [
            f"#### `{kind.kind}`",
            "",
            kind.summary,
            "",
            f"- target: {forms} (default `{kind.default_target}`)",
            f"- {duration}; heal: {kind.heal_at}",
            "",
        ]
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
