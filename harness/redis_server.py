"""redis-server for a run, a test or a benchmark: its command line, its readiness, a blocking start.

A run's topology starts it under the supervisor (:func:`redis_argv`, :func:`redis_ready`); tests
and benchmarks, which are not trio services, call :func:`start_redis`. Both bind loopback only.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from .ports import LOOPBACK, allocate_port
from .procs import HarnessSetupError, ReadyCheck, find_binary
from .spawn import spawn

__all__ = ["RedisServer", "redis_argv", "redis_ready", "start_redis"]

_PING: Final = b"PING\r\n"


def redis_argv(binary: str, port: int, data_dir: Path, *, persist: bool) -> list[str]:
    """The command line: loopback only, log on stdout (the caller's log file).

    ``persist``: an append-only file like a production Redis, so a graceful restart (the
    restart_redis fault) keeps every stream and epoch; deleting ``data_dir`` loses them all.
    Without it nothing is ever written (tests, benchmarks).
    """
    durability = ["--appendonly", "yes", "--appendfsync", "everysec"] if persist \
        else ["--appendonly", "no"]
    return [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", *durability,
            "--dir", str(data_dir), "--logfile", ""]


def redis_ready(host: str, port: int) -> ReadyCheck:
    """Ready once Redis answers PING with +PONG (not -LOADING)."""

    async def probe() -> bool:
        with trio.move_on_after(1.0):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                return False
            async with stream:
                await stream.send_all(_PING)
                return (await stream.receive_some(64)).startswith(b"+PONG")
        return False

    return probe


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(_PING)
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A redis-server started by :func:`start_redis`; ``stop()`` kills it."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def start_redis(data_dir: Path, port: int | None = None, *, persist: bool = False,
                timeout: float = 10.0) -> RedisServer:
    """Start redis-server (dying with us) and return once it answers PING.

    ``port``: a free loopback port from harness.ports unless given.

    Raises:
        HarnessSetupError: redis-server is missing, exits, or does not answer in ``timeout``.
    """
    binary = find_binary("redis-server", hint="install it: apt-get install redis-server")
    port = port or allocate_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"redis-{port}.log"
    proc = spawn(redis_argv(binary, port, data_dir, persist=persist), log_path)
    server = RedisServer(port, proc, log_path)
    deadline = time.monotonic() + timeout
    while not _answers_ping(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise HarnessSetupError(
                f"redis-server on port {port} did not answer PING within {timeout:g} s "
                f"(status {proc.returncode}):\n{tail}")
        time.sleep(0.05)
    return server
