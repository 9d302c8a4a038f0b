"""Node configuration: the `Config` schema and `load_config`.

`Config` is a frozen pydantic dataclass: each field carries its default, unit, documentation and
constraints, and building one (in code, from TOML, from flags) validates it. `load_config` reads
the layers with pydantic-settings: flags (its argparse CLI source, generated from the fields),
TURNOUT_* environment variables (its environment source), the optional TOML file (--config /
TURNOUT_CONFIG). Each layer's values are validated on their own first, so an error names where
the bad value came from; then pydantic-settings merges them, command line first, environment
next, then the file, then the defaults.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import re
import socket
import sys
import tomllib
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import field
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic import ValidationInfo as _Info
from pydantic import dataclasses as pydantic_dataclasses
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, CliSettingsSource, EnvSettingsSource, SettingsConfigDict
from pydantic_settings import InitSettingsSource as _Values

from .schema import SettingError, field_extra, raise_first, validate_partial

__all__ = [
    "DEV_APP",
    "ENV_PREFIX",
    "SECRET_FLAGS",
    "WEBHOOK_EVENTS",
    "AppConfig",
    "Config",
    "ConfigError",
    "WebhookConfig",
    "build_parser",
    "load_config",
    "secret_flag_warnings",
]

ENV_PREFIX = "TURNOUT_"
PROG = "turnout-server"
LOG_LEVELS = ("debug", "info", "warning", "error")
MIB = 1024 * 1024
#: A bad setting; ``str()`` reads "invalid <setting> (<source>): <what was expected>".
ConfigError = SettingError

# --------------------------------------------------------------------------- value checks
# Each takes a typed value, returns it (possibly normalised) or raises ValueError with a
# message that reads well after "invalid <setting>: ".


def _pattern(regex: str, what: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(v: str) -> str:
        if not compiled.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid {what}")
        return v

    return AfterValidator(check)


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
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    if port == 0:
        raise ValueError(f"{url!r}: port must be between 1 and 65535")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{url!r}: the path must be a database number like /0")
    return parts.hostname, port if port is not None else 6379, int(path or 0)


def _redis_url(v: str) -> str:
    _parse_redis_url(v)
    return v


def _loopback(v: str) -> str:
    try:
        address = ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None
    if not address.is_loopback:
        raise ValueError(f"{v!r} is not a loopback address (127.0.0.0/8 or ::1): the chaos "
                         "endpoint must never be reachable from another machine")
    return v


def hostname_pid() -> str:
    # Hostnames may be long or (in containers) contain odd characters; squash them so the
    # default always passes the node_id check itself.
    pid = str(os.getpid())
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "node"
    return f"{host[: 63 - len(pid)]}-{pid}"


# ----------------------------------------------------------------------------- the schema
# Scalar settings are strict (TOML and code must give the right type); flags and environment
# variables are text, parsed by pydantic's string mode. ``flag`` names a flag that is not
# the field's name in kebab case.

_SCHEMA = ConfigDict(extra="forbid", allow_inf_nan=False)
Host = Annotated[str, AfterValidator(_host)]
Seconds = float
Bytes = int


def _setting(default: Any = ..., doc: str = "", *, flag: str | None = None,
             **constraints: Any) -> Any:
    extra: dict[str, Any] | None = {"flag": flag} if flag else None
    if callable(default):
        return Field(default_factory=default, description=doc, strict=True,
                     json_schema_extra=extra, **constraints)
    return Field(default, description=doc, strict=True, json_schema_extra=extra, **constraints)


#: Webhook event kinds (Pusher's six plus subscription_count).
WEBHOOK_EVENTS = ("channel_occupied", "channel_vacated", "member_added", "member_removed",
                  "client_event", "cache_miss", "subscription_count")


def _webhook_url(v: str) -> str:
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise ValueError(f"{v!r} is not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{v!r} is not an http:// or https:// URL")
    return v


def _event_types(v: tuple[str, ...]) -> tuple[str, ...]:
    for kind in v:
        if kind not in WEBHOOK_EVENTS:
            close = difflib.get_close_matches(kind, WEBHOOK_EVENTS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else \
                f" (expected one of {', '.join(WEBHOOK_EVENTS)})"
            raise ValueError(f"unknown webhook event type {kind!r}{hint}")
    if not v:
        raise ValueError("must list at least one event type")
    return v


def _origin_pattern(v: str) -> str:
    if not v or any(c.isspace() for c in v):
        raise ValueError(f"{v!r} is not an origin pattern")
    return v


@pydantic_dataclasses.dataclass(frozen=True, slots=True, config=_SCHEMA)
class WebhookConfig:
    """One webhook endpoint of an app: ``[[apps.webhooks]]`` with url and event_types."""

    url: Annotated[str, AfterValidator(_webhook_url)] = Field(
        strict=True, description="Where batches are POSTed (http:// or https://).")
    event_types: Annotated[tuple[Annotated[str, Strict()], ...],
                           AfterValidator(_event_types)] = Field(
        default=WEBHOOK_EVENTS, description=f"Which events to send: any of "
        f"{', '.join(WEBHOOK_EVENTS)} (default: all).")


@pydantic_dataclasses.dataclass(frozen=True, slots=True, config=_SCHEMA)
class AppConfig:
    """One app: its credentials and its own settings (``[[apps]]`` tables in the TOML file)."""

    # Ids and keys appear in URL paths (/app/{key}, /apps/{id}/events): no '/' or spaces.
    id: Annotated[str, _pattern(r"[A-Za-z0-9_.:-]{1,128}",
                                "app id ([A-Za-z0-9_.:-], 1-128 characters)")] = \
        Field(strict=True)
    key: Annotated[str, _pattern(r"[A-Za-z0-9_.:-]{1,128}",
                                 "app key ([A-Za-z0-9_.:-], 1-128 characters)")] = \
        Field(strict=True)
    # Kept out of repr so logging a Config never leaks a signing secret.
    secret: Annotated[str, AfterValidator(_non_empty)] = Field(repr=False, strict=True)
    enabled: bool = _setting(
        True, "A disabled app refuses websockets (4003) and its HTTP API answers 403.")
    enable_client_events: bool = _setting(
        False, "Relay client-* events between subscribers of private and presence channels "
        "(Pusher's 'Enable client events'); off: they are refused with pusher:error 4301.")
    client_event_rate: float = _setting(
        10.0, "Client events one connection may send per second (a bucket of as many); one "
        "more closes the connection with 4301.", gt=0, le=10_000)
    max_connections: int = _setting(
        0, "Websocket connections of this app across the whole cluster; 0 = no limit. One "
        "more is refused with 4004 (checked against the other nodes' counts of the last "
        "second).", ge=0)
    allowed_origins: tuple[Annotated[str, Strict(), AfterValidator(_origin_pattern)], ...] = \
        Field(default=("*",), min_length=1, description="Origin header values a browser "
        "websocket may come from: '*', a full origin "
        "('https://app.example.com', '*' wildcards allowed: 'https://*.example.com') or a "
        "host ('example.com', '*.example.com'). A handshake without Origin (not a browser) "
        "is allowed; any other origin is refused with 4009.",
        json_schema_extra={"expect": "an array of strings"})
    max_presence_members: int = _setting(
        100, "Members (distinct users) of one presence channel; one more user is refused "
        "with pusher:subscription_error (status 403).", ge=1, le=100_000)
    max_presence_user_info: Bytes = _setting(
        1024, "Largest user_info of a presence member, in bytes of JSON.", ge=2, le=65536)
    subscription_count_events: bool = _setting(
        False, "Send pusher_internal:subscription_count to the subscribers of a channel when "
        "its cluster-wide count changes (at most once a second per channel).")
    webhooks: tuple[WebhookConfig, ...] = Field(
        default=(), description="Webhook endpoints ([[apps.webhooks]] with url and "
        "event_types).", json_schema_extra={"expect": "an array of tables ([[apps.webhooks]])"})

    def webhook_types(self) -> frozenset[str]:
        """Every event type some endpoint of this app wants."""
        return frozenset(t for hook in self.webhooks for t in hook.event_types)


#: The app a --dev node serves when none is configured. Its secret is in this file: public.
DEV_APP = AppConfig("1", "turnout-key", "turnout-secret")
NO_APP_MESSAGE = (
    f"no app is configured. Set {ENV_PREFIX}APP_ID, {ENV_PREFIX}APP_KEY and "
    f"{ENV_PREFIX}APP_SECRET in the environment (or --app-id/--app-key with the secret in the "
    f"environment), or list [[apps]] tables with id, key and secret in the --config TOML "
    f"file; for local development only, --dev serves the built-in app "
    f"{DEV_APP.id}/{DEV_APP.key}/{DEV_APP.secret}"
)


@pydantic_dataclasses.dataclass(frozen=True, slots=True, config=_SCHEMA)
class Config:
    host: Host = _setting("127.0.0.1", "Address to listen on for websocket and HTTP.")
    port: int = _setting(6001, "TCP port to listen on; 0 picks an ephemeral port.", ge=0,
                         le=65535)
    unix_socket: str = _setting(
        "", "Also serve websockets and HTTP on this Unix-socket path (string; '' = off), for a "
        "load balancer on the same host (HAProxy: server NAME unix@PATH). A Unix socket skips "
        "the TCP stack: about 60 % less CPU per frame on that hop (docs/benchmarks.md).",
        max_length=100)
    shared_port: int = _setting(
        0, "Also listen on this TCP port of --host with SO_REUSEPORT, shared by every node on "
        "this host: the kernel spreads new connections over the nodes listening on it, with no "
        "balancer process in the data path. A node leaves the group when it drains or dies, "
        "and while it holds 90 % of --max-connections if another node is in the group "
        "(rejoining at 80 %). 0 = off.", ge=0, le=65535)
    redis_url: Annotated[str, AfterValidator(_redis_url)] = _setting(
        "redis://127.0.0.1:6379/0", "Redis to scale over, as redis://host[:port][/db].")
    # Node ids end up in Redis keys, log lines and metrics labels, so keep them boring.
    node_id: Annotated[str, _pattern(r"[A-Za-z0-9_.-]{1,64}",
                                     "node id ([A-Za-z0-9_.-], 1-64 characters)")] = _setting(
        hostname_pid, "Unique name of this node in the cluster ([A-Za-z0-9_.-], 1-64 "
        "characters).")
    # No default app: a node must be told its apps (or run with dev=True, which adds DEV_APP).
    apps: tuple[AppConfig, ...] = Field(
        default=(), description="The apps this node serves ([[apps]] tables with id, key, secret).",
        json_schema_extra={"expect": "an array of tables ([[apps]])"})
    history_size: int = _setting(
        1000, "Events kept per channel stream for recovery (count); 0 turns history off.", ge=0)
    history_ttl: Seconds = _setting(
        300.0, "Seconds a channel's stream and offset survive without publishes (> 0).", gt=0)
    max_message_size: Bytes = _setting(
        10240, "Largest incoming websocket message, in bytes (256..16 MiB).", ge=256,
        le=16 * MIB)
    max_event_data: Bytes = _setting(
        10240, "Largest 'data' of one HTTP-published event, in bytes.", ge=1, le=16 * MIB)
    activity_timeout: int = _setting(
        120, "Seconds announced in pusher:connection_established (1..3600).", ge=1, le=3600)
    pong_timeout: Seconds = _setting(
        30.0, "Seconds to wait for a pong before closing with 4201.", gt=0)
    drain_grace: Seconds = _setting(
        10.0, "Seconds over which SIGTERM spreads the 4200 closes.", ge=0)
    max_connections: int = _setting(
        0, "Client sockets open at once, counted from accept (websockets, HTTP, handshakes in "
        "progress); 0 = automatic: the open-file limit (raised to its hard limit at start) "
        "minus a reserve, logged at start. A socket over it is answered at once (websocket: "
        "4100, HTTP: 503) and closed.", ge=0)
    max_connections_per_ip: int = _setting(
        0, "Client sockets open at once from one peer address; 0 = no per-address limit "
        "(behind a load balancer every peer is the balancer). Over it: 4100 or 503.", ge=0)
    max_subscriptions: int = _setting(
        100, "Channels one connection may be subscribed to; one more is refused with "
        "pusher:subscription_error (status 429) and the connection stays open.", ge=1,
        le=100_000)
    max_fragments: int = _setting(
        100, "Frames one websocket message may be fragmented into; one more closes with 1009.",
        ge=1, le=100_000)
    max_header_size: Bytes = _setting(
        16384, "Largest HTTP request head (request line and headers), in bytes; larger gets "
        "431.", ge=1024, le=MIB)
    header_timeout: Seconds = _setting(
        10.0, "Deadline, in seconds, for a request's line and headers to arrive in full "
        "(counted from the connection or from the request's first byte); past it: 408.", gt=0)
    body_timeout: Seconds = _setting(
        30.0, "Deadline, in seconds, for a request's whole body once its headers are in; past "
        "it: 408.", gt=0)
    outbound_queue_bytes: Bytes = _setting(
        MIB, "Per-connection outbound buffer, in bytes; overflow closes the client with 4100.",
        ge=1)
    slow_consumer_grace: Seconds = _setting(
        5.0, "Seconds an overflowed client's socket gets to drain so its 4100 close frame "
        "reaches it; if it does not, the connection is reset.", ge=0)
    socket_send_buffer: Bytes = _setting(
        0, "Kernel send buffer of each client socket (SO_SNDBUF), in bytes; 0 = kernel "
        "autotuning (up to net.ipv4.tcp_wmem's maximum, megabytes). A fixed buffer bounds what "
        "a stalled client holds on the node to it plus --outbound-queue-bytes.", ge=0)
    max_rss_mb: float = _setting(
        0.0, "Memory watchdog, in MB of RSS: past it the node drains and exits with code 3; "
        "0 = off.", flag="--max-rss", ge=0)
    log_rate: float = _setting(
        20.0, "Log lines per second (bursts of 5 s worth) about what clients send: bad frames, "
        "refused messages and requests. Beyond it lines are counted, not written.", gt=0)
    chaos: bool = _setting(
        False, "Enable the chaos HTTP endpoint on its own loopback listener (boolean).")
    chaos_token: str = Field(
        default="", repr=False, strict=True, description="Token the chaos endpoint requires "
        "(string); required when chaos is on. Give it in the environment or the TOML file, "
        "not as a flag (flags show in ps).")
    chaos_host: Annotated[str, AfterValidator(_loopback)] = _setting(
        "127.0.0.1", "Loopback address the chaos listener binds (127.0.0.0/8 or ::1).")
    chaos_port: int = _setting(
        0, "Port of the chaos listener; 0 picks a free one (logged at start).", ge=0, le=65535)
    dev: bool = _setting(
        False, "Local development only: with no app configured, serve the built-in app "
        "1 / turnout-key / turnout-secret, whose secret is public.")
    # Key prefixes are spliced into Redis key names; ':' is allowed for nested namespaces.
    key_prefix: Annotated[str, _pattern(r"[A-Za-z0-9_.:-]{1,64}",
                                        "key prefix ([A-Za-z0-9_.:-], 1-64 characters)")] = \
        _setting("turnout", "Redis key namespace (string), so several clusters can share one "
                 "Redis.")
    position_check_interval: Seconds = _setting(
        1.0, "Seconds between checks of this node's channels' stream tops.", gt=0)
    node_timeout: Seconds = _setting(
        5.0, "Seconds without a heartbeat (sent every node_timeout/5) after which the "
        "cluster counts a node dead: its presence members are removed (member_removed sent "
        "once), its subscriptions leave the channel counts. A killed node's members are gone "
        "within node_timeout + about 1.2 s (the reaper runs every 1 s ± 20 %).", ge=1, le=300)
    reap_dead_nodes: bool = _setting(
        True, "Remove a dead node's presence members and subscription counts (the reaper; "
        "see node_timeout). Off only as the harness's negative control "
        "(experiments/presence.toml): a killed node's members then stay as ghosts.")
    cache_ttl: Seconds = _setting(
        1800.0, "Seconds a cache channel keeps its last event after it was published.", gt=0)
    log_level: Annotated[str, AfterValidator(_log_level)] = _setting(
        "info", f"Log level, one of {', '.join(LOG_LEVELS)}.")

    # Derived once by the validator below (the class is frozen: object.__setattr__).
    redis_host: str = field(init=False, repr=False, compare=False)
    redis_port: int = field(init=False, repr=False, compare=False)
    redis_db: int = field(init=False, repr=False, compare=False)
    _apps_by_key: dict[str, AppConfig] = field(init=False, repr=False, compare=False)
    _apps_by_id: dict[str, AppConfig] = field(init=False, repr=False, compare=False)

    @model_validator(mode="after")
    def _whole(self, info: _Info) -> Config:
        if info.context and info.context.get("partial"):
            return self  # one source's keys alone: the whole is checked once it is merged
        if not self.apps and self.dev:
            object.__setattr__(self, "apps", (DEV_APP,))
        if not self.apps:
            raise SettingError("apps", NO_APP_MESSAGE, field="apps")
        for attr in ("id", "key"):
            values = [getattr(app, attr) for app in self.apps]
            for value in values:
                if values.count(value) > 1:
                    raise SettingError("apps", f"duplicate app {attr} {value!r}", field="apps")
        if self.chaos and not self.chaos_token:
            raise SettingError("chaos_token", "required when chaos is on", field="chaos_token")
        for name, value in zip(("redis_host", "redis_port", "redis_db"),
                               _parse_redis_url(self.redis_url), strict=True):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_apps_by_key", {a.key: a for a in self.apps})
        object.__setattr__(self, "_apps_by_id", {a.id: a for a in self.apps})
        return self

    def app_by_key(self, key: str) -> AppConfig | None:
        return self._apps_by_key.get(key)

    def app_by_id(self, id: str) -> AppConfig | None:
        return self._apps_by_id.get(id)


def _raise_setting_errors(cls: type) -> None:
    """Make building ``cls`` in code raise SettingError naming the field (not pydantic's)."""
    validated_init = cls.__init__  # type: ignore[misc]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validated_init(self, *args, **kwargs)
        except ValidationError as exc:
            raise_first(exc, cls, str)

    cls.__init__ = __init__  # type: ignore[misc]


_raise_setting_errors(Config)
_raise_setting_errors(AppConfig)
_raise_setting_errors(WebhookConfig)

# ----------------------------------------------------------------------------- the layers

def _fields(schema: type) -> dict[str, FieldInfo]:
    return schema.__pydantic_fields__  # type: ignore[attr-defined,no-any-return]


_FLAGS: dict[str, str] = {name: field_extra(info, "flag") or "--" + name.replace("_", "-")
          for name, info in _fields(Config).items()}
_APP_FLAGS = {"id": "--app-id", "key": "--app-key", "secret": "--app-secret"}
_FLAGS.update({f"app_{attr}": flag for attr, flag in _APP_FLAGS.items()})
#: Flags that carry a secret: visible to every local user in ps and /proc/PID/cmdline.
SECRET_FLAGS = {"--app-secret": "app_secret", "--chaos-token": "chaos_token"}
_SOURCES: ContextVar[tuple[_Values, ...]] = ContextVar("turnout_config_sources")


class _Layers(BaseSettings):
    """Config's settings plus the loader's own (--config, the first app's flags), merged by
    pydantic-settings from the sources of one load_config call, highest precedence first."""

    model_config = SettingsConfigDict(extra="forbid", env_prefix=ENV_PREFIX,
                                      env_ignore_empty=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   *args: Any, **kwargs: Any) -> tuple[_Values, ...]:
        return _SOURCES.get()


_LAYER_FIELDS: dict[str, Any] = {
    name: (info.annotation, info) for name, info in _fields(Config).items()
    if name != "apps"  # apps come from TOML tables, the first one also from --app-* flags
}
_LAYER_FIELDS["config"] = (str, Field("", description="TOML file with settings (see below)."))
for _attr, _help in {"id": "Id of the first app (string, used in /apps/<id>/events).",
                     "key": "Public key of the first app (string, used in /app/<key>).",
                     "secret": "Signing secret of the first app (string); prefer the "
                               "environment variable."}.items():
    _LAYER_FIELDS[f"app_{_attr}"] = (str, Field("", description=_help))
_Layers = create_model("_Layers", __base__=_Layers, **_LAYER_FIELDS)  # type: ignore[misc]

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


class _Parser(argparse.ArgumentParser):
    # argparse would print usage and sys.exit(2); raising keeps load_config side-effect free
    # and lets the CLI report every problem in one format.
    def error(self, message: str) -> NoReturn:
        raise ConfigError("command line", message)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping (tests, embedding)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_Layers, env_prefix=ENV_PREFIX, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items() if v != ""}


def _command_line(argv: list[str] | None, environ: Mapping[str, str]) -> CliSettingsSource[Any]:
    parser = _Parser(prog=PROG, description="A turnout node: Pusher-protocol websocket "
                     "broadcast over Redis.", epilog=_EPILOG, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    shortcuts = {name.replace("_", "-"): flag[2:] for name, flag in _FLAGS.items()
                 if flag[2:] != name.replace("_", "-")}
    return CliSettingsSource(
        _Layers, root_parser=parser, cli_parse_args=argv, cli_kebab_case=True,
        cli_implicit_flags=True, cli_shortcuts=shortcuts, cli_show_env_vars=True,
        cli_exit_on_error=False, _env_settings_source=_Environment(environ))


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser behind load_config and `turnout-server --help` (from the schema).

    No flag has a default (argparse.SUPPRESS), so a parsed namespace holds only the flags that
    were given; argparse dests are the setting names.
    """
    return _command_line(None, {}).root_parser  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- the loader


def _read_toml(path: str, label: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as e:
        raise ConfigError(label, f"cannot read {path!r}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}", str(e)) from None


def _split(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Config settings, the loader's own: config and app_*) of one layer."""
    own = {k: v for k, v in values.items() if k == "config" or k.startswith("app_")}
    return {k: v for k, v in values.items() if k not in own}, own


def load_config(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build a validated Config from flags, environment and TOML file (in that precedence).

    argv excludes the program name; None means sys.argv[1:], and environ None means
    os.environ. Raises ConfigError on any bad value; `--help` raises SystemExit(0).
    """
    environ = os.environ if environ is None else environ
    cli, cli_own = _split(_command_line(sys.argv[1:] if argv is None else argv, environ)())
    env, env_own = _split(_Environment(environ)())
    path = cli_own.get("config") or env_own.get("config")
    toml: dict[str, Any] = {}
    if path:
        where = "command line" if "config" in cli_own else f"{ENV_PREFIX}CONFIG"
        toml = _read_toml(path, f"--config ({where})")
    labels: dict[str, str] = {}  # setting -> "setting (source)" of the layer that set it
    layers: list[tuple[dict[str, Any], bool, Callable[[str], str]]] = [
        (toml, False, lambda key: f"{key} in {path}"),
        (env, True, lambda key: f"{_FLAGS[key]} ({ENV_PREFIX}{key.upper()})"),
        (cli, True, lambda key: f"{_FLAGS[key]} (command line)")]
    for values, text, name_of in layers:  # lowest precedence first: the last label stays
        values.update(validate_partial(Config, values, text=text, label=name_of))
        labels.update({key: name_of(key) for key in values})

    token = _SOURCES.set((_Values(_Layers, cli), _Values(_Layers, env),
                          _Values(_Layers, {k: v for k, v in toml.items() if k != "apps"})))
    try:
        merged = _Layers()
    finally:
        _SOURCES.reset(token)
    values = {name: getattr(merged, name) for name in merged.model_fields_set}

    apps_sources = [f"apps in {path}"] if "apps" in toml else []
    apps = list(toml.get("apps", ()))
    first = _first_app(cli_own, env_own, dev=values.get("dev", False))
    if first is not None:
        apps[:1] = [first]
        apps_sources.insert(0, "--app-id/--app-key/--app-secret")
    labels["apps"] = " and ".join(apps_sources) or "apps"
    try:
        return Config(**values, apps=tuple(apps))
    except ConfigError as e:
        # Only cross-field checks can fail here; each value passed its own check above.
        if e.field is None:
            raise
        label = labels.get(e.field, f"{_FLAGS.get(e.field, e.field)} (not set)")
        raise ConfigError(label, e.message, field=e.field) from None


def _first_app(cli: dict[str, str], env: dict[str, str], *, dev: bool) -> AppConfig | None:
    """The app --app-id/--app-key/--app-secret (or TURNOUT_APP_*) describe, if any."""
    given: dict[str, tuple[str, str]] = {}  # attr -> (value, label)
    for attr, flag in _APP_FLAGS.items():
        name = f"app_{attr}"
        if cli.get(name):
            given[attr] = (cli[name], f"{flag} (command line)")
        elif env.get(name):
            given[attr] = (env[name], f"{flag} ({ENV_PREFIX}{name.upper()})")
    if not given:
        return None
    missing = [_APP_FLAGS[attr] for attr in _APP_FLAGS if attr not in given]
    if missing and not dev:
        # Filling the gap from the built-in app would run a node whose secret is public.
        raise ConfigError(
            "/".join(_APP_FLAGS[attr] for attr in given),
            f"also give {' and '.join(missing)} (or the {ENV_PREFIX}APP_* variables): an app "
            "needs an id, a key and a secret", field="apps")
    values = {attr: given.get(attr, (getattr(DEV_APP, attr), ""))[0] for attr in _APP_FLAGS}
    labels = {attr: given.get(attr, ("", _APP_FLAGS[attr]))[1] for attr in _APP_FLAGS}
    try:
        return AppConfig(**values)
    except ConfigError as e:
        raise ConfigError(labels[e.setting], e.message, field="apps") from None


def secret_flag_warnings(argv: list[str]) -> list[str]:
    """A warning for each secret given as a command-line flag (see SECRET_FLAGS)."""
    return [
        f"{flag} on the command line is visible to every local user (ps, /proc/PID/cmdline); "
        f"set {ENV_PREFIX}{setting.upper()} or put {setting} in the --config TOML file instead"
        for flag, setting in SECRET_FLAGS.items()
        if any(arg == flag or arg.startswith(flag + "=") for arg in argv)
    ]
