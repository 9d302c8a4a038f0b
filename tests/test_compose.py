"""docker-compose.yml checked against the harness's local topology, since CI cannot run Docker.

The compose cluster must be the cluster ``harness.topology.run_topology`` builds for three nodes
and one lane: the same node settings (``TurnoutServer.argv``), every link through a Toxiproxy
proxy of the same name, the same HAProxy config (``render_haproxy_config``) and health check,
and nothing published beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, cast

import pytest

from harness.servers import NodeLaunch, TurnoutServer
from harness.topology import (
    _LANE_HEADROOM,
    LANE_CAPACITY,
    TopologySpec,
    render_haproxy_config,
)
from server.config import ENV_PREFIX, Config, build_parser, load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
HAPROXY_CFG = ROOT / "docker" / "haproxy.cfg"
TOXIPROXY_JSON = ROOT / "docker" / "toxiproxy.json"

SPEC = TopologySpec(nodes=3, node_command=("turnout-server",))
NODES = SPEC.node_names
LANE = 0
TOXIPROXY = "toxiproxy"  # service name, i.e. host name inside the compose network
# Settings that name where things are (or a per-run secret): they differ from the harness's.
LOCAL_ONLY = {"host", "port", "redis_url", "chaos_token", "chaos_port"}


# --- loading ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    try:
        import yaml
    except ModuleNotFoundError:
        pytest.fail(
            "PyYAML is not installed, so docker-compose.yml cannot be checked: "
            "add 'pyyaml' to [project.optional-dependencies] dev in pyproject.toml"
        )
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    assert isinstance(data.get("services"), dict), "docker-compose.yml has no services mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return cast(dict[str, dict[str, Any]], compose["services"])


@pytest.fixture(scope="module")
def proxies() -> dict[str, dict[str, Any]]:
    """docker/toxiproxy.json by proxy name."""
    entries = json.loads(TOXIPROXY_JSON.read_text())
    assert isinstance(entries, list), "toxiproxy.json must be a list of proxies"
    by_name: dict[str, dict[str, Any]] = {}
    for entry in entries:
        assert set(entry) == {"name", "listen", "upstream", "enabled"}, entry
        assert entry["enabled"] is True, f"{entry['name']} starts disabled"
        assert entry["name"] not in by_name, f"duplicate proxy {entry['name']}"
        by_name[entry["name"]] = entry
    listens = [e["listen"] for e in entries]
    assert len(set(listens)) == len(listens), f"two proxies share a listen address: {listens}"
    return by_name


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _command(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    for key, value in env.items():
        # Compose rejects booleans here and would pass None through from the host: strings only.
        assert isinstance(value, str), f"environment {key}={value!r} must be a quoted string"
    return dict(env)


def _node_inputs(service: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(argv after the entrypoint, TURNOUT_* environment) a node container starts with."""
    assert "entrypoint" not in service, "nodes must use the Dockerfile's turnout-server"
    env = {k: v for k, v in _environment(service).items() if k.startswith(ENV_PREFIX)}
    return _command(service), env


def _node_config(service: Mapping[str, Any]) -> Config:
    argv, env = _node_inputs(service)
    return load_config(argv, env)  # raises ConfigError on anything invalid


def _harness_inputs(name: str) -> tuple[list[str], dict[str, str]]:
    """(argv after the command, secrets environment) a harness node starts with."""
    launch = NodeLaunch(name=name, port=1, redis_url="redis://127.0.0.1:1/0", cwd=Path("."),
                        chaos_token="token")
    argv = TurnoutServer().argv(SPEC, launch)
    assert argv[0] == "turnout-server"
    env = {k: v for k, v in TurnoutServer.secrets(SPEC, "token").items() if v is not None}
    return argv[1:], env


def _settings_given(argv: list[str], env: Mapping[str, str]) -> set[str]:
    """Names (argparse dests) of the settings set by flags or TURNOUT_* variables."""
    parser = build_parser()
    by_env = {
        ENV_PREFIX + action.dest.upper(): action.dest
        for action in parser._actions
        if action.dest != "help"
    }
    unknown = sorted(set(env) - set(by_env))
    assert not unknown, f"load_config silently ignores these unknown variables: {unknown}"
    return set(vars(parser.parse_args(argv))) | {by_env[k] for k in env}


def _listen_port(proxy: Mapping[str, Any]) -> int:
    host, port = proxy["listen"].rsplit(":", 1)
    assert host == "0.0.0.0", f"{proxy['name']} must listen on 0.0.0.0 to be reachable"
    return int(port)


# --- the compose file --------------------------------------------------------------------------


def test_services_exist(services: dict[str, Any]) -> None:
    missing = {"redis", TOXIPROXY, "haproxy", *NODES} - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"
    nodes = sorted(name for name in services if name.startswith("node-"))
    assert nodes == NODES, f"node services {nodes}, expected {NODES}"


def test_nothing_is_interpolated(compose: dict[str, Any]) -> None:
    # Compose substitutes $VAR / ${VAR}: these tests would check a different file than Docker runs.
    dollars = [s for s in _strings(compose) if "$" in s]
    assert not dollars, f"values with '$' (interpolated by Compose): {dollars}"


def test_images(services: dict[str, Any]) -> None:
    assert services["redis"]["image"] == "redis:7"
    assert services[TOXIPROXY]["image"] == "ghcr.io/shopify/toxiproxy:2.12.0"
    assert services["haproxy"]["image"] == "haproxy:2.6"
    for name in NODES:
        build = services[name].get("build")
        assert isinstance(build, dict), f"{name} must be built from docker/Dockerfile"
        assert Path(build.get("context", ".")) == Path("."), f"{name}: build context must be ."
        assert build.get("dockerfile") == "docker/Dockerfile", f"{name}: {build}"


def test_redis_is_persisted_like_the_harness(services: dict[str, Any]) -> None:
    command = _command(services["redis"])
    assert command[:1] == ["redis-server"], command
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert pairs.get("--appendonly") == "yes", f"redis must run with --appendonly yes: {command}"
    assert pairs.get("--port", "6379") == "6379", "the proxies expect redis on 6379"
    assert any(str(v).endswith(":/data") for v in services["redis"].get("volumes", [])), (
        "redis's /data (its AOF) should be a volume"
    )


@pytest.mark.parametrize("name", NODES)
def test_node_settings_are_valid(services: dict[str, Any], name: str) -> None:
    config = _node_config(services[name])
    assert config.node_id == name
    assert config.host == "0.0.0.0", "a node must listen beyond its container's loopback"


@pytest.mark.parametrize("name", NODES)
def test_node_settings_match_the_harness(services: dict[str, Any], name: str) -> None:
    argv, env = _node_inputs(services[name])
    harness_argv, harness_env = _harness_inputs(name)
    ours, theirs = _settings_given(argv, env), _settings_given(harness_argv, harness_env)
    assert ours == theirs, (
        f"{name}: settings only in compose {sorted(ours - theirs)}, "
        f"only in the harness {sorted(theirs - ours)}"
    )
    mine, harness = load_config(argv, env), load_config(harness_argv, harness_env)
    differ = {
        f.name: (getattr(mine, f.name), getattr(harness, f.name))
        for f in fields(Config)
        if f.init and f.name not in LOCAL_ONLY
        if getattr(mine, f.name) != getattr(harness, f.name)
    }
    assert not differ, f"{name}: (compose, harness) values differ: {differ}"


def test_toxiproxy_holds_the_harness_proxies(
    services: dict[str, Any], proxies: dict[str, dict[str, Any]]
) -> None:
    expected = {f"{n}.redis" for n in NODES} | {f"lane{LANE}.lb-{n}" for n in NODES}
    expected.add(f"lane{LANE}.clients-lb")
    assert set(proxies) == expected, (
        f"extra {sorted(set(proxies) - expected)}, missing {sorted(expected - set(proxies))}"
    )
    toxiproxy = services[TOXIPROXY]
    command = " ".join(_command(toxiproxy))
    match = re.search(r"-config[= ](\S+)", command)
    assert match, f"toxiproxy must be started with -config <file>: {command!r}"
    mounts = [str(v).removesuffix(":ro") for v in toxiproxy.get("volumes", [])]
    assert f"./docker/toxiproxy.json:{match.group(1)}" in mounts, (
        f"-config {match.group(1)} is not docker/toxiproxy.json mounted: {mounts}"
    )


@pytest.mark.parametrize("name", NODES)
def test_node_reaches_redis_through_its_proxy(
    services: dict[str, Any], proxies: dict[str, dict[str, Any]], name: str
) -> None:
    config = _node_config(services[name])
    proxy = proxies[f"{name}.redis"]
    assert proxy["upstream"] == "redis:6379", proxy
    assert (config.redis_host, config.redis_port) == (TOXIPROXY, _listen_port(proxy)), (
        f"{name} --redis-url {config.redis_url} is not toxiproxy's {name}->redis proxy "
        f"({proxy['listen']})"
    )


# --- HAProxy ---------------------------------------------------------------------------------


def _haproxy_lines() -> list[str]:
    lines = (line.strip() for line in HAPROXY_CFG.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _haproxy_servers() -> dict[str, tuple[str, int]]:
    servers = {}
    for line in _haproxy_lines():
        if line.startswith("server "):
            _, name, address, *options = line.split()
            assert "check" in options, f"server {name} is not health-checked: {line!r}"
            host, port = address.rsplit(":", 1)
            servers[name] = (host, int(port))
    return servers


def _bind_port(section: str) -> int:
    lines = _haproxy_lines()
    start = lines.index(section)
    bind = next(line for line in lines[start + 1 :] if line.startswith("bind "))
    return int(bind.rsplit(":", 1)[1])


def test_haproxy_mounts_its_config(services: dict[str, Any]) -> None:
    mounts = [str(v).removesuffix(":ro") for v in services["haproxy"].get("volumes", [])]
    assert "./docker/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg" in mounts, mounts


def test_haproxy_backends_are_the_lb_node_proxies(
    services: dict[str, Any], proxies: dict[str, dict[str, Any]]
) -> None:
    servers = _haproxy_servers()
    assert sorted(servers) == NODES, f"haproxy servers {sorted(servers)}, expected {NODES}"
    for name in NODES:
        proxy = proxies[f"lane{LANE}.lb-{name}"]
        assert servers[name] == (TOXIPROXY, _listen_port(proxy)), (
            f"haproxy server {name} is {servers[name]}, not toxiproxy's lb->{name} proxy "
            f"({proxy['listen']})"
        )
        node_port = _node_config(services[name]).port
        assert proxy["upstream"] == f"{name}:{node_port}", (
            f"{proxy['name']} goes to {proxy['upstream']}, but {name} listens on {node_port}"
        )
    entry = proxies[f"lane{LANE}.clients-lb"]
    assert entry["upstream"] == f"haproxy:{_bind_port(f'frontend lane{LANE}')}", entry


def test_haproxy_config_is_the_harness_one() -> None:
    rendered = render_haproxy_config(
        lane=LANE,
        frontend_port=_bind_port(f"frontend lane{LANE}"),
        stats_port=_bind_port("listen stats"),
        backends=_haproxy_servers(),
        maxconn=LANE_CAPACITY + _LANE_HEADROOM,
    )
    # The one intended difference: inside a container HAProxy binds every interface.
    expected = [
        line.strip().replace("bind 127.0.0.1:", "bind 0.0.0.0:")
        for line in rendered.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    actual = _haproxy_lines()

    def checks(lines: list[str]) -> list[str]:
        return [
            line for line in lines if re.match(r"(option httpchk|http-check|default-server)", line)
        ]

    assert checks(actual) == checks(expected), "health check differs from the harness's"
    assert "option httpchk GET /health HTTP/1.1" in actual
    assert "http-check expect status 200" in actual
    assert actual == expected, "docker/haproxy.cfg differs from render_haproxy_config's output"


def test_haproxy_accepts_the_config(tmp_path: Path) -> None:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (scripts/setup.sh installs it)")
    # Outside Docker "toxiproxy" does not resolve; everything else is checked as is.
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CFG.read_text().replace(f" {TOXIPROXY}:", " 127.0.0.1:"))
    result = subprocess.run(
        [binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- exposure --------------------------------------------------------------------------------


def _published(services: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(service, host ip, container port) of every published port."""
    published = []
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name} uses the host's network"
        for port in service.get("ports", []):
            if isinstance(port, dict):
                published.append((name, str(port.get("host_ip", "")), str(port.get("target"))))
                continue
            parts = str(port).split(":")
            host_ip = parts[0] if len(parts) == 3 else ""  # "HOST:CONTAINER" binds everywhere
            published.append((name, host_ip, parts[-1].split("/")[0]))
    return published


def test_only_loopback_ports_are_published(services: dict[str, Any]) -> None:
    public = [p for p in _published(services) if p[1] != "127.0.0.1"]
    assert not public, f"ports published beyond 127.0.0.1 (service, host ip, port): {public}"


def test_clients_entry_and_toxiproxy_api_are_published(
    services: dict[str, Any], proxies: dict[str, dict[str, Any]]
) -> None:
    ports = {port for name, _, port in _published(services) if name == TOXIPROXY}
    entry = str(_listen_port(proxies[f"lane{LANE}.clients-lb"]))
    assert {entry, "8474"} <= ports, f"toxiproxy publishes {sorted(ports)}"


# --- the image -------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_installs_the_project_and_runs_turnout_server() -> None:
    steps = _dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim"), steps[0]
    copied = " ".join(args for instr, args in steps if instr in ("COPY", "ADD"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for needed in ["pyproject.toml", project["project"]["readme"], *packages]:
        assert re.search(rf"(^|\s){re.escape(needed)}(\s|/|$)", copied), f"{needed} not copied"
    runs = [args for instr, args in steps if instr == "RUN"]
    assert any(re.search(r"pip install (\S+ )*\.(\s|$)", r) for r in runs), (
        f"no RUN pip install . in {runs}"
    )
    entrypoints = [args for instr, args in steps if instr == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["turnout-server"], entrypoints[-1]
    assert project["project"]["scripts"]["turnout-server"] == "server.main:main"
