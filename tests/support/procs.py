"""Start real turnout-server processes on free loopback ports for tests (Redis:
harness.redis_server.start_redis).

Every process is started by harness.spawn (PR_SET_PDEATHSIG: it dies with the test run), and is
killed explicitly on teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness.ports import allocate_port as free_port
from harness.spawn import spawn as spawn_child

REPO = Path(__file__).resolve().parents[2]
APP_ID, APP_KEY, APP_SECRET = "1", "turnout-key", "turnout-secret"


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None,
          nofile: int | None = None) -> subprocess.Popen:
    """Start ``argv`` from the repo, logging to ``log_path``; ``nofile`` caps its open files."""
    return spawn_child(argv, log_path, env=env, cwd=REPO, nofile=nofile)


def wait_tcp(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@dataclass
class NodeProc:
    node_id: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    args: list[str] = field(default_factory=list)
    chaos_port: int = 0  # the node's chaos listener, when the test started one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def chaos_url(self) -> str:
        assert self.chaos_port, "this node was started without a chaos port"
        return f"http://127.0.0.1:{self.chaos_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/app/{APP_KEY}?protocol=7"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


def logs_of(nodes: list[NodeProc], tail: int = 4000) -> str:
    """The end of each node's log, for a failing test's report."""
    return "\n".join(f"--- {n.node_id} log (tail) ---\n{n.log()[-tail:]}" for n in nodes)


def app_toml(**settings: object) -> str:
    """An [[apps]] table for the test app (APP_ID/APP_KEY/APP_SECRET) with extra settings."""
    lines = ["[[apps]]", f'id = "{APP_ID}"', f'key = "{APP_KEY}"', f'secret = "{APP_SECRET}"']
    tables = []
    for name, value in settings.items():
        if name == "webhooks":
            for hook in value:  # type: ignore[attr-defined]
                tables += ["[[apps.webhooks]]"] + [f"{k} = {_toml(v)}" for k, v in hook.items()]
        else:
            lines.append(f"{name} = {_toml(value)}")
    return "\n".join(lines + tables) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def start_node(tmp: Path, redis_url: str, node_id: str = "node-1", *extra: str,
               port: int | None = None, wait: bool = True,
               extra_env: dict[str, str] | None = None, nofile: int | None = None,
               config: str | None = None) -> NodeProc:
    """``config``: TOML text with the node's apps (then no --app-* flags are given)."""
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
            "--redis-url", redis_url, "--node-id", node_id]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    if config is None:
        args += ["--app-id", APP_ID, "--app-key", APP_KEY]
        # The secret goes in the environment, as the README tells operators to do (a flag
        # would show in ps and make the node print a warning).
        env["TURNOUT_APP_SECRET"] = APP_SECRET
    else:
        path = tmp / f"{node_id}.toml"
        path.write_text(config)
        args += ["--config", str(path)]
    args += list(extra)
    env.update(extra_env or {})
    node = NodeProc(node_id, port, spawn(args, tmp / f"{node_id}.log", env, nofile),
                    tmp / f"{node_id}.log", list(extra))
    if wait:
        wait_healthy(node)
    return node


def wait_healthy(node: NodeProc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"{node.node_id} exited with {node.proc.returncode}:\n{node.log()}")
        try:
            if httpx.get(f"{node.url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{node.node_id} not healthy after {timeout} s:\n{node.log()}")
