"""Tests for server.config (loading, precedence, validation) and server.main (help, errors)."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from server import main as cli
from server.config import DEV_APP, AppConfig, Config, ConfigError, load_config

# A configured app, in the environment as the README says; most tests are not about apps.
APP_ENV = {"TURNOUT_APP_ID": "7", "TURNOUT_APP_KEY": "env-key", "TURNOUT_APP_SECRET": "env-s"}
APP = AppConfig("7", "env-key", "env-s")


def load(argv: list[str], env: dict[str, str] | None = None) -> Config:
    return load_config(argv, {**APP_ENV, **(env or {})})

ALL_FLAGS = [
    "--host", "--port", "--unix-socket", "--shared-port", "--redis-url", "--node-id",
    "--app-id", "--app-key", "--app-secret",
    "--history-size", "--history-ttl", "--max-message-size", "--max-event-data",
    "--activity-timeout", "--pong-timeout", "--drain-grace", "--max-connections",
    "--max-connections-per-ip", "--max-subscriptions", "--max-fragments", "--max-header-size",
    "--header-timeout", "--body-timeout", "--slow-consumer-grace", "--log-rate",
    "--outbound-queue-bytes", "--socket-send-buffer", "--max-rss", "--chaos", "--chaos-token",
    "--chaos-host", "--chaos-port", "--dev", "--key-prefix", "--position-check-interval",
    "--log-level", "--config", "--node-timeout", "--cache-ttl", "--reap-dead-nodes",
]  # fmt: skip

ALL_ENV = [
    "TURNOUT_HOST", "TURNOUT_PORT", "TURNOUT_UNIX_SOCKET", "TURNOUT_SHARED_PORT",
    "TURNOUT_REDIS_URL", "TURNOUT_NODE_ID", "TURNOUT_APP_ID",
    "TURNOUT_APP_KEY", "TURNOUT_APP_SECRET", "TURNOUT_HISTORY_SIZE", "TURNOUT_HISTORY_TTL",
    "TURNOUT_MAX_MESSAGE_SIZE", "TURNOUT_MAX_EVENT_DATA", "TURNOUT_ACTIVITY_TIMEOUT",
    "TURNOUT_PONG_TIMEOUT", "TURNOUT_DRAIN_GRACE", "TURNOUT_MAX_CONNECTIONS",
    "TURNOUT_OUTBOUND_QUEUE_BYTES", "TURNOUT_MAX_RSS_MB", "TURNOUT_CHAOS",
    "TURNOUT_CHAOS_TOKEN", "TURNOUT_CHAOS_HOST", "TURNOUT_KEY_PREFIX",
    "TURNOUT_POSITION_CHECK_INTERVAL", "TURNOUT_LOG_LEVEL", "TURNOUT_CONFIG",
    "TURNOUT_MAX_CONNECTIONS_PER_IP", "TURNOUT_MAX_SUBSCRIPTIONS", "TURNOUT_MAX_FRAGMENTS",
    "TURNOUT_MAX_HEADER_SIZE", "TURNOUT_HEADER_TIMEOUT", "TURNOUT_BODY_TIMEOUT",
    "TURNOUT_SLOW_CONSUMER_GRACE", "TURNOUT_LOG_RATE", "TURNOUT_CHAOS_PORT", "TURNOUT_DEV",
    "TURNOUT_NODE_TIMEOUT", "TURNOUT_CACHE_TTL", "TURNOUT_REAP_DEAD_NODES",
]  # fmt: skip


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "turnout.toml"
    path.write_text(text)
    return str(path)


def error_of(argv: list[str], env: dict[str, str] | None = None, *,
             app_env: bool = True) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(argv, {**(APP_ENV if app_env else {}), **(env or {})})
    return str(info.value)


# ------------------------------------------------------------------------------ defaults


def test_defaults() -> None:
    c = load_config(["--dev"], {})
    assert c == dataclasses.replace(Config(dev=True), node_id=c.node_id)
    assert (c.host, c.port) == ("127.0.0.1", 6001)
    assert (c.redis_host, c.redis_port, c.redis_db) == ("127.0.0.1", 6379, 0)
    assert c.apps == (DEV_APP,) == (AppConfig("1", "turnout-key", "turnout-secret"),)
    assert c.history_size == 1000
    assert c.history_ttl == 300.0
    assert c.max_message_size == 10240
    assert c.max_event_data == 10240
    assert c.activity_timeout == 120
    assert c.pong_timeout == 30.0
    assert c.drain_grace == 10.0
    assert c.max_connections == 0  # automatic, from the open-file limit
    assert c.max_connections_per_ip == 0
    assert c.max_subscriptions == 100
    assert c.max_fragments == 100
    assert c.max_header_size == 16384
    assert c.header_timeout == 10.0
    assert c.body_timeout == 30.0
    assert c.slow_consumer_grace == 5.0
    assert c.log_rate == 20.0
    assert c.chaos_port == 0
    assert c.dev is True
    assert c.outbound_queue_bytes == 1048576
    assert c.max_rss_mb == 0.0
    assert c.chaos is False
    assert c.chaos_token == ""
    assert c.chaos_host == "127.0.0.1"
    assert c.key_prefix == "turnout"
    assert c.position_check_interval == 1.0
    assert c.log_level == "info"
    assert c.node_id.endswith(f"-{__import__('os').getpid()}")
    assert len(c.node_id) <= 64


def test_app_lookup_and_secrets_not_in_repr() -> None:
    c = Config(apps=(AppConfig("1", "k1", "s1"), AppConfig("2", "k2", "s2")), chaos_token="t0k")
    assert c.app_by_key("k2") == AppConfig("2", "k2", "s2")
    assert c.app_by_id("1") == AppConfig("1", "k1", "s1")
    assert c.app_by_key("nope") is None
    assert c.app_by_id("k1") is None
    assert "s1" not in repr(c)
    assert "t0k" not in repr(c)


def test_config_is_frozen_and_hashable() -> None:
    c = Config(node_id="n1", apps=(APP,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.port = 1  # type: ignore[misc]
    assert hash(c) == hash(Config(node_id="n1", apps=(APP,)))
    assert dataclasses.replace(c, redis_url="redis://r:7000/3").redis_port == 7000


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="port"):
        Config(port=70000)
    with pytest.raises(ConfigError, match="history_ttl"):
        Config(history_ttl=0)
    with pytest.raises(ConfigError, match="port"):
        Config(port=True)  # bool is an int subclass; must not pass as one
    with pytest.raises(ConfigError, match="no app is configured"):
        Config()  # no built-in app unless dev
    with pytest.raises(ConfigError, match="loopback"):
        Config(apps=(APP,), chaos_host="0.0.0.0")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", ("localhost", 6379, 0)),
        ("redis://10.0.0.5:7000", ("10.0.0.5", 7000, 0)),
        ("redis://r:6380/5", ("r", 6380, 5)),
        ("redis://[::1]:6379/2", ("::1", 6379, 2)),
    ],
)
def test_redis_url_parsing(url: str, expected: tuple[str, int, int]) -> None:
    c = load(["--redis-url", url], {})
    assert (c.redis_host, c.redis_port, c.redis_db) == expected


# ---------------------------------------------------------------------------- precedence


def test_precedence_flag_env_toml_default(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'port = 7001\nhistory_size = 11\nkey_prefix = "from-toml"\nlog_level = "error"\n'
        "pong_timeout = 5\n",
    )
    env = {
        "TURNOUT_CONFIG": path,
        "TURNOUT_PORT": "7002",
        "TURNOUT_HISTORY_SIZE": "22",
        "TURNOUT_LOG_LEVEL": "WARNING",
    }
    c = load(["--port", "7003"], env)
    assert c.port == 7003  # flag beats env and TOML
    assert c.history_size == 22  # env beats TOML
    assert c.log_level == "warning"  # env beats TOML, and is normalised
    assert c.key_prefix == "from-toml"  # TOML beats default
    assert c.pong_timeout == 5.0  # TOML int widened to float
    assert isinstance(c.pong_timeout, float)
    assert c.drain_grace == 10.0  # default


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    a = tmp_path / "a.toml"
    a.write_text("port = 1111\n")
    b = tmp_path / "b.toml"
    b.write_text("port = 2222\n")
    assert load(["--config", str(a)], {"TURNOUT_CONFIG": str(b)}).port == 1111


def test_empty_env_values_are_ignored(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 7001\n")
    assert load([], {"TURNOUT_CONFIG": path, "TURNOUT_PORT": ""}).port == 7001


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, False),
        (["--chaos"], {}, True),
        ([], {"TURNOUT_CHAOS": "yes"}, True),
        ([], {"TURNOUT_CHAOS": "ON"}, True),
        ([], {"TURNOUT_CHAOS": "1"}, True),
        (["--no-chaos"], {"TURNOUT_CHAOS": "true"}, False),
        ([], {"TURNOUT_CHAOS": "off"}, False),
    ],
)
def test_chaos_boolean(argv: list[str], env: dict[str, str], expected: bool) -> None:
    c = load([*argv, "--chaos-token", "t"], env)
    assert c.chaos is expected


def test_all_flags_reach_their_fields() -> None:
    argv = [
        "--host", "0.0.0.0", "--port", "0", "--redis-url", "redis://r:1/2", "--node-id", "n-1",
        "--history-size", "0", "--history-ttl", "2.5", "--max-message-size", "256",
        "--max-event-data", "100", "--activity-timeout", "3600", "--pong-timeout", "0.5",
        "--drain-grace", "0", "--max-connections", "5", "--outbound-queue-bytes", "4096",
        "--max-rss", "512.5", "--chaos", "--chaos-token", "tok", "--chaos-host", "127.0.0.2",
        "--key-prefix", "ns:a", "--position-check-interval", "0.25", "--log-level", "debug",
        "--max-connections-per-ip", "6", "--max-subscriptions", "7", "--max-fragments", "8",
        "--max-header-size", "2048", "--header-timeout", "1.5", "--body-timeout", "2.5",
        "--slow-consumer-grace", "0", "--log-rate", "3", "--chaos-port", "9999", "--dev",
    ]  # fmt: skip
    c = load(argv, {})
    assert c == Config(
        host="0.0.0.0", port=0, redis_url="redis://r:1/2", node_id="n-1", history_size=0,
        history_ttl=2.5, max_message_size=256, max_event_data=100, activity_timeout=3600,
        pong_timeout=0.5, drain_grace=0.0, max_connections=5, outbound_queue_bytes=4096,
        max_rss_mb=512.5, chaos=True, chaos_token="tok", chaos_host="127.0.0.2",
        key_prefix="ns:a", position_check_interval=0.25, log_level="debug",
        max_connections_per_ip=6, max_subscriptions=7, max_fragments=8, max_header_size=2048,
        header_timeout=1.5, body_timeout=2.5, slow_consumer_grace=0.0, log_rate=3.0,
        chaos_port=9999, dev=True, apps=(APP,),
    )  # fmt: skip


def test_all_env_vars_reach_their_fields() -> None:
    env = {
        "TURNOUT_HOST": "::", "TURNOUT_PORT": "9", "TURNOUT_REDIS_URL": "redis://r",
        "TURNOUT_NODE_ID": "env-node", "TURNOUT_HISTORY_SIZE": "3", "TURNOUT_HISTORY_TTL": "4",
        "TURNOUT_MAX_MESSAGE_SIZE": "1000", "TURNOUT_MAX_EVENT_DATA": "500",
        "TURNOUT_ACTIVITY_TIMEOUT": "7", "TURNOUT_PONG_TIMEOUT": "8", "TURNOUT_DRAIN_GRACE": "9",
        "TURNOUT_MAX_CONNECTIONS": "10", "TURNOUT_OUTBOUND_QUEUE_BYTES": "11",
        "TURNOUT_MAX_RSS_MB": "12", "TURNOUT_CHAOS": "true", "TURNOUT_CHAOS_TOKEN": "tt",
        "TURNOUT_CHAOS_HOST": "::1", "TURNOUT_KEY_PREFIX": "kp",
        "TURNOUT_POSITION_CHECK_INTERVAL": "13", "TURNOUT_LOG_LEVEL": "error",
        "TURNOUT_MAX_CONNECTIONS_PER_IP": "14", "TURNOUT_MAX_SUBSCRIPTIONS": "15",
        "TURNOUT_MAX_FRAGMENTS": "16", "TURNOUT_MAX_HEADER_SIZE": "1700",
        "TURNOUT_HEADER_TIMEOUT": "18", "TURNOUT_BODY_TIMEOUT": "19",
        "TURNOUT_SLOW_CONSUMER_GRACE": "20", "TURNOUT_LOG_RATE": "21",
        "TURNOUT_CHAOS_PORT": "22", "TURNOUT_DEV": "yes",
    }  # fmt: skip
    c = load([], env)
    assert c == Config(
        host="::", port=9, redis_url="redis://r", node_id="env-node", history_size=3,
        history_ttl=4.0, max_message_size=1000, max_event_data=500, activity_timeout=7,
        pong_timeout=8.0, drain_grace=9.0, max_connections=10, outbound_queue_bytes=11,
        max_rss_mb=12.0, chaos=True, chaos_token="tt", chaos_host="::1", key_prefix="kp",
        position_check_interval=13.0, log_level="error", max_connections_per_ip=14,
        max_subscriptions=15, max_fragments=16, max_header_size=1700, header_timeout=18.0,
        body_timeout=19.0, slow_consumer_grace=20.0, log_rate=21.0, chaos_port=22, dev=True,
        apps=(APP,),
    )  # fmt: skip


# ---------------------------------------------------------------------------------- apps


MULTI_APP_TOML = """
[[apps]]
id = "1"
key = "key-one"
secret = "secret-one"

[[apps]]
id = "2"
key = "key-two"
secret = "secret-two"
"""


def test_multi_app_toml(tmp_path: Path) -> None:
    c = load_config(["--config", write_toml(tmp_path, MULTI_APP_TOML)], {})
    assert c.apps == (
        AppConfig("1", "key-one", "secret-one"),
        AppConfig("2", "key-two", "secret-two"),
    )
    assert c.app_by_key("key-two") == AppConfig("2", "key-two", "secret-two")
    assert c.app_by_id("1") is not None
    assert c.app_by_key("turnout-key") is None  # the default app is replaced, not added


def test_app_flags_replace_first_app_only(tmp_path: Path) -> None:
    path = write_toml(tmp_path, MULTI_APP_TOML)
    c = load_config(["--config", path, "--app-id", "9", "--app-key", "flag-key"],
                    {"TURNOUT_APP_SECRET": "env-s"})
    assert c.apps[0] == AppConfig("9", "flag-key", "env-s")
    assert c.apps[1] == AppConfig("2", "key-two", "secret-two")


def test_app_flag_beats_app_env() -> None:
    c = load(["--app-id", "42"], {"TURNOUT_APP_ID": "7", "TURNOUT_APP_KEY": "k"})
    assert c.apps == (AppConfig("42", "k", "env-s"),)


def test_no_app_refuses_to_start_unless_dev(tmp_path: Path) -> None:
    msg = error_of([], app_env=False)
    # The message says how to configure one: environment, TOML file, or --dev for local use.
    for hint in ("TURNOUT_APP_ID", "TURNOUT_APP_SECRET", "[[apps]]", "--config", "--dev"):
        assert hint in msg, msg
    assert load_config(["--dev"], {}).apps == (DEV_APP,)
    assert load_config([], {"TURNOUT_DEV": "1"}).apps == (DEV_APP,)
    # --dev does not replace a configured app.
    assert load_config(["--dev"], APP_ENV).apps == (APP,)
    path = write_toml(tmp_path, MULTI_APP_TOML)
    assert load_config(["--dev", "--config", path], {}).apps[0].key == "key-one"


def test_a_partial_app_never_gets_the_public_secret() -> None:
    # Only the key given: the id and secret are not filled in from the built-in app.
    msg = error_of(["--app-key", "mine"], app_env=False)
    assert "--app-id" in msg, msg
    assert "--app-secret" in msg, msg
    msg = error_of([], {"TURNOUT_APP_ID": "1", "TURNOUT_APP_KEY": "k"}, app_env=False)
    assert "--app-secret" in msg, msg
    # With --dev the gap comes from the development app, on purpose.
    assert load_config(["--dev", "--app-key", "mine"], {}).apps == (
        AppConfig(DEV_APP.id, "mine", DEV_APP.secret),)


def test_secret_flags_warn() -> None:
    from server.config import secret_flag_warnings

    assert secret_flag_warnings(["--app-id", "1", "--port", "1"]) == []
    warnings = secret_flag_warnings(["--app-secret", "s", "--chaos-token=t"])
    assert len(warnings) == 2
    assert "TURNOUT_APP_SECRET" in warnings[0]
    assert "/proc/PID/cmdline" in warnings[0]
    assert "TURNOUT_CHAOS_TOKEN" in warnings[1]


def test_main_warns_about_a_secret_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ALL_ENV:
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["--app-id", "1", "--app-key", "k", "--app-secret", "s", "--port", "x"]) == 2
    err = capsys.readouterr().err
    assert "turnout-server: warning: --app-secret on the command line is visible" in err
    assert "TURNOUT_APP_SECRET" in err


def test_main_without_app_says_how_to_configure_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ALL_ENV:
        monkeypatch.delenv(var, raising=False)
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "no app is configured" in err, err
    assert "--dev" in err, err


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--port", "70000"], {}, "invalid --port (command line): must be between 0 and 65535"),
        (["--port", "-1"], {}, "invalid --port (command line): must be between 0 and 65535"),
        ([], {"TURNOUT_PORT": "abc"}, "invalid --port (TURNOUT_PORT): 'abc' is not an integer"),
        (["--port", "1.5"], {}, "invalid --port (command line): '1.5' is not an integer"),
        (["--history-ttl", "0"], {}, "invalid --history-ttl (command line): must be > 0"),
        (["--history-ttl", "nan"], {}, "invalid --history-ttl (command line): 'nan' is not a"),
        (["--history-size", "-1"], {}, "invalid --history-size (command line): must be >= 0"),
        (["--redis-url", "http://x:1/0"], {}, "invalid --redis-url (command line): "),
        (["--redis-url", "redis://x/abc"], {}, "invalid --redis-url (command line): "),
        (["--redis-url", "redis://u:p@x/0"], {}, "credentials"),
        (["--redis-url", "redis://x:99999"], {}, "invalid --redis-url (command line): "),
        (["--chaos"], {}, "invalid --chaos-token (not set): required when chaos is on"),
        ([], {"TURNOUT_CHAOS": "maybe"}, "invalid --chaos (TURNOUT_CHAOS): 'maybe' is not a"),
        (["--chaos-host", "localhost"], {}, "invalid --chaos-host (command line): "),
        (["--chaos-host", "0.0.0.0"], {}, "is not a loopback address"),
        (["--chaos-host", "10.1.2.3"], {}, "is not a loopback address"),
        (["--max-subscriptions", "0"], {}, "invalid --max-subscriptions (command line): "),
        (["--max-fragments", "0"], {}, "invalid --max-fragments (command line): "),
        (["--max-header-size", "100"], {}, "invalid --max-header-size (command line): "),
        (["--header-timeout", "0"], {}, "invalid --header-timeout (command line): must be > 0"),
        ([], {"TURNOUT_BODY_TIMEOUT": "-1"}, "invalid --body-timeout (TURNOUT_BODY_TIMEOUT)"),
        (["--slow-consumer-grace", "-1"], {}, "invalid --slow-consumer-grace (command line)"),
        (["--log-rate", "0"], {}, "invalid --log-rate (command line): must be > 0"),
        (["--max-connections-per-ip", "-1"], {}, "invalid --max-connections-per-ip"),
        (["--log-level", "loud"], {}, "invalid --log-level (command line): 'loud' is not one"),
        (["--node-id", "a b"], {}, "invalid --node-id (command line): "),
        (["--node-id", "x" * 65], {}, "invalid --node-id (command line): "),
        (["--max-message-size", "255"], {}, "invalid --max-message-size (command line): "),
        ([], {"TURNOUT_ACTIVITY_TIMEOUT": "0"}, "invalid --activity-timeout (TURNOUT_ACTIV"),
        (["--max-rss", "-5"], {}, "invalid --max-rss (command line): must be >= 0"),
        (["--app-key", "a/b"], {}, "invalid --app-key (command line): "),
        ([], {"TURNOUT_PORT": ""}, None),  # empty env is ignored, so this is fine
        (["--bogus"], {}, "invalid command line: unrecognized arguments: --bogus"),
        (["--max"], {}, "invalid command line:"),  # no abbreviations
    ],
)
def test_invalid_values_name_setting_and_source(
    argv: list[str], env: dict[str, str], expected: str | None
) -> None:
    if expected is None:
        load(argv, env)
        return
    assert expected in error_of(argv, env)


def test_chaos_token_from_env_satisfies_chaos_flag() -> None:
    c = load(["--chaos"], {"TURNOUT_CHAOS_TOKEN": "secret"})
    assert c.chaos
    assert c.chaos_token == "secret"


def test_toml_errors_name_key_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "history_ttl = 0\n")
    assert error_of(["--config", path]) == f"invalid history_ttl in {path}: must be > 0 (got 0.0)"

    path = write_toml(tmp_path, "prot = 1\n")
    msg = error_of(["--config", path])
    assert msg.startswith(f"invalid prot in {path}: unknown setting")
    assert "'port'" in msg  # the near miss is suggested

    path = write_toml(tmp_path, 'port = "6001"\n')
    assert (
        error_of(["--config", path]) == f"invalid port in {path}: must be an integer, not a string"
    )

    path = write_toml(tmp_path, "chaos = 1\n")
    assert error_of(["--config", path]).startswith(f"invalid chaos in {path}: must be a boolean")

    path = write_toml(tmp_path, "port = [\n")
    assert error_of(["--config", path]).startswith(f"invalid config file {path}: ")

    missing = str(tmp_path / "missing.toml")
    assert error_of([], {"TURNOUT_CONFIG": missing}).startswith(
        "invalid --config (TURNOUT_CONFIG): cannot read"
    )


def test_toml_chaos_without_token_names_chaos_token(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "chaos = true\n")
    assert "chaos-token" in error_of(["--config", path])
    # ...and supplying the token from any layer fixes it.
    assert load(["--config", path, "--chaos-token", "x"], {}).chaos


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            MULTI_APP_TOML.replace('key = "key-two"', 'key = "key-one"'),
            "duplicate app key 'key-one'",
        ),
        (MULTI_APP_TOML.replace('id = "2"', 'id = "1"'), "duplicate app id '1'"),
        ('[[apps]]\nid = "1"\nkey = "k"\n', "invalid apps[0] in {path}: missing 'secret'"),
        ('[[apps]]\nid = "1"\nkey = "k"\nsecret = "s"\nextra = 1\n', "apps[0].extra in {path}"),
        ('[[apps]]\nid = "1"\nkey = "k k"\nsecret = "s"\n', "invalid apps[0].key in {path}"),
        ("apps = []\n", "no app is configured"),
        ('apps = "x"\n', "invalid apps in {path}: must be an array of tables"),
    ],
)
def test_bad_apps_in_toml(tmp_path: Path, toml: str, expected: str) -> None:
    path = write_toml(tmp_path, toml)
    msg = error_of(["--config", path], app_env=False)
    assert expected.format(path=path) in msg
    assert "apps" in msg


def test_app_flag_colliding_with_toml_app_is_an_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, MULTI_APP_TOML)
    msg = error_of(["--config", path, "--app-id", "3", "--app-key", "key-two"],
                   {"TURNOUT_APP_SECRET": "s"}, app_env=False)
    assert "duplicate app key 'key-two'" in msg
    assert "--app-key" in msg
    assert path in msg


# ---------------------------------------------------------------------------------- CLI


def test_help_lists_every_flag_and_env_var() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from server.main import main; main(['--help'])"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "100", "PATH": ""},
        cwd=Path(__file__).resolve().parents[2],
    )
    for name in [*ALL_FLAGS, *ALL_ENV]:
        assert name in proc.stdout, name
    assert "precedence" in proc.stdout.lower() or "first one that sets it wins" in proc.stdout
    assert "seconds" in proc.stdout.lower()
    assert "bytes" in proc.stdout.lower()


def test_every_field_has_a_flag() -> None:
    # Guards against a new Config field being added without a CLI flag / env var.
    names = {f.name for f in dataclasses.fields(Config) if f.init}
    flagged = {f.lstrip("-").replace("-", "_") for f in ALL_FLAGS} | {"max_rss_mb", "apps"}
    assert names <= flagged


def test_main_help_returns_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "--outbound-queue-bytes" in capsys.readouterr().out


def test_main_bad_value_returns_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TURNOUT_PORT", raising=False)
    monkeypatch.delenv("TURNOUT_CONFIG", raising=False)
    assert cli.main(["--port", "abc"]) == 2
    err = capsys.readouterr().err
    assert err == "turnout-server: error: invalid --port (command line): 'abc' is not an integer\n"


def test_main_reads_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_HISTORY_TTL", "-3")
    assert cli.main([]) == 2
    assert "invalid --history-ttl (TURNOUT_HISTORY_TTL): must be > 0" in capsys.readouterr().err


def test_main_runs_node_with_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ALL_ENV:
        monkeypatch.delenv(var, raising=False)
    seen: list[Config] = []

    def fake_run(config: Config) -> int:
        seen.append(config)
        logging.getLogger("turnout.test").warning("hello")
        return 3

    fake = types.ModuleType("server.node")
    fake.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "server.node", fake)
    root = logging.getLogger()
    before_level, before_handlers = root.level, list(root.handlers)
    try:
        argv = ["--node-id", "n7", "--log-level", "debug", "--port", "0", "--dev"]
        assert cli.main(argv) == 3
        assert cli.main(argv) == 3
        assert [c.port for c in seen] == [0, 0]
        assert root.level == logging.DEBUG
        ours = [h for h in root.handlers if h not in before_handlers]
        assert len(ours) == 1  # a second main() replaces its handler instead of adding one
        record = logging.LogRecord("turnout.x", logging.INFO, __file__, 1, "msg", None, None)
        line = ours[0].format(record)
        assert line.endswith(" INFO turnout.x [n7] msg")
    finally:
        for h in root.handlers:
            if h not in before_handlers:
                root.removeHandler(h)
        root.setLevel(before_level)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[[apps]]\nid = "1"\nkey = "k"\nsecrt = "s"\n',
         "invalid apps[0].secrt in {path}: unknown setting; did you mean 'secret'?"),
        ("apps = [1]\n", "invalid apps[0] in {path}: must be a table, not an integer"),
        ('[[apps]]\nid = 1\nkey = "k"\nsecret = "s"\n',
         "invalid apps[0].id in {path}: must be a string, not an integer"),
        ("history_ttl = inf\n", "invalid history_ttl in {path}: must be a finite number"),
    ],
)
def test_nested_toml_errors_name_the_dotted_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = write_toml(tmp_path, toml)
    assert error_of(["--config", path], app_env=False).startswith(expected.format(path=path))


def test_text_sources_are_parsed_typed_sources_are_strict(tmp_path: Path) -> None:
    # The same setting: a string is parsed from flags and the environment, refused from TOML.
    assert load([], {"TURNOUT_HISTORY_SIZE": " 12 "}).history_size == 12
    assert load(["--history-size", "12"]).history_size == 12
    path = write_toml(tmp_path, 'history_size = "12"\n')
    assert "must be an integer, not a string" in error_of(["--config", path])
    assert "'inf' is not a finite number" in error_of([], {"TURNOUT_POSITION_CHECK_INTERVAL":
                                                              "inf"})
