"""The one Redis starter (harness.redis_server), with a real redis-server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from harness.procs import HarnessSetupError
from harness.redis_server import redis_argv, start_redis


def test_start_redis_answers_ping_on_loopback_and_stops(tmp_path: Path) -> None:
    redis = start_redis(tmp_path)
    try:
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64) == b"+PONG\r\n"
    finally:
        redis.stop()
    assert redis.proc.returncode is not None
    assert not list(tmp_path.glob("appendonly*")), "tests' Redis must write nothing"


def test_a_redis_that_exits_is_a_setup_error_with_its_log(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_REDIS_SERVER_BIN", "/bin/false")
    with pytest.raises(HarnessSetupError, match=r"did not answer PING .*\(status 1\)"):
        start_redis(tmp_path, timeout=5)


def test_only_a_run_persists() -> None:
    run = redis_argv("redis-server", 6379, Path("/d"), persist=True)
    test = redis_argv("redis-server", 6379, Path("/d"), persist=False)
    assert run[run.index("--appendonly") + 1] == "yes"
    assert test[test.index("--appendonly") + 1] == "no"
    assert run[run.index("--bind") + 1] == test[test.index("--bind") + 1] == "127.0.0.1"
