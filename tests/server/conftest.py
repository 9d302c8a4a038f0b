from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_trio.enable_trio_mode import *  # noqa: F403

from harness.redis_server import RedisServer, start_redis
from tests.support.procs import NodeProc, start_node


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests isolate themselves by key prefix."""
    proc = start_redis(tmp_path_factory.mktemp("redis"))
    yield proc
    proc.stop()


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def start_nodes(
    tmp_path: Path, redis_proc: RedisServer, key_prefix: str
) -> Iterator[Callable[..., NodeProc]]:
    """Start real turnout-server processes (same Redis, same key prefix); killed on teardown."""
    started: list[NodeProc] = []

    def start(node_id: str = "node-1", *extra: str, redis_url: str | None = None,
              wait: bool = True, port: int | None = None,
              env: dict[str, str] | None = None, nofile: int | None = None,
              config: str | None = None) -> NodeProc:
        node = start_node(tmp_path, redis_url or redis_proc.url, node_id,
                          "--key-prefix", key_prefix, *extra, wait=wait, port=port,
                          extra_env=env, nofile=nofile, config=config)
        started.append(node)
        return node

    yield start
    for node in started:
        node.kill()
