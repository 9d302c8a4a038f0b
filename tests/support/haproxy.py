"""A real HAProxy in front of test nodes, configured exactly as the harness configures a lane
(``harness.topology.render_haproxy_config``), so tests see what production traffic sees."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness.topology import render_haproxy_config

from .procs import free_port, spawn, wait_tcp

__all__ = ["HaproxyProc", "start_haproxy"]


@dataclass
class HaproxyProc:
    port: int
    stats_port: int
    proc: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_haproxy(tmp: Path, backends: dict[str, tuple[str, int]], *, maxconn: int = 2000,
                  timeout: float = 20.0) -> HaproxyProc:
    """Start HAProxy on a free port; returns once it routes GET /health to a backend."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    port, stats = free_port(), free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / f"haproxy-{port}.cfg"
    config.write_text(render_haproxy_config(lane=0, frontend_port=port, stats_port=stats,
                                            backends=backends, maxconn=maxconn))
    log_path = tmp / f"haproxy-{port}.log"
    proc = HaproxyProc(port, stats, spawn([binary, "-f", str(config), "-db"], log_path), log_path)
    wait_tcp(port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{proc.url}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not proc.alive():
            proc.stop()
            raise TimeoutError(f"haproxy not routing after {timeout} s:\n"
                               f"{log_path.read_text(errors='replace')}")
        time.sleep(0.1)
