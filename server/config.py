"""Node configuration: the `Config` dataclass, its validation, and `load_config`.

Precedence, highest first: command-line flags, TURNOUT_* environment variables, the
optional TOML file (--config / TURNOUT_CONFIG), then the dataclass defaults.

Validation lives in two places on purpose. `load_config` checks each value as it reads it,
so an error can name where the bad value came from (flag, environment variable or file).
`Config.__post_init__` runs the same checks again, so a Config built directly in code (tests,
embedding) can never be invalid either; its errors name the field only.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import math
import os
import re
import socket
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, NoReturn
from urllib.parse import urlsplit

__all__ = [
    "DEV_APP",
    "ENV_PREFIX",
    "SECRET_FLAGS",
    "AppConfig",
    "Config",
    "ConfigError",
    "build_parser",
    "load_config",
    "secret_flag_warnings",
]

ENV_PREFIX = "TURNOUT_"
PROG = "turnout-server"
LOG_LEVELS = ("debug", "info", "warning", "error")
MIB = 1024 * 1024

# Node ids end up in Redis keys, log lines and metrics labels, so keep them boring.
_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# App ids and keys appear in URL paths (/app/{key}, /apps/{id}/events): no '/' or spaces.
_APP_TOKEN_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Key prefixes are spliced into Redis key names; ':' is allowed for nested namespaces.
_KEY_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class ConfigError(ValueError):
    """A setting has a bad value. `setting` names the setting and, when known, its source."""

    def __init__(self, setting: str, message: str, *, field: str | None = None) -> None:
        super().__init__(setting, message)
        self.setting = setting
        self.message = message
        # The Config field concerned, if any; lets callers relabel errors with a source.
        self.field = field

    def __str__(self) -> str:
        return f"invalid {self.setting}: {self.message}"


# --------------------------------------------------------------------------- value checks
# Each checker takes an already-typed value, returns it (possibly normalised) or raises
# ValueError with a message that reads well after "invalid <setting>: ".


def _int_range(lo: int, hi: int | None = None) -> Callable[[Any], Any]:
    def check(v: int) -> int:
        if hi is None:
            if v < lo:
                raise ValueError(f"must be >= {lo} (got {v})")
        elif not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi} (got {v})")
        return v

    return check


def _positive(v: float) -> float:
    if not v > 0:
        raise ValueError(f"must be > 0 (got {v})")
    return v


def _non_negative(v: float) -> float:
    if v < 0:
        raise ValueError(f"must be >= 0 (got {v})")
    return v


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[Any], Any]:
    def check(v: str) -> str:
        if not regex.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid {what}")
        return v

    return check


def _host(v: str) -> str:
    if not v or any(c.isspace() for c in v):
        raise ValueError(f"{v!r} is not a host name or address")
    return v


def _non_empty(v: str) -> str:
    if not v:
        raise ValueError("must not be empty")
    return v


def _log_level(v: str) -> str:
    level = v.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"{v!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def _parse_redis_url(url: str) -> tuple[str, int, int]:
    """redis://host[:port][/db] -> (host, port, db). Nothing else is supported."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:  # urlsplit raises on bad ports and malformed IPv6 brackets
        raise ValueError(f"{url!r} is not a valid URL ({e})") from None
    if parts.scheme != "redis":
        raise ValueError(f"{url!r} must use the redis:// scheme")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: credentials in the URL are not supported")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: query strings and fragments are not supported")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} has no host")
    if port == 0:
        raise ValueError(f"{url!r}: port must be between 1 and 65535")
    path = parts.path.strip("/")
    if not path:
        db = 0
    elif path.isdigit():
        db = int(path)
    else:
        raise ValueError(f"{url!r}: the path must be a database number like /0")
    return host, port if port is not None else 6379, db


def _redis_url(v: str) -> str:
    _parse_redis_url(v)
    return v


def _default_node_id() -> str:
    # Hostnames may be long or (in containers) contain odd characters; squash them so the
    # default always passes the node_id check itself.
    pid = str(os.getpid())
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "node"
    return f"{host[: 63 - len(pid)]}-{pid}"


def _loopback(v: str) -> str:
    try:
        address = ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None
    if not address.is_loopback:
        raise ValueError(f"{v!r} is not a loopback address (127.0.0.0/8 or ::1): the chaos "
                         "endpoint must never be reachable from another machine")
    return v


# ------------------------------------------------------------------------ the dataclasses


@dataclass(frozen=True, slots=True)
class AppConfig:
    id: str
    key: str
    # Kept out of repr so logging a Config never leaks a signing secret.
    secret: str = field(repr=False)


_APP_CHECKS: dict[str, Callable[[Any], Any]] = {
    "id": _pattern(_APP_TOKEN_RE, "app id ([A-Za-z0-9_.:-], 1-128 characters)"),
    "key": _pattern(_APP_TOKEN_RE, "app key ([A-Za-z0-9_.:-], 1-128 characters)"),
    "secret": _non_empty,
}


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 6001
    redis_url: str = "redis://127.0.0.1:6379/0"
    node_id: str = field(default_factory=_default_node_id)
    # No default app: a node must be told its apps (or run with dev=True, which adds DEV_APP).
    apps: tuple[AppConfig, ...] = ()
    history_size: int = 1000
    history_ttl: float = 300.0
    max_message_size: int = 10240
    max_event_data: int = 10240
    activity_timeout: int = 120
    pong_timeout: float = 30.0
    drain_grace: float = 10.0
    max_connections: int = 0
    max_connections_per_ip: int = 0
    max_subscriptions: int = 100
    max_fragments: int = 100
    max_header_size: int = 16384
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    outbound_queue_bytes: int = 1048576
    slow_consumer_grace: float = 5.0
    socket_send_buffer: int = 0
    max_rss_mb: float = 0.0
    log_rate: float = 20.0
    chaos: bool = False
    chaos_token: str = field(default="", repr=False)
    chaos_host: str = "127.0.0.1"
    chaos_port: int = 0
    dev: bool = False
    key_prefix: str = "turnout"
    position_check_interval: float = 1.0
    log_level: str = "info"

    # Derived once: the class is frozen and slotted, so these are filled via object.__setattr__.
    _redis: tuple[str, int, int] = field(init=False, repr=False, compare=False)
    _apps_by_key: dict[str, AppConfig] = field(init=False, repr=False, compare=False)
    _apps_by_id: dict[str, AppConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, spec in _SPECS.items():
            value = getattr(self, name)
            try:
                value = spec.check(_coerce_typed(spec.kind, value))
            except ValueError as e:
                raise ConfigError(name, str(e), field=name) from None
            object.__setattr__(self, name, value)
        apps = tuple(self.apps)  # accept a list from callers; store the hashable tuple
        if not apps and self.dev:
            apps = (DEV_APP,)
        for i, app in enumerate(apps):
            if not isinstance(app, AppConfig):
                raise ConfigError(f"apps[{i}]", "must be an AppConfig", field="apps")
            for attr, check in _APP_CHECKS.items():
                try:
                    check(getattr(app, attr))
                except ValueError as e:
                    raise ConfigError(f"apps[{i}].{attr}", str(e), field="apps") from None
        object.__setattr__(self, "apps", apps)
        _check_cross_field(self)
        object.__setattr__(self, "_redis", _parse_redis_url(self.redis_url))
        object.__setattr__(self, "_apps_by_key", {a.key: a for a in apps})
        object.__setattr__(self, "_apps_by_id", {a.id: a for a in apps})

    @property
    def redis_host(self) -> str:
        return self._redis[0]

    @property
    def redis_port(self) -> int:
        return self._redis[1]

    @property
    def redis_db(self) -> int:
        return self._redis[2]

    def app_by_key(self, key: str) -> AppConfig | None:
        return self._apps_by_key.get(key)

    def app_by_id(self, id: str) -> AppConfig | None:
        return self._apps_by_id.get(id)


def _check_cross_field(c: Config) -> None:
    if not c.apps:
        raise ConfigError("apps", NO_APP_MESSAGE, field="apps")
    for attr in ("id", "key"):
        seen: set[str] = set()
        for app in c.apps:
            value = getattr(app, attr)
            if value in seen:
                raise ConfigError("apps", f"duplicate app {attr} {value!r}", field="apps")
            seen.add(value)
    if c.chaos and not c.chaos_token:
        raise ConfigError("chaos_token", "required when chaos is on", field="chaos_token")


# -------------------------------------------------------------------------- setting specs


@dataclass(frozen=True, slots=True)
class _Spec:
    flag: str
    kind: type  # int, float, bool or str: how text from flags/env is converted
    check: Callable[[Any], Any]
    help: str  # what it is and its unit; default and env var are appended automatically
    metavar: str | None = None


_SPECS: dict[str, _Spec] = {
    "host": _Spec("--host", str, _host, "Address to listen on for websocket and HTTP.", "ADDR"),
    "port": _Spec(
        "--port", int, _int_range(0, 65535), "TCP port to listen on; 0 picks an ephemeral port."
    ),
    "redis_url": _Spec(
        "--redis-url", str, _redis_url, "Redis to scale over, as redis://host[:port][/db].", "URL"
    ),
    "node_id": _Spec(
        "--node-id",
        str,
        _pattern(_NODE_ID_RE, "node id ([A-Za-z0-9_.-], 1-64 characters)"),
        "Unique name of this node in the cluster ([A-Za-z0-9_.-], 1-64 characters).",
        "ID",
    ),
    "history_size": _Spec(
        "--history-size",
        int,
        _int_range(0),
        "Events kept per channel stream for recovery (count); 0 turns history off.",
        "N",
    ),
    "history_ttl": _Spec(
        "--history-ttl",
        float,
        _positive,
        "Seconds a channel's stream and offset survive without publishes (> 0).",
        "SECONDS",
    ),
    "max_message_size": _Spec(
        "--max-message-size",
        int,
        _int_range(256, 16 * MIB),
        "Largest incoming websocket message, in bytes (256..16 MiB).",
        "BYTES",
    ),
    "max_event_data": _Spec(
        "--max-event-data",
        int,
        _int_range(1, 16 * MIB),
        "Largest 'data' of one HTTP-published event, in bytes.",
        "BYTES",
    ),
    "activity_timeout": _Spec(
        "--activity-timeout",
        int,
        _int_range(1, 3600),
        "Seconds announced in pusher:connection_established (1..3600).",
        "SECONDS",
    ),
    "pong_timeout": _Spec(
        "--pong-timeout",
        float,
        _positive,
        "Seconds to wait for a pong before closing with 4201.",
        "SECONDS",
    ),
    "drain_grace": _Spec(
        "--drain-grace",
        float,
        _non_negative,
        "Seconds over which SIGTERM spreads the 4200 closes.",
        "SECONDS",
    ),
    "max_connections": _Spec(
        "--max-connections",
        int,
        _int_range(0),
        "Client sockets open at once, counted from accept (websockets, HTTP, handshakes in "
        "progress); 0 = automatic: the open-file limit (raised to its hard limit at start) "
        "minus a reserve, logged at start. A socket over it is answered at once (websocket: "
        "4100, HTTP: 503) and closed.",
        "N",
    ),
    "max_connections_per_ip": _Spec(
        "--max-connections-per-ip",
        int,
        _int_range(0),
        "Client sockets open at once from one peer address; 0 = no per-address limit (behind "
        "a load balancer every peer is the balancer). Over it: 4100 or 503.",
        "N",
    ),
    "max_subscriptions": _Spec(
        "--max-subscriptions",
        int,
        _int_range(1, 100_000),
        "Channels one connection may be subscribed to; one more is refused with "
        "pusher:subscription_error (status 429) and the connection stays open.",
        "N",
    ),
    "max_fragments": _Spec(
        "--max-fragments",
        int,
        _int_range(1, 100_000),
        "Frames one websocket message may be fragmented into; one more closes with 1009.",
        "N",
    ),
    "max_header_size": _Spec(
        "--max-header-size",
        int,
        _int_range(1024, 1024 * 1024),
        "Largest HTTP request head (request line and headers), in bytes; larger gets 431.",
        "BYTES",
    ),
    "header_timeout": _Spec(
        "--header-timeout",
        float,
        _positive,
        "Deadline, in seconds, for a request's line and headers to arrive in full (counted "
        "from the connection or from the request's first byte); past it: 408.",
        "SECONDS",
    ),
    "body_timeout": _Spec(
        "--body-timeout",
        float,
        _positive,
        "Deadline, in seconds, for a request's whole body once its headers are in; past it: "
        "408.",
        "SECONDS",
    ),
    "outbound_queue_bytes": _Spec(
        "--outbound-queue-bytes",
        int,
        _int_range(1),
        "Per-connection outbound buffer, in bytes; overflow closes the client with 4100.",
        "BYTES",
    ),
    "slow_consumer_grace": _Spec(
        "--slow-consumer-grace",
        float,
        _non_negative,
        "Seconds an overflowed client's socket gets to drain so its 4100 close frame "
        "reaches it; if it does not, the connection is reset.",
        "SECONDS",
    ),
    "socket_send_buffer": _Spec(
        "--socket-send-buffer",
        int,
        _int_range(0),
        "Kernel send buffer of each client socket (SO_SNDBUF), in bytes; 0 = kernel "
        "autotuning (up to net.ipv4.tcp_wmem's maximum, megabytes). A fixed buffer bounds what "
        "a stalled client holds on the node to it plus --outbound-queue-bytes.",
        "BYTES",
    ),
    "max_rss_mb": _Spec(
        "--max-rss",
        float,
        _non_negative,
        "Memory watchdog, in MB of RSS: past it the node drains and exits with code 3; 0 = off.",
        "MB",
    ),
    "log_rate": _Spec(
        "--log-rate",
        float,
        _positive,
        "Log lines per second (bursts of 5 s worth) about what clients send: bad frames, "
        "refused messages and requests. Beyond it lines are counted, not written.",
        "LINES",
    ),
    "chaos": _Spec(
        "--chaos",
        bool,
        lambda v: v,
        "Enable the chaos HTTP endpoint on its own loopback listener (boolean).",
    ),
    "chaos_token": _Spec(
        "--chaos-token",
        str,
        lambda v: v,
        "Token the chaos endpoint requires (string); required when chaos is on. Give it "
        "in the environment or the TOML file, not as a flag (flags show in ps).",
        "TOKEN",
    ),
    "chaos_host": _Spec(
        "--chaos-host",
        str,
        _loopback,
        "Loopback address the chaos listener binds (127.0.0.0/8 or ::1).",
        "IP",
    ),
    "chaos_port": _Spec(
        "--chaos-port",
        int,
        _int_range(0, 65535),
        "Port of the chaos listener; 0 picks a free one (logged at start).",
        "PORT",
    ),
    "dev": _Spec(
        "--dev",
        bool,
        lambda v: v,
        "Local development only: with no app configured, serve the built-in app "
        "1 / turnout-key / turnout-secret, whose secret is public.",
    ),
    "key_prefix": _Spec(
        "--key-prefix",
        str,
        _pattern(_KEY_PREFIX_RE, "key prefix ([A-Za-z0-9_.:-], 1-64 characters)"),
        "Redis key namespace (string), so several clusters can share one Redis.",
        "PREFIX",
    ),
    "position_check_interval": _Spec(
        "--position-check-interval",
        float,
        _positive,
        "Seconds between checks of this node's channels' stream tops.",
        "SECONDS",
    ),
    "log_level": _Spec(
        "--log-level", str, _log_level, f"Log level, one of {', '.join(LOG_LEVELS)}.", "LEVEL"
    ),
}

_APP_FLAGS = {"id": "--app-id", "key": "--app-key", "secret": "--app-secret"}
#: The app a --dev node serves when none is configured. Its secret is in this file: public.
DEV_APP = AppConfig("1", "turnout-key", "turnout-secret")
#: Flags that carry a secret: visible to every local user in ps and /proc/PID/cmdline.
SECRET_FLAGS = {"--app-secret": "app_secret", "--chaos-token": "chaos_token"}
NO_APP_MESSAGE = (
    f"no app is configured. Set {ENV_PREFIX}APP_ID, {ENV_PREFIX}APP_KEY and "
    f"{ENV_PREFIX}APP_SECRET in the environment (or --app-id/--app-key with the secret in the "
    f"environment), or list [[apps]] tables with id, key and secret in the --config TOML "
    f"file; for local development only, --dev serves the built-in app "
    f"{DEV_APP.id}/{DEV_APP.key}/{DEV_APP.secret}"
)


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


# ------------------------------------------------------------------------ type conversion

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _coerce_text(kind: type, text: str) -> Any:
    """Convert a flag or environment string to `kind`; ValueError reads after 'invalid X: '."""
    if kind is str:
        return text
    if kind is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{text!r} is not a boolean (use 1/true/yes/on or 0/false/no/off)")
    if kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _coerce_typed(kind: type, value: Any) -> Any:
    """Check an already-typed value (TOML or Python) against `kind`; ints widen to float."""
    # bool is a subclass of int, so it is rejected explicitly for numeric settings.
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"must be a boolean, not {_type_name(value)}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"must be an integer, not {_type_name(value)}")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"must be a finite number (got {value})")
            return float(value)
        raise ValueError(f"must be a number, not {_type_name(value)}")
    if isinstance(value, str):
        return value
    raise ValueError(f"must be a string, not {_type_name(value)}")


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


# -------------------------------------------------------------------------------- argparse


class _Parser(argparse.ArgumentParser):
    # argparse would print usage and sys.exit(2); raising keeps load_config side-effect free
    # and lets the CLI report every problem in one format.
    def error(self, message: str) -> NoReturn:
        raise ConfigError("command line", message)


_EPILOG = f"""\
Every setting can come from four places; the first one that sets it wins:
  1. the command-line flag,
  2. the environment variable shown with it ({ENV_PREFIX}<SETTING>; empty values are ignored),
  3. the TOML file named by --config or {ENV_PREFIX}CONFIG, whose top-level keys are the
     setting names in snake_case (port, redis_url, max_rss_mb, ...) and which may list
     several apps as [[apps]] tables with id, key and secret,
  4. the built-in default.
--app-id/--app-key/--app-secret (or {ENV_PREFIX}APP_ID/_KEY/_SECRET) replace the first app;
if any of the three is given, all three must be (with --dev, missing ones come from the
built-in development app). A node with no app configured refuses to start unless --dev.
Secrets (the app secret, the chaos token) belong in the environment or the TOML file: a flag
is visible to every local user in ps and /proc/PID/cmdline, so the node warns about one.
Booleans in the environment accept 1/true/yes/on and 0/false/no/off.
"""


def _default_text(name: str) -> str:
    if name == "node_id":
        return "<hostname>-<pid>"
    f = next(f for f in fields(Config) if f.name == name)
    default = f.default
    assert default is not MISSING, name
    if isinstance(default, bool):
        return "on" if default else "off"
    if default == "":
        return "none"
    return str(default)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser behind load_config and `turnout-server --help`.

    No flag has a default (argparse.SUPPRESS), so the parsed namespace holds only the flags
    that were actually given; that is what lets env vars and the TOML file fill the rest.
    """
    parser = _Parser(
        prog=PROG,
        description="A turnout node: Pusher-protocol websocket broadcast over Redis.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,  # a prefix like --max would silently pick one setting
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file with settings (see below). Default: none. Env: {ENV_PREFIX}CONFIG.",
    )
    # dest is always the field name (--max-rss is max_rss_mb), so args map straight to fields.
    for name, spec in _SPECS.items():
        # '%' must be doubled: argparse %-formats help strings.
        text = f"{spec.help} Default: {_default_text(name)}. Env: {_env_name(name)}."
        text = text.replace("%", "%%")
        if spec.kind is bool:
            parser.add_argument(
                spec.flag, dest=name, action=argparse.BooleanOptionalAction, help=text
            )
        else:
            parser.add_argument(spec.flag, dest=name, metavar=spec.metavar, help=text)
    app_help = {
        "id": "Id of the first app (string, used in /apps/<id>/events).",
        "key": "Public key of the first app (string, used in /app/<key>).",
        "secret": "Signing secret of the first app (string); prefer the environment variable.",
    }
    for attr, flag in _APP_FLAGS.items():
        parser.add_argument(
            flag,
            dest=f"app_{attr}",
            metavar=attr.upper(),
            help=f"{app_help[attr]} Default: none. Env: {_env_name('app_' + attr)}.",
        )
    return parser


# ----------------------------------------------------------------------------- the loader


def _read_toml(path: str, label: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as e:
        raise ConfigError(label, f"cannot read {path!r}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}", str(e)) from None


def _toml_apps(raw: Any, path: str) -> list[AppConfig]:
    if not isinstance(raw, list):
        raise ConfigError(
            f"apps in {path}", f"must be an array of tables ([[apps]]), not {_type_name(raw)}"
        )
    apps = []
    for i, entry in enumerate(raw):
        where = f"apps[{i}] in {path}"
        if not isinstance(entry, dict):
            raise ConfigError(
                where, f"must be a table with id, key and secret, not {_type_name(entry)}"
            )
        for k in entry:
            if k not in _APP_CHECKS:
                raise ConfigError(
                    f"apps[{i}].{k} in {path}", "unknown app setting (expected id, key, secret)"
                )
        values = {}
        for attr, check in _APP_CHECKS.items():
            if attr not in entry:
                raise ConfigError(where, f"missing {attr!r}")
            try:
                values[attr] = check(_coerce_typed(str, entry[attr]))
            except ValueError as e:
                raise ConfigError(f"apps[{i}].{attr} in {path}", str(e)) from None
        apps.append(AppConfig(**values))
    return apps


def load_config(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build a validated Config from flags, environment and TOML file (in that precedence).

    argv excludes the program name; None means sys.argv[1:], and environ None means
    os.environ. Raises ConfigError on any bad value; `--help` raises SystemExit(0).
    """
    args = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if v != ""}

    toml: dict[str, Any] = {}
    toml_path: str | None = None
    if "config" in args:
        toml_path = args["config"]
        toml = _read_toml(args["config"], "--config (command line)")
    elif ENV_PREFIX + "CONFIG" in env:
        toml_path = env[ENV_PREFIX + "CONFIG"]
        toml = _read_toml(toml_path, f"--config ({ENV_PREFIX}CONFIG)")
    for key in toml:
        if key not in _SPECS and key != "apps":
            close = difflib.get_close_matches(key, [*_SPECS, "apps"], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key} in {toml_path}", f"unknown setting{hint}")

    values: dict[str, Any] = {}
    labels: dict[str, str] = {}  # field -> "setting (source)" for cross-field errors
    for name, spec in _SPECS.items():
        env_name = _env_name(name)
        try:
            if name in args:
                labels[name] = f"{spec.flag} (command line)"
                raw = args[name]
                # BooleanOptionalAction already yields a bool; everything else is text.
                value = raw if isinstance(raw, bool) else _coerce_text(spec.kind, raw)
            elif env_name in env:
                labels[name] = f"{spec.flag} ({env_name})"
                value = _coerce_text(spec.kind, env[env_name])
            elif name in toml:
                labels[name] = f"{name} in {toml_path}"
                value = _coerce_typed(spec.kind, toml[name])
            else:
                labels[name] = f"{spec.flag} (not set)"
                continue
            values[name] = spec.check(value)
        except ValueError as e:
            raise ConfigError(labels[name], str(e), field=name) from None

    apps_sources = []
    if "apps" in toml:
        values["apps"] = _toml_apps(toml["apps"], str(toml_path))
        apps_sources.append(f"apps in {toml_path}")
    first = _first_app_override(args, env, dev=bool(values.get("dev", False)))
    if first is not None:
        apps = list(values.get("apps", ()))
        values["apps"] = [first, *apps[1:]]
        apps_sources.insert(0, "--app-id/--app-key/--app-secret")
    labels["apps"] = " and ".join(apps_sources) or "apps"

    try:
        return Config(**values)
    except ConfigError as e:
        # Only cross-field checks can fail here; per-field ones already ran above.
        if e.field is None:
            raise
        raise ConfigError(labels.get(e.field, e.setting), e.message, field=e.field) from None


def _first_app_override(args: dict[str, Any], env: Mapping[str, str], *,
                        dev: bool) -> AppConfig | None:
    given: dict[str, tuple[str, str]] = {}  # attr -> (value, label)
    for attr, flag in _APP_FLAGS.items():
        env_name = _env_name("app_" + attr)
        if f"app_{attr}" in args:
            given[attr] = (args[f"app_{attr}"], f"{flag} (command line)")
        elif env_name in env:
            given[attr] = (env[env_name], f"{flag} ({env_name})")
    if not given:
        return None
    missing = [_APP_FLAGS[attr] for attr in _APP_CHECKS if attr not in given]
    if missing and not dev:
        # Filling the gap from the built-in app would run a node whose secret is public.
        raise ConfigError(
            "/".join(_APP_FLAGS[attr] for attr in given),
            f"also give {' and '.join(missing)} (or the {ENV_PREFIX}APP_* variables): an app "
            "needs an id, a key and a secret",
            field="apps",
        )
    values = {}
    for attr, check in _APP_CHECKS.items():
        value, label = given.get(attr, (getattr(DEV_APP, attr), _APP_FLAGS[attr]))
        try:
            values[attr] = check(value)
        except ValueError as e:
            raise ConfigError(label, str(e), field="apps") from None
    return AppConfig(**values)


def secret_flag_warnings(argv: list[str]) -> list[str]:
    """A warning for each secret given as a command-line flag (see SECRET_FLAGS)."""
    warnings = []
    for flag, setting in SECRET_FLAGS.items():
        if any(arg == flag or arg.startswith(flag + "=") for arg in argv):
            warnings.append(
                f"{flag} on the command line is visible to every local user (ps, "
                f"/proc/PID/cmdline); set {_env_name(setting)} or put {setting} in the "
                "--config TOML file instead"
            )
    return warnings
