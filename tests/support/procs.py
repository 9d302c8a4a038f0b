"""Start real redis-server and turnout-server processes on free loopback ports for tests.

Every process is started with PR_SET_PDEATHSIG so it dies with the test run, and is killed
explicitly on teardown.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
APP_ID, APP_KEY, APP_SECRET = "1", "turnout-key", "turnout-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None,
          nofile: int | None = None) -> subprocess.Popen:
    """Start ``argv`` logging to ``log_path``; ``nofile`` caps its open files (soft and hard)."""
    def setup() -> None:
        _die_with_parent()
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = open(log_path, "ab")
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=setup, env=env, cwd=REPO,
    )


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
class RedisProc:
    port: int
    proc: subprocess.Popen
    dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_redis(tmp: Path, port: int | None = None) -> RedisProc:
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    proc = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(tmp)], tmp / f"redis-{port}.log")
    wait_tcp(port)
    return RedisProc(port, proc, tmp)


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


def start_node(tmp: Path, redis_url: str, node_id: str = "node-1", *extra: str,
               port: int | None = None, wait: bool = True,
               extra_env: dict[str, str] | None = None, nofile: int | None = None) -> NodeProc:
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
            "--redis-url", redis_url, "--node-id", node_id, "--app-id", APP_ID,
            "--app-key", APP_KEY, *extra]
    # The secret goes in the environment, as the README tells operators to do (a flag would
    # show in ps and make the node print a warning).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    env["TURNOUT_APP_SECRET"] = APP_SECRET
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
